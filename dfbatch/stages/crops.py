"""Face crops as the model receives them: the JPEG round trip of the training shards.

`dfbatch prepare` stores every face crop as a JPEG (`io.images.encode_jpeg`) and training decodes it (`decode_jpeg`). A model
whose spec records `crop_jpeg_quality` is scored on crops that went through the same round trip
(`jpeg_round_trip`), cut at the same side (`ModelSpec.crop_side`) with the same margin, and resized to its input
size by the same `models.detector.preprocess`: training and scoring feed the network the same pixels.
"""

from __future__ import annotations

import numpy as np

from dfbatch.io.images import decode_jpeg, encode_jpeg  # the one JPEG codec (OpenCV), re-exported here


def jpeg_round_trip(crops: np.ndarray, quality: int | None) -> np.ndarray:
    """uint8 crops (N, S, S, 3) as training reads them back from the shards (unchanged when `quality` is None)."""
    if not quality or not len(crops):
        return crops
    return np.stack([decode_jpeg(encode_jpeg(c, quality)) for c in crops])


__all__ = ["decode_jpeg", "encode_jpeg", "jpeg_round_trip"]
