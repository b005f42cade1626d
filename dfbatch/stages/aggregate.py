"""Aggregation: per-frame P(fake) of a face track -> one track score -> one video score.

The one rule, used wherever a video gets a score: the scoring job (`stages.score.score_rows`), training
validation (`training.loop.aggregate_videos`, so checkpoints are picked on the score users will see) and the
benchmark (`bench.measure_stages`). The strategies are name -> function tables; a new strategy is one entry here
(the CLI's choices and the configs' checks read these tables).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

# track score from (per-frame P(fake) of the track, the model's own sequence P(fake))
FRAME_STRATEGIES: dict[str, Callable[[np.ndarray, float], float]] = {
    "mean": lambda frames, sequence: float(np.mean(frames)),
    "max": lambda frames, sequence: float(np.max(frames)),
    "median": lambda frames, sequence: float(np.median(frames)),
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


def describe(*, frame_aggregation: str = FRAME_AGGREGATION, track_aggregation: str = TRACK_AGGREGATION) -> str:
    """The strategy as recorded in the results' ``aggregation`` column and the job's MLflow params."""
    return f"tracks={track_aggregation},frames={frame_aggregation}"


__all__ = ["FRAME_STRATEGIES", "TRACK_STRATEGIES", "aggregate", "describe", "track_score", "video_score"]
