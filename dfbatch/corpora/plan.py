"""The "camera plan" of a generated clip: everything about it except the face manipulation, drawn from one seeded
generator in a fixed order (so a clip is a pure function of its arguments), and its rendering.

`Plan(seed, source, size, seconds, fps)`: which source frame each output frame shows (`_playback`), the
source->output affine of every frame (`_camera`: layout, flip, zoom, tilt, framing, drift, hand-held jitter), the
per-frame colour LUTs (`_photometry`: gamma, contrast, white balance, exposure drift) and the sensor noise and
H.264 CRF (`_sensor`). Real and fake clips with the same arguments share it, so they differ only in the face.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from dfbatch.corpora.assets import CARPHONE_FPS, FLIP_ORDER, PORTRAITS, SOURCES, is_still, source_faces, source_frames
from dfbatch.corpora.video import write_video


# -------------------------------------------------------------------------------------------------- helpers
def seeded_rng(*keys) -> np.random.Generator:
    """A generator seeded by ints and strings (strings by CRC32): the same keys, the same stream."""
    return np.random.default_rng([int(k) % (1 << 64) if isinstance(k, (int, np.integer))
                                  else zlib.crc32(str(k).encode()) for k in keys])


def frame_count(seconds: float, fps: float) -> int:
    return max(1, int(round(seconds * fps)))


def pingpong(pos: np.ndarray, n: int) -> np.ndarray:
    """Positions in a sequence of n frames played forwards and backwards in turn."""
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


# ----------------------------------------------------------------------------------------------------- plan
class Plan:
    """Everything about a clip except the face manipulation: source frame per output frame, source->output
    affine per frame, layout, interpolation, per-frame LUTs, noise and CRF. Shared by real and fake."""

    def __init__(self, seed: int, source: str, size: tuple[int, int], seconds: float, fps: float):
        if source not in SOURCES and source not in PORTRAITS:
            raise ValueError(f"unknown source {source!r}; expected one of {SOURCES} or lfw000..lfw099")
        W, H = int(size[0]), int(size[1])
        if W < 16 or H < 16:
            raise ValueError(f"size too small: {size}")
        rng = seeded_rng(seed, source, "plan")
        self.seed, self.source, self.size, self.fps = seed, source, (W, H), fps
        self.n = frame_count(seconds, fps)
        self.still = is_still(source)
        # the draws below happen in this order: changing it changes every clip
        self.src_idx = self._playback(rng)
        self._camera(rng)
        self.luts = self._photometry(rng)
        self._sensor(rng)

    # -- drawing the plan
    def _playback(self, rng) -> np.ndarray:
        """Source frame per output frame: an offset + direction, ping-pong to reach the duration (carphone);
        frame 0 of a still image."""
        if self.still:
            return np.zeros(self.n, int)
        N = len(source_frames(self.source))
        start = rng.uniform(0, 2 * (N - 1))
        direction = 1 if rng.random() < 0.7 else -1
        return pingpong(start + direction * (CARPHONE_FPS / self.fps) * np.arange(self.n), N)

    def _motion(self, rng) -> tuple[float, float, float, float, float]:
        """(zoom at start, at end, tilt at start, at end, drift amplitude as a fraction of the frame)."""
        if self.still:  # "Ken Burns": a slow pan/zoom over the portrait
            z0, z1 = rng.uniform(1.0, 1.7, size=2)
            th0, th1 = np.deg2rad(rng.uniform(-2.5, 2.5, size=2))
            return z0, z1, th0, th1, 0.12
        z0 = rng.uniform(1.0, 1.3) if self.layout == "cover" else rng.uniform(0.92, 1.0)
        z1 = z0 * rng.uniform(0.97, 1.04)
        th0 = th1 = np.deg2rad(np.clip(rng.normal(0, 1.2), -3, 3))
        return z0, z1, th0, th1, 0.03

    def _face_extent(self, sw: int) -> tuple[np.ndarray, np.ndarray]:
        """(centre, half size) of the union of the face boxes the clip shows, in (flipped) source coords."""
        used = source_faces(self.source)[0][np.unique(self.src_idx)]
        ub = np.array([used[:, 0].min(), used[:, 1].min(), used[:, 2].max(), used[:, 3].max()])
        fc = (ub[:2] + ub[2:]) / 2
        if self.flip:
            fc = np.array([sw - 1 - fc[0], fc[1]])
        return fc, (ub[2:] - ub[:2]) / 2

    def _centre_range(self, s: float, fc: np.ndarray, half: np.ndarray, m: float, src_size: tuple[int, int]) -> np.ndarray:
        """Per axis, the (lo, hi) output position of the face centre at scale ``s`` that keeps the source covering
        the frame (or centred, letter/pillarbox) and the face ``m`` px inside it."""
        lo_hi = []
        for ax, (D, sd) in enumerate(zip(self.size, src_size)):
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

    def _camera(self, rng) -> None:
        """Layout, flip, interpolation and the source->output affine `M` of every frame (zoom, tilt, framing,
        drift, jitter); `M_bg` for the blurred background of ``fit_blur``."""
        W, H = self.size
        sh, sw = source_frames(self.source).shape[1:3]
        self.flip = bool(rng.random() < 0.5)
        self.layout = "cover" if self.still else str(rng.choice(["cover"] * 5 + ["fit_black", "fit_blur"]))
        self.interp = int(rng.choice([cv2.INTER_LINEAR, cv2.INTER_CUBIC]))
        z0, z1, th0, th1, drift_amp = self._motion(rng)
        fc, half = self._face_extent(sw)
        base = max(W / sw, H / sh) if self.layout == "cover" else min(W / sw, H / sh)
        m = 0.04 * min(W, H)
        s_max = min((W - 2 * m) / (2 * half[0]), (H - 2 * m) / (2 * half[1]))
        s0, s1 = min(base * z0, s_max), min(base * z1, s_max)
        r0 = self._centre_range(s0, fc, half, m, (sw, sh))
        c0 = rng.uniform(r0[:, 0], r0[:, 1])
        r1 = self._centre_range(s1, fc, half, m, (sw, sh))
        c1 = np.clip(c0 + rng.uniform(-1, 1, 2) * drift_amp * min(W, H), r1[:, 0], r1[:, 1])
        u = np.linspace(0.0, 1.0, self.n)[:, None]
        jit = _smooth_walk(rng, self.n, 2, rng.uniform(0, 0.006) * min(W, H) * (self.layout == "cover"))
        F = np.array([[-1.0, 0, sw - 1], [0, 1, 0], [0, 0, 1]]) if self.flip else np.eye(3)
        self.M = self._affines(c0 + (c1 - c0) * u + jit, s0 + (s1 - s0) * u[:, 0], th0 + (th1 - th0) * u[:, 0], fc, F)
        if self.layout == "fit_blur":  # blurred, darkened cover copy behind the pillar/letterbox
            sb = max(W / sw, H / sh) * 1.15
            self.M_bg = np.array([[sb, 0, (W - sb * sw) / 2], [0, sb, (H - sb * sh) / 2]]) @ F

    @staticmethod
    def _affines(centres: np.ndarray, scales: np.ndarray, thetas: np.ndarray, fc: np.ndarray, F: np.ndarray) -> np.ndarray:
        """(n,2,3) source->output affines: flip ``F``, then rotate/scale about the face centre onto ``centres``."""
        M = np.zeros((len(scales), 2, 3))
        for t in range(len(scales)):
            cs, sn = math.cos(thetas[t]), math.sin(thetas[t])
            A = scales[t] * np.array([[cs, -sn], [sn, cs]])
            T = centres[t] - A @ fc
            M[t] = (np.hstack([A, T[:, None]]) @ F)
        return M

    def _photometry(self, rng) -> np.ndarray:
        """(n,1,256,3) per-frame LUTs: gamma, contrast, white balance, brightness + a slow exposure drift."""
        gamma = math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
        contrast = rng.uniform(0.85, 1.15)
        gains = rng.uniform(0.92, 1.08, 3)
        bright = rng.uniform(-16, 16)
        expo = rng.uniform(0, 6) * np.sin(2 * np.pi * rng.uniform(0.1, 0.6) * np.arange(self.n) / self.fps
                                          + rng.uniform(0, 2 * np.pi))
        v = np.arange(256) / 255.0
        y = ((v ** gamma - 0.5) * contrast + 0.5)[None, :, None] * gains[None, None, :] * 255
        luts = y + bright + expo[:, None, None]
        return np.clip(np.round(luts), 0, 255).astype(np.uint8)[:, None]

    def _sensor(self, rng) -> None:
        """Sensor noise (a bank + per-frame offsets) and codec quality."""
        self.noise_sigma = 0.0 if rng.random() < 0.25 else rng.uniform(1.0, 4.0)
        self.noise_mono = bool(rng.random() < 0.5)
        self.noise_offsets = rng.integers(0, 17, size=(self.n, 2))
        self.crf = int(rng.integers(18, 29))

    # -- geometry of the face in output frames
    def landmarks(self) -> np.ndarray:
        """(n,5,2) face landmarks in output coords (image-left eye first)."""
        _, lms = source_faces(self.source)
        out = np.stack([_affine_apply(self.M[t], lms[i]) for t, i in enumerate(self.src_idx)])
        return out[:, FLIP_ORDER] if self.flip else out

    def boxes(self) -> np.ndarray:
        """(n,4) face boxes x1,y1,x2,y2 in output coords (MTCNN's box through the camera transform)."""
        boxes, _ = source_faces(self.source)
        return np.stack([_box_of(self.M[t], boxes[i]) for t, i in enumerate(self.src_idx)])

    # -- rendering
    def geometric(self, t: int) -> np.ndarray:
        W, H = self.size
        src = source_frames(self.source)[self.src_idx[t]]
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
            nr = seeded_rng(self.seed, self.source, "noise")
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


__all__ = ["Plan", "frame_count", "pingpong", "seeded_rng"]
