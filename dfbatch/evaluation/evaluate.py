"""The evaluation job: one model version against labelled videos, scored through the scoring job itself.

    from dfbatch.config import EvaluateConfig
    ev = run_evaluate(EvaluateConfig(model_uri="models:/dfbatch-detector/3", labels=["/data/heldout/labels.csv"]))
    ev.metrics["video/roc_auc"], ev.metrics["frame/roc_auc"], ev.run_id

1. `labelled_set`: the labels (DFDC, FF++, Celeb-DF, CSV; optionally one split) and their identity as an MLflow
   dataset (name, digest of the relative paths, labels and methods).
2. With a model: `pipeline.run_score` scores the labelled videos into OUT (it resumes: rows OUT already holds for
   that version are reused; `reused_scoring`: when every labelled video is a local file with its row, no job
   starts). Without: the rows OUT holds (one model version; several is an error).
3. `version_rows`: the videos rows of that version for the labelled videos (the latest per video; a labelled video
   without a row is `not_scored`) and their faces rows (same scoring run).
4. `compute_metrics` (pure, from those rows): video level over `ok` videos (ROC AUC, average precision, EER, log
   loss, Brier; accuracy, balanced accuracy, precision, recall, F1 and the confusion matrix from the rows' own
   labels, i.e. at the threshold the rows record), frame level (every per-frame score of every track), every frame
   aggregation recomputed from the faces rows, per manipulation method, and the counts of no_face / failed /
   not-scored videos (never counted right or wrong; `video/log_loss_all` scores them 0.5, as DFDC did).
5. `--calibrate`: thresholds (and temperatures) for every aggregation chosen on these videos, stored on the version.
6. MLflow: one run per (model version, dataset) in `cfg.experiment` (a repeated evaluation logs into the same run),
   metrics linked to the version's logged model and the dataset, the dataset as a run input, plots and the
   per-video table as artifacts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from dfbatch.config import EvaluateConfig
from dfbatch.errors import UserError, redact
from dfbatch.evaluation.metrics import binary_metrics, normalise_uri, ranking_metrics

log = logging.getLogger(__name__)

UNSCORED_P = 0.5  # what `video/log_loss_all` gives a no_face / failed / not-scored video (DFDC's convention)
STATUSES = ("ok", "no_face", "failed", "not_scored")


@dataclass
class Evaluation:
    """One model version on one labelled set: the rows, every number, and where they were logged."""

    model: dict  # name, version, uri (immutable), model_id (MLflow logged model), aliases
    dataset: dict  # name, digest, source, videos, fake, split
    videos: pd.DataFrame  # one row per labelled video: video_uri, true_label, method, status, fake_probability, label, ...
    faces: pd.DataFrame  # the faces rows of those videos (the same scoring runs)
    metrics: dict[str, float]
    output: str
    aggregation: str = ""  # the rows' aggregation (e.g. "tracks=max,frames=mean")
    threshold_source: str = ""  # where the rows' threshold came from (their scoring runs' record)
    settings: dict | None = None  # the scoring settings of the rows (from their scoring runs)
    notes: list[str] = field(default_factory=list)
    run_id: str | None = None
    experiment: str | None = None
    artifacts: list[str] = field(default_factory=list)
    calibration: dict | None = None  # stored by --calibrate
    scoring: dict | None = None  # the scoring job's summary (with --model; `reused_scoring`'s when none was needed)

    def to_dict(self) -> dict:
        dataset = {k: v for k, v in self.dataset.items() if not k.startswith("_")}
        return {"model": self.model, "dataset": dataset, "metrics": self.metrics, "output": redact(self.output),
                "aggregation": self.aggregation, "threshold_source": self.threshold_source, "settings": self.settings, "notes": self.notes,
                "mlflow_run_id": self.run_id, "experiment": self.experiment, "artifacts": self.artifacts,
                "calibration": self.calibration, "scoring": self.scoring}


# ------------------------------------------------------------------------------------------- the labelled set
def labelled_set(cfg: EvaluateConfig) -> tuple[pd.DataFrame, dict]:
    """(labels: uri, label, method, split; the dataset's identity: name, digest, source, videos, fake, split)."""
    from dfbatch.training.labels import load_labels

    options = {"client_kwargs": {"endpoint_url": cfg.endpoint_url}} if cfg.endpoint_url else None
    labels = load_labels(cfg.labels, layout=cfg.layout, storage_options=options)
    if cfg.split:
        if labels["split"].isna().all():
            raise UserError(f"--split {cfg.split}: the labels carry no split (a `split` column or an official split)")
        labels = labels[labels["split"] == cfg.split]
        if labels.empty:
            raise UserError(f"--split {cfg.split}: no labelled video in that split")
    labels = labels.assign(uri=[normalise_uri(u) for u in labels["uri"]]).drop_duplicates("uri")
    labels = labels.sort_values("uri").reset_index(drop=True)
    canonical = pd.DataFrame({"file": _relative(list(labels["uri"])), "label": labels["label"].astype(str),
                              "method": labels["method"].fillna("").astype(str)})
    import mlflow.data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = mlflow.data.from_pandas(canonical, source=redact(str(cfg.labels[0])), targets="label",
                                     name=cfg.dataset_name or _dataset_name(cfg))
    info = {"name": ds.name, "digest": ds.digest, "source": redact(" ".join(map(str, cfg.labels)))[:500],
            "videos": int(len(labels)), "fake": int((labels["label"] == "FAKE").sum()), "split": cfg.split}
    return labels, info | {"_mlflow": ds}


def _relative(uris: list[str]) -> list[str]:
    """The URIs relative to their common folder: the digest then names the labels, not where the copy lives."""
    if not uris:
        return []
    prefix = os.path.commonprefix(uris)
    cut = prefix.rfind("/") + 1 if len(uris) > 1 or "/" in prefix else 0
    return [u[cut:] for u in uris]


def _dataset_name(cfg: EvaluateConfig) -> str:
    root = str(cfg.labels[0]).rstrip("/")
    base = os.path.basename(os.path.dirname(root) if root.lower().endswith(".csv") else root) or "dataset"
    return base + (f"[{cfg.split}]" if cfg.split else "")


def default_output(dataset: dict) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset["name"]).strip("._") or "dataset"
    return os.path.join("dfbatch-eval", f"{slug}-{dataset['digest']}")


# -------------------------------------------------------------------------------------------------- the rows
@contextlib.contextmanager
def _manifest(labels: pd.DataFrame):
    """A manifest of the labelled videos' URIs (a temporary file): the scoring job's SOURCE."""
    with tempfile.TemporaryDirectory(prefix="dfbatch-eval-") as tmp:
        manifest = os.path.join(tmp, "labelled.txt")
        with open(manifest, "w", encoding="utf-8") as fh:
            fh.writelines(f"{u}\n" for u in labels["uri"])
        yield manifest


def score_labelled(cfg: EvaluateConfig, labels: pd.DataFrame, output: str):
    """Score the labelled videos with the scoring job (a manifest of their URIs); returns its Summary."""
    from dfbatch.pipeline import run_score

    with _manifest(labels) as manifest:
        return run_score(cfg.score_config([manifest], output, cfg.model_uri))


def reused_scoring(cfg: EvaluateConfig, labels: pd.DataFrame, output: str, storage) -> dict | None:
    """When every labelled video is a local file that already has a row of the registered version `cfg.model_uri`
    names in OUT (by video id: path, size and mtime, as the scoring job resumes), what the scoring job would do is
    nothing: its `Summary` (no job id, no MLflow run) without starting it (no Ray, no actors). None: run the scoring
    job (an S3 set, a checkpoint file or run URI, or a video without a row)."""
    from dfbatch.io.listing import iter_videos
    from dfbatch.io.results import ResultStore
    from dfbatch.io.resume import ID_DTYPE, scored_index
    from dfbatch.io.storage import is_s3
    from dfbatch.models import registry

    uris = list(labels["uri"])
    if not str(cfg.model_uri).startswith("models:/") or not uris or any(is_s3(u) for u in uris):
        return None
    with _manifest(labels) as manifest:  # listed as the scoring job lists it: the same video ids
        refs = list(iter_videos([manifest], storage))
    try:
        info = registry.version_info(cfg.model_uri, cfg.tracking_uri)
    except Exception:  # an unknown model: the scoring job says so as it always does
        return None
    index = scored_index(ResultStore(output, storage), info["name"], info["version"])
    ids = np.array([r.video_id for r in refs], dtype=ID_DTYPE)
    if not len(index) or not np.isin(ids, index).all():
        return None
    from dfbatch.pipeline import Summary

    return Summary(redact(output), info["name"], info["version"], info["uri"], None, "", listed=len(refs),
                   skipped=len(refs)).to_dict()


def _read(output: str, sub: str, storage, name: str | None = None, version: str | None = None) -> pd.DataFrame:
    import pyarrow.compute as pc

    from dfbatch.io.results import ResultStore

    store = ResultStore(output, storage)
    ds = store.dataset(sub)
    if ds is None:
        return store.read(sub)
    flt = None
    if name is not None:
        flt = (pc.field("model_name") == name) & (pc.field("model_version") == str(version))
    return ds.to_table(filter=flt).to_pandas()


def pick_version(output: str, storage, labels: pd.DataFrame, model_version: str | None) -> tuple[str, str]:
    """(name, version) of the rows OUT holds for the labelled videos; several versions are an error (each number
    belongs to one version)."""
    rows = _read(output, "videos", storage)
    if rows.empty:
        raise UserError(f"no results under {redact(output)}")
    rows = rows[[normalise_uri(u) in set(labels["uri"]) for u in rows["video_uri"]]]
    if model_version:
        rows = rows[rows["model_version"] == str(model_version)]
    pairs = sorted(set(zip(rows["model_name"], rows["model_version"])))
    if not pairs:
        raise UserError(f"no results under {redact(output)} for the labelled videos"
                        + (f" for model version {model_version}" if model_version else ""))
    if len(pairs) > 1:
        counts = rows.groupby(["model_name", "model_version"]).size()
        listed = ", ".join(f"{n}/{v}: {counts[(n, v)]} rows" for n, v in pairs)
        raise UserError(f"{redact(output)} holds rows of {len(pairs)} model versions for these videos ({listed}); "
                        "each number belongs to one version: choose one with --model-version V, or compare them "
                        "with `dfbatch compare MODEL MODEL --labels ...`")
    return pairs[0]


def version_rows(output: str, storage, labels: pd.DataFrame, name: str, version: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one videos row per labelled video, with true_label and method; status `not_scored` where the version has no
    row — the latest row where it has several), (their faces rows, from the same scoring runs)."""
    rows = _read(output, "videos", storage, name, version)
    rows = rows.assign(_key=[normalise_uri(u) for u in rows["video_uri"]])
    rows = rows[rows["_key"].isin(set(labels["uri"]))]
    rows = rows.sort_values("scored_at", kind="stable").drop_duplicates("_key", keep="last")
    truth = labels[["uri", "label", "method"]].rename(columns={"uri": "_key", "label": "true_label"})
    videos = truth.merge(rows, on="_key", how="left")
    videos["video_uri"] = videos["video_uri"].fillna(videos["_key"])
    videos["status"] = videos["status"].fillna("not_scored")
    videos = videos.drop(columns="_key").sort_values("video_uri").reset_index(drop=True)
    faces = _read(output, "faces", storage, name, version)
    ok = videos[videos["status"] == "ok"]
    keys = set(zip(ok["video_id"], ok["mlflow_run_id"].fillna("")))
    faces = faces[[k in keys for k in zip(faces["video_id"], faces["mlflow_run_id"].fillna(""))]]
    return videos, faces.sort_values(["video_uri", "track_id"]).reset_index(drop=True)


# -------------------------------------------------------------------------------------------------- metrics
def aggregation_scores(videos: pd.DataFrame, faces: pd.DataFrame, *, frames: tuple[str, ...] | None = None,
                       tracks: tuple[str, ...] | None = None) -> dict[tuple[str, str], np.ndarray]:
    """{(track aggregation, frame aggregation): video scores of the `ok` videos (in `videos` order)}, recomputed
    from the faces rows' per-frame scores (uncalibrated). `model` needs the stored sequence score: a strategy a
    video lacks the data for gives NaN."""
    from dfbatch.stages.aggregate import FRAME_STRATEGIES, TRACK_STRATEGIES, track_score, video_score

    ok = videos[videos["status"] == "ok"]
    by_video = {vid: g for vid, g in faces.groupby("video_id", sort=False)}
    out = {}
    for t in tracks or tuple(TRACK_STRATEGIES):
        for f in frames or tuple(FRAME_STRATEGIES):
            scores = []
            for vid in ok["video_id"]:
                g = by_video.get(vid)
                if g is None or (f == "model" and g["sequence_probability"].isna().any()):
                    scores.append(float("nan"))
                    continue
                per_track = [track_score(np.asarray(fs, float), seq, f)
                             for fs, seq in zip(g["frame_scores"], g["sequence_probability"])]
                scores.append(video_score(per_track, t))
            out[(t, f)] = np.asarray(scores, float)
    return out


def compute_metrics(videos: pd.DataFrame, faces: pd.DataFrame, *, track_aggregation: str = "max") -> dict[str, float]:
    """Every number of the report from the rows (see the module doc); keys ``level/metric``."""
    y_all = (videos["true_label"] == "FAKE").to_numpy(int)
    status = videos["status"].to_numpy()
    ok = videos[videos["status"] == "ok"]
    y = (ok["true_label"] == "FAKE").to_numpy(int)
    p = ok["fake_probability"].to_numpy(float)
    m: dict[str, float] = {f"videos/{s}": float((status == s).sum()) for s in STATUSES}
    m["videos/labelled"] = float(len(videos))
    m["videos/coverage"] = float(len(ok) / len(videos)) if len(videos) else float("nan")
    thresholds = ok["threshold"].dropna().unique()
    m |= {f"video/{k}": v for k, v in binary_metrics(y, p, (ok["label"] == "FAKE").to_numpy(int)).items()}
    m["video/threshold"] = float(thresholds[0]) if len(thresholds) == 1 else float("nan")
    p_all = videos["fake_probability"].where(videos["status"] == "ok", UNSCORED_P).to_numpy(float)
    m["video/log_loss_all"] = ranking_metrics(y_all, p_all)["log_loss"]

    frame_y, frame_p = frame_scores(videos, faces)
    m |= {f"frame/{k}": v for k, v in binary_metrics(frame_y, frame_p).items()}

    for (_, f), scores in aggregation_scores(videos, faces, tracks=(track_aggregation,)).items():
        good = ~np.isnan(scores)
        r = ranking_metrics(y[good], scores[good]) if good.all() else {}
        for k in ("roc_auc", "average_precision", "eer", "log_loss"):
            m[f"aggregation/{f}/{k}"] = r.get(k, float("nan"))

    real = ok["true_label"] == "REAL"
    fakes = videos[videos["true_label"] == "FAKE"]
    for method in sorted(set(fakes["method"].dropna()) - {""}):
        key = "method/" + re.sub(r"[^A-Za-z0-9_.-]+", "_", str(method))
        mine = ok[(ok["true_label"] == "FAKE") & (ok["method"] == method)]
        sub = pd.concat([ok[real], mine])
        r = ranking_metrics((sub["true_label"] == "FAKE").to_numpy(int), sub["fake_probability"].to_numpy(float))
        m[f"{key}/videos"] = float((fakes["method"] == method).sum())
        m[f"{key}/unscored"] = float(((fakes["method"] == method) & (fakes["status"] != "ok")).sum())
        m[f"{key}/roc_auc"] = r["roc_auc"]
        m[f"{key}/recall"] = float((mine["label"] == "FAKE").mean()) if len(mine) else float("nan")
    return m


def frame_scores(videos: pd.DataFrame, faces: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) of every per-frame score of every face track of the `ok` videos (its video's label)."""
    truth = dict(zip(videos["video_id"], videos["true_label"]))
    ys, ps = [], []
    for vid, fs in zip(faces["video_id"], faces["frame_scores"]):
        ys += [int(truth.get(vid) == "FAKE")] * len(fs)
        ps += list(fs)
    return np.asarray(ys, int), np.asarray(ps, float)


# ---------------------------------------------------------------------------------------------- the job
def run_evaluate(cfg: EvaluateConfig) -> Evaluation:
    """Score (with `cfg.model_uri`) and evaluate one model version on the labelled videos; log and calibrate."""
    cfg = cfg.with_absolute_paths()
    from dfbatch.io.storage import Storage
    from dfbatch.stages.aggregate import parse

    labels, dataset = labelled_set(cfg)
    storage = Storage(cfg.endpoint_url)
    scoring = None
    if cfg.model_uri:
        output = cfg.output or default_output(dataset)
        scoring = reused_scoring(cfg, labels, output, storage) or score_labelled(cfg, labels, output).to_dict()
        name, version = scoring["model_name"], scoring["model_version"]
    else:
        output = cfg.output
        name, version = pick_version(output, storage, labels, cfg.model_version)
    videos, faces = version_rows(output, storage, labels, name, version)
    aggregations = sorted(set(videos["aggregation"].dropna()))
    notes = []
    if len(aggregations) > 1:
        notes.append(f"the rows were scored with several aggregations ({'; '.join(aggregations)}): the video-level "
                     "numbers mix them; the per-aggregation numbers are recomputed alike for all")
    aggregation = aggregations[0] if aggregations else ""
    track_agg = parse(aggregation)["tracks"] or "max"
    metrics = compute_metrics(videos, faces, track_aggregation=track_agg)
    if videos["threshold"].dropna().nunique() > 1:
        notes.append("the rows were labelled with different thresholds (scored at different times): the "
                     "threshold metrics use each row's own label")
    model = _model_info(cfg, name, version, videos)
    ev = Evaluation(model, dataset, videos, faces, metrics, output, aggregation, None, notes, scoring=scoring)
    if cfg.model_uri or cfg.log_mlflow:  # (reading the scoring runs needs the MLflow store)
        ev.settings = _row_settings(ev, cfg)
    if cfg.calibrate:
        ev.calibration = _calibrate(cfg, ev)
    if cfg.log_mlflow:
        _log(cfg, ev)
    if ev.calibration is not None:  # stored last: the record names the evaluation run
        from dfbatch.models import registry

        ev.calibration["run_id"] = ev.run_id
        registry.set_calibration(name, version, ev.calibration, tracking_uri=cfg.tracking_uri)
    return ev


def _model_info(cfg: EvaluateConfig, name: str, version: str, videos: pd.DataFrame) -> dict:
    """The version's identity; for a registered one also its MLflow 3 logged model id and aliases."""
    uris = videos["model_uri"].dropna().unique()
    uri = str(uris[0]) if len(uris) else (cfg.model_uri or "")
    info = {"name": name, "version": str(version), "uri": uri, "model_id": None, "aliases": [], "registered": False}
    if uri.startswith("models:/"):
        from dfbatch.models import registry

        try:
            v = registry.version_info(uri, cfg.tracking_uri)
            info |= {"model_id": v["model_id"], "aliases": v["aliases"], "registered": True}
        except UserError as exc:
            log.warning("model %s not found in the registry: %s", uri, exc)
    return info


def _row_settings(ev: Evaluation, cfg: EvaluateConfig) -> dict | None:
    """The scoring settings the `ok` rows were made under (their scoring runs' params); None and a note when the
    runs differ or cannot be read."""
    from dfbatch.evaluation.thresholds import SETTINGS
    from dfbatch.models import registry

    client = registry._client(cfg.tracking_uri)
    seen, sources = {}, set()
    for run_id in sorted(ev.videos["mlflow_run_id"].dropna().unique()):
        try:
            run = client.get_run(run_id)
        except Exception:  # a run in another store, or deleted
            ev.notes.append(f"scoring run {run_id} is not in this MLflow store: the rows' settings are unknown")
            return None
        seen[run_id] = {k: run.data.params.get(k) for k in SETTINGS}
        sources.add(run.data.tags.get("dfbatch.threshold_source") or "not recorded (scored before dfbatch recorded it)")
        if run.data.tags.get("dfbatch.calibration_mismatch"):
            ev.notes.append(f"scoring run {run_id}: {run.data.tags['dfbatch.calibration_mismatch']}")
    ev.threshold_source = " | ".join(sorted(sources))
    distinct = {json.dumps(s, sort_keys=True) for s in seen.values()}
    if len(distinct) > 1:
        ev.notes.append("the rows were scored under different settings: " + " | ".join(sorted(distinct)))
        return None
    return json.loads(distinct.pop()) if distinct else None


def _calibrate(cfg: EvaluateConfig, ev: Evaluation) -> dict:
    """Thresholds (and temperatures) for every aggregation, chosen on these videos (not yet stored)."""
    from dfbatch.evaluation import thresholds
    from dfbatch.stages.aggregate import describe, parse

    if not ev.model["registered"]:
        raise UserError(f"--calibrate stores thresholds on a registered version; {cfg.model_uri} is not one "
                        "(register it: dfbatch models register FILE)")
    ok = ev.videos[ev.videos["status"] == "ok"]
    y = (ok["true_label"] == "FAKE").to_numpy(int)
    if y.sum() == 0 or y.sum() == len(y):
        raise UserError(f"--calibrate needs scored REAL and FAKE videos; these have {int(len(y) - y.sum())} REAL and "
                        f"{int(y.sum())} FAKE scored ok")
    scores = {describe(track_aggregation=t, frame_aggregation=f): s
              for (t, f), s in aggregation_scores(ev.videos, ev.faces).items() if not np.isnan(s).any()}
    chosen = thresholds.calibrate(y, scores, cfg.calibrate, target_fpr=cfg.target_fpr, fixed=cfg.threshold,
                                  temperature=cfg.temperature)
    p = parse(ev.aggregation)
    default = describe(track_aggregation=p["tracks"] or "max", frame_aggregation=p["frames"] or "mean")
    if default not in chosen:
        default = describe()
    if len(y) < 20:
        ev.notes.append(f"thresholds chosen on only {len(y)} scored videos: expect them to move with more data")
    bounded = sorted(a for a, e in chosen.items() if thresholds.at_bound(e["temperature"]))
    if bounded:
        ev.notes.append(f"temperature at the edge of its range {thresholds.TEMPERATURE_BOUNDS} for "
                        f"{len(bounded)} aggregation(s) ({bounded[0]}, ...): the scores carry little information about "
                        "the labels here, or the set is too small")
    dataset = {k: v for k, v in ev.dataset.items() if not k.startswith("_")}
    return thresholds.record(chosen, method=cfg.calibrate, default=default, dataset=dataset, settings=ev.settings,
                             target_fpr=cfg.target_fpr)


# ------------------------------------------------------------------------------------------------ MLflow
def _log(cfg: EvaluateConfig, ev: Evaluation) -> None:
    """One run per (model version, dataset digest) in cfg.experiment: found and logged into again on a repeat."""
    import time

    from mlflow.entities import DatasetInput, InputTag, LoggedModelInput, Metric, Param

    from dfbatch.evaluation.plots import write_plots
    from dfbatch.models import registry

    uri = registry.resolve_tracking_uri(cfg.tracking_uri)
    client = registry._client(uri)
    exp_id = registry._experiment_id(client, cfg.experiment, uri)
    ds = ev.dataset["_mlflow"]
    identity = {"dfbatch.eval.model": f"{ev.model['name']}/{ev.model['version']}",
                "dfbatch.eval.dataset_digest": ds.digest}
    flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in identity.items())
    found = client.search_runs([exp_id], filter_string=flt, max_results=1, order_by=["attributes.start_time DESC"])
    if found:
        run_id = found[0].info.run_id
    else:
        run_id = client.create_run(exp_id, run_name=f"{ev.model['name']}-v{ev.model['version']}@{ds.name}",
                                   tags=identity).info.run_id
        client.log_inputs(run_id, datasets=[DatasetInput(ds._to_mlflow_entity(), [InputTag("mlflow.data.context", "evaluation")])],
                          models=[LoggedModelInput(ev.model["model_id"])] if ev.model["model_id"] else None)
        # what identifies the run (never changes for it; what may change between repeats is in tags)
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in (
            ("model_name", ev.model["name"]), ("model_version", ev.model["version"]), ("dataset", ds.name),
            ("dataset_digest", ds.digest), ("videos", ev.dataset["videos"]), ("split", cfg.split or "all"))])
    ev.run_id, ev.experiment = run_id, cfg.experiment
    tags = {"model_name": ev.model["name"], "model_version": ev.model["version"], "model_uri": ev.model["uri"],
            "dfbatch.eval.dataset": ds.name, "dfbatch.eval.split": cfg.split or "", "dfbatch.eval.output": redact(ev.output),
            "dfbatch.eval.aggregation": ev.aggregation, "dfbatch.eval.settings": json.dumps(ev.settings),
            "dfbatch.eval.notes": " | ".join(ev.notes)[:5000]}
    for k, v in tags.items():
        client.set_tag(run_id, k, v)
    now = int(time.time() * 1000)
    mid = ev.model["model_id"]
    # NaN (undefined, e.g. one class) stays a run metric: a logged model shows it as 0
    metrics = [Metric(k, float(v), now, 0, model_id=mid if math.isfinite(v) else None, dataset_name=ds.name,
                      dataset_digest=ds.digest) for k, v in sorted(ev.metrics.items())]
    for i in range(0, len(metrics), 900):
        client.log_batch(run_id, metrics=metrics[i:i + 900])
    with tempfile.TemporaryDirectory(prefix="dfbatch-eval-art-") as tmp:
        os.makedirs(os.path.join(tmp, "plots"))
        write_plots(os.path.join(tmp, "plots"), ev)
        ev.videos.drop(columns=[c for c in ("frame_indices", "frame_scores") if c in ev.videos]).to_csv(
            os.path.join(tmp, "videos.csv"), index=False)
        with open(os.path.join(tmp, "evaluation.json"), "w", encoding="utf-8") as fh:
            json.dump(ev.to_dict() | {"mlflow_run_id": run_id}, fh, indent=2, default=_jsonable)
        with open(os.path.join(tmp, "report.txt"), "w", encoding="utf-8") as fh:
            fh.write(format_report(ev) + "\n")
        if ev.calibration is not None:
            with open(os.path.join(tmp, "calibration.json"), "w", encoding="utf-8") as fh:
                json.dump(ev.calibration | {"run_id": run_id}, fh, indent=2)
        client.log_artifacts(run_id, tmp)
        ev.artifacts = sorted(os.path.relpath(os.path.join(d, f), tmp) for d, _, fs in os.walk(tmp) for f in fs)
    client.set_terminated(run_id)


def _jsonable(v):
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    return str(v)


# ------------------------------------------------------------------------------------------------ report
_NAMES = {"roc_auc": "ROC AUC", "average_precision": "average precision", "eer": "equal error rate",
          "log_loss": "log loss", "brier": "Brier score", "accuracy": "accuracy", "balanced_accuracy": "balanced accuracy",
          "precision": "precision", "recall": "recall", "f1": "F1"}


def _f(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def format_report(ev: Evaluation) -> str:
    """The evaluation as text: which level each number is, the counts, the confusion matrix, aggregations, methods."""
    m, d = ev.metrics, ev.dataset
    lines = [f"dfbatch evaluate — {ev.model['name']} version {ev.model['version']} ({ev.model['uri']}) on "
             f"'{d['name']}' (digest {d['digest']}: {d['videos']} labelled videos, {d['fake']} FAKE)"]
    if ev.scoring:
        s = ev.scoring
        job = f"MLflow run {s['mlflow_run_id']}" if s["mlflow_run_id"] else "no scoring job needed"
        lines.append(f"  scoring: {s['listed']} listed, {s['skipped']} already scored in {redact(ev.output)} (reused), "
                     f"{s['scored']} scored now ({job})")
    lines.append(f"  videos: ok {m['videos/ok']:.0f}   no_face {m['videos/no_face']:.0f}   failed {m['videos/failed']:.0f}"
                 f"   not scored {m['videos/not_scored']:.0f}   — video metrics are over the {m['videos/ok']:.0f} ok "
                 "videos; the others are counted here, never as right or wrong")
    thr = m["video/threshold"]
    lines.append(f"  rows: aggregation {ev.aggregation or '?'}; scoring settings {_settings(ev.settings)}")
    lines.append(f"  threshold {_f(thr) if not math.isnan(thr) else 'mixed'} (as the rows record it"
                 + (f"; {ev.threshold_source}" if ev.threshold_source else "") + ")")
    lines.append("")
    lines.append(f"  {'level':<7}{'metric':<20}{'value':>8}")
    for k in ("roc_auc", "average_precision", "eer", "log_loss", "brier"):
        lines.append(f"  {'video':<7}{_NAMES[k]:<20}{_f(m['video/' + k]):>8}")
    lines.append(f"  {'video':<7}{'log loss, all':<20}{_f(m['video/log_loss_all']):>8}   (no_face/failed/not scored "
                 f"as P={UNSCORED_P}, as DFDC scored them)")
    for k in ("accuracy", "balanced_accuracy", "precision", "recall", "f1"):
        lines.append(f"  {'video':<7}{_NAMES[k]:<20}{_f(m['video/' + k]):>8}   at the threshold")
    for k in ("roc_auc", "average_precision", "eer", "log_loss", "brier"):
        lines.append(f"  {'frame':<7}{_NAMES[k]:<20}{_f(m['frame/' + k]):>8}")
    lines.append(f"  (frame level: {m['frame/n']:.0f} per-frame scores of {len(ev.faces)} face tracks, each labelled "
                 "with its video's label)")
    lines += ["", "  confusion matrix (videos, at the threshold):", f"    {'':<12}{'predicted REAL':>16}{'predicted FAKE':>16}",
              f"    {'true REAL':<12}{m['video/tn']:>16.0f}{m['video/fp']:>16.0f}",
              f"    {'true FAKE':<12}{m['video/fn']:>16.0f}{m['video/tp']:>16.0f}", ""]
    track = ev.aggregation.split(",")[0] if ev.aggregation else "tracks=max"
    lines.append(f"  frame aggregations (video level, {track}, recomputed from the faces rows, uncalibrated):")
    lines.append(f"    {'frames':<11}{'ROC AUC':>9}{'AP':>9}{'EER':>9}{'log loss':>10}")
    for f in sorted({k.split("/")[1] for k in m if k.startswith("aggregation/")}):
        lines.append(f"    {f:<11}" + "".join(f"{_f(m[f'aggregation/{f}/{k}']):>9}" for k in
                                              ("roc_auc", "average_precision", "eer")) + f"{_f(m[f'aggregation/{f}/log_loss']):>10}")
    methods = sorted({k.split("/")[1] for k in m if k.startswith("method/")})
    if methods:
        lines += ["", "  per manipulation method (its FAKE videos against all REAL videos):",
                  f"    {'method':<16}{'videos':>7}{'unscored':>9}{'ROC AUC':>9}{'recall':>9}"]
        for meth in methods:
            lines.append(f"    {meth:<16}{m[f'method/{meth}/videos']:>7.0f}{m[f'method/{meth}/unscored']:>9.0f}"
                         f"{_f(m[f'method/{meth}/roc_auc']):>9}{_f(m[f'method/{meth}/recall']):>9}")
    if ev.calibration:
        c = ev.calibration
        from dfbatch.evaluation.thresholds import describe_record

        entry = c["aggregations"][c["default"]]
        temp = f", temperature {entry['temperature']:g}" if entry.get("temperature") else ""
        lines += ["", f"  calibration stored on {ev.model['name']} version {ev.model['version']}: {describe_record(c)}",
                  f"    {c['default']}: threshold {entry['threshold']:.4g}{temp} (and {len(c['aggregations']) - 1} "
                  "other aggregations); `dfbatch score` uses it from now on (rows already scored keep theirs)"]
    if ev.run_id:
        lines += ["", f"  MLflow: run {ev.run_id} in experiment '{ev.experiment}' (metrics linked to the model version"
                  f"{'' if ev.model['model_id'] else ' — not registered: no link'} and dataset '{d['name']}' {d['digest']}); "
                  f"artifacts: {', '.join(a for a in ev.artifacts if a.startswith('plots/'))}, videos.csv, report.txt"]
    lines += [f"  note: {n}" for n in ev.notes]
    return "\n".join(lines)


def _settings(s: dict | None) -> str:
    return ", ".join(f"{k} {v}" for k, v in s.items()) if s else "unknown"
