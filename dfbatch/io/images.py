"""JPEG encoding of face crops: one place for training shards (one JPEG per frame), saved crops (one strip
per track: its crops side by side) and the HTML views. OpenCV only; no torch, no Ray."""

from __future__ import annotations

import base64

import numpy as np


def encode_jpeg(crop: np.ndarray, quality: int = 90) -> bytes:
    """uint8 (H, W, 3) RGB -> JPEG bytes."""
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> uint8 (H, W, 3) RGB."""
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("undecodable JPEG frame")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def encode_strip(crops: np.ndarray, quality: int = 90) -> bytes:
    """A track's square crops uint8 (T, S, S, 3) RGB -> one JPEG, S high and T*S wide (frame order)."""
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[1] != crops.shape[2] or not len(crops):
        raise ValueError(f"expected square crops (T,S,S,3), got {crops.shape}")
    return encode_jpeg(np.concatenate(list(crops), axis=1), quality)


def decode_strip(data: bytes) -> np.ndarray:
    """The inverse of `encode_strip`: uint8 (T, S, S, 3) RGB."""
    strip = decode_jpeg(data)
    s = strip.shape[0]
    if strip.shape[1] % s:
        raise ValueError(f"not a strip of square crops: {strip.shape[1]}x{s}")
    return np.stack(np.split(strip, strip.shape[1] // s, axis=1))


def data_uri(image: np.ndarray, quality: int = 85) -> str:
    """uint8 RGB image -> `data:image/jpeg;base64,...` (inlined in HTML, nothing fetched when opened)."""
    return "data:image/jpeg;base64," + base64.b64encode(encode_jpeg(image, quality)).decode("ascii")
