"""Generalisation: the identity-disjoint archive, the training threshold that does not depend on the fakes at hand,
leaving a recipe out of training, the protocol's figures (fast), and a reduced leave-one-manipulation-out run through
the CLI (slow: the protocol's machinery, its records and resume; one epoch learns too little for a floor on the
left-out AUC, which the reduced demo's held-out AUC floor in tests/test_demo.py stands for)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dfbatch.corpora import synth
from dfbatch.evaluation.lomo import fold_metrics, markdown, summarise
from dfbatch.evaluation.thresholds import real_fpr_threshold, training_threshold

REPO = Path(__file__).resolve().parents[1]


def test_identity_archive_shares_no_person_between_splits(tmp_path):
    splits = synth.identity_splits(seed=3)
    assert splits["carphone"] == "train" and splits["astronaut"] == "test"
    assert {s for k, s in splits.items() if k.startswith("lfw")} == {"train", "val", "test"}
    df = synth.identity_archive(tmp_path, splits=splits, counts={"train": (3, 1), "val": (1, 1), "test": (2, 1)},
                                size=(96, 64), seconds=0.3, fps=10, seed=1)
    labels = pd.read_csv(tmp_path / "labels.csv", keep_default_na=False)
    assert list(labels.columns) == ["file", "label", "method", "split", "group"]
    assert sorted(labels["file"]) == sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob("*/*.mp4"))
    assert set(labels.loc[labels.label == "FAKE", "method"]) == set(synth.METHODS)
    for row in df.itertuples():  # the person shown and any swap donor belong to the clip's split
        assert splits[row.group] == row.split
        if row.donor:
            assert splits[row.donor] == row.split and row.donor != row.group
    assert df.groupby("group")["split"].nunique().max() == 1
    # the CSV reader keeps these splits and finds no leak
    from dfbatch.training.labels import assign_splits, check_splits, load_labels

    table = assign_splits(load_labels([str(tmp_path / "labels.csv")]), {"train": 0.8, "val": 0.1, "test": 0.1})
    check_splits(table)
    assert dict(zip(table["uri"].map(lambda u: os.path.relpath(u, tmp_path)), table["split"])) == \
        dict(zip(labels["file"], labels["split"]))


def test_real_fpr_threshold_ignores_the_fakes():
    y = np.array([0] * 10 + [1] * 5)
    reals = np.linspace(0.05, 0.5, 10)
    for fakes in (np.full(5, 0.99), np.full(5, 0.6)):  # easy or hard fakes: the same threshold
        p = np.concatenate([reals, fakes])
        t = real_fpr_threshold(y, p, 0.05)
        assert 0.5 < t < 0.5001 and ((p >= t) & (y == 0)).sum() == 0
    assert real_fpr_threshold(y, np.concatenate([reals, np.full(5, 0.9)]), 0.2) == pytest.approx(0.4, abs=1e-6)
    assert real_fpr_threshold(np.ones(3), np.ones(3), 0.05) == 0.5  # no reals
    # Youden's sits just under the easy fakes at hand: an unseen kind scoring 0.7 would pass as REAL
    p = np.concatenate([reals, np.full(5, 0.99)])
    assert training_threshold(y, p, "youden") > 0.9 > training_threshold(y, p, "real_fpr")


def _scores(rng, recipes, n_real=20, n_fake=6, hard="drift"):
    rows = [(f"r{i}", 0, rng.uniform(0, 0.4), "") for i in range(n_real)]
    for m in recipes:
        lo = 0.1 if m == hard else 0.7
        rows += [(f"{m}{i}", 1, rng.uniform(lo, 1.0), m) for i in range(n_fake)]
    return pd.DataFrame(rows, columns=["video_id", "y", "p", "method"])


def test_fold_figures_and_summary():
    rng = np.random.default_rng(0)
    val = _scores(rng, ["swap", "blend"])
    test = _scores(rng, ["swap", "blend", "drift"])
    m = fold_metrics(val, test, "drift", threshold=0.45, target_fpr=0.05)
    left = pd.concat([test[test.y == 0], test[test.method == "drift"]])
    from sklearn.metrics import roc_auc_score

    assert m["left_out_auc"] == pytest.approx(roc_auc_score(left.y, left.p))
    assert m["left_out_fakes"] == 6 and m["test_reals"] == 20
    assert m["left_out_accuracy"] == pytest.approx(((left.p >= 0.45) == (left.y == 1)).mean())
    assert m["seen_auc"] > m["left_out_auc"]
    assert m["left_out_balanced_accuracy_real_fpr"] >= m["left_out_balanced_accuracy_youden"]
    folds = pd.DataFrame([{"variant": "v", "head": "mean", "seed": s, "recipe": r,
                           **fold_metrics(val, _scores(np.random.default_rng(s), ["swap", "drift"]), r, 0.45, 0.05)}
                          for s in (0, 1, 2) for r in ("swap", "drift")])
    summary = summarise(folds)
    assert set(summary["recipe"]) == {"swap", "drift", "all"} and (summary["seeds"] == 3).all()
    row = summary.set_index("recipe").loc["swap"]
    assert row["left_out_auc_mean"] == pytest.approx(folds[folds.recipe == "swap"]["left_out_auc"].mean())
    assert row["left_out_auc_std"] == pytest.approx(folds[folds.recipe == "swap"]["left_out_auc"].std())
    text = markdown(summary, ["swap", "drift"])
    assert "| swap |" in text and "| **mean** |" in text and "±" in text


def test_exclude_methods_leaves_the_recipe_out(tmp_path):
    from dfbatch.config import TrainConfig
    from dfbatch.errors import UserError
    from dfbatch.training.labels import save_split
    from dfbatch.training.prepare import ShardStore
    from dfbatch.training.trainer import _data_description, _val_too_small, excluded_videos

    sys.path.insert(0, str(Path(__file__).parent))
    from test_train import make_shards

    store = make_shards(tmp_path / "s", n_train=8, n_val=4)
    vids = store.videos()
    table = vids[["video_id", "label", "split"]].assign(method=[("drift" if i % 4 == 1 else "swap") if lab == "FAKE"
                                                               else None for i, lab in enumerate(vids["label"])])
    save_split(table, str(tmp_path / "s" / "split.parquet"))
    cfg = TrainConfig(data=str(tmp_path / "s"), output=str(tmp_path / "c"), exclude_methods=["drift"], min_val_videos=1)
    gone = excluded_videos(cfg, ShardStore(cfg.data))
    assert gone == set(table.loc[table["method"] == "drift", "video_id"]) and gone
    _, desc = _data_description(cfg, ShardStore(cfg.data), gone)
    assert desc["train_videos"] + desc["val_videos"] == len(vids) - len(gone) and desc["excluded_videos"] == len(gone)
    assert not _val_too_small(cfg, desc) and _val_too_small(cfg.replace(min_val_videos=2), desc)
    with pytest.raises(UserError, match="nope"):
        excluded_videos(cfg.replace(exclude_methods=["nope"]), ShardStore(cfg.data))


# ---------------------------------------------------------------------------------------------- slow
# The reduced protocol: one left-out recipe (swap), one seed, small clips and a short schedule. It checks the
# machinery (archive, exclusion, folds, figures, MLflow, resume), not the detector: a schedule this short does not
# learn (measured with 3 epochs and more clips: left-out AUC 0.35 and 0.40, seen recipes' AUC 0.52 and 0.45), so it
# carries no AUC floor (see docs/generalisation.md).
REDUCED = ["--recipes", "swap", "--heads", "mean", "--seeds", "0", "--size", "160x90", "--seconds", "0.8",
           "--epochs", "1"]
REDUCED_YAML = "train_clips: [10, 2]\nval_clips: [4, 2]\ntest_clips: [12, 6]\nprepare_frames: 8\n"


@pytest.mark.slow
def test_reduced_lomo_through_the_cli(ray_address, tmp_path):
    """Both runs join the session's Ray (`dfbatch lomo` on a cluster; the demo test covers a CLI's own local Ray)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["RAY_ADDRESS"] = ray_address
    (tmp_path / "reduced.yaml").write_text(REDUCED_YAML)
    cmd = [sys.executable, "-m", "dfbatch", "lomo", "--root", "l", "--tracking-uri", uri, *REDUCED,
           "--config", "reduced.yaml"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for text in ("[lomo 1/1]", "swap left out", "| swap |", "results.csv", "summary.md"):
        assert text in proc.stdout, f"{text!r} missing from:\n{proc.stdout}"
    assert "Reporting training result" not in out
    folds = pd.read_csv(tmp_path / "l" / "results.csv")
    assert len(folds) == 1 and folds.loc[0, "recipe"] == "swap" and folds.loc[0, "left_out_fakes"] >= 5

    # the fold's training never saw the recipe: not in its data description, and its run is nested in the protocol's
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    fold = client.get_run(folds.loc[0, "run_id"])
    assert fold.data.params["data.excluded_methods"] == "swap"
    assert int(fold.data.params["data.excluded_videos"]) == 2 + 2 + 6  # every swap fake: train, val and test
    assert int(fold.data.params["data.train_fake_videos"]) <= 4 * 2  # the four other recipes only (some may lose
    # their face)
    parent = client.get_run(fold.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["dfbatch.kind"] == "lomo"
    assert parent.data.metrics["sbi-wide-temporal/mean/swap/left_out_auc_mean"] == pytest.approx(
        folds.loc[0, "left_out_auc"])
    # a rerun resumes: nothing trained again
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "[lomo 1/1]" not in again.stdout
    assert json.loads((tmp_path / "l" / "results.jsonl").read_text().splitlines()[0])["recipe"] == "swap"

    # the figures agree with each other: accuracy at the threshold from the recall on the fakes and the FPR on the reals
    f = folds.loc[0]
    assert 0.0 <= f["left_out_auc"] <= 1.0 and 0.0 <= f["threshold"] <= 1.0 and f["test_reals"] >= 10
    expect = (f["left_out_recall"] * f["left_out_fakes"] + (1 - f["test_fpr"]) * f["test_reals"]) / (
        f["left_out_fakes"] + f["test_reals"])
    assert f["left_out_accuracy"] == pytest.approx(expect)
