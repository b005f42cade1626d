"""Binary detection metrics (scikit-learn), the one place for them: `dfbatch evaluate` (`binary_metrics` at video
and frame level, `equal_error_rate`), threshold choice (`evaluation.thresholds`), and training validation, which
picks checkpoints and its threshold with `label_metrics` / `youden_threshold`. Labels: 1 = FAKE.
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
    """`ranking_metrics` under training's names: ROC AUC and average precision (NaN with one class), log loss."""
    r = ranking_metrics(y, p)
    return {"auc": r["roc_auc"], "log_loss": r["log_loss"], "ap": r["average_precision"]}


def decision_metrics(y, predicted) -> dict[str, float]:
    """Accuracy and balanced accuracy (NaN with one class) of FAKE/REAL decisions (1 = FAKE)."""
    r = decision_report(y, predicted)
    return {"accuracy": r["accuracy"], "balanced_accuracy": r["balanced_accuracy"]}


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


def equal_error_rate(y, p) -> tuple[float, float]:
    """(EER, its threshold): the ROC point where the false-positive rate equals the false-negative rate (the mean
    of the two at the closest point); (NaN, NaN) with one class."""
    from sklearn.metrics import roc_curve

    y, p = np.asarray(y, int), np.asarray(p, float)
    if len(np.unique(y)) < 2:
        return float("nan"), float("nan")
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    fnr = 1.0 - tpr
    i = int(np.argmin(np.abs(fnr - fpr)[1:]) + 1)  # thr[0] is +inf (nothing flagged)
    return float((fpr[i] + fnr[i]) / 2), float(np.clip(thr[i], 0.0, 1.0))


def ranking_metrics(y, p) -> dict[str, float]:
    """Threshold-free metrics of scores P(FAKE): ROC AUC, average precision, EER (NaN with one class), log loss
    (the DFDC metric; P clipped to [EPS, 1 - EPS]) and Brier score."""
    from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

    y, p = np.asarray(y, int), np.asarray(p, float)
    if len(y) == 0:
        return {k: float("nan") for k in ("roc_auc", "average_precision", "eer", "log_loss", "brier")}
    two = len(np.unique(y)) == 2
    clipped = np.clip(p, EPS, 1 - EPS)
    return {"roc_auc": float(roc_auc_score(y, p)) if two else float("nan"),
            "average_precision": float(average_precision_score(y, p)) if two else float("nan"),
            "eer": equal_error_rate(y, p)[0],
            "log_loss": float(log_loss(y, clipped, labels=[0, 1])),
            "brier": float(brier_score_loss(y, p, pos_label=1))}


def decision_report(y, predicted) -> dict[str, float]:
    """Metrics of FAKE/REAL decisions (1 = FAKE): accuracy, balanced accuracy, precision, recall, F1 (NaN where
    undefined) and the confusion matrix as tp / fp / tn / fn."""
    from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                                 precision_score, recall_score)

    y, predicted = np.asarray(y, int), np.asarray(predicted, int)
    if len(y) == 0:
        return {k: float("nan") for k in ("accuracy", "balanced_accuracy", "precision", "recall", "f1")} | {
            "tp": 0.0, "fp": 0.0, "tn": 0.0, "fn": 0.0}
    tn, fp, fn, tp = confusion_matrix(y, predicted, labels=[0, 1]).ravel()
    nan = float("nan")
    return {"accuracy": float(accuracy_score(y, predicted)),
            "balanced_accuracy": float(balanced_accuracy_score(y, predicted)) if len(np.unique(y)) == 2 else nan,
            "precision": float(precision_score(y, predicted, zero_division=nan)),
            "recall": float(recall_score(y, predicted, zero_division=nan)),
            "f1": float(f1_score(y, predicted, zero_division=nan)),
            "tp": float(tp), "fp": float(fp), "tn": float(tn), "fn": float(fn)}


def binary_metrics(y, p, predicted=None) -> dict[str, float]:
    """`ranking_metrics` of scores, and `decision_report` of `predicted` decisions when given; with counts."""
    y = np.asarray(y, int)
    out = {"n": float(len(y)), "fake": float(y.sum())} | ranking_metrics(y, p)
    return out if predicted is None else out | decision_report(y, predicted)


def join_labels(results: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Results rows with a `true_label` column (REAL/FAKE) matched on the video URI (absolute paths)."""
    truth = {normalise_uri(u): lab for u, lab in zip(labels["uri"], labels["label"])}
    out = results.copy()
    out["true_label"] = [truth.get(normalise_uri(u)) for u in out["video_uri"]]
    return out


def normalise_uri(uri: str) -> str:
    """The key videos are matched on: URLs as they are, local paths absolute."""
    return uri if "://" in uri else os.path.abspath(uri)


def format_table(joined: pd.DataFrame) -> str:
    cols = [c for c in ("video", "true_label", "method", "status", "label", "fake_probability", "n_tracks")
            if c == "video" or c in joined]
    view = joined.assign(video=[os.path.basename(u) for u in joined["video_uri"]]).sort_values("video")[cols]
    if "method" in view:  # a dataset without methods shows none; REAL videos have none
        methods = view["method"].fillna("").astype(str)
        view = view.drop(columns="method") if not methods.str.len().any() else view.assign(method=methods)
    return view.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")
