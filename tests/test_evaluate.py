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


def _write_results(out, tmp_path, scores: dict[str, float | None]) -> None:
    """Result files as the scoring job commits them (ResultStore's commit protocol), without running a job."""
    from datetime import datetime, timezone

    from dfbatch.io.results import ResultStore
    from dfbatch.io.storage import Storage

    rows = [{"video_uri": str(tmp_path / name), "video_id": name, "status": "ok" if p is not None else "no_face",
             "fake_probability": p, "label": None if p is None else ("FAKE" if p >= 0.5 else "REAL"), "threshold": 0.5,
             "model_name": "dfbatch-detector", "model_version": "3", "scored_at": datetime.now(timezone.utc)}
            for name, p in scores.items()]
    store = ResultStore(str(out), Storage())
    store.check_writable()
    store.write_part(rows, "job-1")


def test_evaluate_command_logs_to_the_given_store(tmp_path, capsys):
    """`dfbatch evaluate OUT --labels CSV --log-mlflow --tracking-uri ...`: EvaluateConfig from flags, metrics printed
    and logged to that MLflow store with the model version; a filter that matches nothing is a one-line error."""
    import json

    import mlflow

    from dfbatch.cli import main

    out = tmp_path / "out"
    _write_results(out, tmp_path, {"a.mp4": 0.9, "b.mp4": 0.2, "c.mp4": 0.3, "e.mp4": 0.6, "d.mp4": None})
    (tmp_path / "labels.csv").write_text("file,label\na.mp4,FAKE\nb.mp4,REAL\nc.mp4,FAKE\ne.mp4,REAL\nd.mp4,FAKE\n")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    rc = main(["evaluate", str(out), "--labels", str(tmp_path / "labels.csv"), "--log-mlflow", "--tracking-uri", uri,
               "--experiment", "eval-test", "--table"])
    assert rc == 0
    printed = capsys.readouterr().out
    metrics = json.loads(printed[printed.index("{"):])
    assert metrics["labelled"] == 5 and metrics["scored_ok"] == 4 and metrics["no_face"] == 1
    assert metrics["auc"] == pytest.approx(0.75)  # FAKE over REAL in 3 of the 4 pairs (c=.3 < e=.6)
    assert "a.mp4" in printed and "e.mp4" in printed  # the per-video table
    client = mlflow.MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("eval-test").experiment_id])
    assert run.data.tags["model_version"] == "3" and run.data.metrics["auc"] == pytest.approx(metrics["auc"])
    assert main(["evaluate", str(out), "--labels", str(tmp_path / "labels.csv"), "--model-version", "9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dfbatch: error: no results under") and "model version 9" in err and err.count("\n") == 1
