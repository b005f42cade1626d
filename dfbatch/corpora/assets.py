"""The real material every generated clip is made of (``tests/data``): the carphone footage (pristine and crushed),
the astronaut portrait and LFW faces, with their face boxes and landmarks from MTCNN (run once per process).

Identities: the carphone man (``pristine`` and ``distorted`` are one man), the astronaut, and each of the 100 LFW
faces, which also become still portrait sources ``lfw000`` .. ``lfw099`` (`portrait`: the grey 25 px face
enlarged, tinted and set on a soft background), so identity-disjoint splits have more than two people to draw on.

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
N_LFW = 100
PORTRAITS = tuple(f"lfw{i:03d}" for i in range(N_LFW))  # still sources made of the LFW faces
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
    if source in PORTRAITS:
        arr = portrait(int(source[3:]))[None].copy()
        arr.flags.writeable = False
        return arr
    raise ValueError(f"unknown source {source!r}; expected one of {SOURCES} or lfw000..lfw{N_LFW - 1:03d}")


def identity(source: str) -> str:
    """The person a source shows: ``carphone`` (pristine and distorted), ``astronaut`` or ``lfwNNN``."""
    return "carphone" if source in ("pristine", "distorted") else source


def is_still(source: str) -> bool:
    """A still image (animated by the camera plan) rather than footage."""
    return source not in ("pristine", "distorted")


def portrait(i: int, size: tuple[int, int] = (256, 144)) -> np.ndarray:
    """(H, W, 3) uint8 RGB: LFW face ``i`` enlarged (bicubic, 25 px -> ~0.45 of the height), tinted with a skin tone
    and set with a feathered edge on a soft two-colour background; every choice seeded by ``i``."""
    return _portrait(i, size)[0]


def _portrait(i: int, size: tuple[int, int] = (256, 144)) -> tuple[np.ndarray, np.ndarray]:
    """(portrait, its face's landmarks placed from the LFW median landmarks: the fallback when MTCNN misses it)."""
    import cv2

    from dfbatch.corpora.plan import seeded_rng

    rng = seeded_rng(i, "portrait")
    W, H = size
    face = cv2.resize(lfw_faces()[i].astype(np.float32), (int(H * 0.45),) * 2, interpolation=cv2.INTER_CUBIC)
    tone = rng.uniform([0.95, 0.78, 0.62], [1.05, 0.9, 0.78])
    fs = face.shape[0]
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32) / max(W, H)
    c0, c1 = rng.uniform(40, 200, 3), rng.uniform(40, 200, 3)
    bg = c0 + (c1 - c0) * (0.6 * yy + 0.4 * xx)[..., None]
    m = np.zeros((fs, fs), np.float32)
    cv2.ellipse(m, (fs // 2, fs // 2), (int(fs * 0.47), int(fs * 0.5)), 0, 0, 360, 1.0, -1)
    m = cv2.GaussianBlur(m, (0, 0), fs * 0.04)[..., None]
    y0 = int((H - fs) / 2 + H * rng.uniform(-0.06, 0.02))
    x0 = (W - fs) // 2 + int(rng.integers(-W // 10, W // 10 + 1))
    region = bg[y0:y0 + fs, x0:x0 + fs]
    bg[y0:y0 + fs, x0:x0 + fs] = m * (face[..., None] * tone) + (1 - m) * region
    return np.clip(bg + 0.5, 0, 255).astype(np.uint8), LFW_LANDMARKS * (fs / 25.0) + [x0, y0]


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
    if not keep and source in PORTRAITS:  # MTCNN misses a few enlarged LFW faces: place the median landmarks
        lm = _portrait(int(source[3:]))[1]
        ed = float(np.linalg.norm(lm[1] - lm[0]))
        c = lm.mean(0)
        box = [c[0] - 1.3 * ed, c[1] - 1.5 * ed, c[0] + 1.3 * ed, c[1] + 1.6 * ed]
        keep, vals = [0], [np.concatenate([box, lm.ravel()])]
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


__all__ = ["CARPHONE_FPS", "FLIP_ORDER", "LFW_LANDMARKS", "N_LFW", "PORTRAITS", "SOURCES", "assets_dir", "detect_faces",
           "identity", "is_still", "lfw_faces", "portrait",
           "source_faces", "source_frames"]
