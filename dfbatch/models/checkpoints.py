"""Weights on disk: weights-only loading, key/shape checks, dfbatch checkpoint files and seed import.

A checkpoint is `{"format": "dfbatch-checkpoint/1", "spec": spec.to_dict(), "state_dict": tensors, "meta":
JSON-able}`; every file is read with `torch.load(weights_only=True)`, so nothing is ever unpickled. Seed
ResNeXt50-LSTM state dicts are imported by checking every key and shape against `SeedCompatDetector`.
"""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import torch
from torch import nn

from dfbatch.errors import CheckpointError, ModelNotFound, UserError
from dfbatch.models.spec import ModelSpec

if TYPE_CHECKING:  # reading weights needs torch only: the model code (torchvision, ~1.5 CPU s to import) loads when built
    from dfbatch.models.detector import Detector

CHECKPOINT_FORMAT = "dfbatch-checkpoint/1"
MAX_LISTED = 40  # key mismatches named per category in an error message


# --------------------------------------------------------------------------------------------- weights
def load_state_dict_file(path: str | os.PathLike | BinaryIO, map_location: str | torch.device = "cpu", *,
                         source: str | None = None) -> Any:
    """`torch.load(path, weights_only=True)` with user-facing errors (never unpickles arbitrary objects). `path`
    may be an open binary file (weights held in memory), named `source` in messages."""
    if hasattr(path, "read"):
        path, name = path, source or "weights"
    else:
        path = name = Path(path)
        if not path.is_file():
            raise ModelNotFound(f"no such checkpoint file: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln.strip() for ln in first if "GLOBAL" in ln or "Unsupported" in ln), first[0] if first else "")
        raise CheckpointError(
            f"{name} is not a weights-only checkpoint ({detail}); dfbatch never unpickles arbitrary objects. "
            f"Re-save it as plain tensors, e.g. torch.save(model.state_dict(), path)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {name}: {msg}") from None


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


def build_with_weights(spec: ModelSpec, state_dict: Mapping[str, Any], source: str = "state dict") -> Detector:
    """`load_weights(build_model(spec), state_dict)` without the random initialisation the weights overwrite
    (ResNeXt50-LSTM: ~0.5 CPU s per model actor): built on the meta device, given uninitialised CPU storage,
    then loaded with the same key/shape checks. A model that keeps state outside its state dict (a
    non-persistent buffer, say) is built the plain way."""
    from dfbatch.models.detector import build_model

    with torch.device("meta"):
        model = build_model(spec)
    kept = set(model.state_dict())
    if any(name not in kept for name, _ in [*model.named_parameters(), *model.named_buffers()]):
        return load_weights(build_model(spec), state_dict, source)
    model.to_empty(device="cpu")
    for name, buf in model.named_buffers():
        if name.endswith("num_batches_tracked"):  # may be absent from old state dicts (load_weights keeps ours)
            buf.zero_()
    return load_weights(model, state_dict, source)


def plain_state_dict(model_or_sd: nn.Module | Mapping[str, torch.Tensor]) -> OrderedDict:
    """Detached, contiguous CPU tensors (what is saved and registered)."""
    sd = model_or_sd.state_dict() if isinstance(model_or_sd, nn.Module) else model_or_sd
    return OrderedDict((k, v.detach().to("cpu").contiguous()) for k, v in sd.items())


# ----------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | os.PathLike, model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
                    spec: ModelSpec | None = None, meta: Mapping[str, Any] | None = None) -> Path:
    """Write `{"format", "spec", "state_dict", "meta"}` (tensors + JSON-able values only; loads weights_only)."""
    if spec is None:
        spec = getattr(model_or_state_dict, "spec", None)
        if spec is None:
            raise ValueError("save_checkpoint needs a spec when given a bare state dict")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {"format": CHECKPOINT_FORMAT, "spec": spec.to_dict(), "state_dict": plain_state_dict(model_or_state_dict),
           "meta": dict(meta or {})}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | os.PathLike) -> tuple[ModelSpec, OrderedDict, dict]:
    """(spec, state_dict, meta) of a dfbatch checkpoint file, without building the model."""
    return checkpoint_parts(load_state_dict_file(path), path)


def checkpoint_parts(obj: Any, path: str | os.PathLike) -> tuple[ModelSpec, OrderedDict, dict]:
    """(spec, state_dict, meta) of a loaded checkpoint file's contents (`obj["spec"]`: the spec as stored)."""
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
    from dfbatch.models.detector import build_model

    model = load_weights(build_model(spec), sd, source=str(path))
    return model.to(map_location).eval(), spec, meta


# ------------------------------------------------------------------------------------------------ seed
def looks_like_seed(sd: Any) -> bool:
    return isinstance(sd, Mapping) and "lstm.weight_ih_l0" in sd and "linear1.weight" in sd and "model.0.weight" in sd


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
    from dfbatch.models.detector import build_model

    model = build_model(spec)
    load_weights(model, _strip_module_prefix(sd), source="seed checkpoint")
    return model.eval(), spec


def import_seed_file(path: str | os.PathLike, frames: int) -> tuple[Detector, ModelSpec]:
    return import_seed_state_dict(load_state_dict_file(path), frames)
