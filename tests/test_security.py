"""Security: planted credentials never reach output, logs, errors or MLflow; output names cannot escape OUT;
model files load weights-only."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest

from dfbatch.corpora import hostile
from dfbatch.cli import main as cli_main
from dfbatch.io.results import ResultStore
from dfbatch.io.storage import Storage
from dfbatch.pipeline import Summary


SECRET = "PLANTEDs3cr3t" + uuid.uuid4().hex[:12]


def _find(root: Path, needle: str) -> list[str]:
    """Files under root whose bytes contain needle (as UTF-8 or UTF-16-LE)."""
    hits = []
    pats = [needle.encode(), needle.encode("utf-16-le")]
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            try:
                data = p.read_bytes()
            except OSError:
                continue
            if any(x in data for x in pats):
                hits.append(str(p))
    return hits


@pytest.fixture()
def planted(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", f"aws-{SECRET}")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", f"mlflow-{SECRET}")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", f"pw-{SECRET}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    return SECRET


@pytest.mark.slow
def test_planted_secrets_appear_nowhere(planted, s3_endpoint, mlflow_uri, tiny_model, tmp_path):
    """A real job (own Ray, S3 over HTTP) with secrets in the environment and in a URI of the manifest: scan
    stdout/stderr, every Ray log/session file, every Parquet value and byte, and the MLflow run."""
    import mlflow

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="sec")
    clip = tmp_path / "clip.mp4"
    hostile.encode(clip, hostile._carphone()[:40:5], 10)
    for key in ("in/a.mp4", "in/b.mp4"):
        s3.upload_file(str(clip), "sec", key)
    manifest = tmp_path / "manifest.txt"
    manifest.write_text(f"s3://sec/in/a.mp4\ns3://AKIAEXAMPLE:url-{SECRET}@sec/in/b.mp4\ns3://sec/in/gone.mp4\n")
    ray_tmp = Path(tempfile.mkdtemp(prefix="dfsec", dir="/tmp"))  # short: Ray's socket paths have a length limit
    out = tmp_path / "out"
    env = dict(os.environ, RAY_TMPDIR=str(ray_tmp))
    try:
        proc = subprocess.run([sys.executable, "-m", "dfbatch", "-v", "score", str(manifest), "-o", str(out), "--model", tiny_model["uri"], "--frames", "4", "--json"],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stderr[-3000:]
        leaks = [name for name, text in (("stdout", proc.stdout), ("stderr", proc.stderr)) if SECRET in text]
        leaks += _find(ray_tmp, SECRET)
        assert len(list(ray_tmp.glob("ray/session_*/logs/*"))) > 5, "Ray logs were not where they were scanned"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    summary = Summary.from_printed(proc.stdout)
    # the job itself worked: the URI with credentials is scored under its clean name
    tables = {sub: pq.read_table(out / sub) for sub in ("videos", "faces")}
    rows = {r["video_uri"]: r for r in tables["videos"].to_pylist()}
    assert set(rows) == {"s3://sec/in/a.mp4", "s3://sec/in/b.mp4", "s3://sec/in/gone.mp4"}
    assert rows["s3://sec/in/a.mp4"]["status"] == rows["s3://sec/in/b.mp4"]["status"] == "ok"
    assert rows["s3://sec/in/gone.mp4"]["status"] == "failed"
    for sub, table in tables.items():
        if SECRET in json.dumps(table.to_pylist(), default=str):
            leaks.append(f"parquet values in {sub}")
    leaks += _find(out, SECRET)
    run = mlflow.get_run(summary["mlflow_run_id"])
    if SECRET in json.dumps([run.data.params, run.data.tags, run.data.metrics, run.info.artifact_uri]):
        leaks.append("mlflow params/tags")
    art = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path / "artifacts")))
    leaks += _find(art, SECRET)
    db = Path(mlflow_uri.removeprefix("sqlite:///"))
    leaks += _find(db.parent, SECRET)
    found = _find(tmp_path, SECRET)
    assert str(manifest) in found  # the scanner sees a planted secret where one is
    leaks += [p for p in found if p != str(manifest)]
    assert not leaks, sorted(set(leaks))


def test_credentials_in_uris_stay_out_of_errors(planted, s3_endpoint, tiny_model, tmp_path, capsys):
    """User-facing errors for sources, outputs and tracking URIs that carry credentials: one line, redacted."""
    import io
    import logging

    empty = tmp_path / "empty"
    empty.mkdir()
    logs = io.StringIO()
    handler = logging.StreamHandler(logs)
    handler.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    cases = [
        (["score", f"s3://AKIAEXAMPLE:{SECRET}@no-such-bucket/videos/", "-o", str(tmp_path / "o1"), "--model", tiny_model["uri"]], "cannot list"),
        (["score", str(empty), "-o", f"s3://user:{SECRET}@no-such-bucket/out", "--model", tiny_model["uri"]], "cannot write to output"),
        (["score", str(empty), "-o", str(tmp_path / "o3"), "--model", "models:/dfbatch-detector@champion", "--tracking-uri", f"http://user:{SECRET}@127.0.0.1:9/"], "127.0.0.1"),
    ]
    import mlflow

    before = (mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI"))
    try:
        for argv, want in cases:
            assert cli_main(["-v", *argv]) == 2, argv
            err = capsys.readouterr().err
            lines = [ln for ln in err.splitlines() if ln.strip()]
            assert lines and lines[-1].startswith("dfbatch: error:") and want in lines[-1], err
            assert SECRET not in err, err
            print(lines[-1])
    finally:
        logging.getLogger().removeHandler(handler)
    assert SECRET not in logs.getvalue()
    # the job's --tracking-uri was the job's only: this process's MLflow still points where it did (tests after
    # this one, and a notebook's later calls, would otherwise meet the dead server)
    assert (mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")) == before


def test_output_names_cannot_escape_out(tmp_path):
    """Part names are hashes of the job and video ids; model names are sanitised; hostile URIs/ids stay data."""
    out = tmp_path / "deep" / "out"
    store = ResultStore(str(out), Storage())
    store.check_writable()
    now = datetime.now(timezone.utc)
    hostile_names = ["../../x.mp4", "/etc/passwd", "..\\..\\win.mp4", "a/../../../../tmp/evil.mp4", "s3://b/../../k.mp4", "\x00nul.mp4", "line\nbreak.mp4", "~/home.mp4"]
    rows = [{"video_uri": n, "video_id": n, "status": "failed", "error": "x", "tracks": "[]", "model_name": "../../../evil/model", "model_version": "../1",
             "scored_at": now, "frame_indices": [], "frame_scores": []} for n in hostile_names]
    store.write_part(rows, job_id="../../job")
    store.write_part(rows[:2], job_id="/abs/job")
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert all(f.startswith("deep/out/") for f in files), files
    for f in files:
        assert re.fullmatch(r"deep/out/(videos|faces)/part-[A-Za-z0-9_.-]+-[0-9a-f]{16}\.parquet", f), f
    assert sorted(store.read().video_uri) == sorted(hostile_names + hostile_names[:2])


class _Payload:
    """Unpickling this would run code (creates a marker file)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_as_model_is_refused(tmp_path, capsys):
    import torch

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "dfbatch-checkpoint/1", "state_dict": {}, "spec": _Payload(str(marker))}, evil)
    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps(_Payload(str(marker))))
    clips = tmp_path / "clips"
    clips.mkdir()
    for model in (evil, plain):
        assert cli_main(["score", str(clips), "-o", str(tmp_path / "out"), "--model", str(model)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith("dfbatch: error:") and "weights-only" in err, err
        assert not marker.exists(), "the pickle was executed"
