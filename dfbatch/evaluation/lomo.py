"""Leave-one-manipulation-out (LOMO): how well a detector finds a manipulation it never saw.

`run_lomo(LomoConfig)`:

1. an identity-disjoint archive (`corpora.synth.identity_archive`): REAL clips of every identity of the real
   material (the carphone man, the astronaut, 100 LFW portraits) and FAKE clips of every recipe of
   `corpora.fakes`, with the identities split train / val / test — no person (target or swap donor) on two sides;
2. face-sequence shards of it (`training.prepare`, the scoring job's own decode + MTCNN + crops);
3. for every (variant, head, seed, left-out recipe): `training.trainer.train` on the train split without that
   recipe's fakes (``exclude_methods``; the val split too, so neither the epoch nor the threshold sees it), then
   the best checkpoint scored on the test shards like the scoring job aggregates (`training.loop`): the left-out
   recipe's test fakes against the test reals (video AUC; accuracy and recall at the registered threshold and at
   the thresholds other methods would have chosen on the val split) and the seen recipes' test fakes (AUC);
4. one MLflow run per training (the fold's metrics logged into it, nested under the protocol's run), and the
   protocol's run with the mean and spread over seeds per (variant, head, recipe), ``results.csv`` and
   ``summary.md``. A rerun resumes: folds already in ``ROOT/results.jsonl`` are not trained again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from dfbatch.config.lomo import VARIANTS, LomoConfig

log = logging.getLogger(__name__)

SPLIT_COUNTS = ("train_clips", "val_clips", "test_clips")


@dataclass
class LomoResult:
    folds: pd.DataFrame  # one row per (variant, head, seed, recipe)
    summary: pd.DataFrame  # mean and sd over seeds per (variant, head, recipe), plus recipe "all"
    run_id: str | None
    root: str
    timings: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- data
def build_archive(cfg: LomoConfig) -> str:
    """The identity-disjoint archive under ROOT/archive (kept when there); returns its labels.csv."""
    from dfbatch.corpora import synth

    d = os.path.join(cfg.root, "archive")
    labels = os.path.join(d, "labels.csv")
    if not os.path.exists(labels):
        splits = synth.identity_splits(seed=cfg.identity_seed)
        counts = {s.split("_")[0]: tuple(getattr(cfg, s)) for s in SPLIT_COUNTS}
        synth.identity_archive(d, splits=splits, counts=counts, size=cfg.size, seconds=cfg.seconds, fps=cfg.fps,
                               seed=cfg.archive_seed)
    return labels


def prepare_shards(cfg: LomoConfig, labels: str):
    """Shards of the archive under ROOT/shards (resumes); returns the PrepareSummary."""
    from dfbatch.config import PrepareConfig
    from dfbatch.training.prepare import run_prepare

    return run_prepare(PrepareConfig(sources=[labels], output=os.path.join(cfg.root, "shards"),
                                     frames=cfg.prepare_frames, crop_size=cfg.crop_size))


class ShardSequences:
    """The val and test shards' sequences, decoded once (as scoring samples them: the whole track evenly
    subsampled to ``seq_len``), with each video's label and method."""

    def __init__(self, shards: str, seq_len: int):
        from dfbatch.training.prepare import ShardStore, read_shards
        from dfbatch.training.sampler import Item, SequenceBuilder

        table = ShardStore(shards).split_table()
        self.method = dict(zip(table["video_id"], table["method"].fillna("")))
        builder = SequenceBuilder(seq_len)
        self.items: dict[str, list[tuple[tuple, np.ndarray]]] = {}
        for split in ("val", "test"):
            rows = read_shards(shards, split).to_dict("records")
            self.items[split] = [((r["video_id"], r["label"], r["track"]), builder(Item(r, r["label"]), None))
                                 for r in rows]

    def scores(self, net, spec, split: str, batch_size: int = 16) -> pd.DataFrame:
        """Video scores (video_id, y (1 = FAKE), p, method) of a split, aggregated like the scoring job."""
        from dfbatch.training.loop import aggregate_videos, predict_sequences

        preds = predict_sequences(net, spec, self.items[split], batch_size=batch_size)
        ids, y, p = aggregate_videos(preds)
        return pd.DataFrame({"video_id": ids, "y": y, "p": p, "method": [self.method.get(v, "") for v in ids]})


# ------------------------------------------------------------------------------------------ one fold
def fold_metrics(val: pd.DataFrame, test: pd.DataFrame, recipe: str, threshold: float, target_fpr: float) -> dict:
    """The fold's figures: left-out recipe vs test reals (AUC, accuracy / recall / false-positive rate at the
    registered threshold, accuracy at the val-chosen real_fpr, Youden and EER thresholds), seen recipes' AUC."""
    from dfbatch.evaluation.metrics import decision_report, ranking_metrics
    from dfbatch.evaluation.thresholds import choose_threshold, real_fpr_threshold

    seen_val = val[(val["y"] == 0) | (val["method"] != recipe)]
    reals = test[test["y"] == 0]
    left = pd.concat([reals, test[(test["y"] == 1) & (test["method"] == recipe)]])
    seen = test[(test["y"] == 0) | (test["method"] != recipe)]
    out = {"left_out_auc": ranking_metrics(left["y"], left["p"])["roc_auc"],
           "seen_auc": ranking_metrics(seen["y"], seen["p"])["roc_auc"],
           "threshold": float(threshold), "left_out_fakes": float(left["y"].sum()), "test_reals": float(len(reals))}
    at = decision_report(left["y"], left["p"] >= threshold)
    out |= {"left_out_accuracy": at["accuracy"], "left_out_balanced_accuracy": at["balanced_accuracy"],
            "left_out_recall": at["recall"], "test_fpr": at["fp"] / max(1.0, at["fp"] + at["tn"])}
    others = {"real_fpr": real_fpr_threshold(seen_val["y"], seen_val["p"], target_fpr),
              "youden": choose_threshold(seen_val["y"], seen_val["p"], "youden"),
              "eer": choose_threshold(seen_val["y"], seen_val["p"], "eer")}
    for name, t in others.items():
        r = decision_report(left["y"], left["p"] >= t)
        out[f"left_out_balanced_accuracy_{name}"] = r["balanced_accuracy"]
        out[f"left_out_accuracy_{name}"] = r["accuracy"]
    return out


def train_config(cfg: LomoConfig, variant: str, head: str, seed: int, recipe: str, tracking_uri: str):
    """The fold's TrainConfig: the protocol's model and schedule, the variant's preset, this recipe left out."""
    from dfbatch.config import TrainConfig

    settings = dict(
        data=os.path.abspath(os.path.join(cfg.root, "shards")),
        output=os.path.abspath(os.path.join(cfg.root, "checkpoints")),
        name=f"{variant}-{head}-s{seed}-{recipe}", backbone=cfg.backbone, backbone_weights=cfg.backbone_weights,
        temporal=head, head="last", hidden_dim=cfg.hidden_dim, input_size=cfg.input_size, seq_len=cfg.seq_len,
        freeze_blocks=14 if cfg.backbone == "mobilenet_v2" else 0, epochs=cfg.epochs, batch_size=8, lr=2e-3,
        sbi="mix", sbi_fraction=0.5, augment_config=dict(p_blur=0.1, p_downscale=0.1, p_jpeg=0.3,
                                                         jpeg_quality=(60, 95)),
        monitor="val_log_loss", patience=0, exclude_methods=[recipe], seed=seed, register=False,
        # one thread: the folds are small, and on a busy machine torch's threads waiting on each other made epochs
        # 5-10x slower (measured: 67-120 s an epoch with 2 threads, 13 s with 1, under a load of ~20 on 2 cores)
        num_workers=1, cpus_per_worker=1.0, loader_threads=1,
        tracking_uri=tracking_uri, experiment=cfg.experiment, worker_log_level="WARNING")
    settings |= VARIANTS[variant]
    settings |= cfg.train_overrides
    return TrainConfig(**settings)


def _log_fold(client, run_id: str, parent: str | None, row: dict) -> None:
    """The fold's figures into its training run, nested under the protocol's run."""
    from mlflow.entities import Metric, Param, RunTag

    ts = int(time.time() * 1000)
    metrics = [Metric(f"lomo/{k}", float(v), ts, 0) for k, v in row.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seed" and math.isfinite(float(v))]
    tags = [RunTag("dfbatch.kind", "lomo-fold")] + ([RunTag("mlflow.parentRunId", parent)] if parent else [])
    try:
        client.log_batch(run_id, metrics=metrics, tags=tags,
                         params=[Param("lomo.left_out", row["recipe"]), Param("lomo.variant", row["variant"])])
    except Exception as exc:  # tracking trouble never stops the protocol
        log.warning("MLflow logging of fold %s failed: %s", run_id, str(exc)[:200])


# ------------------------------------------------------------------------------------------- summary
SUMMARY_METRICS = ("left_out_auc", "left_out_accuracy", "left_out_balanced_accuracy", "left_out_recall", "test_fpr",
                   "seen_auc", "left_out_balanced_accuracy_real_fpr", "left_out_balanced_accuracy_youden",
                   "left_out_balanced_accuracy_eer")


def summarise(folds: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over seeds per (variant, head, recipe), and per (variant, head) over all recipes ("all": the
    mean over recipes of each seed, then mean and sd over seeds)."""
    keys = ["variant", "head"]
    per = folds.groupby(keys + ["recipe"])[list(SUMMARY_METRICS)].agg(["mean", "std"])
    per.columns = [f"{m}_{s}" for m, s in per.columns]
    per["seeds"] = folds.groupby(keys + ["recipe"])["seed"].nunique()
    seedwise = folds.groupby(keys + ["seed"])[list(SUMMARY_METRICS)].mean()
    allr = seedwise.groupby(keys)[list(SUMMARY_METRICS)].agg(["mean", "std"])
    allr.columns = [f"{m}_{s}" for m, s in allr.columns]
    allr["seeds"] = seedwise.reset_index().groupby(keys)["seed"].nunique()
    allr = allr.assign(recipe="all").set_index("recipe", append=True)
    return pd.concat([per, allr]).reset_index()


def _pm(mean: float, sd: float) -> str:
    if mean != mean:
        return "n/a"
    return f"{mean:.3f}" if sd != sd else f"{mean:.3f} ± {sd:.3f}"


def markdown(summary: pd.DataFrame, recipes: list[str]) -> str:
    """One table per (variant, head): per left-out recipe the AUC and the accuracy at the registered threshold."""
    lines = []
    for (variant, head), part in summary.groupby(["variant", "head"], sort=False):
        part = part.set_index("recipe")
        lines += [f"**{variant}, {head} head** ({int(part['seeds'].max())} seeds; mean ± sd)", "",
                  "| left-out recipe | video AUC | accuracy at threshold | recall | FPR on test reals | seen recipes' AUC |",
                  "|---|---|---|---|---|---|"]
        for r in [*recipes, "all"]:
            if r not in part.index:
                continue
            x = part.loc[r]
            lines.append(f"| {r if r != 'all' else '**mean**'} | {_pm(x.left_out_auc_mean, x.left_out_auc_std)} | "
                         f"{_pm(x.left_out_accuracy_mean, x.left_out_accuracy_std)} | "
                         f"{_pm(x.left_out_recall_mean, x.left_out_recall_std)} | {_pm(x.test_fpr_mean, x.test_fpr_std)} | "
                         f"{_pm(x.seen_auc_mean, x.seen_auc_std)} |")
        lines.append("")
    return "\n".join(lines)


def _log_summary(client, run_id: str, summary: pd.DataFrame, folds: pd.DataFrame, root: str) -> None:
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    metrics = []
    for row in summary.to_dict("records"):
        for m in ("left_out_auc", "left_out_accuracy", "seen_auc"):
            for s in ("mean", "std"):
                v = row[f"{m}_{s}"]
                if v == v:
                    metrics.append(Metric(f"{row['variant']}/{row['head']}/{row['recipe']}/{m}_{s}", float(v), ts, 0))
    for i in range(0, len(metrics), 900):
        client.log_batch(run_id, metrics=metrics[i:i + 900])
    for name in ("results.csv", "summary.csv", "summary.md"):
        client.log_artifact(run_id, os.path.join(root, name))


# ----------------------------------------------------------------------------------------------- run
def _done(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_lomo(cfg: LomoConfig, say=print) -> LomoResult:
    """Run the protocol (see the module doc); `say` gets one line per step and fold."""
    cfg = cfg.with_absolute_paths()
    from mlflow import MlflowClient
    from mlflow.entities import Param

    from dfbatch.demo import quiet_ray
    from dfbatch.models import registry
    from dfbatch.models.checkpoints import load_checkpoint
    from dfbatch.pipeline import init_ray
    from dfbatch.training.trainer import train

    t0 = time.time()
    root = os.path.abspath(cfg.root)
    os.makedirs(root, exist_ok=True)
    tracking_uri = registry.resolve_tracking_uri(cfg.tracking_uri)
    say(f"[lomo] archive: identity-disjoint clips under {root}/archive (every recipe: {', '.join(cfg.recipes)})")
    labels = build_archive(cfg)
    timings = {"archive_s": time.time() - t0}
    init_ray(quiet=cfg.quiet)
    with quiet_ray(cfg.quiet):
        prep = prepare_shards(cfg, labels)
    timings["prepare_s"] = time.time() - t0 - timings["archive_s"]
    say(f"[lomo] shards: {prep.labelled} videos ({prep.skipped} prepared before); " + ", ".join(
        f"{s} {v.get('REAL', 0)} REAL + {v.get('FAKE', 0)} FAKE" for s, v in prep.split_counts.items()))
    shards = os.path.join(root, "shards")
    data = ShardSequences(shards, cfg.seq_len)

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(cfg.experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(cfg.experiment)
    parent = client.create_run(exp_id, run_name="lomo", tags={"dfbatch.kind": "lomo"}).info.run_id
    client.log_batch(parent, params=[Param(k, str(v)[:6000]) for k, v in cfg.to_dict().items() if k != "tracking_uri"])
    results_path = os.path.join(root, "results.jsonl")
    rows = _done(results_path)
    done = {(r["variant"], r["head"], r["seed"], r["recipe"]) for r in rows}
    grid = [(v, h, s, r) for v in cfg.variants for h in cfg.heads for s in cfg.seeds for r in cfg.recipes]
    for i, (variant, head, seed, recipe) in enumerate(grid, 1):
        if (variant, head, seed, recipe) in done:
            continue
        t = time.time()
        tcfg = train_config(cfg, variant, head, seed, recipe, tracking_uri)
        with quiet_ray(cfg.quiet):
            res = train(tcfg)
        net, spec, _ = load_checkpoint(res.model_file)
        row = {"variant": variant, "head": head, "seed": seed, "recipe": recipe, "run_id": res.run_id,
               "best_epoch": res.best_epoch, "val_auc": res.best_metrics.get("val_auc", float("nan")),
               **fold_metrics(data.scores(net, spec, "val"), data.scores(net, spec, "test"), recipe, res.threshold,
                              tcfg.target_fpr),
               "train_s": res.elapsed_s, "fold_s": time.time() - t}
        _log_fold(client, res.run_id, parent, row)
        with open(results_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        rows.append(row)
        say(f"[lomo {i}/{len(grid)}] {variant} {head} seed {seed}, {recipe} left out: AUC {row['left_out_auc']:.3f}, "
            f"accuracy {row['left_out_accuracy']:.3f} at threshold {row['threshold']:.3f}; seen recipes' AUC "
            f"{row['seen_auc']:.3f} ({row['fold_s']:.0f} s)")
    wanted = set(grid)
    folds = pd.DataFrame(rows)
    folds = folds[[(r.variant, r.head, r.seed, r.recipe) in wanted for r in folds.itertuples()]]
    summary = summarise(folds)
    folds.to_csv(os.path.join(root, "results.csv"), index=False)
    summary.to_csv(os.path.join(root, "summary.csv"), index=False)
    with open(os.path.join(root, "summary.md"), "w") as f:
        f.write(markdown(summary, cfg.recipes))
    timings["total_s"] = time.time() - t0
    try:
        _log_summary(client, parent, summary, folds, root)
        client.set_terminated(parent, "FINISHED")
    except Exception as exc:
        log.warning("MLflow logging of the protocol run failed: %s", str(exc)[:200])
    return LomoResult(folds=folds, summary=summary, run_id=parent, root=root, timings=timings)


__all__ = ["LomoResult", "ShardSequences", "build_archive", "fold_metrics", "markdown", "prepare_shards", "run_lomo",
           "summarise", "train_config"]
