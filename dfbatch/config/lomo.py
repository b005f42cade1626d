"""The leave-one-manipulation-out protocol's config (`dfbatch lomo`; `evaluation.lomo.run_lomo`)."""

from __future__ import annotations

from dataclasses import field
from typing import Annotated

from pydantic import model_validator

from dfbatch.config.base import FieldError, JobConfig, Options, PathStr, Size, TrackingUri, job_config, opt

RECIPES = ("swap", "blend", "reenact", "drift", "retouch")  # corpora.fakes.METHODS (no import: configs stay light)
# training presets compared by the protocol (the ablation): TrainConfig fields each sets
VARIANTS: dict[str, dict] = {
    "no-sbi": {"sbi": "off"},
    "sbi-classic": {"sbi_config": {"mask_kinds": ["ellipse"], "blend_kinds": ["alpha"], "p_local": 0.0,
                                   "p_temporal": 0.0}},
    "sbi-wide": {"sbi_config": {"p_temporal": 0.0}},
    "sbi-wide-temporal": {},  # the defaults: widened self-blending with temporal self-blending
}


@job_config
class LomoConfig(JobConfig):
    """Everything `dfbatch lomo` needs: the identity-disjoint archive, the shards, and the grid of trainings
    (variant x head x seed x left-out recipe)."""

    root: Annotated[PathStr, opt("--root", help="folder for the archive, shards, checkpoints and results (default "
                                 "./{default}); a rerun resumes")] = "lomo"
    tracking_uri: TrackingUri = None
    experiment: Annotated[str, opt("--experiment", help="MLflow experiment (default {default})")] = "dfbatch-lomo"
    recipes: Annotated[list[str], opt("--recipes", metavar="RECIPE", help="recipes left out in turn (default: all "
                                      "five)", min_length=1)] = field(default_factory=lambda: list(RECIPES))
    heads: Annotated[list[str], opt("--heads", metavar="HEAD", help="temporal heads compared (default {default})",
                                    min_length=1)] = field(default_factory=lambda: ["mean"])
    seeds: Annotated[list[int], opt("--seeds", metavar="SEED", help="training seeds (default {default})",
                                    min_length=1)] = field(default_factory=lambda: [0, 1, 2])
    variants: Annotated[list[str], opt("--variants", metavar="VARIANT", help="training presets (ablation: "
                                       + ", ".join(VARIANTS) + "; default {default})", min_length=1)] = \
        field(default_factory=lambda: ["sbi-wide-temporal"])
    # the archive: identities split train / val / test (corpora.synth.identity_splits), clips per split
    identity_seed: Annotated[int, opt(help="shuffles the LFW identities into the splits")] = 0
    archive_seed: int = 5
    size: Annotated[Size, opt("--size", help="clip size WIDTHxHEIGHT (default {default})")] = (192, 108)
    seconds: Annotated[float, opt("--seconds", help="clip length (default {default} s)", gt=0)] = 1.2
    fps: Annotated[int, opt(ge=1)] = 15
    train_clips: Annotated[tuple[int, int], opt(help="train split: REAL clips, FAKE clips per recipe")] = (48, 10)
    val_clips: Annotated[tuple[int, int], opt(help="val split: REAL clips, FAKE clips per recipe")] = (16, 4)
    test_clips: Annotated[tuple[int, int], opt(help="test split: REAL clips, FAKE clips per recipe")] = (24, 8)
    prepare_frames: Annotated[int, opt(ge=1)] = 12
    crop_size: Annotated[int, opt(ge=16)] = 64
    # training (TrainConfig fields; anything else through train_overrides)
    backbone: Annotated[str, opt("--backbone", help="(default {default})")] = "mobilenet_v2"
    backbone_weights: Annotated[str | None, opt("--backbone-weights", help="(default {default})")] = "imagenet"
    input_size: Annotated[int, opt(ge=16)] = 64
    seq_len: Annotated[int, opt(ge=1)] = 4
    hidden_dim: Annotated[int, opt(ge=1)] = 64
    epochs: Annotated[int, opt("--epochs", help="(default {default})", ge=1)] = 12
    train_overrides: Annotated[Options, opt(help="any other TrainConfig field")] = field(default_factory=dict)
    quiet: Annotated[bool, opt("--ray-logs", help="show Ray's progress bars and INFO logs")] = True

    @model_validator(mode="after")
    def _known_names(self) -> LomoConfig:
        for key, names, known in (("recipes", self.recipes, RECIPES), ("variants", self.variants, tuple(VARIANTS))):
            unknown = [n for n in names if n not in known]
            if unknown:
                raise FieldError(key, f"--{key}: unknown {', '.join(unknown)} (choose from {', '.join(known)})")
        return self
