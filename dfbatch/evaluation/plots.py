"""The evaluation's plots as PNG files (matplotlib, headless; curves by scikit-learn's displays): ROC and
precision-recall (video and frame level), score histograms by class, a reliability diagram, and the ROC of every frame
aggregation. `dfbatch evaluate` logs them as artifacts of its MLflow run (``plots/``)."""

from __future__ import annotations

import os

import numpy as np

PLOTS = ("roc.png", "precision_recall.png", "score_histogram.png", "reliability.png", "roc_aggregations.png")


def write_plots(folder: str, ev) -> list[str]:
    """Write the plots of an `Evaluation` into `folder`; returns the files written. Curves that need both classes
    are drawn only when both are present (the reliability diagram and histograms always are)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from sklearn.calibration import CalibrationDisplay
    from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay

    from dfbatch.evaluation.evaluate import aggregation_scores, frame_scores
    from dfbatch.stages.aggregate import parse

    ok = ev.videos[ev.videos["status"] == "ok"]
    y = (ok["true_label"] == "FAKE").to_numpy(int)
    p = ok["fake_probability"].to_numpy(float)
    fy, fp = frame_scores(ev.videos, ev.faces)
    title = f"{ev.model['name']} v{ev.model['version']} on {ev.dataset['name']}"
    both = len(np.unique(y)) == 2
    curves = [("video", y, p)] + ([("frame", fy, fp)] if len(np.unique(fy)) == 2 else [])
    written = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        path = os.path.join(folder, name)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    if both:
        fig, ax = plt.subplots(figsize=(5, 5))
        for level, yy, pp in curves:
            RocCurveDisplay.from_predictions(yy, pp, ax=ax, name=f"{level} level", pos_label=1)
        ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
        ax.set_xlabel("false-positive rate (REAL flagged FAKE)")
        ax.set_ylabel("true-positive rate (FAKE caught)")
        ax.set_title(f"ROC — {title}", fontsize=9)
        ax.legend(loc="lower right", fontsize=8)
        save(fig, "roc.png")

        fig, ax = plt.subplots(figsize=(5, 5))
        for level, yy, pp in curves:
            PrecisionRecallDisplay.from_predictions(yy, pp, ax=ax, name=f"{level} level", pos_label=1)
        ax.set_xlabel("recall (FAKE caught)")
        ax.set_ylabel("precision (flagged that are FAKE)")
        ax.set_title(f"precision-recall — {title}", fontsize=9)
        ax.legend(loc="lower left", fontsize=8)
        save(fig, "precision_recall.png")

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    bins = np.linspace(0, 1, 21)
    for ax, (level, yy, pp) in zip(axes, [("video", y, p), ("frame", fy, fp)]):
        for cls, colour in ((0, "tab:blue"), (1, "tab:red")):
            ax.hist(pp[yy == cls], bins=bins, alpha=0.6, color=colour, label=f"{'FAKE' if cls else 'REAL'} ({(yy == cls).sum()})")
        if level == "video" and "video/threshold" in ev.metrics and not np.isnan(ev.metrics["video/threshold"]):
            ax.axvline(ev.metrics["video/threshold"], color="black", ls="--", lw=1, label="threshold")
        ax.set_xlabel(f"P(fake), {level} level")
        ax.set_ylabel("count")
        ax.legend(fontsize=8)
    fig.suptitle(f"scores by true class — {title}", fontsize=9)
    save(fig, "score_histogram.png")

    fig, ax = plt.subplots(figsize=(5, 5))
    for level, yy, pp in [("video", y, p), ("frame", fy, fp)]:
        if len(yy):
            CalibrationDisplay.from_predictions(yy, np.clip(pp, 0, 1), n_bins=10, ax=ax, name=f"{level} level", pos_label=1)
    ax.set_xlabel("mean predicted P(fake) in the bin")
    ax.set_ylabel("fraction FAKE in the bin")
    ax.set_title(f"reliability — {title}", fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    save(fig, "reliability.png")

    if both:
        track = parse(ev.aggregation)["tracks"] or "max"
        fig, ax = plt.subplots(figsize=(5, 5))
        for (_, f), scores in aggregation_scores(ev.videos, ev.faces, tracks=(track,)).items():
            if not np.isnan(scores).any():
                RocCurveDisplay.from_predictions(y, scores, ax=ax, name=f"frames={f}", pos_label=1)
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
        ax.set_title(f"ROC by frame aggregation (tracks={track}) — {title}", fontsize=9)
        ax.legend(loc="lower right", fontsize=8)
        save(fig, "roc_aggregations.png")
    return written
