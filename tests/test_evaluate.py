"""Evaluation: metrics from result rows, thresholds and calibration records, the evaluate and compare commands.

Fast tests use rows written with the commit protocol (no Ray); the slow ones score a labelled set the project made
for them (`corpora.synth`, its own seed and size) through the real scoring job, and recompute every reported number
independently from the result files (pandas + scikit-learn, not dfbatch's helpers)."""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from dfbatch.evaluation import thresholds
from dfbatch.evaluation.metrics import equal_error_rate, join_labels


# ------------------------------------------------------------------------------------------ thresholds (fast)
def test_threshold_methods():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    eer, t = equal_error_rate(y, p)
    assert eer == pytest.approx(0.25) and t == pytest.approx(0.6)  # 1 of 4 REAL above, 1 of 4 FAKE below
    assert thresholds.fpr_threshold(y, p, 0.0) == pytest.approx(0.7)  # the lowest threshold with no REAL flagged
    assert thresholds.fpr_threshold(y, p, 0.25) == pytest.approx(0.4)  # one REAL (0.6) allowed: catches 0.4 too
    assert thresholds.choose_threshold(y, p, "fixed", fixed=0.33) == 0.33
    assert thresholds.choose_threshold(y, p, "youden") == pytest.approx(0.7)  # J ties at 0.7 and 0.4: the higher


def test_temperature_fits_overconfident_scores():
    rng = np.random.default_rng(0)
    q = rng.uniform(0.05, 0.95, 2000)  # the true P(FAKE) of each video
    y = (rng.random(2000) < q).astype(int)
    p = 1 / (1 + np.exp(-np.log(q / (1 - q)) * 4))  # reported 4x too confident (logits x 4)
    t = thresholds.fit_temperature(y, p)
    assert 3.0 < t < 5.0
    q = thresholds.apply_temperature(p, t)
    from sklearn.metrics import log_loss, roc_auc_score

    assert log_loss(y, q) < log_loss(y, p) and roc_auc_score(y, q) == pytest.approx(roc_auc_score(y, p))


def test_resolve_uses_the_aggregations_threshold_and_names_differences():
    rec = thresholds.record({"tracks=max,frames=mean": {"threshold": 0.4, "temperature": 1.5},
                             "tracks=max,frames=max": {"threshold": 0.7, "temperature": None}},
                            method="eer", default="tracks=max,frames=mean", dataset={"name": "val", "digest": "abc"},
                            settings=thresholds.job_settings(frames=8, detect_max_side=320, detect_every=4,
                                                             min_face_px=None, precision="auto"))
    same = thresholds.job_settings(frames=8, detect_max_side=320, detect_every=4, min_face_px=None, precision="auto")
    d = thresholds.resolve(rec, 0.5, aggregation="tracks=max,frames=mean", settings=same)
    assert (d.threshold, d.temperature, d.notes) == (0.4, 1.5, []) and "eer on val" in d.source
    d = thresholds.resolve(rec, 0.5, aggregation="tracks=max,frames=max", settings={**same, "detect_every": "1"})
    assert (d.threshold, d.temperature) == (0.7, None) and d.notes == [
        "this job's settings differ from the calibration's: detect_every 4 -> 1"]
    d = thresholds.resolve(rec, 0.5, aggregation="tracks=mean,frames=median", settings=same)
    assert d.threshold == 0.4 and d.temperature is None and "no threshold calibrated for tracks=mean,frames=median" in d.notes[0]
    d = thresholds.resolve(None, 0.45, aggregation="tracks=max,frames=mean", settings=same)
    assert d.threshold == 0.45 and "not calibrated" in d.notes[0]
    d = thresholds.resolve(rec, 0.5, aggregation="tracks=max,frames=mean", settings=same, override=0.9)
    assert (d.threshold, d.temperature, d.source) == (0.9, 1.5, "--threshold")
    train = thresholds.training_record(0.42, "tracks=max,frames=mean", "shards/", "run1")
    d = thresholds.resolve(train, 0.42, aggregation="tracks=max,frames=mean", settings=same)
    assert d.threshold == 0.42 and "not under this job's scoring settings" in d.notes[0]
    assert thresholds.parse_record(json.dumps(rec)) == rec and thresholds.parse_record("{") is None


# --------------------------------------------------------------------------------- OUT --labels (fast, no Ray)
def _write_results(out, tmp_path, scores: dict[str, float | None], version: str = "3") -> None:
    """Result files as the scoring job commits them (ResultStore's commit protocol), without running a job."""
    from dfbatch.io.results import ResultStore
    from dfbatch.io.storage import Storage

    rows = [{"video_uri": str(tmp_path / name), "video_id": name + version, "status": "ok" if p is not None else "no_face",
             "fake_probability": p, "label": None if p is None else ("FAKE" if p >= 0.5 else "REAL"), "threshold": 0.5,
             "aggregation": "tracks=max,frames=mean", "model_name": "dfbatch-detector", "model_version": version,
             "scored_at": datetime.now(timezone.utc), "tracks": json.dumps(
                 [] if p is None else [{"frame_indices": [0, 1], "boxes": [[0, 0, 9, 9]] * 2, "probs": [0.99, None],
                                        "frame_scores": [p, p], "sequence_probability": p, "fake_probability": p}])}
            for name, p in scores.items()]
    store = ResultStore(str(out), Storage())
    store.check_writable()
    store.write_part(rows, f"job-{version}")


def test_evaluate_out_labels_still_works_and_never_mixes_versions(tmp_path, capsys):
    """`dfbatch evaluate OUT --labels CSV`: the rows OUT holds, metrics printed and logged to the given store; two
    versions in OUT are a one-line error until one is chosen; a filter matching nothing is one too."""
    import mlflow

    from dfbatch.cli import main

    out = tmp_path / "out"
    _write_results(out, tmp_path, {"a.mp4": 0.9, "b.mp4": 0.2, "c.mp4": 0.3, "e.mp4": 0.6, "d.mp4": None})
    (tmp_path / "labels.csv").write_text("file,label\na.mp4,FAKE\nb.mp4,REAL\nc.mp4,FAKE\ne.mp4,REAL\nd.mp4,FAKE\n"
                                         "f.mp4,REAL\n")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    rc = main(["evaluate", str(out), "--labels", str(tmp_path / "labels.csv"), "--log-mlflow", "--tracking-uri", uri,
               "--experiment", "eval-test", "--table", "--json"])
    assert rc == 0
    printed = capsys.readouterr().out
    result = json.loads(printed[printed.index("{\n"):])
    m = result["metrics"]
    assert (m["videos/labelled"], m["videos/ok"], m["videos/no_face"], m["videos/not_scored"]) == (6, 4, 1, 1)
    assert m["video/roc_auc"] == pytest.approx(0.75)  # FAKE over REAL in 3 of the 4 pairs (c=.3 < e=.6)
    assert m["video/accuracy"] == pytest.approx(0.5) and (m["video/tp"], m["video/fp"]) == (1, 1)
    assert m["frame/n"] == 8  # two per-frame scores per ok video
    assert "a.mp4" in printed and "e.mp4" in printed  # the per-video table
    client = mlflow.MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("eval-test").experiment_id])
    assert run.data.tags["model_version"] == "3" and run.data.metrics["video/roc_auc"] == pytest.approx(0.75)

    _write_results(out, tmp_path, {"a.mp4": 0.1, "b.mp4": 0.8}, version="4")
    assert main(["evaluate", str(out), "--labels", str(tmp_path / "labels.csv"), "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert "holds rows of 2 model versions" in err and "dfbatch-detector/3: 5 rows" in err and err.count("\n") == 1
    assert main(["evaluate", str(out), "--labels", str(tmp_path / "labels.csv"), "--model-version", "3", "--no-mlflow",
                 "--json"]) == 0
    again = json.loads(capsys.readouterr().out)["metrics"]
    assert json.dumps(again, sort_keys=True) == json.dumps(m, sort_keys=True)  # version 3's, untouched by version 4's
    assert main(["evaluate", str(out), "--labels", str(tmp_path / "labels.csv"), "--model-version", "9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dfbatch: error: no results under") and "model version 9" in err and err.count("\n") == 1


def test_join_labels_matches_relative_and_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    joined = join_labels(pd.DataFrame({"video_uri": ["a.mp4", "s3://b/x.mp4"]}),
                         pd.DataFrame({"uri": [str(tmp_path / "a.mp4"), "s3://b/x.mp4"], "label": ["FAKE", "REAL"]}))
    assert list(joined["true_label"]) == ["FAKE", "REAL"]


# ------------------------------------------------------------------- a labelled set through the real job (slow)
NAME = "eval-detector"


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A labelled set made for these tests: 3 REAL + 3 FAKE clips (one per manipulation method), a faceless clip
    (no_face) and a truncated one (failed), with a method column."""
    from dfbatch.corpora import synth

    root = tmp_path_factory.mktemp("labelled")
    df = synth.demo_archive(root, n_real=3, n_fake=3, size=(320, 180), seconds=1.0, fps=10, seed=7)
    df[["file", "label", "method"]].to_csv(root / "labels.csv", index=False)
    return root


@pytest.fixture(scope="module")
def versions(mlflow_uri):
    """Two registered versions of one model: a random tiny detector and the same with its classifier negated
    (P(fake) -> 1 - P(fake) per frame), so one of them ranks the videos better than the other."""
    import torch

    from dfbatch.models import registry
    from dfbatch.models.detector import build_model
    from dfbatch.models.spec import ModelSpec

    torch.manual_seed(3)
    spec = ModelSpec(backbone="tiny", hidden_dim=32, input_size=64, seq_len=8, head="mean")
    sd = build_model(spec).state_dict()
    flipped = {k: (-v if k.startswith("classifier.") else v) for k, v in sd.items()}
    v1 = registry.register(sd, spec, NAME, alias="champion", threshold=0.5)
    v2 = registry.register(flipped, spec, NAME, threshold=0.5)
    return {"v1": f"models:/{NAME}/{v1}", "v2": f"models:/{NAME}/{v2}", "n1": v1, "n2": v2}


def _evaluate(capsys, *argv: str) -> tuple[dict, str]:
    from dfbatch.cli import main

    assert main(["evaluate", *argv, "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out[out.index("{\n"):]), out


@pytest.fixture(scope="module")
def first(ray_local, mlflow_uri, labelled, versions, tmp_path_factory):
    from dfbatch.config import EvaluateConfig
    from dfbatch.evaluation.evaluate import format_report, run_evaluate

    out = tmp_path_factory.mktemp("eval") / "out"
    ev = run_evaluate(EvaluateConfig(model_uri=versions["v1"], labels=[str(labelled / "labels.csv")], output=str(out),
                                     precision="fp32"))
    return ev, out, format_report(ev)


def _independent_metrics(out, labels_csv, version: str) -> dict[str, float]:
    """Every reported number from the result files and the labels CSV with pandas and scikit-learn only."""
    from sklearn import metrics as skm

    videos = pd.concat(pd.read_parquet(p) for p in sorted((out / "videos").glob("*.parquet")))
    faces = pd.concat(pd.read_parquet(p) for p in sorted((out / "faces").glob("*.parquet")))
    videos = videos[(videos.model_name == NAME) & (videos.model_version == version)]
    faces = faces[(faces.model_name == NAME) & (faces.model_version == version)]
    labels = pd.read_csv(labels_csv, keep_default_na=False)
    labels["video_uri"] = [str(labels_csv.parent / f) for f in labels.file]
    v = labels.merge(videos, on="video_uri", how="left")
    ok = v[v.status == "ok"]
    y, p = (ok.label_x == "FAKE").astype(int).to_numpy(), ok.fake_probability.to_numpy()
    pred = (ok.label_y == "FAKE").astype(int).to_numpy()
    fpr, tpr, _ = skm.roc_curve(y, p, drop_intermediate=False)  # the EER: the closest of all ROC points
    fnr = 1 - tpr
    i = np.argmin(np.abs(fnr - fpr))
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    m = {"videos/labelled": len(v), "videos/ok": len(ok), "videos/no_face": (v.status == "no_face").sum(),
         "videos/failed": (v.status == "failed").sum(), "videos/not_scored": v.status.isna().sum(),
         "videos/coverage": len(ok) / len(v), "video/n": len(ok), "video/fake": y.sum(),
         "video/roc_auc": skm.roc_auc_score(y, p), "video/average_precision": skm.average_precision_score(y, p),
         "video/eer": (fpr[i] + fnr[i]) / 2, "video/log_loss": skm.log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)),
         "video/brier": skm.brier_score_loss(y, p), "video/accuracy": skm.accuracy_score(y, pred),
         "video/balanced_accuracy": skm.balanced_accuracy_score(y, pred),
         "video/precision": skm.precision_score(y, pred, zero_division=np.nan),
         "video/recall": skm.recall_score(y, pred, zero_division=np.nan),
         "video/f1": skm.f1_score(y, pred, zero_division=np.nan), "video/tp": tp, "video/fp": fp, "video/tn": tn,
         "video/fn": fn, "video/threshold": ok.threshold.iloc[0],
         "video/log_loss_all": skm.log_loss((v.label_x == "FAKE").astype(int),
                                            np.clip(v.fake_probability.fillna(0.5), 1e-7, 1 - 1e-7), labels=[0, 1])}
    truth = dict(zip(ok.video_id, ok.label_x))
    f = faces[faces.video_id.isin(truth)]
    fy = np.concatenate([[truth[vid] == "FAKE"] * len(s) for vid, s in zip(f.video_id, f.frame_scores)]).astype(int)
    fp_ = np.concatenate(list(f.frame_scores))
    ffpr, ftpr, _ = skm.roc_curve(fy, fp_, drop_intermediate=False)
    j = np.argmin(np.abs(1 - ftpr - ffpr))
    m |= {"frame/n": len(fy), "frame/fake": fy.sum(), "frame/roc_auc": skm.roc_auc_score(fy, fp_),
          "frame/average_precision": skm.average_precision_score(fy, fp_), "frame/eer": (ffpr[j] + 1 - ftpr[j]) / 2,
          "frame/log_loss": skm.log_loss(fy, np.clip(fp_, 1e-7, 1 - 1e-7)), "frame/brier": skm.brier_score_loss(fy, fp_)}

    def confident(x):  # written again from the DFDC winners' description
        x = np.asarray(x)
        hi, lo = x[x > 0.8], x[x < 0.2]
        return hi.mean() if len(hi) > 11 and len(hi) > len(x) / 2.5 else lo.mean() if len(lo) > 0.9 * len(x) else x.mean()

    per_track = {"mean": lambda t: np.mean(t.frame_scores), "max": lambda t: np.max(t.frame_scores),
                 "median": lambda t: np.median(t.frame_scores), "confident": lambda t: confident(t.frame_scores),
                 "model": lambda t: t.sequence_probability}
    for name, fn_ in per_track.items():
        s = np.array([max(fn_(t) for t in f[f.video_id == vid].itertuples()) for vid in ok.video_id])
        r_fpr, r_tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
        k = np.argmin(np.abs(1 - r_tpr - r_fpr))
        m |= {f"aggregation/{name}/roc_auc": skm.roc_auc_score(y, s),
              f"aggregation/{name}/average_precision": skm.average_precision_score(y, s),
              f"aggregation/{name}/eer": (r_fpr[k] + 1 - r_tpr[k]) / 2,
              f"aggregation/{name}/log_loss": skm.log_loss(y, np.clip(s, 1e-7, 1 - 1e-7))}
    for method in sorted(set(labels.method) - {""}):
        mine = ok[(ok.label_x == "FAKE") & (ok.method == method)]
        sub = pd.concat([ok[ok.label_x == "REAL"], mine])
        m |= {f"method/{method}/videos": (v.method == method).sum(),
              f"method/{method}/unscored": ((v.method == method) & (v.status != "ok")).sum(),
              f"method/{method}/roc_auc": skm.roc_auc_score(sub.label_x == "FAKE", sub.fake_probability),
              f"method/{method}/recall": (mine.label_y == "FAKE").mean()}
    return {k: float(x) for k, x in m.items()}


@pytest.mark.slow
def test_every_reported_number_recomputed_from_the_result_rows(first, labelled, versions):
    ev, out, report = first
    m = ev.metrics
    assert (m["videos/ok"], m["videos/no_face"], m["videos/failed"], m["videos/not_scored"]) == (6, 1, 1, 0)
    expected = _independent_metrics(out, labelled / "labels.csv", versions["n1"])
    assert set(m) == set(expected)  # nothing reported that was not recomputed
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-9, nan_ok=True), key
    for text in ("video  ROC AUC", "frame  ROC AUC", "log loss, all", "confusion matrix", "confident", "per manipulation",
                 "no_face 1", "failed 1", "never as right or wrong"):
        assert text in report, text


@pytest.mark.slow
def test_repeat_gives_identical_numbers_in_one_run_linked_to_the_version(first, labelled, versions, mlflow_uri):
    """The same evaluation again: nothing rescored, identical numbers, the same MLflow run; the run has the plots,
    the dataset input with its digest, and its metrics are linked to the version's logged model."""
    import mlflow

    from dfbatch.config import EvaluateConfig
    from dfbatch.evaluation.evaluate import run_evaluate
    from dfbatch.models import registry

    ev, out, _ = first
    again = run_evaluate(EvaluateConfig(model_uri=versions["v1"], labels=[str(labelled / "labels.csv")],
                                        output=str(out), precision="fp32"))
    assert again.scoring["scored"] == 0 and again.scoring["skipped"] == 8
    assert again.scoring["mlflow_run_id"] is None  # every labelled video had its row: no scoring job started
    assert json.dumps(again.metrics, sort_keys=True) == json.dumps(ev.metrics, sort_keys=True)
    assert again.run_id == ev.run_id and again.dataset["digest"] == ev.dataset["digest"]

    client = mlflow.MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("dfbatch-evaluate").experiment_id
    runs = mlflow.search_runs([exp], filter_string=f"tags.`dfbatch.eval.model` = '{NAME}/{versions['n1']}'",
                              output_format="pandas")
    assert len(runs) == 1 and runs["metrics.video/roc_auc"][0] == pytest.approx(ev.metrics["video/roc_auc"])
    plots = {a.path for a in client.list_artifacts(ev.run_id, "plots")}
    assert plots == {f"plots/{p}" for p in ("roc.png", "precision_recall.png", "score_histogram.png", "reliability.png",
                                            "roc_aggregations.png")}
    local = client.download_artifacts(ev.run_id, "plots/roc.png", str(out.parent))
    assert open(local, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    [inp] = client.get_run(ev.run_id).inputs.dataset_inputs
    assert (inp.dataset.name, inp.dataset.digest) == (ev.dataset["name"], ev.dataset["digest"]) == ("labelled0",
                                                                                                     ev.dataset["digest"])
    model_id = registry.version_info(versions["v1"])["model_id"]
    linked = {mt.key: mt for mt in client.get_logged_model(model_id).metrics}
    assert linked["video/roc_auc"].value == pytest.approx(ev.metrics["video/roc_auc"])
    assert linked["video/roc_auc"].dataset_digest == ev.dataset["digest"]


@pytest.mark.slow
def test_a_changed_video_is_scored_again(first, labelled, versions, tmp_path):
    """A labelled file changed since its row (here: a new mtime, so a new video id) is scored again by the scoring
    job, as `dfbatch score` would resume; the others are reused. Into a copy of OUT: the other tests keep theirs."""
    import shutil

    from dfbatch.config import EvaluateConfig
    from dfbatch.evaluation.evaluate import run_evaluate

    _, out, _ = first
    shutil.copytree(out, tmp_path / "out")
    clip = labelled / "real_000.mp4"
    st = clip.stat()
    os.utime(clip, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        ev = run_evaluate(EvaluateConfig(model_uri=versions["v1"], labels=[str(labelled / "labels.csv")],
                                         output=str(tmp_path / "out"), precision="fp32", log_mlflow=False))
    finally:
        os.utime(clip, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (ev.scoring["listed"], ev.scoring["skipped"], ev.scoring["scored"]) == (8, 7, 1)
    assert ev.scoring["mlflow_run_id"] is not None


@pytest.mark.slow
def test_compare_side_by_side_and_promote_only_a_better_version(first, labelled, versions, mlflow_uri, capsys):
    from dfbatch.cli import main
    from dfbatch.models import registry

    ev, out, _ = first
    common = ["--labels", str(labelled / "labels.csv"), "-o", str(out), "--precision", "fp32"]
    assert main(["compare", versions["v1"], versions["v2"], *common, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    c1, c2 = res["columns"]
    assert c1.startswith(f"{NAME}/{versions['n1']}") and "champion" in c1 and c2 == f"{NAME}/{versions['n2']}"
    auc = {c: res["table"]["video/roc_auc"][c] for c in (c1, c2)}
    assert auc[c1] == pytest.approx(ev.metrics["video/roc_auc"])  # the same numbers as evaluate's
    assert auc[c1] != auc[c2]  # v2 = v1 negated ranks the videos the other way round
    better, worse = (versions["n1"], versions["n2"]) if auc[c1] > auc[c2] else (versions["n2"], versions["n1"])
    assert res["best"]["video/roc_auc"] == [c1 if better == versions["n1"] else c2]
    import mlflow

    client = mlflow.MlflowClient(mlflow_uri)
    files = {a.path for a in client.list_artifacts(res["mlflow_run_id"])}
    assert files == {"comparison.md", "comparison.csv"}

    registry.set_alias(NAME, worse, "champion")
    assert main(["compare", f"models:/{NAME}/{better}", *common, "--promote", "video/roc_auc"]) == 0
    printed = capsys.readouterr().out
    assert f"MOVED champion to version {better}" in printed and "video/roc_auc" in printed
    info = registry.version_info(f"models:/{NAME}@champion")
    assert info["version"] == better and "the previous champion" in info["tags"]["dfbatch.promotion"]
    assert main(["compare", f"models:/{NAME}/{worse}", *common, "--promote", "video/roc_auc"]) == 0
    printed = capsys.readouterr().out
    assert "not promoted" in printed and registry.version_info(f"models:/{NAME}@champion")["version"] == better
    registry.set_alias(NAME, versions["n1"], "champion")  # as the other tests expect


@pytest.mark.slow
def test_calibration_is_stored_and_scoring_labels_with_it(first, labelled, versions, mlflow_uri, tmp_path, capsys):
    """--calibrate eer --temperature stores a record per aggregation on the version; `dfbatch score` then labels
    with the stored threshold (and temperature) of its aggregation, and says when its settings differ."""
    from dfbatch.cli import main
    from dfbatch.io.results import read_results
    from dfbatch.models import registry
    from dfbatch.stages.aggregate import with_temperature

    ev, out, _ = first
    res, printed = _evaluate(capsys, "--model", versions["v1"], str(labelled / "labels.csv"), "-o", str(out),
                             "--precision", "fp32", "--calibrate", "eer", "--temperature")
    assert res["scoring"]["scored"] == 0 and res["metrics"] == pytest.approx(ev.metrics, nan_ok=True)
    rec = registry.fetch(versions["v1"]).calibration
    assert rec["method"] == "eer" and rec["dataset"]["digest"] == ev.dataset["digest"] and rec["run_id"] == ev.run_id
    assert rec["settings"]["precision"] == "fp32" and rec["settings"]["detect_every"] == "4"
    assert {"tracks=max,frames=mean", "tracks=max,frames=confident", "tracks=mean,frames=model"} <= set(rec["aggregations"])
    entry = rec["aggregations"]["tracks=max,frames=mean"]
    assert registry.show(versions["v1"])["threshold"] == pytest.approx(entry["threshold"])
    assert main(["models", "show", versions["v1"]]) == 0
    shown = capsys.readouterr().out
    assert "calibration:  eer on labelled0" in shown and "tracks=max,frames=confident" in shown

    clips = [str(labelled / "real_000.mp4"), str(labelled / "fake_000.mp4")]
    assert main(["score", *clips, "-o", str(tmp_path / "o1"), "--model", versions["v1"], "--precision", "fp32",
                 "--face-workers", "1"]) == 0
    summary = capsys.readouterr().out
    assert (f"threshold {entry['threshold']:g} (temperature {entry['temperature']:g}): calibrated for "
            "tracks=max,frames=mean: eer on labelled0") in summary and "note:" not in summary
    rows = read_results(str(tmp_path / "o1"))
    faces = read_results(str(tmp_path / "o1"), "faces")
    assert (rows.threshold == entry["threshold"]).all()
    assert set(rows.aggregation) == {f"tracks=max,frames=mean,temperature={entry['temperature']:.6g}"}
    for row in rows.itertuples():
        raw = max(np.mean(fs) for fs in faces[faces.video_id == row.video_id].frame_scores)
        assert row.fake_probability == pytest.approx(with_temperature(raw, entry["temperature"]), abs=1e-12)
        assert row.label == ("FAKE" if row.fake_probability >= entry["threshold"] else "REAL")

    conf = rec["aggregations"]["tracks=max,frames=confident"]
    assert main(["score", *clips, "-o", str(tmp_path / "o2"), "--model", versions["v1"], "--precision", "fp32",
                 "--frame-aggregation", "confident", "--detect-every", "2", "--face-workers", "1"]) == 0
    summary = capsys.readouterr().out
    assert "note: this job's settings differ from the calibration's: detect_every 4 -> 2" in summary
    assert (read_results(str(tmp_path / "o2")).threshold == conf["threshold"]).all()
