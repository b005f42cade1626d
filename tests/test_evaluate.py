"""Evaluation: labels joined on URI, AUC/log loss over ok rows, unscored videos counted."""

import pandas as pd
import pytest

from dfbatch.evaluation.metrics import join_labels, video_metrics


def test_metrics_over_ok_rows_and_status_counts(tmp_path):
    uri = lambda n: str(tmp_path / n)  # noqa: E731
    results = pd.DataFrame(
        {
            "video_uri": [uri("a"), uri("b"), uri("c"), uri("d"), uri("e"), uri("x")],
            "status": ["ok", "ok", "ok", "no_face", "failed", "ok"],
            "fake_probability": [0.9, 0.2, 0.4, None, None, 0.5],
            "label": ["FAKE", "REAL", "REAL", None, None, "FAKE"],
        }
    )
    labels = pd.DataFrame({"uri": [uri("a"), uri("b"), uri("c"), uri("d"), uri("e")], "label": ["FAKE", "REAL", "FAKE", "REAL", "FAKE"]})
    m = video_metrics(join_labels(results, labels))
    assert m["labelled"] == 5 and m["scored_ok"] == 3 and m["no_face"] == 1 and m["failed"] == 1 and m["unlabelled"] == 1
    assert m["auc"] == pytest.approx(1.0)  # FAKE a=.9, c=.4 above REAL b=.2
    assert m["accuracy"] == pytest.approx(2 / 3)


def test_single_class_has_no_auc(tmp_path):
    results = pd.DataFrame({"video_uri": [str(tmp_path / "a")], "status": ["ok"], "fake_probability": [0.3], "label": ["REAL"]})
    m = video_metrics(join_labels(results, pd.DataFrame({"uri": [str(tmp_path / "a")], "label": ["REAL"]})))
    assert "auc" not in m and m["scored_ok"] == 1
