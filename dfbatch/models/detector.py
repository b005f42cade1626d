"""The detector: per-frame CNN backbone -> temporal head -> per-step logits, built from a `ModelSpec`.

Two flavours:

* **native** (default for new training): the registered backbone (`backbones.py`) and temporal head
  (`heads.py`) over the frame sequence, head `last` (the last step has seen every frame) or `mean` (mean of
  per-step P(FAKE)), RGB input, class order (REAL, FAKE) -> `fake_index = 1`.
* **seed-compatible** (`spec.seed_compat=True`): reproduces the published ResNeXt50-LSTM checkpoints
  (`model_93_acc_100_frames_final_data.pt` …) exactly, quirks included: bias-less `nn.LSTM(2048, 2048)`,
  the frames of one video run as independent length-1 steps (the original left `batch_first=False` while
  feeding (batch, time, 2048)), prediction = the last frame's, BGR input, class 1 = REAL (`fake_index = 0`),
  dropout after the linear layer, and the state-dict keys `model.*`, `lstm.*`, `linear1.*`.

`preprocess` turns uint8 RGB crops into the input the spec describes. Checkpoints: `checkpoints.py`;
inference helpers (precision, BatchNorm folding, `predict_crops`): `inference.py`.
"""

from __future__ import annotations

import importlib
import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dfbatch.models.backbones import build_backbone_body
from dfbatch.models.layers import Backbone
from dfbatch.models.heads import build_head
from dfbatch.models.spec import ModelSpec


class Detector(nn.Module):
    """(B,T,3,S,S) normalised crops -> logits (B,T,C), one per time step.

    Native layout: `backbone.body.*`, `temporal.*`, `classifier.*`. `build_model(spec)` picks this class or
    `SeedCompatDetector`.
    """

    def __init__(self, spec: ModelSpec, backbone_weights: str | os.PathLike | None = None):
        super().__init__()
        self.spec = spec
        self.channels_last = False
        self.backbone = Backbone(spec.backbone, backbone_weights)
        self.temporal = build_head(spec)
        self.dropout = nn.Dropout(spec.dropout)
        self.classifier = nn.Linear(spec.hidden_dim, spec.num_classes)

    def _frames(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        if x.dim() != 5 or x.shape[2] != 3:
            raise ValueError(f"expected (B,T,3,S,S) input, got {tuple(x.shape)}")
        B, T = x.shape[:2]
        x = x.reshape(B * T, *x.shape[2:])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, B, T

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        frames, B, T = self._frames(x)
        feats = self.backbone(frames).reshape(B, T, -1)
        return self.classifier(self.dropout(self.temporal(feats, lengths)))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """P(FAKE) per step (B,T) and per sequence (B,) (float32). With `lengths` (B,), steps >= length are
        padding: their frame probs are NaN and they do not count in the sequence score."""
        logits = self.forward(x, lengths).float()
        frame = torch.softmax(logits, dim=-1)[..., self.spec.fake_index]
        return frame_to_sequence(frame, self.spec.head, lengths)


def frame_to_sequence(frame: torch.Tensor, head: str, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    B, T = frame.shape
    if lengths is None:
        seq = frame[:, -1] if head == "last" else frame.mean(dim=1)
        return frame, seq
    lengths = lengths.to(frame.device).long().clamp(1, T)
    valid = torch.arange(T, device=frame.device).unsqueeze(0) < lengths.unsqueeze(1)
    if head == "last":
        seq = frame.gather(1, (lengths - 1).unsqueeze(1)).squeeze(1)
    else:
        seq = (frame * valid).sum(1) / lengths
    return frame.masked_fill(~valid, float("nan")), seq


class SeedCompatDetector(Detector):
    """The seed ResNeXt50-LSTM, quirks reproduced; state-dict keys exactly `model.*`, `lstm.*`, `linear1.*`.

    Original forward (B=1 video at inference): `fmap = model(x.view(B*T,c,h,w)); x = avgpool(fmap).view(B,T,2048);
    lstm(x)` with batch_first=False, so the LSTM saw T independent sequences of length 1; the output was the
    last frame's. Here every frame runs as its own length-1 step (identical for one video, and no cross-video
    mixing when B > 1); logits per frame, head `last`.
    """

    def __init__(self, spec: ModelSpec, backbone_weights: str | os.PathLike | None = None):
        nn.Module.__init__(self)
        self.spec = spec
        self.channels_last = False
        self.model = build_backbone_body(spec.backbone, backbone_weights)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.lstm = nn.LSTM(spec.feature_dim, spec.hidden_dim, spec.num_layers, False)  # 4th positional = bias
        self.dp = nn.Dropout(spec.dropout)
        self.linear1 = nn.Linear(spec.hidden_dim, spec.num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        frames, B, T = self._frames(x)
        feats = self.avgpool(self.model(frames)).reshape(1, B * T, -1)  # (seq=1, batch=B*T, F)
        out, _ = self.lstm(feats, None)
        return self.dp(self.linear1(out.reshape(B, T, -1)))


def build_model(spec: ModelSpec, backbone_weights: str | os.PathLike | None = None) -> Detector:
    """A fresh detector for `spec` (random init unless `backbone_weights`: "imagenet" or a torchvision .pth)."""
    cls = SeedCompatDetector if spec.seed_compat else Detector
    return cls(spec, backbone_weights)


def preprocess(crops: np.ndarray | torch.Tensor, spec: ModelSpec, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 RGB crops (N,T,S,S,3) -> float32 (N,T,3,S',S') in the spec's colour order, scaled to [0,1] and
    normalised with the spec's mean/std (S' = spec.input_size; other sizes are resized bilinearly).
    With `device`, the uint8 data moves first and the arithmetic runs there."""
    if isinstance(crops, np.ndarray):
        if any(st < 0 for st in crops.strides):
            crops = np.ascontiguousarray(crops)
        with warnings.catch_warnings():  # read-only buffers (np.frombuffer) are fine: nothing below writes in place
            warnings.filterwarnings("ignore", message=".*not writable", category=UserWarning)
            x = torch.as_tensor(crops)
    else:
        x = torch.as_tensor(crops)
    if x.dim() != 5 or x.shape[-1] != 3 or x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 crops (N,T,S,S,3), got {x.dtype} {tuple(x.shape)}")
    if device is not None:
        x = x.to(device, non_blocking=True)
    N, T, H, W, _ = x.shape
    if spec.color_order == "BGR":
        x = x.flip(-1)
    x = x.permute(0, 1, 4, 2, 3).float() / 255.0
    S = spec.input_size
    if (H, W) != (S, S):
        x = F.interpolate(x.reshape(N * T, 3, H, W), size=(S, S), mode="bilinear", align_corners=False,
                          antialias=True).reshape(N, T, 3, S, S)
    mean = x.new_tensor(spec.mean).view(1, 1, 3, 1, 1)
    std = x.new_tensor(spec.std).view(1, 1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


# Versions registered before the split log an `mlflow_model.py` that imports these from here.
_MOVED = {"load_weights": "checkpoints", "prepare_for_inference": "inference", "predict_crops": "inference"}


def __getattr__(name: str):
    if name in _MOVED:
        return getattr(importlib.import_module(f"dfbatch.models.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
