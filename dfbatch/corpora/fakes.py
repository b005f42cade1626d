"""The face manipulations of FAKE clips (`Faker`), applied to each geometric frame of a `Plan` before photometry,
noise and codec, so a fake differs from its real twin only in the face.

Methods (recipes): ``swap`` (another identity: astronaut / LFW / carphone), ``blend`` (self-blend: the face
re-pasted shifted, resampled and colour-shifted), ``reenact`` (the same man from another time or mirrored; on a
still portrait a jaw "puppet" warp), ``drift`` (the face region itself re-pasted with no colour change, wandering a
few pixels from frame to frame: a temporal trace only) and ``retouch`` (the face region alone re-compressed,
blurred or downscaled, exactly aligned: a local quality trace only). Each leaves face-local traces only. Parameters
are drawn once per clip from a generator seeded by (seed, source, method), in a fixed order. ``donors`` restricts
the identities a swap may take its face from (identity-disjoint splits).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from dfbatch.corpora.assets import (CARPHONE_FPS, FLIP_ORDER, LFW_LANDMARKS, N_LFW, identity, lfw_faces, source_faces,
                                    source_frames)
from dfbatch.corpora.plan import Plan, pingpong, seeded_rng

METHODS = ("swap", "blend", "reenact", "drift", "retouch")


# ------------------------------------------------------------------------------------------------- geometry
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
        return str(seeded_rng(seed, source, "method").choice(METHODS))
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    return method


# ---------------------------------------------------------------------------------------------------- faker
class Faker:
    """Per-clip face manipulation, applied to each geometric frame (before photometry, noise and codec)."""

    def __init__(self, plan: Plan, method: str, donors: frozenset[str] | None = None):
        self.plan, self.method, self.donors = plan, method, donors
        rng = seeded_rng(plan.seed, plan.source, "fake", method)
        self.L = plan.landmarks()
        # the draws below happen in this order: changing it changes every fake
        self.mask_kind = str(rng.choice(["ellipse", "hull"]))
        self.mask_scale = rng.uniform(0.9, 1.08)
        self.feather = rng.uniform(0.05, 0.18)
        self.up_interp = int(rng.choice([cv2.INTER_LINEAR, cv2.INTER_CUBIC]))
        self.poisson = False
        self.opacity = 1.0
        self.donor = None  # callable t -> (image, landmarks) in donor coords; None: the frame itself
        self.gray = False
        self.region_jpeg = None  # JPEG quality of the pasted face (retouch)
        self.donor_id = identity(plan.source)
        {"swap": self._swap, "blend": self._blend, "reenact": self._reenact, "drift": self._drift,
         "retouch": self._retouch}[method](rng)
        self.jit = rng.normal(0, self.jitter, (plan.n, 3))  # per-frame scale / shift-x / shift-y flicker
        if method == "drift":  # plus a smooth wander of the region (eye distances), on top of the flicker
            walk = np.cumsum(rng.normal(0, 1, (plan.n, 3)), axis=0)
            walk -= walk.mean(0)
            walk *= self.wander / max(1e-9, float(np.abs(walk).max()))
            self.jit = self.jit + walk * [0.3, 1, 1]

    # -- drawing the parameters
    def _misalignment(self, rng, scale, rotation, shift, jitter) -> None:
        """Constant donor misalignment (relative scale, rotation in degrees, shift in eye distances) and the
        per-frame flicker's sigma, each drawn uniformly from its range."""
        ms, mr, msh, self.jitter = rng.uniform(*scale), rng.uniform(*rotation), rng.uniform(*shift, 2), rng.uniform(*jitter)
        self.misalign = (1 + ms, np.deg2rad(mr), np.asarray(msh))

    def _swap(self, rng) -> None:
        """Another identity: an LFW face (grey), the astronaut, or the carphone man talking onto the still astronaut."""
        plan = self.plan
        self.alpha = rng.uniform(0.55, 0.9)
        self.offset = rng.uniform(-12, 12, 3)
        self.gain = rng.uniform(0.9, 1.1)
        self.work_ed = rng.uniform(16, 40)
        self.blur = rng.uniform(0, 1.2)
        self.poisson = bool(rng.random() < 0.3)
        self._misalignment(rng, (-0.04, 0.06), (-3, 3), (-0.04, 0.04), (0.005, 0.02))
        if self.donors is None:
            kind = str(rng.choice(["carphone", "lfw"] if plan.still else ["astronaut", "lfw", "lfw"]))
            lfw = int(rng.integers(0, 100)) if kind == "lfw" else None
        else:
            kind, lfw = self._allowed_donor(rng)
        self.donor_kind = kind
        self.donor_id = kind if kind != "lfw" else f"lfw{lfw:03d}"
        if kind == "lfw":
            face = lfw_faces()[lfw]
            self.donor = lambda t, face=face: (face, LFW_LANDMARKS)
            self.gray, self.alpha = True, 1.0
        elif kind == "astronaut":
            img, lm = source_frames("astronaut")[0], source_faces("astronaut")[1][0]
            self.donor = lambda t: (img, lm)
        else:  # carphone man talking onto the still astronaut
            frames, lms = source_frames("pristine"), source_faces("pristine")[1]
            idx = pingpong(rng.uniform(0, 238) + (CARPHONE_FPS / plan.fps) * np.arange(plan.n), len(frames))
            self.donor = lambda t: (frames[idx[t]], lms[idx[t]])

    def _allowed_donor(self, rng) -> tuple[str, int | None]:
        """(donor kind, LFW index) drawn from ``self.donors`` other than the target's own identity."""
        me = identity(self.plan.source)
        kinds = [k for k in ("carphone", "astronaut") if k in self.donors and k != me]
        pool = [i for i in range(N_LFW) if f"lfw{i:03d}" in self.donors and f"lfw{i:03d}" != me]
        options = kinds + (["lfw"] * 2 if pool else [])
        if not options:
            raise ValueError(f"no swap donor among {sorted(self.donors)} for {self.plan.source}")
        kind = str(rng.choice(options))
        return kind, (int(rng.choice(pool)) if kind == "lfw" else None)

    def _drift(self, rng) -> None:
        """The face region re-pasted onto itself, no colour change, barely resampled, wandering a few pixels."""
        self.donor_kind = "self"
        self.alpha = 0.0
        self.offset = np.zeros(3)
        self.gain = 1.0
        self.work_ed = rng.uniform(30, 60)
        self.blur = rng.uniform(0.0, 0.5)
        self.wander = rng.uniform(0.06, 0.14)
        self._misalignment(rng, (-0.01, 0.01), (-1, 1), (-0.01, 0.01), (0.01, 0.03))

    def _retouch(self, rng) -> None:
        """The face region alone degraded (JPEG, blur or downscale), exactly in place."""
        self.donor_kind = "self"
        self.alpha = 0.0
        self.offset = np.zeros(3)
        self.gain = 1.0
        kind = str(rng.choice(["jpeg", "blur", "downscale"]))
        self.work_ed = rng.uniform(5, 10) if kind == "downscale" else 1e6
        self.blur = rng.uniform(1.0, 2.2) if kind == "blur" else 0.0
        self.region_jpeg = int(rng.integers(5, 25)) if kind == "jpeg" else None
        self._misalignment(rng, (0, 0), (0, 0), (0, 0), (0, 0))

    def _blend(self, rng) -> None:
        """Self-blend: the same face re-pasted, shifted, resampled, recoloured."""
        self.donor_kind = "self"
        self.alpha = 0.0
        off = rng.normal(size=3)
        self.offset = off / np.linalg.norm(off) * rng.uniform(10, 20)
        self.gain = rng.uniform(0.88, 1.12)
        self.work_ed = rng.uniform(14, 34)
        self.blur = rng.uniform(0.3, 1.5)
        self.opacity = rng.uniform(0.85, 1.0)
        self._misalignment(rng, (0.01, 0.06), (-2, 2), (-0.04, 0.04), (0.003, 0.012))

    def _reenact(self, rng) -> None:
        """The same person driven otherwise: the jaw of the still portrait, or the carphone man from another
        moment or mirrored."""
        self.alpha = rng.uniform(0.6, 0.95)
        self.offset = rng.uniform(-8, 8, 3)
        self.gain = rng.uniform(0.93, 1.07)
        self.work_ed = rng.uniform(18, 45)
        self.blur = rng.uniform(0, 0.8)
        self._misalignment(rng, (-0.03, 0.04), (-2, 2), (-0.03, 0.03), (0.004, 0.015))
        if self.plan.still:
            self._puppet_jaw(rng)
        else:
            self._same_man(rng)

    def _puppet_jaw(self, rng) -> None:
        """The jaw of the still portrait opens and closes (``jaw[t]``: fraction of the eye-mouth distance)."""
        plan = self.plan
        self.donor_kind = "puppet"
        self.alpha = 0.0
        rate = rng.uniform(2.0, 4.0)
        ph = 2 * np.pi * rate * np.arange(plan.n) / plan.fps + rng.uniform(0, 2 * np.pi)
        ph += np.cumsum(rng.normal(0, 0.15, plan.n))
        self.jaw = rng.uniform(0.12, 0.25) * (0.5 - 0.5 * np.cos(ph))

    def _same_man(self, rng) -> None:
        """The donor is the carphone man himself: the same moment mirrored, or another moment."""
        plan = self.plan
        frames = source_frames(plan.source)
        lms = source_faces(plan.source)[1]
        N = len(frames)
        if rng.random() < 0.3:  # the same moment, mirrored
            self.donor_kind = "mirror"
            w = frames.shape[2]

            def donor(t):
                i = plan.src_idx[t]
                lm = lms[i].copy()
                lm[:, 0] = w - 1 - lm[:, 0]
                return frames[i][:, ::-1], lm[FLIP_ORDER]
        else:  # another moment of the same man
            self.donor_kind = "other_time"
            lag = int(rng.integers(25, 95))

            def donor(t):
                i = int(pingpong(np.array([plan.src_idx[t] + lag]), N)[0])
                return frames[i], lms[i]
        self.donor = donor

    # -- rendering
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

    def _donor_face(self, t: int, frame: np.ndarray, box: tuple[int, int, int, int], L, c, ed, em) -> np.ndarray:
        """The donor's face warped onto the region ``box`` (x0, y0, w, h): landmark alignment, then the constant
        misalignment + this frame's flicker, resampled through a ``work_ed``-sized copy and blurred (float32 RGB)."""
        x0, y0, w, h = box
        s, th, sh = self.misalign
        j = self.jit[t]
        J = _about(c, s * (1 + j[0]), th, (sh + j[1:]) * ed)
        if self.donor_kind == "puppet":
            donor = frame.copy()
            donor[y0:y0 + h, x0:x0 + w] = self._puppet(t, frame[y0:y0 + h, x0:x0 + w], x0, y0, L, ed, em)
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
        return face

    def _recolour(self, face: np.ndarray, tgt: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Colour: partial transfer to the target's statistics inside the mask, then a mismatch."""
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
        return (face - mt) * self.gain + mt + self.offset

    @staticmethod
    def _poisson(face: np.ndarray, region: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Poisson blend of the face into the region, solved at <=160 px (the donor has no finer detail anyway)."""
        h, w = region.shape[:2]
        q = min(1.0, 160 / max(w, h))
        sz = (max(8, int(round(w * q))), max(8, int(round(h * q))))
        m8 = (cv2.resize(mask, sz, interpolation=cv2.INTER_AREA) > 0.3).astype(np.uint8) * 255
        m8[:2], m8[-2:], m8[:, :2], m8[:, -2:] = 0, 0, 0, 0
        if not m8.any():
            return face
        fs = cv2.resize(np.clip(face, 0, 255).astype(np.uint8), sz, interpolation=cv2.INTER_AREA)
        ds = cv2.resize(region, sz, interpolation=cv2.INTER_AREA)
        bx, by, bw, bh = cv2.boundingRect(m8)
        cloned = cv2.seamlessClone(fs[by:by + bh, bx:bx + bw], ds, m8[by:by + bh, bx:bx + bw],
                                   (bx + bw // 2, by + bh // 2), cv2.NORMAL_CLONE)
        return cv2.resize(cloned, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)

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
        face = self._donor_face(t, frame, (x0, y0, w, h), L, c, ed, em)
        tgt = region.astype(np.float32)
        face = self._recolour(face, tgt, mask)
        if self.region_jpeg is not None:
            ok, buf = cv2.imencode(".jpg", np.clip(face + 0.5, 0, 255).astype(np.uint8),
                                   [cv2.IMWRITE_JPEG_QUALITY, self.region_jpeg])
            face = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED).astype(np.float32)
        if self.poisson:
            face = self._poisson(face, region, mask)
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


__all__ = ["METHODS", "Faker", "resolve_method"]
