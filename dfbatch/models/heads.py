"""Temporal heads, registered by name: `@register_head` on one function per head.

A head function takes the `ModelSpec` and returns a module mapping per-frame features (B,T,feature_dim)
and optional `lengths` (B,) to per-step features (B,T,hidden_dim); steps at or past a sequence's length are
padding and must not change the valid steps (the detector's classifier runs on every step). Adding a head:

    @register_head("tcn")
    def tcn(spec):
        return CausalConvHead(spec.feature_dim, spec.hidden_dim, spec.num_layers, spec.dropout)

`ModelSpec(temporal=...)`, `build_model`, checkpoints, `dfbatch train --temporal` and the MLflow registry then
know it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from dfbatch.models.plugins import Registry

if TYPE_CHECKING:
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


# ------------------------------------------------------------------------------------------------ mean
class MeanHead(nn.Module):
    """No temporal model: each frame's features projected (linear + ReLU), step t = the running mean of steps
    0..t (causal, so trailing padding never changes the valid steps; the last step is the whole sequence's mean)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(spec.feature_dim, spec.hidden_dim), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        h = self.proj(x)
        steps = torch.arange(1, h.shape[1] + 1, device=h.device, dtype=h.dtype).view(1, -1, 1)
        return h.cumsum(dim=1) / steps


@register_head("mean")
def mean(spec: ModelSpec) -> nn.Module:
    return MeanHead(spec)


# ------------------------------------------------------------------------------------------ recurrent
class RecurrentHead(nn.Module):
    """batch_first LSTM/GRU with biases: (B,T,F) -> (B,T,H). Unidirectional, so trailing padding never
    affects the valid steps."""

    def __init__(self, rnn: type[nn.RNNBase], spec: ModelSpec):
        super().__init__()
        self.rnn = rnn(spec.feature_dim, spec.hidden_dim, num_layers=spec.num_layers, batch_first=True,
                       dropout=spec.dropout if spec.num_layers > 1 else 0.0)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        out, _ = self.rnn(x)
        return out


@register_head("lstm")
def lstm(spec: ModelSpec) -> nn.Module:
    return RecurrentHead(nn.LSTM, spec)


@register_head("gru")
def gru(spec: ModelSpec) -> nn.Module:
    return RecurrentHead(nn.GRU, spec)


# ---------------------------------------------------------------------------------------- transformer
def _sinusoidal(T: int, d: int, device, dtype) -> torch.Tensor:
    pos = torch.arange(T, device=device, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(T, d, device=device, dtype=torch.float32)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : d // 2]
    return pe.to(dtype)


class TransformerHead(nn.Module):
    """Small Transformer encoder over frame features (sinusoidal positions, any length, padding mask)."""

    def __init__(self, feature_dim: int, hidden_dim: int, num_layers: int, dropout: float):
        super().__init__()
        nhead = next(h for h in (8, 4, 2, 1) if hidden_dim % h == 0)
        self.proj = nn.Linear(feature_dim, hidden_dim) if feature_dim != hidden_dim else nn.Identity()
        layer = nn.TransformerEncoderLayer(hidden_dim, nhead, dim_feedforward=2 * hidden_dim, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden_dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        h = self.proj(x)
        B, T, D = h.shape
        h = h + _sinusoidal(T, D, h.device, h.dtype)
        mask = None
        if lengths is not None:
            mask = torch.arange(T, device=h.device).unsqueeze(0) >= lengths.to(h.device).unsqueeze(1)
        return self.norm(self.encoder(h, src_key_padding_mask=mask))


@register_head("transformer")
def transformer(spec: ModelSpec) -> nn.Module:
    return TransformerHead(spec.feature_dim, spec.hidden_dim, spec.num_layers, spec.dropout)
