"""Video-level metrics (scikit-learn), the one place for them: `dfbatch evaluate` and the demo score result tables
against labels (`video_metrics`), training validation picks checkpoints and the decision threshold with
`label_metrics` / `youden_threshold`.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] for the log loss (fp32 sigmoids saturate at 1.0)


def youden_threshold(y, p) -> float:
    """The score threshold maximising TPR - FPR (balanced accuracy); 0.5 when only one class is present."""
    from sklearn.metrics import roc_curve

    y, p = np.asarray(y, int), np.asarray(p, float)
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    j = tpr - fpr
    # thr[0] is +inf (nothing flagged); thresholds descend, so ties go to the higher one (fewer false alarms)
    best = int(np.argmax(j[1:]) + 1) if len(j) > 1 else 0
    return float(np.clip(thr[best], 0.0, 1.0))


def score_metrics(y, p) -> dict[str, float]:
    """Threshold-free metrics of P(FAKE) against labels (1 = FAKE): ROC AUC and average precision (NaN with one
    class), log loss."""
    from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

    y, p = np.asarray(y, int), np.clip(np.asarray(p, float), EPS, 1 - EPS)
    two = len(np.unique(y)) == 2
    return {"auc": float(roc_auc_score(y, p)) if two else float("nan"),
            "log_loss": float(log_loss(y, p, labels=[0, 1])),
            "ap": float(average_precision_score(y, p)) if two else float("nan")}


def decision_metrics(y, predicted) -> dict[str, float]:
    """Accuracy and balanced accuracy (NaN with one class) of FAKE/REAL decisions (1 = FAKE)."""
    from sklearn.metrics import balanced_accuracy_score

    y, predicted = np.asarray(y, int), np.asarray(predicted, int)
    two = len(np.unique(y)) == 2
    return {"accuracy": float(np.mean(predicted == y)),
            "balanced_accuracy": float(balanced_accuracy_score(y, predicted)) if two else float("nan")}


def label_metrics(y, p, threshold: float | None = None) -> dict[str, float]:
    """Video-level metrics from labels (1 = FAKE) and P(FAKE): counts, `score_metrics`, accuracy at 0.5, balanced
    accuracy at `threshold` (None: Youden's on these scores) and the threshold; NaN where undefined."""
    y, p = np.asarray(y, int), np.clip(np.asarray(p, float), EPS, 1 - EPS)
    out = {"videos": float(len(y)), "fake_videos": float(y.sum())}
    if len(y) == 0:
        return out | {k: float("nan") for k in ("auc", "log_loss", "ap", "accuracy", "balanced_accuracy", "threshold")}
    thr = youden_threshold(y, p) if threshold is None else float(threshold)
    return out | score_metrics(y, p) | {"accuracy": decision_metrics(y, p >= 0.5)["accuracy"],
                                        "balanced_accuracy": decision_metrics(y, p >= thr)["balanced_accuracy"],
                                        "threshold": thr}


def join_labels(results: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Results rows with a `true_label` column (REAL/FAKE) matched on the video URI (absolute paths)."""
    norm = lambda u: u if "://" in u else os.path.abspath(u)  # noqa: E731
    truth = {norm(u): lab for u, lab in zip(labels["uri"], labels["label"])}
    out = results.copy()
    out["true_label"] = [truth.get(norm(u)) for u in out["video_uri"]]
    return out


def video_metrics(joined: pd.DataFrame) -> dict:
    """Metrics over the labelled `ok` rows; counts of every status so unscored videos are visible."""
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
    if len(ok) and len(set(y)) == 2:  # at the model's threshold: the rows' own labels
        metrics.update(score_metrics(y, p), **decision_metrics(y, (ok["label"] == "FAKE").to_numpy(int)))
    return metrics


def format_table(joined: pd.DataFrame) -> str:
    cols = ["video", "true_label", "status", "label", "fake_probability", "n_tracks"]
    view = joined.assign(video=[os.path.basename(u) for u in joined["video_uri"]]).sort_values("video")[cols]
    return view.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")
