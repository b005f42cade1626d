"""Training augmentation for face-crop sequences, with every random parameter drawn once per sequence.

A sequence is a uint8 array (T, S, S, 3), RGB. Drawing the parameters once and applying them to every frame
keeps the clip temporally consistent: a flip, colour cast, blur or compression level that changed from frame to
frame would itself be an artefact the temporal model could learn to call FAKE.

The image operations here (colour, blur, sharpen, downscale, JPEG) are shared with `dfbatch.training.sbi`.

    aug = SequenceAugment(AugmentConfig())
    out = aug(seq, rng)                 # or: params = aug.sample(rng); out = aug.apply(seq, params)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

__all__ = ["AugmentConfig", "AugmentParams", "SequenceAugment", "as_rng", "adjust_color", "rgb_shift",
           "gaussian_blur", "sharpen", "downscale", "jpeg", "hflip"]


def as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


# ----------------------------------------------------------------------------------------------- image operations
# Each takes and returns uint8 (S, S, 3) RGB (or a (T, S, S, 3) stack where noted).
def hflip(seq: np.ndarray) -> np.ndarray:
    """Mirror (T, S, S, 3) or (S, S, 3) left-right."""
    return np.ascontiguousarray(seq[..., :, ::-1, :])


def adjust_color(img: np.ndarray, *, hue: float = 0.0, saturation: float = 1.0, value: float = 1.0,
                 brightness: float = 0.0, contrast: float = 1.0) -> np.ndarray:
    """Hue shift (degrees), saturation/value scale (HSV), then contrast around mid-grey and brightness
    offset (fraction of 255)."""
    out = img
    if hue or saturation != 1.0 or value != 1.0:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV_FULL).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + hue * 256.0 / 360.0) % 256.0
        hsv[..., 1] *= saturation
        hsv[..., 2] *= value
        out = cv2.cvtColor(np.clip(hsv + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB_FULL)
    if brightness or contrast != 1.0:
        f = out.astype(np.float32)
        f = (f - 127.5) * contrast + 127.5 + brightness * 255.0
        out = np.clip(f + 0.5, 0, 255).astype(np.uint8)
    return out


def rgb_shift(img: np.ndarray, shift: tuple[float, float, float]) -> np.ndarray:
    """Add a per-channel offset (in 0..255 units)."""
    return np.clip(img.astype(np.float32) + np.asarray(shift, np.float32) + 0.5, 0, 255).astype(np.uint8)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return img
    return cv2.GaussianBlur(img, (0, 0), sigmaX=float(sigma), sigmaY=float(sigma), borderType=cv2.BORDER_REFLECT)


def sharpen(img: np.ndarray, amount: float, sigma: float = 1.0) -> np.ndarray:
    """Unsharp mask: img + amount * (img - blur(img))."""
    blurred = cv2.GaussianBlur(img, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT).astype(np.float32)
    f = img.astype(np.float32)
    return np.clip(f + amount * (f - blurred) + 0.5, 0, 255).astype(np.uint8)


def downscale(img: np.ndarray, scale: float) -> np.ndarray:
    """Resample down by `scale` (area) and back up (linear): loses high frequencies like a low-res source."""
    h, w = img.shape[:2]
    sw, sh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    small = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG re-compression round trip (RGB in, RGB out; OpenCV's codec expects BGR)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 RGB
        return img
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


# ----------------------------------------------------------------------------------------------------- sequences
@dataclass
class AugmentConfig:
    """Probabilities and ranges; each applies to a whole sequence."""

    p_flip: float = 0.5
    p_color: float = 0.8
    brightness: float = 0.1  # ± fraction of 255
    contrast: float = 0.2  # contrast factor in [1-c, 1+c]
    saturation: float = 0.2  # saturation factor in [1-s, 1+s]
    hue: float = 8.0  # ± degrees
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    p_downscale: float = 0.2
    downscale: tuple[float, float] = (0.5, 0.9)
    p_jpeg: float = 0.5
    jpeg_quality: tuple[int, int] = (40, 95)

    @classmethod
    def off(cls) -> "AugmentConfig":
        """No augmentation (validation)."""
        return cls(p_flip=0, p_color=0, p_blur=0, p_downscale=0, p_jpeg=0)


@dataclass
class AugmentParams:
    flip: bool = False
    color: dict | None = None
    blur_sigma: float = 0.0
    downscale: float = 1.0
    jpeg_quality: int | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class SequenceAugment:
    """Flip, colour jitter, blur / downscale, JPEG re-compression — drawn once, applied to every frame."""

    def __init__(self, cfg: AugmentConfig | None = None):
        self.cfg = cfg or AugmentConfig()

    def sample(self, rng: np.random.Generator | int | None = None) -> AugmentParams:
        c, rng = self.cfg, as_rng(rng)
        p = AugmentParams()
        p.flip = bool(rng.random() < c.p_flip)
        if rng.random() < c.p_color:
            p.color = dict(hue=float(rng.uniform(-c.hue, c.hue)),
                           saturation=float(rng.uniform(1 - c.saturation, 1 + c.saturation)),
                           brightness=float(rng.uniform(-c.brightness, c.brightness)),
                           contrast=float(rng.uniform(1 - c.contrast, 1 + c.contrast)))
        if rng.random() < c.p_blur:
            p.blur_sigma = float(rng.uniform(*c.blur_sigma))
        if rng.random() < c.p_downscale:
            p.downscale = float(rng.uniform(*c.downscale))
        if rng.random() < c.p_jpeg:
            p.jpeg_quality = int(rng.integers(c.jpeg_quality[0], c.jpeg_quality[1] + 1))
        return p

    def apply(self, seq: np.ndarray, p: AugmentParams) -> np.ndarray:
        seq = _check_seq(seq)
        out = hflip(seq) if p.flip else seq.copy()
        for t in range(out.shape[0]):
            img = out[t]
            if p.color:
                img = adjust_color(img, **p.color)
            if p.downscale < 1.0:
                img = downscale(img, p.downscale)
            if p.blur_sigma > 0:
                img = gaussian_blur(img, p.blur_sigma)
            if p.jpeg_quality is not None:
                img = jpeg(img, p.jpeg_quality)
            out[t] = img
        return out

    def __call__(self, seq: np.ndarray, rng: np.random.Generator | int | None = None) -> np.ndarray:
        return self.apply(seq, self.sample(rng))


def _check_seq(seq: np.ndarray) -> np.ndarray:
    seq = np.asarray(seq)
    if seq.dtype != np.uint8 or seq.ndim != 4 or seq.shape[-1] != 3:
        raise ValueError(f"expected a uint8 (T, H, W, 3) sequence, got {seq.dtype} {seq.shape}")
    return seq
