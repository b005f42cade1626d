"""Aggregation: per-frame P(fake) of a face track -> one track score -> one video score.

The one rule, used wherever a video gets a score: the scoring job (`stages.score.score_rows`), training
validation (`training.loop.aggregate_videos`, so checkpoints are picked on the score users will see) and the
benchmark (`bench.measure_stages`). The strategies are name -> function tables; a new strategy is one entry here
(the CLI's choices and the configs' checks read these tables).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np


def confident(frames: np.ndarray, high: float = 0.8, low: float = 0.2, min_fake: int = 11, fake_ratio: float = 2.5,
              real_share: float = 0.9) -> float:
    """The DFDC winners' "confident" strategy (Seferbekov, 1st place): more than `min_fake` frames and more than
    len/`fake_ratio` of them above `high` -> the mean of those; else more than `real_share` of the frames below `low`
    -> the mean of those; else the mean of all. Here it runs per face track (the first branch needs a track of at
    least 12 frames)."""
    frames = np.asarray(frames, dtype=np.float64)
    fake = frames[frames > high]
    if len(fake) > min_fake and len(fake) > len(frames) / fake_ratio:
        return float(np.mean(fake))
    real = frames[frames < low]
    if len(real) > real_share * len(frames):
        return float(np.mean(real))
    return float(np.mean(frames))


# track score from (per-frame P(fake) of the track, the model's own sequence P(fake))
FRAME_STRATEGIES: dict[str, Callable[[np.ndarray, float], float]] = {
    "mean": lambda frames, sequence: float(np.mean(frames)),
    "max": lambda frames, sequence: float(np.max(frames)),
    "median": lambda frames, sequence: float(np.median(frames)),
    "confident": lambda frames, sequence: confident(frames),
    "model": lambda frames, sequence: float(sequence),  # the detector's temporal head (spec.head)
}
# video score from its track scores
TRACK_STRATEGIES: dict[str, Callable[[Sequence[float]], float]] = {
    "max": lambda tracks: float(np.max(tracks)),
    "mean": lambda tracks: float(np.mean(tracks)),
    "median": lambda tracks: float(np.median(tracks)),
}
# the job's defaults (`ScoreConfig.frame_aggregation` / `track_aggregation`)
FRAME_AGGREGATION, TRACK_AGGREGATION = "mean", "max"


def track_score(frame_probs, sequence_prob: float | None = None, frame_aggregation: str = FRAME_AGGREGATION) -> float:
    """One face track's P(fake) from its per-frame P(fake) (and the model's sequence P(fake), for ``model``)."""
    return FRAME_STRATEGIES[frame_aggregation](np.asarray(frame_probs, dtype=np.float64), sequence_prob)


def video_score(track_scores: Sequence[float], track_aggregation: str = TRACK_AGGREGATION) -> float | None:
    """A video's P(fake) from its track scores; None when it has no track."""
    return TRACK_STRATEGIES[track_aggregation](list(track_scores)) if len(track_scores) else None


def aggregate(tracks: Sequence[tuple], *, frame_aggregation: str = FRAME_AGGREGATION,
              track_aggregation: str = TRACK_AGGREGATION) -> tuple[list[float], float | None]:
    """[(per-frame P(fake), sequence P(fake)) per track] -> (track scores, video score)."""
    scores = [track_score(frame_p, seq_p, frame_aggregation) for frame_p, seq_p in tracks]
    return scores, video_score(scores, track_aggregation)


def with_temperature(p: float | None, temperature: float | None) -> float | None:
    """A video P(fake) after temperature scaling: sigmoid(logit(p) / T); unchanged when T is None or 1."""
    if p is None or temperature is None or temperature == 1.0:
        return p
    q = min(max(float(p), 1e-7), 1 - 1e-7)
    return 1.0 / (1.0 + math.exp(-math.log(q / (1 - q)) / float(temperature)))


def describe(*, frame_aggregation: str = FRAME_AGGREGATION, track_aggregation: str = TRACK_AGGREGATION,
             temperature: float | None = None) -> str:
    """The strategy as recorded in the results' ``aggregation`` column and the job's MLflow params; a video score
    calibrated by temperature scaling says so (``,temperature=1.37``)."""
    out = f"tracks={track_aggregation},frames={frame_aggregation}"
    return out if temperature is None or temperature == 1.0 else f"{out},temperature={temperature:.6g}"


def parse(aggregation: str) -> dict:
    """``describe``'s string back as {"tracks", "frames", "temperature" (None when uncalibrated)}."""
    parts = dict(p.split("=", 1) for p in str(aggregation).split(",") if "=" in p)
    t = parts.get("temperature")
    return {"tracks": parts.get("tracks"), "frames": parts.get("frames"), "temperature": float(t) if t else None}


__all__ = ["FRAME_STRATEGIES", "TRACK_STRATEGIES", "aggregate", "confident", "describe", "parse", "track_score",
           "video_score", "with_temperature"]
