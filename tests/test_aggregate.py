"""The one aggregation (frame -> track -> video): its strategies, and scoring and training validation giving the
same video score for the same model outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dfbatch.config import FRAME_AGGREGATIONS, TRACK_AGGREGATIONS
from dfbatch.stages.aggregate import FRAME_STRATEGIES, TRACK_STRATEGIES, aggregate, describe, track_score, video_score


def test_strategies():
    frames = [0.1, 0.9, 0.2, 0.4]
    assert track_score(frames) == pytest.approx(0.4)  # the job's default: mean
    assert track_score(frames, 0.7, "max") == pytest.approx(0.9)
    assert track_score(frames, 0.7, "median") == pytest.approx(0.3)
    assert track_score(frames, 0.7, "model") == pytest.approx(0.7)  # the detector's own temporal head
    assert video_score([0.2, 0.6, 0.3]) == pytest.approx(0.6)  # default: max over tracks
    assert video_score([0.2, 0.6, 0.3], "mean") == pytest.approx(1.1 / 3)
    assert video_score([0.2, 0.6, 0.3], "median") == pytest.approx(0.3)
    assert video_score([]) is None
    scores, video = aggregate([(np.array([0.2, 0.4]), 0.9), (np.array([0.8, 0.8]), 0.1)], frame_aggregation="model",
                              track_aggregation="mean")
    assert scores == pytest.approx([0.9, 0.1]) and video == pytest.approx(0.5)
    assert describe(frame_aggregation="max", track_aggregation="median") == "tracks=median,frames=max"
    # the job's choices are the tables' entries
    assert FRAME_AGGREGATIONS == tuple(FRAME_STRATEGIES) and TRACK_AGGREGATIONS == tuple(TRACK_STRATEGIES)


def test_confident_strategy():
    """The DFDC winners' rule: > 11 and > len/2.5 frames above 0.8 -> their mean; else > 90 % below 0.2 -> their mean;
    else the mean of all."""
    fakes = [0.9] * 12 + [0.1] * 18  # 12 > 11 but not > 30/2.5 = 12
    assert track_score(fakes, None, "confident") == pytest.approx(np.mean(fakes))
    fakes = [0.9] * 13 + [0.1] * 18  # 13 > 11 and 13 > 31/2.5 = 12.4
    assert track_score(fakes, None, "confident") == pytest.approx(0.9)
    assert track_score([0.95] * 11 + [0.5], None, "confident") == pytest.approx(np.mean([0.95] * 11 + [0.5]))  # 11 only
    reals = [0.1] * 19 + [0.15, 0.9]  # 20 of 21 (95 %) below 0.2
    assert track_score(reals, None, "confident") == pytest.approx(np.mean([0.1] * 19 + [0.15]))
    assert track_score([0.1] * 9 + [0.9], None, "confident") == pytest.approx(0.18)  # 90 % is not more than 90 %


@pytest.mark.parametrize("frames,tracks", [("mean", "max"), ("median", "mean"), ("model", "median"), ("confident", "max")])
def test_scoring_and_validation_agree(frames, tracks):
    """score_rows (the job) and aggregate_videos (training validation) turn the same model outputs into the same
    track and video scores."""
    from dfbatch.models.detector import build_model
    from dfbatch.models.spec import ModelSpec
    from dfbatch.stages.score import Scorer, score_rows
    from dfbatch.training.loop import aggregate_videos

    spec = ModelSpec(backbone="tiny", hidden_dim=16, input_size=32, seq_len=4, head="mean")
    scorer = Scorer(spec, build_model(spec).state_dict(), precision="fp32")
    rng = np.random.default_rng(0)
    lengths = [4, 3]
    crops = rng.integers(0, 256, size=(sum(lengths), 32, 32, 3), dtype=np.uint8)
    tracks_json = [{"frame_indices": list(range(n)), "boxes": [[0, 0, 10, 10]] * n, "probs": [0.99] * n} for n in lengths]
    row = {"video_uri": "/v/a.mp4", "video_id": "a", "status": "ok", "error": None, "frame_indices": [0, 1, 2, 3],
           "tracks": json.dumps(tracks_json), "crops": crops.tobytes(), "crop_size": 32}
    [out] = score_rows([row], scorer, threshold=0.5, frame_aggregation=frames, track_aggregation=tracks,
                       model_info={"model_name": "m", "model_version": "1", "model_uri": "x"}, run_id=None)

    outputs = scorer.score([crops[:4], crops[4:]])  # the same sequences, scored again
    expected_tracks, expected_video = aggregate(outputs, frame_aggregation=frames, track_aggregation=tracks)
    assert out["aggregation"] == f"tracks={tracks},frames={frames}"
    assert out["fake_probability"] == pytest.approx(expected_video, abs=1e-6)
    assert [t["fake_probability"] for t in json.loads(out["tracks"])] == pytest.approx(expected_tracks, abs=1e-6)
    _, _, p = aggregate_videos([("a", "FAKE", k, f.tolist(), s) for k, (f, s) in enumerate(outputs)], frames, tracks)
    assert p == pytest.approx([out["fake_probability"]], abs=1e-6)
