"""Face crops as the model receives them: the JPEG round trip of the training shards.

`dfbatch prepare` stores every face crop as a JPEG (`encode_jpeg`) and training decodes it (`decode_jpeg`). A model
whose spec records `crop_jpeg_quality` is scored on crops that went through the same round trip
(`jpeg_round_trip`), cut at the same side (`ModelSpec.crop_side`) with the same margin, and resized to its input
size by the same `models.detector.preprocess`: training and scoring feed the network the same pixels.
"""

from __future__ import annotations

import numpy as np


def encode_jpeg(crop: np.ndarray, quality: int) -> bytes:
    """uint8 (H, W, 3) RGB -> JPEG bytes (OpenCV, 4:2:0, `quality` 1-100)."""
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
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


def jpeg_round_trip(crops: np.ndarray, quality: int | None) -> np.ndarray:
    """uint8 crops (N, S, S, 3) as training reads them back from the shards (unchanged when `quality` is None)."""
    if not quality or not len(crops):
        return crops
    return np.stack([decode_jpeg(encode_jpeg(c, quality)) for c in crops])


__all__ = ["decode_jpeg", "encode_jpeg", "jpeg_round_trip"]
