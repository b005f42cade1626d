"""Deterministic test/demo/benchmark videos made from the real material in ``tests/data``.

Every clip is a pure function of its arguments (seed included):

* ``real_clip``     a REAL clip: the carphone footage (pristine or crushed) or the astronaut portrait
                    ("Ken Burns" pan/zoom), placed into the target frame with a seed-dependent camera
                    (scale, crop/offset, flip, tilt, drift, hand-held jitter, letter/pillarbox), photometric
                    jitter (gamma, contrast, white balance, exposure drift), sensor noise and an H.264 CRF.
* ``fake_clip``     the SAME clip as ``real_clip`` with the same seed/source/size (same frames outside the
                    face), with the inner face manipulated in every frame: ``swap`` (another identity:
                    astronaut / LFW / carphone), ``blend`` (self-blend: the face re-pasted shifted, resampled
                    and colour-shifted) or ``reenact`` (the same man from another time or mirrored; on the
                    still astronaut a jaw "puppet" warp). Manipulations leave face-local traces only:
                    resampling blur, colour mismatch, feathered/Poisson blend boundary, misalignment jitter.
* ``faceless_clip`` moving shapes over a panning gradient with noise (no face).
* ``broken_files``, ``demo_archive``, ``bench_archive``: sets of the above written to a folder.

Face boxes/landmarks come from MTCNN run once per process on the 176x144 carphone frames (every 3rd
frame, interpolated and smoothed; the crushed copy is frame-aligned and reuses them) and on the astronaut;
they are mapped through each clip's camera transform. ``face_boxes`` returns the ground-truth boxes.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import zlib
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np

SOURCES = ("pristine", "distorted", "astronaut")
METHODS = ("swap", "blend", "reenact")
CARPHONE_FPS = 30000 / 1001
_FLIP_ORDER = [1, 0, 2, 4, 3]  # landmark order after a horizontal flip (keeps image-left first)
# median MTCNN landmarks of the LFW crops (25x25): eyes, nose, mouth corners
_LFW_LANDMARKS = np.array([[6.5, 9.0], [15.3, 8.7], [10.8, 14.0], [7.6, 18.5], [15.1, 18.2]])
_CONTAINERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}
_DEFAULT_CODEC = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264", ".avi": "libx264",
                  ".webm": "libvpx-vp9"}


# ----------------------------------------------------------------------------------------------- assets
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
def _source_frames(source: str) -> np.ndarray:
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
def _lfw_faces() -> np.ndarray:
    """(100,25,25) uint8 grayscale LFW faces (the first half of lfw_subset.npy)."""
    a = np.load(assets_dir() / "lfw_subset.npy")[:100]
    return np.clip(a * 255 + 0.5, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def _mtcnn():
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True, device="cpu")


def detect_faces(frames: Iterable[np.ndarray]) -> list[np.ndarray]:
    """MTCNN boxes (k,4) x1,y1,x2,y2 per RGB frame (k may be 0); for checks in tests and tools."""
    frames = [np.ascontiguousarray(f) for f in frames]
    out = []
    for f in frames:  # one at a time: frames of different sizes cannot be batched
        boxes, probs = _mtcnn().detect(f)
        out.append(np.zeros((0, 4)) if boxes is None else np.asarray(boxes, dtype=float).reshape(-1, 4))
    return out


@functools.lru_cache(maxsize=None)
def _source_faces(source: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-source-frame face box (N,4) and landmarks (N,5,2), from MTCNN (cached per process)."""
    if source == "distorted":  # frame-aligned copy of pristine; MTCNN misses faces in the crushed one
        return _source_faces("pristine")
    frames = _source_frames(source)
    n = len(frames)
    idx = sorted(set(range(0, n, 3)) | {n - 1})
    boxes, probs, lms = _mtcnn().detect([np.ascontiguousarray(frames[i]) for i in idx], landmarks=True)
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


# ------------------------------------------------------------------------------------------- writing
def _rate(fps) -> Fraction:
    """fps as a Fraction; NTSC rates given as floats (29.97, 23.976, 59.94) become N*1000/1001."""
    if isinstance(fps, Fraction):
        return fps
    ntsc = round(float(fps) * 1.001)
    if ntsc > 1 and abs(float(fps) - ntsc * 1000 / 1001) < 5e-3:
        return Fraction(ntsc * 1000, 1001)
    return Fraction(float(fps)).limit_denominator(1001)


def write_video(path, frames: Iterable[np.ndarray], fps: float, codec: str | None = None,
                pix_fmt: str = "yuv420p", **options) -> Path:
    """Encode HxWx3 uint8 RGB ``frames`` with PyAV; container by extension (.mp4 .mov .mkv .webm .avi).

    ``codec`` defaults to libx264 (libvpx-vp9 for .webm); ``options`` go to the encoder (``crf=23``,
    ``preset="veryfast"`` ...). Odd sizes are cropped to even for chroma-subsampled ``pix_fmt``.
    x264 runs with 2 threads and mbtree=0 unless told otherwise: the bytes then depend only on the inputs
    (x264's macroblock-tree made repeated encodes of identical frames differ; slice count follows threads).
    """
    import av

    path = Path(path)
    ext = path.suffix.lower()
    if ext not in _CONTAINERS:
        raise ValueError(f"unsupported extension {ext!r}; use one of {sorted(_CONTAINERS)}")
    codec = codec or _DEFAULT_CODEC[ext]
    it = iter(frames)
    try:
        first = np.asarray(next(it))
    except StopIteration:
        raise ValueError("write_video needs at least one frame") from None
    if first.ndim != 3 or first.shape[2] != 3 or first.dtype != np.uint8:
        raise ValueError(f"frames must be HxWx3 uint8 RGB, got {first.dtype} {first.shape}")
    h, w = first.shape[:2]
    if pix_fmt.startswith(("yuv420", "yuvj420", "nv12", "nv21")):
        w, h = w - w % 2, h - h % 2
    elif pix_fmt.startswith(("yuv422", "yuvj422")):
        w -= w % 2
    opts = {k: str(v) for k, v in options.items()}
    if codec in ("libx264", "libx265"):
        opts.setdefault("preset", "veryfast")
        opts.setdefault("threads", "2")
        if codec == "libx264":  # x264's macroblock-tree is not repeatable here (measured); off = same bytes
            opts.setdefault("x264-params", "mbtree=0")
        if codec == "libx265":
            opts.setdefault("x265-params", "log-level=error")
    elif codec.startswith("libvpx"):
        opts.setdefault("deadline", "realtime")
        opts.setdefault("cpu-used", "8")
    rate = _rate(fps)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=_CONTAINERS[ext]) as c:
        st = c.add_stream(codec, rate=rate)
        st.width, st.height, st.pix_fmt = w, h, pix_fmt
        if "threads" in opts:
            st.codec_context.thread_count = int(opts.pop("threads"))
        st.options = opts
        for i, f in enumerate(itertools.chain([first], it)):
            f = np.asarray(f)
            if f.shape != first.shape or f.dtype != np.uint8:
                raise ValueError(f"frame {i} is {f.dtype} {f.shape}, expected uint8 {first.shape}")
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f[:h, :w]), format="rgb24")
            vf.pts, vf.time_base = i, 1 / rate
            for pkt in st.encode(vf):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    return path


# ----------------------------------------------------------------------------------- camera "plan"
def _rng(*keys) -> np.random.Generator:
    return np.random.default_rng([int(k) % (1 << 64) if isinstance(k, (int, np.integer))
                                  else zlib.crc32(str(k).encode()) for k in keys])


def _n_frames(seconds: float, fps: float) -> int:
    return max(1, int(round(seconds * fps)))


def _pingpong(pos: np.ndarray, n: int) -> np.ndarray:
    if n == 1:
        return np.zeros(len(pos), int)
    p = np.mod(np.round(pos).astype(int), 2 * (n - 1))
    return np.where(p < n, p, 2 * (n - 1) - p)


def _smooth_walk(rng, n: int, dims: int, amp: float) -> np.ndarray:
    """Smooth zero-mean random walk (n,dims) with max |value| ~ amp (hand-held jitter)."""
    if amp <= 0 or n < 2:
        return np.zeros((n, dims))
    w = np.cumsum(rng.normal(size=(n + 12, dims)), axis=0)
    k = np.exp(-0.5 * (np.arange(-6, 7) / 3.0) ** 2)
    w = np.stack([np.convolve(w[:, j], k / k.sum(), mode="valid") for j in range(dims)], axis=1)[:n]
    w -= np.linspace(w[0], w[-1], n)  # detrend: drift is modelled separately
    return w / (np.abs(w).max() + 1e-9) * amp


def _affine_apply(M: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ M[:, :2].T + M[:, 2]


def _box_of(M: np.ndarray, box: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = box
    c = _affine_apply(M, np.array([[x1, y1], [x2, y1], [x1, y2], [x2, y2]], float))
    return np.array([c[:, 0].min(), c[:, 1].min(), c[:, 0].max(), c[:, 1].max()])


class _Plan:
    """Everything about a clip except the face manipulation: source frame per output frame, source->output
    affine per frame, layout, interpolation, per-frame LUTs, noise and CRF. Shared by real and fake."""

    def __init__(self, seed: int, source: str, size: tuple[int, int], seconds: float, fps: float):
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
        W, H = int(size[0]), int(size[1])
        if W < 16 or H < 16:
            raise ValueError(f"size too small: {size}")
        rng = _rng(seed, source, "plan")
        self.seed, self.source, self.size, self.fps = seed, source, (W, H), fps
        self.n = n = _n_frames(seconds, fps)
        frames = _source_frames(source)
        N, sh, sw = frames.shape[:3]
        boxes, lms = _source_faces(source)
        still = source == "astronaut"

        # playback: offset + direction, ping-pong to reach the duration (carphone); still image: frame 0
        if still:
            self.src_idx = np.zeros(n, int)
        else:
            start = rng.uniform(0, 2 * (N - 1))
            direction = 1 if rng.random() < 0.7 else -1
            self.src_idx = _pingpong(start + direction * (CARPHONE_FPS / fps) * np.arange(n), N)
        used = boxes[np.unique(self.src_idx)]
        ub = np.array([used[:, 0].min(), used[:, 1].min(), used[:, 2].max(), used[:, 3].max()])

        # camera: layout, scale, flip, tilt, framing, drift, jitter
        self.flip = bool(rng.random() < 0.5)
        self.layout = "cover" if still else str(rng.choice(["cover"] * 5 + ["fit_black", "fit_blur"]))
        self.interp = int(rng.choice([cv2.INTER_LINEAR, cv2.INTER_CUBIC]))
        base = max(W / sw, H / sh) if self.layout == "cover" else min(W / sw, H / sh)
        if still:
            z0, z1 = rng.uniform(1.0, 1.7, size=2)
            th0, th1 = np.deg2rad(rng.uniform(-2.5, 2.5, size=2))
            drift_amp = 0.12
        else:
            z0 = rng.uniform(1.0, 1.3) if self.layout == "cover" else rng.uniform(0.92, 1.0)
            z1 = z0 * rng.uniform(0.97, 1.04)
            th0 = th1 = np.deg2rad(np.clip(rng.normal(0, 1.2), -3, 3))
            drift_amp = 0.03
        m = 0.04 * min(W, H)
        fc = (ub[:2] + ub[2:]) / 2  # face union centre (source coords)
        if self.flip:
            fc = np.array([sw - 1 - fc[0], fc[1]])
        half = (ub[2:] - ub[:2]) / 2
        s_max = min((W - 2 * m) / (2 * half[0]), (H - 2 * m) / (2 * half[1]))
        s0, s1 = min(base * z0, s_max), min(base * z1, s_max)

        def centre_range(s):
            lo_hi = []
            for ax, (D, sd) in enumerate(((W, sw), (H, sh))):
                if self.layout != "cover" and s * sd <= D:  # letter/pillarbox: centred
                    lo_hi.append(((D - s * sd) / 2 + s * fc[ax],) * 2)
                    continue
                a, b = sorted((s * fc[ax], D - s * sd + s * fc[ax]))  # source covers / stays inside frame
                fa, fb = m + s * half[ax], D - m - s * half[ax]  # face stays inside frame
                lo, hi = max(a, fa), min(b, fb)
                if lo > hi:
                    lo = hi = (fa + fb) / 2 if fa <= fb else D / 2
                lo_hi.append((lo, hi))
            return np.array(lo_hi)

        r0 = centre_range(s0)
        c0 = rng.uniform(r0[:, 0], r0[:, 1])
        r1 = centre_range(s1)
        c1 = np.clip(c0 + rng.uniform(-1, 1, 2) * drift_amp * min(W, H), r1[:, 0], r1[:, 1])
        u = np.linspace(0.0, 1.0, n)[:, None]
        jit = _smooth_walk(rng, n, 2, rng.uniform(0, 0.006) * min(W, H) * (self.layout == "cover"))
        centres = c0 + (c1 - c0) * u + jit
        scales = s0 + (s1 - s0) * u[:, 0]
        thetas = th0 + (th1 - th0) * u[:, 0]
        F = np.array([[-1.0, 0, sw - 1], [0, 1, 0], [0, 0, 1]]) if self.flip else np.eye(3)
        M = np.zeros((n, 2, 3))
        for t in range(n):
            cs, sn = math.cos(thetas[t]), math.sin(thetas[t])
            A = scales[t] * np.array([[cs, -sn], [sn, cs]])
            T = centres[t] - A @ fc
            M[t] = (np.hstack([A, T[:, None]]) @ F)
        self.M = M
        if self.layout == "fit_blur":  # blurred, darkened cover copy behind the pillar/letterbox
            sb = max(W / sw, H / sh) * 1.15
            self.M_bg = np.array([[sb, 0, (W - sb * sw) / 2], [0, sb, (H - sb * sh) / 2]]) @ F

        # photometric: gamma, contrast, white balance, brightness + slow exposure drift -> per-frame LUT
        gamma = math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
        contrast = rng.uniform(0.85, 1.15)
        gains = rng.uniform(0.92, 1.08, 3)
        bright = rng.uniform(-16, 16)
        expo = rng.uniform(0, 6) * np.sin(2 * np.pi * rng.uniform(0.1, 0.6) * np.arange(n) / fps
                                          + rng.uniform(0, 2 * np.pi))
        v = np.arange(256) / 255.0
        y = ((v ** gamma - 0.5) * contrast + 0.5)[None, :, None] * gains[None, None, :] * 255
        luts = y + bright + expo[:, None, None]
        self.luts = np.clip(np.round(luts), 0, 255).astype(np.uint8)[:, None]  # (n,1,256,3)

        # sensor noise (bank + per-frame offsets) and codec quality
        self.noise_sigma = 0.0 if rng.random() < 0.25 else rng.uniform(1.0, 4.0)
        self.noise_mono = bool(rng.random() < 0.5)
        self.noise_offsets = rng.integers(0, 17, size=(n, 2))
        self.crf = int(rng.integers(18, 29))

    # -- geometry of the face in output frames
    def landmarks(self) -> np.ndarray:
        """(n,5,2) face landmarks in output coords (image-left eye first)."""
        _, lms = _source_faces(self.source)
        out = np.stack([_affine_apply(self.M[t], lms[i]) for t, i in enumerate(self.src_idx)])
        return out[:, _FLIP_ORDER] if self.flip else out

    def boxes(self) -> np.ndarray:
        """(n,4) face boxes x1,y1,x2,y2 in output coords (MTCNN's box through the camera transform)."""
        boxes, _ = _source_faces(self.source)
        return np.stack([_box_of(self.M[t], boxes[i]) for t, i in enumerate(self.src_idx)])

    # -- rendering
    def geometric(self, t: int) -> np.ndarray:
        W, H = self.size
        src = _source_frames(self.source)[self.src_idx[t]]
        if self.layout == "cover":
            return cv2.warpAffine(src, self.M[t], (W, H), flags=self.interp, borderMode=cv2.BORDER_REFLECT101)
        if self.layout == "fit_black":
            return cv2.warpAffine(src, self.M[t], (W, H), flags=self.interp, borderMode=cv2.BORDER_CONSTANT)
        sm = (max(W // 8, 2), max(H // 8, 2))
        bg = cv2.warpAffine(src, self.M_bg * [[sm[0] / W], [sm[1] / H]], sm, flags=cv2.INTER_AREA,
                            borderMode=cv2.BORDER_REFLECT101)
        bg = cv2.resize(cv2.GaussianBlur(bg, (0, 0), 1.5), (W, H), interpolation=cv2.INTER_LINEAR)
        bg = cv2.convertScaleAbs(bg, alpha=0.6)
        return cv2.warpAffine(src, self.M[t], (W, H), dst=bg, flags=self.interp,
                              borderMode=cv2.BORDER_TRANSPARENT)

    def frames(self, manipulate: Callable[[int, np.ndarray], np.ndarray] | None = None):
        """Yield the clip's output frames; ``manipulate(t, frame)`` runs between geometry and photometry."""
        W, H = self.size
        bank = None
        if self.noise_sigma > 0:
            nr = _rng(self.seed, self.source, "noise")
            ch = 1 if self.noise_mono else 3
            bank = np.round(nr.normal(0, self.noise_sigma, (H + 16, W + 16, ch))).astype(np.int16)
        for t in range(self.n):
            f = self.geometric(t)
            if manipulate is not None:
                f = manipulate(t, f)
            f = cv2.LUT(f, self.luts[t])
            if bank is not None:
                dy, dx = self.noise_offsets[t]
                f = np.clip(f + bank[dy:dy + H, dx:dx + W], 0, 255).astype(np.uint8)
            yield f

    def write(self, path, manipulate=None) -> Path:
        return write_video(path, self.frames(manipulate), self.fps, crf=self.crf)


# ------------------------------------------------------------------------------------- real clips
def real_clip(path, *, seed: int = 0, size: tuple[int, int] = (640, 360), seconds: float = 4.0,
              fps: float = 30, source: str = "pristine") -> Path:
    """Write a REAL clip (H.264 unless the extension says otherwise) and return its path.

    ``source``: "pristine" / "distorted" carphone footage (offset, ping-pong looped to ``seconds``) or
    "astronaut" (slow pan/zoom over the still portrait). ``seed`` picks the camera/photometric/codec variation.
    """
    return _Plan(seed, source, size, seconds, fps).write(path)


def face_boxes(*, seed: int = 0, size: tuple[int, int] = (640, 360), seconds: float = 4.0, fps: float = 30,
               source: str = "pristine") -> np.ndarray:
    """Ground-truth (n,4) face boxes of ``real_clip``/``fake_clip`` with the same arguments."""
    return _Plan(seed, source, size, seconds, fps).boxes()


# ------------------------------------------------------------------------------------- fake clips
def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) src -> dst, 2x3."""
    ms, md = src.mean(0), dst.mean(0)
    zs = (src - ms) @ [1, 1j]
    zd = (dst - md) @ [1, 1j]
    a = (np.conj(zs) * zd).sum() / max((np.abs(zs) ** 2).sum(), 1e-9)
    A = np.array([[a.real, -a.imag], [a.imag, a.real]])
    return np.hstack([A, (md - A @ ms)[:, None]])


def _about(c: np.ndarray, scale: float, theta: float, shift: np.ndarray) -> np.ndarray:
    """3x3 similarity: scale/rotate about point c, then shift."""
    cs, sn = math.cos(theta) * scale, math.sin(theta) * scale
    A = np.array([[cs, -sn], [sn, cs]])
    return np.vstack([np.hstack([A, (c - A @ c + shift)[:, None]]), [0, 0, 1]])


def _geom(L: np.ndarray):
    eye_c, mouth_c = (L[0] + L[1]) / 2, (L[3] + L[4]) / 2
    ed = max(float(np.linalg.norm(L[1] - L[0])), 2.0)
    em = max(float(np.linalg.norm(mouth_c - eye_c)), 2.0)
    r = (L[1] - L[0]) / ed
    u = (eye_c - mouth_c) / em  # points up the face
    return eye_c, mouth_c, ed, em, r, u


def resolve_method(seed: int, source: str = "pristine", method: str | None = None) -> str:
    """The manipulation ``fake_clip`` uses for these arguments (``method=None`` -> chosen by seed)."""
    if method is None:
        return str(_rng(seed, source, "method").choice(METHODS))
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    return method


class _Faker:
    """Per-clip face manipulation, applied to each geometric frame (before photometry, noise and codec)."""

    def __init__(self, plan: _Plan, method: str):
        self.plan, self.method = plan, method
        rng = _rng(plan.seed, plan.source, "fake", method)
        self.L = plan.landmarks()
        n = plan.n
        still = plan.source == "astronaut"
        # common parameters
        self.mask_kind = str(rng.choice(["ellipse", "hull"]))
        self.mask_scale = rng.uniform(0.9, 1.08)
        self.feather = rng.uniform(0.05, 0.18)
        self.up_interp = int(rng.choice([cv2.INTER_LINEAR, cv2.INTER_CUBIC]))
        self.poisson = False
        self.opacity = 1.0
        self.donor = None  # callable t -> (image, landmarks) in donor coords; None: the frame itself
        self.gray = False
        if method == "swap":
            self.alpha = rng.uniform(0.55, 0.9)
            self.offset = rng.uniform(-12, 12, 3)
            self.gain = rng.uniform(0.9, 1.1)
            self.work_ed = rng.uniform(16, 40)
            self.blur = rng.uniform(0, 1.2)
            self.poisson = bool(rng.random() < 0.3)
            ms, mr, msh, self.jitter = rng.uniform(-0.04, 0.06), rng.uniform(-3, 3), rng.uniform(-0.04, 0.04, 2), \
                rng.uniform(0.005, 0.02)
            kind = str(rng.choice(["carphone", "lfw"] if still else ["astronaut", "lfw", "lfw"]))
            self.donor_kind = kind
            if kind == "lfw":
                face = _lfw_faces()[int(rng.integers(0, 100))]
                self.donor = lambda t, face=face: (face, _LFW_LANDMARKS)
                self.gray, self.alpha = True, 1.0
            elif kind == "astronaut":
                img, lm = _source_frames("astronaut")[0], _source_faces("astronaut")[1][0]
                self.donor = lambda t: (img, lm)
            else:  # carphone man talking onto the still astronaut
                frames, lms = _source_frames("pristine"), _source_faces("pristine")[1]
                idx = _pingpong(rng.uniform(0, 238) + (CARPHONE_FPS / plan.fps) * np.arange(n), len(frames))
                self.donor = lambda t: (frames[idx[t]], lms[idx[t]])
        elif method == "blend":  # self-blend: the same face re-pasted, shifted, resampled, recoloured
            self.donor_kind = "self"
            self.alpha = 0.0
            off = rng.normal(size=3)
            self.offset = off / np.linalg.norm(off) * rng.uniform(10, 20)
            self.gain = rng.uniform(0.88, 1.12)
            self.work_ed = rng.uniform(14, 34)
            self.blur = rng.uniform(0.3, 1.5)
            self.opacity = rng.uniform(0.85, 1.0)
            ms, mr, msh, self.jitter = rng.uniform(0.01, 0.06), rng.uniform(-2, 2), rng.uniform(-0.04, 0.04, 2), \
                rng.uniform(0.003, 0.012)
        else:  # reenact
            self.alpha = rng.uniform(0.6, 0.95)
            self.offset = rng.uniform(-8, 8, 3)
            self.gain = rng.uniform(0.93, 1.07)
            self.work_ed = rng.uniform(18, 45)
            self.blur = rng.uniform(0, 0.8)
            ms, mr, msh, self.jitter = rng.uniform(-0.03, 0.04), rng.uniform(-2, 2), rng.uniform(-0.03, 0.03, 2), \
                rng.uniform(0.004, 0.015)
            if still:  # puppet: the jaw of the still portrait opens and closes
                self.donor_kind = "puppet"
                self.alpha = 0.0
                rate = rng.uniform(2.0, 4.0)
                ph = 2 * np.pi * rate * np.arange(n) / plan.fps + rng.uniform(0, 2 * np.pi)
                ph += np.cumsum(rng.normal(0, 0.15, n))
                self.jaw = rng.uniform(0.12, 0.25) * (0.5 - 0.5 * np.cos(ph))
            else:
                frames = _source_frames(plan.source)
                lms = _source_faces(plan.source)[1]
                N = len(frames)
                if rng.random() < 0.3:  # the same moment, mirrored
                    self.donor_kind = "mirror"
                    w = frames.shape[2]

                    def donor(t):
                        i = plan.src_idx[t]
                        lm = lms[i].copy()
                        lm[:, 0] = w - 1 - lm[:, 0]
                        return frames[i][:, ::-1], lm[_FLIP_ORDER]
                else:  # another moment of the same man
                    self.donor_kind = "other_time"
                    lag = int(rng.integers(25, 95))

                    def donor(t):
                        i = int(_pingpong(np.array([plan.src_idx[t] + lag]), N)[0])
                        return frames[i], lms[i]
                self.donor = donor
        self.misalign = (1 + ms, np.deg2rad(mr), np.asarray(msh))
        self.jit = rng.normal(0, self.jitter, (n, 3))  # per-frame scale / shift-x / shift-y flicker

    def _mask(self, L, x0, y0, w, h, ed, em, r, u) -> np.ndarray:
        eye_c, mouth_c = (L[0] + L[1]) / 2, (L[3] + L[4]) / 2
        c = (eye_c + mouth_c) / 2 - np.array([x0, y0])
        k = self.mask_scale
        m = np.zeros((h, w), np.uint8)
        if self.mask_kind == "ellipse":
            ang = math.degrees(math.atan2(r[1], r[0]))
            axes = (max(1, int(0.9 * ed * k)), max(1, int(1.1 * em * k)))
            cv2.ellipse(m, (int(round(c[0])), int(round(c[1]))), axes, ang, 0, 360, 255, -1, cv2.LINE_AA)
        else:
            P = L - np.array([x0, y0])
            pts = np.array([P[0] + 0.45 * em * u - 0.35 * ed * r, P[1] + 0.45 * em * u + 0.35 * ed * r,
                            P[0] - 0.5 * ed * r - 0.3 * em * u, P[1] + 0.5 * ed * r - 0.3 * em * u,
                            P[3] - 0.35 * em * u - 0.1 * ed * r, P[4] - 0.35 * em * u + 0.1 * ed * r,
                            (P[3] + P[4]) / 2 - 0.55 * em * u])
            pts = c + (pts - c) * k
            cv2.fillConvexPoly(m, cv2.convexHull(np.round(pts).astype(np.int32)), 255, cv2.LINE_AA)
        m[:2], m[-2:], m[:, :2], m[:, -2:] = 0, 0, 0, 0
        mf = m.astype(np.float32) / 255
        return cv2.GaussianBlur(mf, (0, 0), max(0.5, self.feather * ed))

    def __call__(self, t: int, frame: np.ndarray) -> np.ndarray:
        H, W = frame.shape[:2]
        L = self.L[t]
        eye_c, mouth_c, ed, em, r, u = _geom(L)
        c = (eye_c + mouth_c) / 2
        half = 1.5 * max(ed, em)
        x0, y0 = int(max(0, c[0] - half)), int(max(0, c[1] - half))
        x1, y1 = int(min(W, c[0] + half + 1)), int(min(H, c[1] + half + 1))
        w, h = x1 - x0, y1 - y0
        if w < 8 or h < 8:
            return frame
        region = frame[y0:y1, x0:x1]
        mask = self._mask(L, x0, y0, w, h, ed, em, r, u)

        # donor -> region transform: landmark alignment, then constant misalignment + per-frame flicker
        s, th, sh = self.misalign
        j = self.jit[t]
        J = _about(c, s * (1 + j[0]), th, (sh + j[1:]) * ed)
        if self.donor_kind == "puppet":
            donor = frame.copy()
            donor[y0:y1, x0:x1] = self._puppet(t, region, x0, y0, L, ed, em)
            A = J[:2]
        elif self.donor is None:
            donor, A = frame, J[:2]
        else:
            donor, dl = self.donor(t)
            A = (J @ np.vstack([_similarity(dl, L), [0, 0, 1]]))[:2]
        f = float(np.clip(self.work_ed / ed, 0.1, 1.0))
        ws, hs = max(4, int(round(w * f))), max(4, int(round(h * f)))
        S = np.diag([ws / w, hs / h, 1.0]) @ np.vstack([A, [0, 0, 1]])
        S[:2, 2] -= np.array([x0 * ws / w, y0 * hs / h])
        S = S[:2]
        small = cv2.warpAffine(np.ascontiguousarray(donor), S, (ws, hs), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
        if self.blur > 0.05:
            small = cv2.GaussianBlur(small, (0, 0), self.blur)
        face = cv2.resize(small, (w, h), interpolation=self.up_interp).astype(np.float32)
        if face.ndim == 2:
            face = np.repeat(face[:, :, None], 3, axis=2)

        # colour: partial transfer to the target's statistics inside the mask, then a mismatch
        tgt = region.astype(np.float32)
        sel = (mask > 0.5).astype(np.uint8)
        if cv2.countNonZero(sel) < 16:
            sel[:] = 1
        mt, st = (v.ravel() for v in cv2.meanStdDev(tgt, mask=sel))
        st = st + 1.0
        if self.alpha > 0:
            md, sd = (v.ravel() for v in cv2.meanStdDev(face, mask=sel))
            sd = sd + 1.0
            if self.gray:  # grey donor: one luminance spread, the target's mean colour
                sd = np.full(3, sd.mean())
            face = self.alpha * ((face - md) / sd * st + mt) + (1 - self.alpha) * face
        face = (face - mt) * self.gain + mt + self.offset

        if self.poisson:  # Poisson blend, solved at <=160 px (the donor has no finer detail anyway)
            q = min(1.0, 160 / max(w, h))
            sz = (max(8, int(round(w * q))), max(8, int(round(h * q))))
            m8 = (cv2.resize(mask, sz, interpolation=cv2.INTER_AREA) > 0.3).astype(np.uint8) * 255
            m8[:2], m8[-2:], m8[:, :2], m8[:, -2:] = 0, 0, 0, 0
            if m8.any():
                fs = cv2.resize(np.clip(face, 0, 255).astype(np.uint8), sz, interpolation=cv2.INTER_AREA)
                ds = cv2.resize(region, sz, interpolation=cv2.INTER_AREA)
                bx, by, bw, bh = cv2.boundingRect(m8)
                cloned = cv2.seamlessClone(fs[by:by + bh, bx:bx + bw], ds, m8[by:by + bh, bx:bx + bw],
                                           (bx + bw // 2, by + bh // 2), cv2.NORMAL_CLONE)
                face = cv2.resize(cloned, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        a = (mask * self.opacity)[:, :, None]
        out = frame.copy()
        out[y0:y1, x0:x1] = np.clip(a * face + (1 - a) * tgt + 0.5, 0, 255).astype(np.uint8)
        return out

    def _puppet(self, t, region, x0, y0, L, ed, em):
        """The region with the jaw pulled down by ``self.jaw[t] * em`` (a talking still photo)."""
        h, w = region.shape[:2]
        pm = (L[3] + L[4]) / 2 - np.array([x0, y0])
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        wgt = np.exp(-0.5 * (((xx - pm[0]) / (0.8 * ed)) ** 2 + ((yy - pm[1] - 0.3 * em) / (0.55 * em)) ** 2))
        below = 1 / (1 + np.exp(-(yy - pm[1] + 0.1 * em) / (0.08 * em)))  # only below the upper lip
        map_y = yy - (self.jaw[t] * em) * wgt * below
        return cv2.remap(region, xx, map_y.astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def fake_clip(path, *, seed: int = 0, size: tuple[int, int] = (640, 360), seconds: float = 4.0,
              fps: float = 30, source: str = "pristine", method: str | None = None) -> Path:
    """Write a FAKE clip: ``real_clip`` with the same arguments, inner face manipulated in every frame.

    ``method``: "swap" | "blend" | "reenact" (None: chosen by seed, see ``resolve_method``).
    """
    plan = _Plan(seed, source, size, seconds, fps)
    return plan.write(path, _Faker(plan, resolve_method(seed, source, method)))


# ---------------------------------------------------------------------------------- faceless clips
def faceless_clip(path, *, seed: int = 0, size: tuple[int, int] = (640, 360), seconds: float = 4.0,
                  fps: float = 30) -> Path:
    """Write a clip of moving shapes over a panning gradient with noise: no face anywhere."""
    W, H = int(size[0]), int(size[1])
    n = _n_frames(seconds, fps)
    rng = _rng(seed, "faceless")
    gy, gx = np.mgrid[0:2 * H, 0:2 * W].astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    g = (np.cos(ang) * gx + np.sin(ang) * gy) / (2 * max(W, H))
    c0, c1 = rng.uniform(30, 220, 3), rng.uniform(30, 220, 3)
    bg = (c0 + (c1 - c0) * (0.5 + 0.5 * np.sin(np.pi * g))[..., None]).astype(np.uint8)
    pan = np.stack([np.linspace(0, rng.uniform(0, W), n), np.linspace(0, rng.uniform(0, H), n)], 1).astype(int)
    k = int(rng.integers(3, 8))
    kinds = rng.choice(["circle", "rect", "poly", "line"], k)
    pos = rng.uniform([0, 0], [W, H], (k, 2))
    vel = rng.uniform(-1, 1, (k, 2)) * min(W, H) * rng.uniform(0.2, 0.8, (k, 1)) / fps
    sizes = rng.uniform(0.05, 0.25, k) * min(W, H)
    cols = rng.uniform(0, 255, (k, 3))
    spin = rng.uniform(-2, 2, k) / fps
    bank = np.round(rng.normal(0, rng.uniform(1, 4), (H + 16, W + 16, 3))).astype(np.int16)
    offs = rng.integers(0, 17, (n, 2))

    def frames():
        p = pos.copy()
        for t in range(n):
            f = bg[pan[t, 1]:pan[t, 1] + H, pan[t, 0]:pan[t, 0] + W].copy()
            for i in range(k):
                x, y, s, col = int(p[i, 0]), int(p[i, 1]), sizes[i], tuple(float(v) for v in cols[i])
                a = spin[i] * t
                if kinds[i] == "circle":
                    cv2.circle(f, (x, y), int(s), col, -1, cv2.LINE_AA)
                elif kinds[i] == "rect":
                    box = cv2.boxPoints(((x, y), (2 * s, s), math.degrees(a)))
                    cv2.fillConvexPoly(f, np.round(box).astype(np.int32), col, cv2.LINE_AA)
                elif kinds[i] == "poly":
                    th = a + np.arange(3) * 2 * np.pi / 3
                    tri = np.stack([x + s * np.cos(th), y + s * np.sin(th)], 1)
                    cv2.fillConvexPoly(f, np.round(tri).astype(np.int32), col, cv2.LINE_AA)
                else:
                    d = np.array([math.cos(a), math.sin(a)]) * s * 1.5
                    cv2.line(f, (int(x - d[0]), int(y - d[1])), (int(x + d[0]), int(y + d[1])), col,
                             max(2, int(s / 6)), cv2.LINE_AA)
            p += vel
            for ax, D in ((0, W), (1, H)):  # bounce
                out = (p[:, ax] < 0) | (p[:, ax] > D)
                vel[out, ax] *= -1
                p[:, ax] = np.clip(p[:, ax], 0, D)
            dy, dx = offs[t]
            yield np.clip(f + bank[dy:dy + H, dx:dx + W], 0, 255).astype(np.uint8)

    return write_video(path, frames(), fps, crf=int(rng.integers(18, 29)))


# ----------------------------------------------------------------------------------- file sets
def broken_files(dir) -> dict[str, str]:
    """Write a few bad inputs into ``dir``; return {filename: expected status} (all ``failed``)."""
    d = Path(dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("this is not a video, just some text pretending to be one\n" * 4)
    from PIL import Image

    Image.fromarray(np.full((32, 48, 3), 127, np.uint8)).save(d / "png_named.mp4", format="PNG")
    tmp = d / ".truncated_src.mp4"
    faceless_clip(tmp, seed=1, size=(160, 120), seconds=1.0, fps=30)
    data = tmp.read_bytes()
    tmp.unlink()
    (d / "truncated.mp4").write_bytes(data[: int(len(data) * 0.3)])
    return {"empty.mp4": "failed", "text.mp4": "failed", "png_named.mp4": "failed", "truncated.mp4": "failed"}


_REAL_SOURCES = ("pristine", "astronaut", "distorted", "pristine", "distorted")
_FAKE_SOURCES = ("pristine", "astronaut", "distorted", "pristine")


def demo_archive(dir, *, n_real: int = 8, n_fake: int = 8, size: tuple[int, int] = (640, 360),
                 seconds: float = 4.0, fps: float = 30, seed: int = 0, faceless: bool = True,
                 broken: bool = True):
    """Write a labelled archive (flat CSV layout) into ``dir`` and return its table.

    Files: real_XXX.mp4 (sources cycle pristine/astronaut/distorted), fake_XXX.mp4 (sources x methods
    cycle), faceless_000.mp4 (REAL, expected status ``no_face``) and broken_000.mp4 (a truncated mp4,
    REAL, expected status ``failed``). Every clip has its own seed (fakes are not the reals' twins).
    ``labels.csv`` has columns ``file,label``; the returned DataFrame adds ``source, method, seed, status``
    (expected pipeline status).
    """
    import pandas as pd

    d = Path(dir)
    d.mkdir(parents=True, exist_ok=True)
    kw = dict(size=size, seconds=seconds, fps=fps)
    rows = []
    for i in range(n_real):
        s, src = seed * 1000 + i, _REAL_SOURCES[i % len(_REAL_SOURCES)]
        real_clip(d / f"real_{i:03d}.mp4", seed=s, source=src, **kw)
        rows.append((f"real_{i:03d}.mp4", "REAL", src, "", s, "ok"))
    for i in range(n_fake):
        s, src = seed * 1000 + 500 + i, _FAKE_SOURCES[i % len(_FAKE_SOURCES)]
        method = METHODS[i % len(METHODS)]
        fake_clip(d / f"fake_{i:03d}.mp4", seed=s, source=src, method=method, **kw)
        rows.append((f"fake_{i:03d}.mp4", "FAKE", src, method, s, "ok"))
    if faceless:
        faceless_clip(d / "faceless_000.mp4", seed=seed, **kw)
        rows.append(("faceless_000.mp4", "REAL", "faceless", "", seed, "no_face"))
    if broken:
        tmp = d / ".broken_src.mp4"
        real_clip(tmp, seed=seed * 1000 + 999, size=(320, 180), seconds=1.0, fps=fps)
        data = tmp.read_bytes()
        tmp.unlink()
        (d / "broken_000.mp4").write_bytes(data[: int(len(data) * 0.3)])
        rows.append(("broken_000.mp4", "REAL", "broken", "", seed, "failed"))
    df = pd.DataFrame(rows, columns=["file", "label", "source", "method", "seed", "status"])
    df[["file", "label"]].to_csv(d / "labels.csv", index=False)
    return df


def bench_archive(dir, *, n: int = 4, size: tuple[int, int] = (1280, 720), seconds: float = 10.0,
                  fps: float = 30, seed: int = 0) -> list[Path]:
    """Write ``n`` REAL H.264 clips (bench_XXX.mp4; pristine carphone / astronaut: a face in every frame)."""
    d = Path(dir)
    d.mkdir(parents=True, exist_ok=True)
    srcs = ("pristine", "astronaut")  # not "distorted": MTCNN misses its face in ~40% of frames
    return [real_clip(d / f"bench_{i:03d}.mp4", seed=seed * 1000 + i, source=srcs[i % len(srcs)], size=size,
                      seconds=seconds, fps=fps) for i in range(n)]
