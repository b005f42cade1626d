"""The torch modules the registered backbones and temporal heads are made of (`backbones.py` and `heads.py` import
this module when they build one, so that their registries load without torch).

`Backbone` (a registered body + global average pooling), `MeanHead` (running mean), `RecurrentHead` (LSTM/GRU), `TransformerHead` (sinusoidal
positions, padding mask) and `InceptionInputTransform` (inception_v3's own input scaling).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from dfbatch.models.spec import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    from dfbatch.models.backbones import Weights
    from dfbatch.models.spec import ModelSpec


class Backbone(nn.Module):
    """(N,3,S,S) -> pooled features (N,F)."""

    def __init__(self, name: str, weights: Weights = None):
        from dfbatch.models.backbones import build_backbone_body

        super().__init__()
        self.body = build_backbone_body(name, weights)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.body(x)), 1)


class InceptionInputTransform(nn.Module):
    """torchvision's `transform_input=True`: ImageNet-normalised input -> the (x-0.5)/0.5 inception expects."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        s = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (x * s + m - 0.5) / 0.5


# ------------------------------------------------------------------------------------------ recurrent
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
