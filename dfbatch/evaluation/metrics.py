"""Evaluate scored results against labels: video AUC, log loss, accuracy at the threshold (scikit-learn)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd


def join_labels(results: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Results rows with a `true_label` column (REAL/FAKE) matched on the video URI (absolute paths)."""
    norm = lambda u: u if "://" in u else os.path.abspath(u)  # noqa: E731
    truth = {norm(u): lab for u, lab in zip(labels["uri"], labels["label"])}
    out = results.copy()
    out["true_label"] = [truth.get(norm(u)) for u in out["video_uri"]]
    return out


def video_metrics(joined: pd.DataFrame) -> dict:
    """Metrics over the labelled `ok` rows; counts of every status so unscored videos are visible."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, log_loss, roc_auc_score

    lab = joined[joined["true_label"].notna()]
    ok = lab[lab["status"] == "ok"]
    y = (ok["true_label"] == "FAKE").to_numpy(int)
    p = ok["fake_probability"].to_numpy(float)
    metrics: dict = {
        "labelled": int(len(lab)),
        "scored_ok": int(len(ok)),
        "no_face": int((lab["status"] == "no_face").sum()),
        "failed": int((lab["status"] == "failed").sum()),
        "unlabelled": int(joined["true_label"].isna().sum()),
    }
    if len(ok) and len(set(y)) == 2:
        pred = (ok["label"] == "FAKE").to_numpy(int)
        metrics.update(
            auc=float(roc_auc_score(y, p)),
            log_loss=float(log_loss(y, np.clip(p, 1e-6, 1 - 1e-6), labels=[0, 1])),
            accuracy=float(accuracy_score(y, pred)),
            balanced_accuracy=float(balanced_accuracy_score(y, pred)),
        )
    return metrics


def format_table(joined: pd.DataFrame) -> str:
    cols = ["video", "true_label", "status", "label", "fake_probability", "n_tracks"]
    view = joined.assign(video=[os.path.basename(u) for u in joined["video_uri"]]).sort_values("video")[cols]
    return view.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")
