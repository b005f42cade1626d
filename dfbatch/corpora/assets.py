"""The real material every generated clip is made of (``tests/data``): the carphone footage (pristine and crushed),
the astronaut portrait and LFW faces, with their face boxes and landmarks from MTCNN (run once per process).

Face boxes/landmarks: MTCNN on the 176x144 carphone frames (every 3rd frame, interpolated and smoothed; the crushed
copy is frame-aligned and reuses them) and on the astronaut.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Iterable

import numpy as np

SOURCES = ("pristine", "distorted", "astronaut")
CARPHONE_FPS = 30000 / 1001
FLIP_ORDER = [1, 0, 2, 4, 3]  # landmark order after a horizontal flip (keeps image-left first)
# median MTCNN landmarks of the LFW crops (25x25): eyes, nose, mouth corners
LFW_LANDMARKS = np.array([[6.5, 9.0], [15.3, 8.7], [10.8, 14.0], [7.6, 18.5], [15.1, 18.2]])


def assets_dir() -> Path:
    """Folder with the real material: ``$DFBATCH_ASSETS`` or ``<repo>/tests/data``."""
    env = os.environ.get("DFBATCH_ASSETS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "tests" / "data"


def _decode_all(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    arr = np.stack(frames)
    arr.flags.writeable = False
    return arr


@functools.lru_cache(maxsize=None)
def source_frames(source: str) -> np.ndarray:
    """(N,H,W,3) uint8 RGB frames of a source (astronaut: N=1)."""
    if source in ("pristine", "distorted"):
        return _decode_all(assets_dir() / f"carphone_{source}.mp4")
    if source == "astronaut":
        from PIL import Image  # not cv2.imread: its libpng breaks when decord's zlib loaded first

        with Image.open(assets_dir() / "astronaut.png") as im:
            arr = np.asarray(im.convert("RGB"))[None].copy()
        arr.flags.writeable = False
        return arr
    raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")


@functools.lru_cache(maxsize=1)
def lfw_faces() -> np.ndarray:
    """(100,25,25) uint8 grayscale LFW faces (the first half of lfw_subset.npy)."""
    a = np.load(assets_dir() / "lfw_subset.npy")[:100]
    return np.clip(a * 255 + 0.5, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def mtcnn():
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True, device="cpu")


def detect_faces(frames: Iterable[np.ndarray]) -> list[np.ndarray]:
    """MTCNN boxes (k,4) x1,y1,x2,y2 per RGB frame (k may be 0); for checks in tests and tools."""
    frames = [np.ascontiguousarray(f) for f in frames]
    out = []
    for f in frames:  # one at a time: frames of different sizes cannot be batched
        boxes, probs = mtcnn().detect(f)
        out.append(np.zeros((0, 4)) if boxes is None else np.asarray(boxes, dtype=float).reshape(-1, 4))
    return out


@functools.lru_cache(maxsize=None)
def source_faces(source: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-source-frame face box (N,4) and landmarks (N,5,2), from MTCNN (cached per process)."""
    if source == "distorted":  # frame-aligned copy of pristine; MTCNN misses faces in the crushed one
        return source_faces("pristine")
    frames = source_frames(source)
    n = len(frames)
    idx = sorted(set(range(0, n, 3)) | {n - 1})
    boxes, probs, lms = mtcnn().detect([np.ascontiguousarray(frames[i]) for i in idx], landmarks=True)
    keep, vals = [], []
    for i, b, l in zip(idx, boxes, lms):
        if b is not None and len(b):
            keep.append(i)
            vals.append(np.concatenate([np.asarray(b[0], float), np.asarray(l[0], float).ravel()]))
    if not keep:
        raise RuntimeError(f"MTCNN found no face in source {source!r}")
    vals = np.array(vals)
    full = np.stack([np.interp(np.arange(n), keep, vals[:, j]) for j in range(14)], axis=1)
    if n > 3:  # light temporal smoothing (sigma 1 frame)
        k = np.exp(-0.5 * np.arange(-3, 4) ** 2)
        k /= k.sum()
        pad = np.pad(full, ((3, 3), (0, 0)), mode="edge")
        full = np.stack([np.convolve(pad[:, j], k, mode="valid") for j in range(14)], axis=1)
    full = np.round(full * 4) / 4  # quarter-pixel grid: insensitive to tiny float differences
    boxes, lms = full[:, :4].copy(), full[:, 4:].reshape(n, 5, 2).copy()
    boxes.flags.writeable = lms.flags.writeable = False
    return boxes, lms


__all__ = ["CARPHONE_FPS", "FLIP_ORDER", "LFW_LANDMARKS", "SOURCES", "assets_dir", "detect_faces", "lfw_faces",
           "source_faces", "source_frames"]
