"""Temporal heads, registered by name: `@register_head` on one function per head.

A head function takes the `ModelSpec` and returns a module mapping per-frame features (B,T,feature_dim)
and optional `lengths` (B,) to per-step features (B,T,hidden_dim); steps at or past a sequence's length are
padding and must not change the valid steps (the detector's classifier runs on every step). Adding a head:

    @register_head("tcn")
    def tcn(spec):
        return CausalConvHead(spec.feature_dim, spec.hidden_dim, spec.num_layers, spec.dropout)

`ModelSpec(temporal=...)`, `build_model`, checkpoints, `dfbatch train --temporal` and the MLflow registry then
know it. Importing this module does not import torch: the head modules live in `layers.py`, imported when a model
is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dfbatch.models.plugins import Registry

if TYPE_CHECKING:
    from torch import nn

    from dfbatch.models.spec import ModelSpec


@dataclass(frozen=True)
class HeadEntry:
    name: str
    build: Callable[[ModelSpec], nn.Module]


TEMPORAL_HEADS: Registry[HeadEntry] = Registry("temporal head")


def register_head(name: str) -> Callable:
    """Decorator: register `fn(spec) -> module` as temporal head `name` (see the module doc)."""

    def deco(fn: Callable[[ModelSpec], nn.Module]) -> Callable[[ModelSpec], nn.Module]:
        TEMPORAL_HEADS.add(name, HeadEntry(name, fn))
        return fn

    return deco


def build_head(spec: ModelSpec) -> nn.Module:
    return TEMPORAL_HEADS.lookup(spec.temporal).build(spec)


# ------------------------------------------------------------------------------------------ built-in
@register_head("mean")
def mean(spec: ModelSpec) -> nn.Module:
    from dfbatch.models.layers import MeanHead

    return MeanHead(spec)


@register_head("lstm")
def lstm(spec: ModelSpec) -> nn.Module:
    from torch import nn

    from dfbatch.models.layers import RecurrentHead

    return RecurrentHead(nn.LSTM, spec)


@register_head("gru")
def gru(spec: ModelSpec) -> nn.Module:
    from torch import nn

    from dfbatch.models.layers import RecurrentHead

    return RecurrentHead(nn.GRU, spec)


@register_head("transformer")
def transformer(spec: ModelSpec) -> nn.Module:
    from dfbatch.models.layers import TransformerHead

    return TransformerHead(spec.feature_dim, spec.hidden_dim, spec.num_layers, spec.dropout)
