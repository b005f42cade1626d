"""Compare model versions on the same labelled videos, and promote the best one.

    from dfbatch.config import CompareConfig
    cmp = run_compare(CompareConfig(models=["models:/dfbatch-detector@champion", "models:/dfbatch-detector/4"],
                                    labels=["/data/heldout/labels.csv"], promote="video/roc_auc"))

Each version is evaluated by `evaluation.evaluate.run_evaluate` (its own MLflow evaluation run, metrics linked to
the version: MLflow's run comparison view and `mlflow.search_runs` line them up too). The side-by-side table (rows:
metrics, columns: versions, the best value of each metric marked) is printed and logged as ``comparison.md`` and
``comparison.csv``, artifacts of a compare run in the same experiment.

`--promote METRIC` moves the alias (``champion``) to the best version on METRIC only when it strictly beats the
version holding the alias now (evaluated too when it was not named), and records why: tag ``dfbatch.promotion`` on
the new holder and on the compare run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
from dataclasses import dataclass, field

import pandas as pd

from dfbatch.config import CompareConfig, EvaluateConfig
from dfbatch.config.evaluate import EvaluationSettings
from dfbatch.errors import UserError

HIGHER_IS_BETTER = {"roc_auc", "average_precision", "accuracy", "balanced_accuracy", "precision", "recall", "f1",
                    "coverage"}
LOWER_IS_BETTER = {"eer", "log_loss", "log_loss_all", "brier"}
# the table's rows, in this order (then any other aggregation/ and method/ keys)
HEADLINE = ["video/roc_auc", "video/average_precision", "video/eer", "video/log_loss", "video/log_loss_all",
            "video/brier", "video/threshold", "video/accuracy", "video/balanced_accuracy", "video/precision",
            "video/recall", "video/f1", "video/tp", "video/fp", "video/tn", "video/fn", "frame/roc_auc",
            "frame/average_precision", "frame/eer", "frame/log_loss", "frame/brier", "frame/n", "videos/labelled",
            "videos/ok", "videos/no_face", "videos/failed", "videos/not_scored", "videos/coverage"]


AGGREGATION_ORDER = ("roc_auc", "average_precision", "eer", "log_loss")
METHOD_ORDER = ("videos", "unscored", "roc_auc", "recall")
# printed by default (the artifacts and --json have every metric)
SHORT = {"video/roc_auc", "video/average_precision", "video/eer", "video/log_loss", "video/log_loss_all",
         "video/threshold", "video/accuracy", "video/balanced_accuracy", "video/precision", "video/recall", "video/f1",
         "frame/roc_auc", "frame/average_precision", "frame/eer", "frame/log_loss", "videos/ok", "videos/no_face",
         "videos/failed", "videos/not_scored"}


def short(metric: str) -> bool:
    return metric in SHORT or (metric.startswith(("aggregation/", "method/")) and metric.endswith(("/roc_auc", "/recall")))


def direction(metric: str) -> int | None:
    """+1 when higher is better, -1 when lower is, None for counts and settings (no best)."""
    last = metric.rsplit("/", 1)[-1]
    return 1 if last in HIGHER_IS_BETTER else -1 if last in LOWER_IS_BETTER else None


@dataclass
class Comparison:
    evaluations: list  # Evaluation per version, in column order
    columns: list[str]  # "NAME/VERSION (aliases)"
    table: pd.DataFrame  # index: metric, columns: `columns`
    best: dict[str, list[str]]  # metric -> the best column(s)
    dataset: dict
    run_id: str | None = None
    experiment: str | None = None
    promotion: dict | None = None  # metric, alias, winner, holder, values, moved, reason
    notes: list[str] = field(default_factory=list)


def run_compare(cfg: CompareConfig) -> Comparison:
    cfg = cfg.with_absolute_paths()
    from dfbatch.evaluation.evaluate import run_evaluate
    from dfbatch.models import registry

    if cfg.promote and direction(cfg.promote) is None:
        raise UserError(f"--promote {cfg.promote}: not a metric with a better direction; use e.g. video/roc_auc, "
                        "video/log_loss, video/eer, video/f1, aggregation/confident/roc_auc")
    infos, seen, notes = [], set(), []
    for uri in cfg.models:
        info = registry.version_info(uri, cfg.tracking_uri)
        if (info["name"], info["version"]) in seen:
            notes.append(f"{uri} is {info['name']}/{info['version']}, already compared")
            continue
        seen.add((info["name"], info["version"]))
        infos.append(info)
    holder = None
    if cfg.promote:
        names = {i["name"] for i in infos}
        if len(names) > 1:
            raise UserError(f"--promote moves an alias of one registered model; these are versions of {', '.join(sorted(names))}")
        holder = infos[0]["model_aliases"].get(cfg.alias)
        if holder is not None and (infos[0]["name"], holder) not in seen:
            infos.append(registry.version_info(f"models:/{infos[0]['name']}/{holder}", cfg.tracking_uri))
            notes.append(f"{cfg.alias} (version {holder}) evaluated too: --promote compares against it")
        if len(infos) < 2 and holder is None:
            notes.append(f"no version holds '{cfg.alias}' yet")
    shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(EvaluationSettings)}
    evaluations = [run_evaluate(EvaluateConfig(**shared, labels=cfg.labels, model_uri=i["uri"])) for i in infos]
    columns = [f"{e.model['name']}/{e.model['version']}" + (f" ({', '.join(sorted(e.model['aliases']))})"
                                                             if e.model["aliases"] else "") for e in evaluations]
    table, best = comparison_table([e.metrics for e in evaluations], columns)
    dataset = {k: v for k, v in evaluations[0].dataset.items() if not k.startswith("_")}
    cmp = Comparison(evaluations, columns, table, best, dataset, notes=notes)
    if cfg.promote:
        cmp.promotion = decide_promotion(cmp, cfg.promote, cfg.alias, holder)
    _log(cfg, cmp)
    if cmp.promotion and cmp.promotion["moved"]:
        p = cmp.promotion
        name = evaluations[0].model["name"]
        registry.set_alias(name, p["winner"], cfg.alias, tracking_uri=cfg.tracking_uri)
        registry.set_version_tag(name, p["winner"], registry.PROMOTION_TAG, p["reason"] + f" (compare run {cmp.run_id})",
                                 tracking_uri=cfg.tracking_uri)
    return cmp


def comparison_table(metrics: list[dict], columns: list[str]) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """(metrics x versions table, the best column(s) of each metric with a direction and finite values)."""
    keys = [k for k in HEADLINE if any(k in m for m in metrics)]
    for prefix, order in (("aggregation/", AGGREGATION_ORDER), ("method/", METHOD_ORDER)):
        groups = sorted({k.split("/")[1] for m in metrics for k in m if k.startswith(prefix)})
        keys += [f"{prefix}{g}/{k}" for g in groups for k in order if any(f"{prefix}{g}/{k}" in m for m in metrics)]
    table = pd.DataFrame({c: [m.get(k, float("nan")) for k in keys] for c, m in zip(columns, metrics)}, index=keys)
    table.index.name = "metric"
    best = {}
    for k in keys:
        d = direction(k)
        values = {c: v for c, v in table.loc[k].items() if isinstance(v, float) and math.isfinite(v)}
        if d is None or len(values) < 2:
            continue
        top = max(values.values()) if d > 0 else min(values.values())
        best[k] = [c for c, v in values.items() if v == top]
    return table, best


def decide_promotion(cmp: Comparison, metric: str, alias: str, holder: str | None) -> dict:
    """Whether the best version on `metric` takes `alias` from its holder (only when strictly better)."""
    if metric not in cmp.table.index:
        raise UserError(f"--promote {metric}: no such metric in this evaluation; choose one of "
                        + ", ".join(k for k in cmp.table.index if direction(k)))
    d = direction(metric)
    versions = [e.model["version"] for e in cmp.evaluations]
    values = dict(zip(versions, (float(v) for v in cmp.table.loc[metric])))
    finite = {v: x for v, x in values.items() if math.isfinite(x)}
    out = {"metric": metric, "alias": alias, "holder": holder, "values": values, "moved": False, "winner": None,
           "dataset": f"{cmp.dataset['name']} (digest {cmp.dataset['digest']})"}
    if not finite:
        return out | {"reason": f"not promoted: {metric} is undefined for every version on {out['dataset']}"}
    top = max(finite.values()) if d > 0 else min(finite.values())
    tied = [v for v, x in finite.items() if x == top]
    winner = holder if holder in tied else tied[0]
    out["winner"] = winner
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if holder is None:
        return out | {"moved": True, "reason": f"{alias} since {when}: best {metric} {top:.4f} on {out['dataset']}; "
                      f"no version held '{alias}' before"}
    if winner == holder:
        return out | {"reason": f"not promoted: {alias} (version {holder}) is already the best on {metric} "
                      f"({top:.4f}) on {out['dataset']}"}
    was = values.get(holder, float("nan"))
    better = not math.isfinite(was) or (top > was if d > 0 else top < was)
    if not better:
        return out | {"reason": f"not promoted: version {winner} ties {alias} (version {holder}) on {metric} ({top:.4f})"}
    return out | {"moved": True, "reason": f"{alias} since {when}: {metric} {top:.4f} vs {_fmt(was)} of version {holder} "
                  f"(the previous {alias}) on {out['dataset']}"}


def _fmt(v: float) -> str:
    return f"{v:.4f}" if math.isfinite(v) else "n/a"


def format_table(cmp: Comparison, markdown: bool = False, everything: bool = True) -> str:
    """The table as text (best values marked *) or Markdown (best values in bold); `everything` False: the main
    metrics only (`short`)."""
    rows = [["metric", *cmp.columns]]
    for k in cmp.table.index:
        if not everything and not short(k):
            continue
        cells = []
        for c in cmp.columns:
            v = float(cmp.table.loc[k, c])
            text = _fmt(v) if direction(k) or k.endswith(("threshold", "coverage")) else (f"{v:.0f}" if math.isfinite(v) else "n/a")
            if c in cmp.best.get(k, []):
                text = f"**{text}**" if markdown else f"{text} *"
            cells.append(text)
        rows.append([k, *cells])
    if markdown:
        head = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        return "\n".join(head + ["| " + " | ".join(r) + " |" for r in rows[1:]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
                     for r in rows)


def format_comparison(cmp: Comparison, everything: bool = False) -> str:
    d = cmp.dataset
    shown = len(cmp.table.index) if everything else sum(short(k) for k in cmp.table.index)
    lines = [f"dfbatch compare — {len(cmp.columns)} versions on '{d['name']}' (digest {d['digest']}: {d['videos']} "
             f"labelled videos, {d['fake']} FAKE); best of each metric marked *", "", format_table(cmp, everything=everything),
             "", f"  {shown} of {len(cmp.table.index)} metrics shown (--all-metrics: every one; all are in comparison.csv)"]
    for e, c in zip(cmp.evaluations, cmp.columns):
        lines.append(f"  {c}: evaluation run {e.run_id}" + (f"; {len(e.notes)} note(s): " + " | ".join(e.notes) if e.notes else ""))
    if cmp.run_id:
        lines.append(f"  table: comparison.md / comparison.csv in MLflow run {cmp.run_id} (experiment '{cmp.experiment}')")
    if cmp.promotion:
        p = cmp.promotion
        lines.append(f"  promotion: {'MOVED ' + p['alias'] + ' to version ' + p['winner'] + ' — ' if p['moved'] else ''}{p['reason']}")
    lines += [f"  note: {n}" for n in cmp.notes]
    return "\n".join(lines)


def _log(cfg: CompareConfig, cmp: Comparison) -> None:
    """A compare run in cfg.experiment with the table as comparison.md / comparison.csv."""
    from mlflow.entities import DatasetInput, InputTag

    from dfbatch.models import registry

    uri = registry.resolve_tracking_uri(cfg.tracking_uri)
    client = registry._client(uri)
    exp_id = registry._experiment_id(client, cfg.experiment, uri)
    d = cmp.dataset
    tags = {"dfbatch.compare.versions": ", ".join(cmp.columns), "dfbatch.compare.dataset": d["name"],
            "dfbatch.compare.dataset_digest": d["digest"],
            "dfbatch.compare.evaluation_runs": ", ".join(e.run_id or "" for e in cmp.evaluations)}
    if cmp.promotion:
        tags["dfbatch.promotion"] = cmp.promotion["reason"]
    run = client.create_run(exp_id, run_name=f"compare {' vs '.join(c.split(' ')[0] for c in cmp.columns)} @ {d['name']}",
                            tags=tags)
    cmp.run_id, cmp.experiment = run.info.run_id, cfg.experiment
    ds = cmp.evaluations[0].dataset["_mlflow"]
    client.log_inputs(cmp.run_id, datasets=[DatasetInput(ds._to_mlflow_entity(), [InputTag("mlflow.data.context", "evaluation")])])
    with tempfile.TemporaryDirectory(prefix="dfbatch-compare-") as tmp:
        with open(os.path.join(tmp, "comparison.md"), "w", encoding="utf-8") as fh:
            fh.write(f"# {' vs '.join(cmp.columns)} on {d['name']} (digest {d['digest']})\n\n"
                     f"Best value of each metric in bold. Evaluation runs: {tags['dfbatch.compare.evaluation_runs']}.\n\n"
                     + format_table(cmp, markdown=True) + "\n"
                     + (f"\nPromotion: {cmp.promotion['reason']}\n" if cmp.promotion else ""))
        csv = cmp.table.copy()
        csv["best"] = [", ".join(cmp.best.get(k, [])) for k in csv.index]
        csv.to_csv(os.path.join(tmp, "comparison.csv"))
        client.log_artifacts(cmp.run_id, tmp)
    client.set_terminated(cmp.run_id)
