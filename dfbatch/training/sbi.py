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
3. mask: without landmarks the face region comes from the crop geometry — `faces.square_crop` centres the
   detected box and adds ``margin`` of its size per side, so the box fills ``1/(1+2*margin)`` of the crop.
   An ellipse inside that box (jittered centre, axes and radius) is sampled at points whose convex hull is
   filled, moved with the source's affine, deformed by a smooth random displacement field, eroded+blurred
   (SBI's two-stage blur) and scaled by a blend ratio drawn from ``blend_ratios``;
4. ``fake = mask * source + (1 - mask) * target``, per frame, rounded to uint8.

Where the mask is 0 the fake equals the target exactly (the untouched real when the source was transformed).
`SBIResult.real` is the target actually used (transformed when swapped): the paper trains on the (real, fake)
pair; a trainer may use it or the original.

Plain numpy/OpenCV, seeded `np.random.Generator`.
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
    extra: dict = field(default_factory=dict)

    def describe(self) -> dict:
        """JSON-able summary (no mask)."""
        return dict(swapped=self.swapped, color=self.color, shift_rgb=list(self.shift_rgb), freq=self.freq,
                    freq_value=self.freq_value, jpeg_quality=self.jpeg_quality, affine=self.affine.tolist(),
                    blend_ratio=self.blend_ratio, mask_mean=float(self.mask.mean()))


@dataclass
class SBIResult:
    fake: np.ndarray  # uint8 (T, H, W, 3)
    real: np.ndarray  # the target used (the input, or its transformed copy when params.swapped)
    mask: np.ndarray  # float32 (H, W)
    params: SBIParams


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
        mask = self._mask(h, w, affine, rng) * blend_ratio
        return SBIParams(size=(h, w), swapped=swapped, color=color, shift_rgb=shift_rgb, freq=freq,
                         freq_value=float(freq_value), jpeg_quality=jpeg_quality, affine=affine.astype(np.float32),
                         mask=mask.astype(np.float32), blend_ratio=blend_ratio)

    def _mask(self, h: int, w: int, affine: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.cfg
        side = float(min(h, w))
        box = side / (1.0 + 2.0 * c.margin)
        cx = w / 2.0 + rng.uniform(-c.center_jitter, c.center_jitter) * side
        cy = h / 2.0 + (c.center_dy + rng.uniform(-c.center_jitter, c.center_jitter)) * side
        ax = box / 2.0 * rng.uniform(*c.axis_x)
        ay = box / 2.0 * rng.uniform(*c.axis_y)
        n = c.hull_points
        theta = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * (2 * np.pi / n)
        radius = np.clip(1.0 + rng.normal(0.0, c.radial_jitter, n), 0.7, 1.3)
        pts = np.stack([cx + ax * radius * np.cos(theta), cy + ay * radius * np.sin(theta)], 1)
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

    def apply(self, seq: np.ndarray, p: SBIParams) -> SBIResult:
        seq = np.asarray(seq)
        if seq.dtype != np.uint8 or seq.ndim != 4 or seq.shape[-1] != 3:
            raise ValueError(f"expected a uint8 (T, H, W, 3) sequence, got {seq.dtype} {seq.shape}")
        h, w = seq.shape[1:3]
        if (h, w) != tuple(p.size):
            raise ValueError(f"parameters drawn for {p.size}, sequence is {(h, w)}")
        m = p.mask[..., None]
        fakes, reals = np.empty_like(seq), np.empty_like(seq)
        for t, frame in enumerate(seq):
            if p.swapped:
                source, target = frame, self._transform(frame, p)
            else:
                source, target = self._transform(frame, p), frame
            source = cv2.warpAffine(source, p.affine, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            blend = m * source.astype(np.float32) + (1.0 - m) * target.astype(np.float32)
            fakes[t] = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
            reals[t] = target
        return SBIResult(fake=fakes, real=reals, mask=p.mask, params=p)

    def __call__(self, seq: np.ndarray, rng: np.random.Generator | int | None = None) -> SBIResult:
        seq = np.asarray(seq)
        return self.apply(seq, self.sample(seq.shape[1:3], rng))


def self_blend(seq: np.ndarray, rng: np.random.Generator | int | None = None, cfg: SBIConfig | None = None) -> SBIResult:
    """One self-blended FAKE from a REAL crop sequence (uint8 (T, S, S, 3) RGB)."""
    return SelfBlender(cfg)(seq, rng)
