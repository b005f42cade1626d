"""`ModelSpec`: everything that rebuilds a detector and shapes its input, stored with every checkpoint and
registered version (`spec.json`). The scoring job takes its input from it: how face crops are cut (margin, the
side they are cut at, the JPEG round trip they went through in the training shards), the input size, colour
order, normalisation and sequence length; the detection settings the training crops were found with are
recorded too (shown by `dfbatch models show`, compared by the scoring job).

A spec stored before a field existed loads with that field's default, which is what dfbatch did before it was
recorded (`INPUT_DEFAULTS`); `missing_fields(stored)` names them so `models show` can say so.

Importing this module is light (no torch). Constructing a spec checks the backbone and temporal-head names
against their registries (`backbones.py`, `heads.py`, which import torch); `describe_spec` formats a stored
spec dict without that check.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dfbatch.errors import CheckpointError, UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SEQUENCE_HEADS = ("last", "mean")  # how per-step P(FAKE) becomes the sequence's
COLOR_ORDERS = ("RGB", "BGR")
DEFAULT_CROP_MARGIN = 0.25  # face crop margin per side (fraction of the box) before it was recorded in specs
# MTCNN settings recorded in `ModelSpec.detection` (names as in `config.FaceConfig`)
DETECTION_KEYS = ("detect_max_side", "detect_every", "min_face_px", "min_face_prob")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a detector and feed it correctly (JSON-able via to_dict/from_dict)."""

    backbone: str = "resnext50_32x4d"  # a name in backbones.BACKBONES
    feature_dim: int | None = None  # None -> the backbone's pooled feature size
    temporal: str = "lstm"  # a name in heads.TEMPORAL_HEADS: lstm | gru | transformer | ...
    hidden_dim: int = 2048
    num_layers: int = 1
    head: str = "last"  # last | mean
    input_size: int = 112  # square face crops, pixels
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    color_order: str = "RGB"  # channel order the network expects (crops arrive RGB)
    fake_index: int = 1  # class index of FAKE (seed: 0, because its class 1 = REAL)
    num_classes: int = 2
    seq_len: int = 20  # frames per sequence the model was trained on
    seed_compat: bool = False
    dropout: float = 0.4
    # how the training crops were made (the input contract; `dfbatch train` records it from the prepared shards,
    # the scoring job reproduces it). The defaults are what scoring did before these were recorded.
    crop_margin: float = DEFAULT_CROP_MARGIN  # margin per side around the face box, fraction of its size
    crop_size: int | None = None  # crops are cut at this side, then resized to input_size (None: input_size)
    crop_jpeg_quality: int | None = None  # crops went through a JPEG round trip at this quality (None: none)
    detection: dict[str, Any] | None = None  # DETECTION_KEYS the training crops were found with (None: unknown)

    def __post_init__(self) -> None:
        from dfbatch.models.backbones import BACKBONES
        from dfbatch.models.heads import TEMPORAL_HEADS

        backbone = BACKBONES.lookup(self.backbone)  # UserError naming the choices
        TEMPORAL_HEADS.lookup(self.temporal)
        if self.feature_dim is None:
            object.__setattr__(self, "feature_dim", backbone.features)
        elif int(self.feature_dim) != backbone.features:
            raise UserError(f"backbone {self.backbone} gives {backbone.features}-d features, "
                            f"spec says feature_dim={self.feature_dim}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "crop_margin", float(self.crop_margin))
        if self.detection is not None:
            object.__setattr__(self, "detection", {k: self.detection[k] for k in sorted(self.detection)})
        checks = [
            (self.head in SEQUENCE_HEADS, f"head must be one of {SEQUENCE_HEADS}, got {self.head!r}"),
            (self.color_order in COLOR_ORDERS, f"color_order must be one of {COLOR_ORDERS}, got {self.color_order!r}"),
            (len(self.mean) == 3 and len(self.std) == 3 and all(s > 0 for s in self.std), "mean/std need 3 values, std > 0"),
            (self.num_classes >= 2 and 0 <= self.fake_index < self.num_classes, "need num_classes >= 2 and 0 <= fake_index < num_classes"),
            (self.hidden_dim >= 1 and self.num_layers >= 1 and self.seq_len >= 1, "hidden_dim, num_layers, seq_len must be >= 1"),
            (self.input_size >= backbone.min_input, f"input_size {self.input_size} too small for {self.backbone} "
                                                    f"(at least {backbone.min_input})"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (self.crop_margin >= 0, "crop_margin must be >= 0"),
            (self.crop_size is None or self.crop_size >= 16, "crop_size must be >= 16"),
            (self.crop_jpeg_quality is None or 1 <= self.crop_jpeg_quality <= 100, "crop_jpeg_quality must be in [1, 100]"),
            (self.detection is None or isinstance(self.detection, Mapping), "detection must be a mapping"),
            (not self.seed_compat or (self.temporal == "lstm" and self.num_layers == 1 and self.head == "last"),
             "seed_compat needs temporal=lstm, num_layers=1, head=last"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(f"invalid model spec: {msg}")

    def __hash__(self) -> int:  # `detection` is a dict
        import json

        return hash(json.dumps(self.to_dict(), sort_keys=True))

    @property
    def crop_side(self) -> int:
        """The side face crops are cut at before the model's resize to `input_size`."""
        return int(self.crop_size or self.input_size)

    def crop_path(self) -> str:
        """How crops reach the model, e.g. `cut at 128 px, JPEG q92, resized to 112 px` (params, messages)."""
        return describe_crop_path(self.to_dict())

    # -- constructors
    @classmethod
    def native(cls, **overrides: Any) -> ModelSpec:
        return cls(**overrides)

    @classmethod
    def seed(cls, frames: int) -> ModelSpec:
        """The spec of the published ResNeXt50-LSTM seed checkpoints trained on `frames` frames."""
        return cls(backbone="resnext50_32x4d", temporal="lstm", hidden_dim=2048, num_layers=1, head="last",
                   input_size=112, color_order="BGR", fake_index=0, num_classes=2, seq_len=int(frames),
                   seed_compat=True, dropout=0.4)

    # -- JSON
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["detection"] = dict(self.detection) if self.detection is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
        unknown = sorted(set(d) - _FIELDS)
        if unknown:
            raise CheckpointError(f"model spec has unknown fields {unknown} (written by a newer dfbatch?)")
        return cls(**dict(d))

    def replace(self, **changes: Any) -> ModelSpec:
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        return describe_spec(self.to_dict())


_FIELDS = {f.name for f in dataclasses.fields(ModelSpec)}
# the input-contract fields, with what a spec stored without them means (what dfbatch did before recording them)
INPUT_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelSpec)
                  if f.name in ("crop_margin", "crop_size", "crop_jpeg_quality", "detection")}


def missing_fields(d: Mapping[str, Any]) -> list[str]:
    """The ModelSpec fields a stored spec dict lacks (written before they existed: their defaults apply)."""
    return [f.name for f in dataclasses.fields(ModelSpec) if f.name not in d]


def with_defaults(d: Mapping[str, Any]) -> dict[str, Any]:
    """A stored spec dict in field order, the fields it lacks filled in with their defaults (what they mean)."""
    return ordered_spec_dict({f.name: f.default for f in dataclasses.fields(ModelSpec) if f.name not in d} | dict(d))


def describe_crop_path(d: Mapping[str, Any]) -> str:
    """How crops reach the model, from a spec dict (stored or `to_dict()`)."""
    s = {**INPUT_DEFAULTS, **d}
    size, quality, side = s.get("crop_size"), s.get("crop_jpeg_quality"), s.get("input_size", 112)
    parts = [f"margin {s['crop_margin']:g}", f"cut at {size or side} px"]
    if quality:
        parts.append(f"JPEG q{quality}")
    if size and size != side:
        parts.append(f"resized to {side} px")
    return ", ".join(parts)


def ordered_spec_dict(d: Mapping[str, Any]) -> dict[str, Any]:
    """A stored spec dict in ModelSpec's field order (unknown keys last), as stored: nothing checked."""
    order = [f.name for f in dataclasses.fields(ModelSpec)]
    return {**{k: d[k] for k in order if k in d}, **{k: v for k, v in d.items() if k not in _FIELDS}}


def describe_spec(d: Mapping[str, Any]) -> str:
    """One line naming a spec's architecture and input, from its dict (e.g. a registered version's spec.json)."""
    s = {f.name: f.default for f in dataclasses.fields(ModelSpec)} | dict(d)
    kind = "seed-compatible" if s["seed_compat"] else "native"
    return (f"{s['backbone']} -> {s['temporal']}({s['hidden_dim']}x{s['num_layers']}) -> head={s['head']} "
            f"[{kind}; {s['input_size']}px {s['color_order']}; T={s['seq_len']}; fake_index={s['fake_index']}; "
            f"crops: {describe_crop_path(s)}]")
