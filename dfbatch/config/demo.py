"""The demo's config (`dfbatch demo`, `make demo`)."""

from __future__ import annotations

from dataclasses import field
from typing import Annotated

from pydantic import model_validator

from dfbatch.config.base import FieldError, JobConfig, Options, PathStr, Size, TrackingUri, job_config, opt

# The demo's training set and held-out set are made with different seeds: no clip, framing or fake is shared.
TRAIN_SEED, HELDOUT_SEED = 11, 23


@job_config
class DemoConfig(JobConfig):
    """Everything `dfbatch demo` needs; `demo.run_demo(cfg)` runs it."""

    root: Annotated[PathStr, opt("--root", help="folder for the archives, shards, checkpoints and results (default "
                                 "./{default})")] = "demo"
    tracking_uri: TrackingUri = None
    epochs: Annotated[int, opt("--epochs", help="training epochs (default {default})", ge=1)] = 8
    lr: Annotated[float, opt("--lr", help="learning rate (default {default})", gt=0)] = 3e-4
    # REAL and FAKE clips each, for training (3 in 4) + validation (1 in 4; its own identities)
    n_train: Annotated[int, opt("--clips", help="training REAL and FAKE clips each (default {default})", ge=4)] = 64
    # never seen in training, other identities (+ one faceless, one broken file)
    n_heldout: Annotated[int, opt("--heldout-clips", help="held-out REAL clips (default {default})", ge=1)] = 16
    heldout_fakes: Annotated[int, opt("--heldout-fakes", help="held-out FAKE clips per recipe (default {default})",
                                      ge=1)] = 6
    left_out: Annotated[str, opt("--left-out", help="the fake recipe training never sees; the held-out archive has "
                                 "it (default {default})")] = "swap"
    identity_seed: Annotated[int, opt(help="shuffles the LFW identities into train / val / held-out")] = 0
    size: Annotated[Size, opt("--size", help="clip size WIDTHxHEIGHT (default {default})")] = (480, 270)
    seconds: Annotated[float, opt("--seconds", help="clip length (default {default} s)", gt=0)] = 3.0
    fps: Annotated[int, opt(ge=1)] = 15
    prepare_frames: Annotated[int, opt(help="frames sampled per training video (a training sequence takes seq_len of "
                                       "them)", ge=1)] = 16
    seq_len: Annotated[int, opt(ge=1)] = 8
    train_seed: int = TRAIN_SEED
    heldout_seed: int = HELDOUT_SEED
    model_name: str = "dfbatch-detector"
    alias: str = "champion"
    quiet: Annotated[bool, opt("--ray-logs", help="show Ray's progress bars and INFO logs while preparing and "
                               "training")] = True
    train_overrides: Annotated[Options, opt(help="any other TrainConfig field")] = field(default_factory=dict)

    @model_validator(mode="after")
    def _distinct_seeds(self) -> DemoConfig:
        if self.train_seed == self.heldout_seed:
            raise FieldError("heldout_seed", "the training and held-out archives need different seeds")
        from dfbatch.config.lomo import RECIPES

        if self.left_out not in RECIPES:
            raise FieldError("left_out", f"--left-out must be one of {', '.join(RECIPES)}")
        return self
