"""`ModelSpec`: everything that rebuilds a detector and shapes its input, stored with every checkpoint and
registered version (`spec.json`). The scoring job takes crop size, colour order, normalisation and sequence
length from it.

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
        checks = [
            (self.head in SEQUENCE_HEADS, f"head must be one of {SEQUENCE_HEADS}, got {self.head!r}"),
            (self.color_order in COLOR_ORDERS, f"color_order must be one of {COLOR_ORDERS}, got {self.color_order!r}"),
            (len(self.mean) == 3 and len(self.std) == 3 and all(s > 0 for s in self.std), "mean/std need 3 values, std > 0"),
            (self.num_classes >= 2 and 0 <= self.fake_index < self.num_classes, "need num_classes >= 2 and 0 <= fake_index < num_classes"),
            (self.hidden_dim >= 1 and self.num_layers >= 1 and self.seq_len >= 1, "hidden_dim, num_layers, seq_len must be >= 1"),
            (self.input_size >= backbone.min_input, f"input_size {self.input_size} too small for {self.backbone} "
                                                    f"(at least {backbone.min_input})"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (not self.seed_compat or (self.temporal == "lstm" and self.num_layers == 1 and self.head == "last"),
             "seed_compat needs temporal=lstm, num_layers=1, head=last"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(f"invalid model spec: {msg}")

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


def ordered_spec_dict(d: Mapping[str, Any]) -> dict[str, Any]:
    """A stored spec dict in ModelSpec's field order (unknown keys last), as stored: nothing checked."""
    order = [f.name for f in dataclasses.fields(ModelSpec)]
    return {**{k: d[k] for k in order if k in d}, **{k: v for k, v in d.items() if k not in _FIELDS}}


def describe_spec(d: Mapping[str, Any]) -> str:
    """One line naming a spec's architecture and input, from its dict (e.g. a registered version's spec.json)."""
    s = {f.name: f.default for f in dataclasses.fields(ModelSpec)} | dict(d)
    kind = "seed-compatible" if s["seed_compat"] else "native"
    return (f"{s['backbone']} -> {s['temporal']}({s['hidden_dim']}x{s['num_layers']}) -> head={s['head']} "
            f"[{kind}; {s['input_size']}px {s['color_order']}; T={s['seq_len']}; fake_index={s['fake_index']}]")
