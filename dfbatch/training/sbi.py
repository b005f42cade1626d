"""Self-blended images (SBI; Shiohara & Yamasaki, "Detecting Deepfakes with Self-Blended Images", CVPR 2022),
for face-crop *sequences*.

A REAL face crop is blended with a slightly altered copy of itself. The result carries the generic traces of a
face swap — a blending boundary, a colour / sharpness mismatch between the inner face and its surroundings, a
small misalignment of the pasted face — without any identity change, so a detector trained on it learns those
traces rather than the fingerprints of one generator.

Pipeline (per sequence; every random parameter is drawn ONCE and applied to all T frames, so the blend is
temporally consistent — a mask or colour cast that flickered would be an artefact real swaps do not show):

1. source/target: one of the two copies (source by default, the target with probability ``swap_prob`` as in the
   paper) gets a colour transform (RGB shift, hue/saturation/value, brightness/contrast) and a frequency
   transform (downscale-blur, Gaussian blur or sharpen; then optional JPEG at some quality);
2. the source is warped: scaled, shifted, slightly rotated (affine, border reflected);
3. mask: the face region comes from the crop geometry — `faces.square_crop` centres the detected box and adds
   ``margin`` of its size per side, so the box fills ``1/(1+2*margin)`` of the crop. Its shape is one of
   ``mask_kinds``: ``ellipse`` (an ellipse inside that box, jittered centre, axes and radius, sampled at points
   whose convex hull is filled), ``landmarks`` (the hull of MTCNN's five landmarks where they sit in an MTCNN box
   on average — eyes, nose, mouth corners — pushed out to brows and chin, each point jittered: the shards keep no
   per-frame landmarks) or ``box`` (a jittered rectangle, rounded); moved with the source's affine, deformed by a
   smooth random displacement field, eroded+blurred (SBI's two-stage blur) and scaled by a blend ratio drawn from
   ``blend_ratios``;
4. blend (one of ``blend_kinds``): ``alpha`` ``fake = mask * source + (1 - mask) * target``; ``feather`` the same
   through a mask blurred further (a wide, soft seam); ``poisson`` the source first cloned into the target in the
   gradient domain (OpenCV's seamless clone: colours meet at the seam), then alpha-blended; per frame, rounded;
5. local degradation (probability ``p_local``): the blended region alone re-compressed (JPEG), blurred or downscaled
   — the quality mismatch of a pasted face;
6. temporal inconsistency (probability ``p_temporal``): instead of one warp, colour and blend ratio for all frames,
   the source and its mask wander a few pixels along a smooth random walk, and its colour and blend ratio flicker
   from frame to frame — what a frame-by-frame face swap shows over time and a still image cannot. Real sequences
   keep augmentations that are constant over time (`training.augment`).

Without 5 and 6, where the mask is 0 the fake equals the target exactly (the untouched real when the source was
transformed). ``SBIConfig.classic()`` is the original recipe (ellipse, alpha, neither 5 nor 6).
`SBIResult.real` is the target actually used (transformed when swapped): the paper trains on the (real, fake)
pair; a trainer may use it or the original.

Plain numpy/OpenCV, seeded `np.random.Generator`; every choice is drawn in `sample` (the temporal walk from a seed
drawn there), so applying the same parameters again reproduces the fake.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from dfbatch.training.augment import adjust_color, as_rng, downscale, gaussian_blur, jpeg, rgb_shift, sharpen

__all__ = ["SBIConfig", "SBIParams", "SBIResult", "SelfBlender", "self_blend"]


@dataclass
class SBIConfig:
    margin: float = 0.25  # FaceConfig.margin used to cut the crops: the face box fills 1/(1+2m) of the crop
    # mask geometry (fractions of the face box / crop)
    axis_x: tuple[float, float] = (0.72, 0.95)  # ellipse half-width / (box side / 2)
    axis_y: tuple[float, float] = (0.88, 1.08)  # ellipse half-height / (box side / 2)
    center_jitter: float = 0.03  # ± fraction of the crop side
    center_dy: float = 0.03  # ellipse centre slightly below the box centre (boxes include the forehead)
    hull_points: int = 20
    radial_jitter: float = 0.07  # relative sd of each hull point's radius
    deform_alpha: tuple[float, float] = (0.0, 0.04)  # displacement field amplitude, fraction of the crop side
    deform_grid: int = 5  # control points per side of the displacement field
    erode_kernel: tuple[float, float] = (0.08, 0.12)  # first blur (then <1 -> 0), fraction of the crop side
    blur_kernel: tuple[float, float] = (0.03, 0.07)  # final blur, fraction of the crop side
    blend_ratios: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)
    # source/target transforms
    swap_prob: float = 0.5  # transform the target instead of the source (paper: 0.5)
    rgb_shift: float = 20.0  # ± per channel
    hue: float = 10.0  # ± degrees
    saturation: float = 0.3
    value: float = 0.3
    brightness: float = 0.1
    contrast: float = 0.1
    freq_choices: tuple[str, ...] = ("downscale", "blur", "sharpen")
    downscale: tuple[float, float] = (0.3, 0.6)  # paper: 0.25-0.5 at 380 px; crops here are smaller
    blur_sigma: tuple[float, float] = (0.6, 1.6)
    sharpen_amount: tuple[float, float] = (0.3, 1.0)
    p_jpeg: float = 0.3
    jpeg_quality: tuple[int, int] = (40, 95)
    # warp of the source
    scale: tuple[float, float] = (0.95, 1 / 0.95)
    shift_x: float = 0.03  # ± fraction of the crop side
    shift_y: float = 0.015
    rotate: float = 2.0  # ± degrees
    # the widened recipe (a choice is drawn only when there is more than one)
    mask_kinds: tuple[str, ...] = ("ellipse", "landmarks", "box")
    blend_kinds: tuple[str, ...] = ("alpha", "feather", "poisson")
    feather: tuple[float, float] = (0.04, 0.09)  # extra mask blur of `feather`, fraction of the crop side
    landmark_jitter: float = 0.04  # sd of each landmark hull point, fraction of the box side
    p_local: float = 0.3
    local_kinds: tuple[str, ...] = ("jpeg", "blur", "downscale")
    local_jpeg: tuple[int, int] = (10, 40)
    local_blur: tuple[float, float] = (0.8, 2.0)
    local_downscale: tuple[float, float] = (0.25, 0.5)
    p_temporal: float = 0.3
    temporal_shift: tuple[float, float] = (0.01, 0.03)  # walk amplitude, fraction of the crop side
    temporal_color: tuple[float, float] = (2.0, 8.0)  # per-frame colour flicker sd, 0..255 units
    temporal_ratio: float = 0.15  # ± per-frame change of the blend ratio

    @classmethod
    def classic(cls, **changes) -> "SBIConfig":
        """The original SBI recipe: ellipse masks, alpha blending, no local degradation, no temporal variation."""
        return cls(**{"mask_kinds": ("ellipse",), "blend_kinds": ("alpha",), "p_local": 0.0, "p_temporal": 0.0,
                      **changes})


@dataclass
class SBIParams:
    """Everything drawn for one sequence (the mask included), so applying it again reproduces the fake."""

    size: tuple[int, int]
    swapped: bool
    color: dict
    shift_rgb: tuple[float, float, float]
    freq: str
    freq_value: float
    jpeg_quality: int | None
    affine: np.ndarray  # (2, 3) applied to the source (and the mask)
    mask: np.ndarray  # (H, W) float32 in [0, 1], already times blend_ratio
    blend_ratio: float
    mask_kind: str = "ellipse"
    blend: str = "alpha"
    local: tuple[str, float] | None = None  # (jpeg | blur | downscale, quality / sigma / scale)
    temporal: dict | None = None  # {"seed", "shift", "color", "ratio"}: the per-frame walk's seed and sizes
    extra: dict = field(default_factory=dict)

    def describe(self) -> dict:
        """JSON-able summary (no mask)."""
        return dict(swapped=self.swapped, color=self.color, shift_rgb=list(self.shift_rgb), freq=self.freq,
                    freq_value=self.freq_value, jpeg_quality=self.jpeg_quality, affine=self.affine.tolist(),
                    blend_ratio=self.blend_ratio, mask_mean=float(self.mask.mean()), mask_kind=self.mask_kind,
                    blend=self.blend, local=list(self.local) if self.local else None, temporal=self.temporal)


@dataclass
class SBIResult:
    fake: np.ndarray  # uint8 (T, H, W, 3)
    real: np.ndarray  # the target used (the input, or its transformed copy when params.swapped)
    mask: np.ndarray  # float32 (H, W)
    params: SBIParams


def _choose(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    """One of `options`; no draw when there is only one (the classic recipe keeps its random stream)."""
    return str(options[0]) if len(options) == 1 else str(options[rng.integers(len(options))])


def _renormalise(mask: np.ndarray) -> np.ndarray:
    peak = float(mask.max())
    out = np.clip(mask / peak, 0, 1) if peak > 0 else mask
    out[out < 1e-3] = 0.0
    return out


def _odd(x: float) -> int:
    k = max(1, int(round(x)))
    return k if k % 2 else k + 1


class SelfBlender:
    def __init__(self, cfg: SBIConfig | None = None):
        self.cfg = cfg or SBIConfig()

    # ------------------------------------------------------------------------------------------------ sampling
    def sample(self, size: int | tuple[int, int], rng: np.random.Generator | int | None = None) -> SBIParams:
        """Draw one sequence's parameters for crops of ``size`` (S or (H, W))."""
        c, rng = self.cfg, as_rng(rng)
        h, w = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
        swapped = bool(rng.random() < c.swap_prob)
        color = dict(hue=float(rng.uniform(-c.hue, c.hue)),
                     saturation=float(rng.uniform(1 - c.saturation, 1 + c.saturation)),
                     value=float(rng.uniform(1 - c.value, 1 + c.value)),
                     brightness=float(rng.uniform(-c.brightness, c.brightness)),
                     contrast=float(rng.uniform(1 - c.contrast, 1 + c.contrast)))
        shift_rgb = tuple(float(v) for v in rng.uniform(-c.rgb_shift, c.rgb_shift, size=3))
        freq = str(c.freq_choices[rng.integers(len(c.freq_choices))]) if c.freq_choices else "none"
        freq_value = {"downscale": lambda: rng.uniform(*c.downscale), "blur": lambda: rng.uniform(*c.blur_sigma),
                      "sharpen": lambda: rng.uniform(*c.sharpen_amount)}.get(freq, lambda: 0.0)()
        jpeg_quality = int(rng.integers(c.jpeg_quality[0], c.jpeg_quality[1] + 1)) if rng.random() < c.p_jpeg else None

        scale = rng.uniform(*c.scale)
        angle = rng.uniform(-c.rotate, c.rotate)
        tx, ty = rng.uniform(-c.shift_x, c.shift_x) * w, rng.uniform(-c.shift_y, c.shift_y) * h
        affine = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, scale)
        affine[:, 2] += (tx, ty)

        blend_ratio = float(c.blend_ratios[rng.integers(len(c.blend_ratios))])
        mask_kind = _choose(rng, c.mask_kinds)
        mask = self._mask(h, w, affine, rng, mask_kind)
        blend = _choose(rng, c.blend_kinds)
        if blend == "feather":
            mask = _renormalise(cv2.GaussianBlur(mask, (0, 0), max(0.5, rng.uniform(*c.feather) * min(h, w))))
        local = temporal = None
        if c.p_local > 0 and rng.random() < c.p_local:
            kind = _choose(rng, c.local_kinds)
            local = (kind, float(rng.integers(c.local_jpeg[0], c.local_jpeg[1] + 1)) if kind == "jpeg" else
                     float(rng.uniform(*(c.local_blur if kind == "blur" else c.local_downscale))))
        if c.p_temporal > 0 and rng.random() < c.p_temporal:
            temporal = {"seed": int(rng.integers(2**62)), "shift": float(rng.uniform(*c.temporal_shift) * min(h, w)),
                        "color": float(rng.uniform(*c.temporal_color)), "ratio": float(c.temporal_ratio)}
        return SBIParams(size=(h, w), swapped=swapped, color=color, shift_rgb=shift_rgb, freq=freq,
                         freq_value=float(freq_value), jpeg_quality=jpeg_quality, affine=affine.astype(np.float32),
                         mask=(mask * blend_ratio).astype(np.float32), blend_ratio=blend_ratio, mask_kind=mask_kind,
                         blend=blend, local=local, temporal=temporal)

    def _outline(self, h: int, w: int, rng: np.random.Generator, kind: str) -> np.ndarray:
        """The mask's outline points (n, 2) in crop pixels, before the warp (see the module doc)."""
        c = self.cfg
        side = float(min(h, w))
        box = side / (1.0 + 2.0 * c.margin)
        cx = w / 2.0 + rng.uniform(-c.center_jitter, c.center_jitter) * side
        cy = h / 2.0 + (c.center_dy + rng.uniform(-c.center_jitter, c.center_jitter)) * side
        if kind == "landmarks":
            # MTCNN's five landmarks where they sit in its box on average (fractions of the box, from its centre)
            lm = np.array([[-0.19, -0.12], [0.19, -0.12], [0.0, 0.06], [-0.15, 0.26], [0.15, 0.26]])
            le, re, nose, ml, mr = (np.array([cx, cy]) + p * box for p in lm)
            ed, em = float(re[0] - le[0]), float((ml[1] + mr[1]) / 2 - le[1])
            pts = np.array([le + [-0.45 * ed, -0.55 * em], re + [0.45 * ed, -0.55 * em], le + [-0.6 * ed, 0.1 * em],
                            re + [0.6 * ed, 0.1 * em], ml + [-0.25 * ed, 0.25 * em], mr + [0.25 * ed, 0.25 * em],
                            (ml + mr) / 2 + [0, 0.6 * em], nose + [0, -0.2 * em]])
            return pts + rng.normal(0, c.landmark_jitter * box, pts.shape)
        if kind == "box":
            hw, hh = box / 2 * rng.uniform(*c.axis_x), box / 2 * rng.uniform(*c.axis_y)
            r = min(hw, hh) * rng.uniform(0.2, 0.5)  # rounded corners
            th = np.linspace(0, np.pi / 2, 5)
            corners = [(cx + hw - r, cy + hh - r, 0), (cx - hw + r, cy + hh - r, np.pi / 2),
                       (cx - hw + r, cy - hh + r, np.pi), (cx + hw - r, cy - hh + r, 1.5 * np.pi)]
            return np.concatenate([np.stack([x + r * np.cos(th + a), y + r * np.sin(th + a)], 1) for x, y, a in corners])
        ax = box / 2.0 * rng.uniform(*c.axis_x)
        ay = box / 2.0 * rng.uniform(*c.axis_y)
        n = c.hull_points
        theta = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * (2 * np.pi / n)
        radius = np.clip(1.0 + rng.normal(0.0, c.radial_jitter, n), 0.7, 1.3)
        return np.stack([cx + ax * radius * np.cos(theta), cy + ay * radius * np.sin(theta)], 1)

    def _mask(self, h: int, w: int, affine: np.ndarray, rng: np.random.Generator, kind: str = "ellipse") -> np.ndarray:
        c = self.cfg
        side = float(min(h, w))
        pts = self._outline(h, w, rng, kind)
        hull = cv2.convexHull(np.round(pts * 16).astype(np.int32))
        mask = np.zeros((h, w), np.uint8)
        cv2.fillConvexPoly(mask, hull, 255, lineType=cv2.LINE_AA, shift=4)
        mask = mask.astype(np.float32) / 255.0
        # follow the source's warp, then a smooth random deformation
        mask = cv2.warpAffine(mask, affine, (w, h), flags=cv2.INTER_LINEAR, borderValue=0.0)
        alpha = rng.uniform(*c.deform_alpha) * side
        if alpha > 0:
            g = max(2, c.deform_grid)
            dx = cv2.resize(rng.uniform(-1, 1, (g, g)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
            dy = cv2.resize(rng.uniform(-1, 1, (g, g)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
            xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
            mask = cv2.remap(mask, xs + alpha * dx, ys + alpha * dy, cv2.INTER_LINEAR, borderValue=0.0)
        # SBI's blend mask: blur, keep only the fully-inside core (an erosion with a soft edge), blur again
        k1 = _odd(rng.uniform(*c.erode_kernel) * side)
        blurred = cv2.GaussianBlur(mask, (k1, k1), 0)
        core = np.where(blurred >= 0.999, blurred, 0.0).astype(np.float32)
        if core.max() <= 0:  # tiny crops: skip the erosion rather than lose the mask
            core = mask
        k2 = _odd(rng.uniform(*c.blur_kernel) * side)
        out = cv2.GaussianBlur(core, (k2, k2), 0)
        peak = float(out.max())
        out = out / peak if peak > 0 else out
        out[out < 1e-3] = 0.0
        return np.clip(out, 0.0, 1.0)

    # -------------------------------------------------------------------------------------------------- applying
    def _transform(self, img: np.ndarray, p: SBIParams) -> np.ndarray:
        img = rgb_shift(img, p.shift_rgb)
        img = adjust_color(img, **p.color)
        if p.freq == "downscale":
            img = downscale(img, p.freq_value)
        elif p.freq == "blur":
            img = gaussian_blur(img, p.freq_value)
        elif p.freq == "sharpen":
            img = sharpen(img, p.freq_value)
        if p.jpeg_quality is not None:
            img = jpeg(img, p.jpeg_quality)
        return img

    @staticmethod
    def _walk(p: SBIParams, T: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-frame (shift (T, 2) px, colour offset (T, 3), blend-ratio factor (T,)); constant without `temporal`."""
        if not p.temporal:
            return np.zeros((T, 2)), np.zeros((T, 3)), np.ones(T)
        tp = p.temporal
        rng = np.random.default_rng(tp["seed"])
        walk = np.cumsum(rng.normal(0, 1, (T, 2)), axis=0)
        walk -= walk.mean(0)
        walk *= tp["shift"] / max(1e-9, float(np.abs(walk).max()))
        return walk, rng.normal(0, tp["color"], (T, 3)), 1.0 + rng.uniform(-tp["ratio"], tp["ratio"], T)

    @staticmethod
    def _poisson(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The source cloned into the target in the gradient domain inside the mask (falls back to the source)."""
        m8 = (mask > 0.05).astype(np.uint8) * 255
        m8[:2], m8[-2:], m8[:, :2], m8[:, -2:] = 0, 0, 0, 0
        if cv2.countNonZero(m8) < 16:
            return source
        x, y, bw, bh = cv2.boundingRect(m8)
        try:
            return cv2.seamlessClone(source[y:y + bh, x:x + bw], target, m8[y:y + bh, x:x + bw],
                                     (x + bw // 2, y + bh // 2), cv2.NORMAL_CLONE)
        except cv2.error:  # pragma: no cover - a degenerate region
            return source

    @staticmethod
    def _degrade(img: np.ndarray, local: tuple[str, float]) -> np.ndarray:
        kind, v = local
        return jpeg(img, int(v)) if kind == "jpeg" else gaussian_blur(img, v) if kind == "blur" else downscale(img, v)

    def apply(self, seq: np.ndarray, p: SBIParams) -> SBIResult:
        seq = np.asarray(seq)
        if seq.dtype != np.uint8 or seq.ndim != 4 or seq.shape[-1] != 3:
            raise ValueError(f"expected a uint8 (T, H, W, 3) sequence, got {seq.dtype} {seq.shape}")
        h, w = seq.shape[1:3]
        if (h, w) != tuple(p.size):
            raise ValueError(f"parameters drawn for {p.size}, sequence is {(h, w)}")
        shifts, colors, ratios = self._walk(p, len(seq))
        fakes, reals = np.empty_like(seq), np.empty_like(seq)
        for t, frame in enumerate(seq):
            if p.swapped:
                source, target = frame, self._transform(frame, p)
            else:
                source, target = self._transform(frame, p), frame
            affine, mask = p.affine, p.mask
            if p.temporal:
                affine = affine.copy()
                affine[:, 2] += shifts[t]
                move = np.float32([[1, 0, shifts[t][0]], [0, 1, shifts[t][1]]])
                mask = np.clip(cv2.warpAffine(mask, move, (w, h), flags=cv2.INTER_LINEAR, borderValue=0.0) * ratios[t], 0, 1)
                source = rgb_shift(source, tuple(colors[t]))
            source = cv2.warpAffine(source, affine, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            if p.blend == "poisson":
                source = self._poisson(source, target, mask)
            m = mask[..., None]
            blend = m * source.astype(np.float32) + (1.0 - m) * target.astype(np.float32)
            out = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
            if p.local:
                region = np.clip(mask / max(1e-6, float(mask.max())), 0, 1)[..., None]
                out = np.clip(np.rint(region * self._degrade(out, p.local) + (1 - region) * out), 0, 255).astype(np.uint8)
            fakes[t] = out
            reals[t] = target
        return SBIResult(fake=fakes, real=reals, mask=p.mask, params=p)

    def __call__(self, seq: np.ndarray, rng: np.random.Generator | int | None = None) -> SBIResult:
        seq = np.asarray(seq)
        return self.apply(seq, self.sample(seq.shape[1:3], rng))


def self_blend(seq: np.ndarray, rng: np.random.Generator | int | None = None, cfg: SBIConfig | None = None) -> SBIResult:
    """One self-blended FAKE from a REAL crop sequence (uint8 (T, S, S, 3) RGB)."""
    return SelfBlender(cfg)(seq, rng)
