"""`dfbatch demo`: the archives and their fixed split (fast), and a reduced demo end to end through the CLI
(slow): archive -> prepare -> Ray Train -> champion in the given MLflow store -> held-out scoring -> metrics."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
# The reduced demo: 16 + 16 training clips (12 + 12 train, 4 + 4 val), 8 + 8 held-out, 1 s at 320x180, 8 epochs.
REDUCED = ["--clips", "16", "--heldout-clips", "8", "--size", "320x180", "--seconds", "1", "--epochs", "8"]
REDUCED_YAML = "train_overrides: {batch_size: 4}\n"  # 6 steps an epoch instead of 3
# Training must learn: the held-out video AUC of the reduced demo is at least this (seeds fixed: the archives, the
# split, the initialisation, the sampler, augmentation and block order; Ray Data's row order still varies from
# run to run). The floor sits well below the full demo's 0.93-1.0 (README) and well above what a model that did not
# learn gives (~0.5), so run-to-run variation does not trip it while a broken training loop does.
AUC_FLOOR = 0.7


def test_archives_and_stratified_val_split(tmp_path):
    from dfbatch.demo import DemoConfig, build_archives

    cfg = DemoConfig(root=str(tmp_path / "d"), n_train=4, n_heldout=1, size=(128, 72), seconds=0.3)
    train_dir, heldout_dir = build_archives(cfg)
    labels = pd.read_csv(os.path.join(train_dir, "labels.csv"))
    assert list(labels.columns) == ["file", "label", "split"]
    assert sorted(labels["file"]) == sorted(p.name for p in Path(train_dir).glob("*.mp4"))
    val = labels[labels["split"] == "val"]
    assert set(labels["split"]) == {"train", "val"}
    assert (val["label"] == "REAL").sum() == (val["label"] == "FAKE").sum() == 1  # one in four of each label
    held = pd.read_csv(os.path.join(heldout_dir, "labels.csv"))
    assert {"faceless_000.mp4", "broken_000.mp4"} <= set(held["file"])
    # the held-out clips are other clips (another seed), not copies of training clips
    for name in ("real_000.mp4", "fake_000.mp4"):
        assert (Path(train_dir) / name).read_bytes() != (Path(heldout_dir) / name).read_bytes()
    # a rerun keeps what is there
    before = os.path.getmtime(os.path.join(train_dir, "real_000.mp4"))
    build_archives(cfg)
    assert os.path.getmtime(os.path.join(train_dir, "real_000.mp4")) == before


@pytest.mark.slow
def test_reduced_demo_end_to_end(tmp_path):
    """The CLI as a user runs it (a fresh process, its own local Ray), small sizes; the model it trains must tell
    the held-out fakes from the reals."""
    from dfbatch.evaluation.metrics import label_metrics
    from dfbatch.models import registry
    from dfbatch.io.results import read_results

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_DATA_DISABLE_PROGRESS_BARS",
                                                             "MLFLOW_TRACKING_URI")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    (tmp_path / "reduced.yaml").write_text(REDUCED_YAML)
    cmd = [sys.executable, "-m", "dfbatch", "demo", "--root", "d", "--tracking-uri", uri, *REDUCED,
           "--config", "reduced.yaml"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]

    # the steps, the table, the metrics and where things are
    for text in ("1/4", "2/4", "3/4", "4/4", "epoch 8/8", "held-out video AUC", "faceless_000.mp4", "broken_000.mp4",
                 "models:/dfbatch-detector@champion", uri, "results:", "dfbatch score YOUR_VIDEOS/"):
        assert text in proc.stdout, f"{text!r} missing from:\n{proc.stdout}"
    # no Ray Data progress bars / progress logs from the driver or the Ray Train workers
    for noise in ("Running Dataset", "execution finished", "Parquet dataset sampling", "logging_progress",
                  "Starting execution of Dataset", "Reporting training result", "Failed to query Ray Train Controller",
                  "Token authentication is enabled", "RayDeprecationWarning"):
        assert noise not in out, f"{noise!r} in the demo's console output:\n{out[-4000:]}"

    # the demo model is the champion of the store the demo used, so `dfbatch score DIR` finds it by default
    bundle = registry.fetch("models:/dfbatch-detector@champion", tracking_uri=uri)
    assert bundle.spec.backbone == "mobilenet_v2" and 0.0 <= bundle.threshold <= 1.0
    assert f"models:/dfbatch-detector/{bundle.version}" in proc.stdout

    # one row for every held-out file: faces scored, the faceless clip no_face, the broken file failed
    res = read_results(str(tmp_path / "d" / "results"))
    held = pd.read_csv(tmp_path / "d" / "archive" / "heldout" / "labels.csv")
    status = dict(zip(res["video_uri"].map(os.path.basename), res["status"]))
    assert sorted(status) == sorted(held["file"])
    assert status.pop("faceless_000.mp4") == "no_face"
    assert status.pop("broken_000.mp4") == "failed"
    assert set(status.values()) <= {"ok", "no_face"} and "ok" in status.values()
    assert set(res["model_version"]) == {bundle.version}
    ok = res[res["status"] == "ok"]
    assert ok["fake_probability"].between(0, 1).all()

    # training learns: a polarity or data bug (labels inverted, the wrong crops) fails here
    truth = dict(zip(held["file"], held["label"]))
    y = [truth[os.path.basename(u)] == "FAKE" for u in ok["video_uri"]]
    auc = label_metrics(y, ok["fake_probability"].to_numpy())["auc"]
    assert sum(y) >= 6 and len(y) - sum(y) >= 6, "too few scored held-out videos for an AUC"
    assert auc >= AUC_FLOOR, f"held-out video AUC {auc:.3f} < {AUC_FLOOR} (training did not learn):\n{proc.stdout[-3000:]}"
