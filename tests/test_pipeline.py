"""The scoring job end to end: real local Ray, real clips decoded by decord, real MTCNN, MLflow sqlite, S3 over HTTP."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import boto3
import mlflow
import pandas as pd
import pytest

from dfbatch.config import ScoreConfig
from dfbatch.pipeline import run_score
from dfbatch.io.results import FACES_SCHEMA, VIDEOS_SCHEMA, read_results
from dfbatch.io.storage import Storage


pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _expected(clip_dir: Path) -> dict[str, str]:
    return {str(clip_dir / k): v for k, v in json.loads((clip_dir / "expected.json").read_text()).items()}


@pytest.fixture(scope="module")
def first_run(ray_local, mlflow_uri, tiny_model, clip_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "results"
    summary = run_score(ScoreConfig(sources=[str(clip_dir)], output=str(out), model_uri=tiny_model["uri"]))
    return summary, out


def test_one_row_per_video_with_the_right_status(first_run, clip_dir, tiny_model):
    summary, out = first_run
    expected = _expected(clip_dir)
    df = read_results(str(out))
    assert sorted(df.video_uri) == sorted(expected)  # hidden files, .txt, .json and a dir named .mp4 are skipped
    for row in df.itertuples():
        want = expected[row.video_uri]
        assert row.status == want, (row.video_uri, row.status, row.error)
        if want == "ok":
            assert 0.0 <= row.fake_probability <= 1.0 and row.label in ("FAKE", "REAL") and pd.isna(row.error)
            assert row.n_tracks >= 1 and row.n_faces >= 1 and row.n_frames == tiny_model["spec"].seq_len
            assert len(row.frame_scores) == row.n_frames == len(row.frame_indices)
            assert row.label == ("FAKE" if row.fake_probability >= row.threshold else "REAL")
        else:
            assert pd.isna(row.fake_probability) and pd.isna(row.label)
        if want == "failed":
            assert row.error and "\n" not in row.error
        assert row.model_name == "dfbatch-detector" and row.model_version == tiny_model["version"]
        assert row.model_uri == f"models:/dfbatch-detector/{tiny_model['version']}"
        assert row.mlflow_run_id == summary.mlflow_run_id and row.aggregation == "tracks=max,frames=mean"
    assert df.video_id.is_unique
    assert summary.counts["ok"] == sum(v == "ok" for v in expected.values())
    assert summary.scored == len(expected) and summary.listed == len(expected)


def test_faces_table_matches_videos(first_run):
    _, out = first_run
    videos, faces = read_results(str(out)), read_results(str(out), "faces")
    ok = videos[videos.status == "ok"]
    assert set(faces.video_id) == set(ok.video_id)
    for row in ok.itertuples():
        tracks = faces[faces.video_id == row.video_id]
        assert len(tracks) == row.n_tracks
        assert max(tracks.fake_probability) == pytest.approx(row.fake_probability)  # tracks=max
        for t in tracks.itertuples():
            assert len(t.frame_indices) == len(t.boxes) == len(t.det_probs) == len(t.frame_scores)
            x1, y1, x2, y2 = t.boxes[0]
            assert 0 <= x1 < x2 <= row.width + 1 and 0 <= y1 < y2 <= row.height + 1


def test_mlflow_run_records_the_job(first_run, tiny_model):
    summary, out = first_run
    run = mlflow.get_run(summary.mlflow_run_id)
    assert run.info.status == "FINISHED"
    p, m, t = run.data.params, run.data.metrics, run.data.tags
    assert p["model_version"] == tiny_model["version"] and p["model_uri"] == tiny_model["uri"]
    assert p["frames"] == str(tiny_model["spec"].seq_len) and p["aggregation"] == "tracks=max,frames=mean"
    assert str(out) in p["sources"] or "clips" in p["sources"]
    assert t["output"] == str(out)
    assert m["videos"] == summary.scored and m["ok"] == summary.counts["ok"] and m["failed"] == summary.counts["failed"]
    assert m["no_face"] == summary.counts["no_face"] and m["fake"] == summary.counts["fake"] and m["videos_per_min"] > 0


def test_second_run_resumes_and_adds_no_rows(first_run, clip_dir, tiny_model):
    summary, out = first_run
    before = read_results(str(out))
    again = run_score(ScoreConfig(sources=[str(clip_dir)], output=str(out), model_uri=tiny_model["uri"], face_workers=1))
    after = read_results(str(out))
    assert again.scored == 0 and again.skipped == len(before)
    assert len(after) == len(before) and after.video_id.is_unique


def test_rescore_replaces_rows_and_a_new_file_is_picked_up(first_run, clip_dir, tiny_model):
    summary, out = first_run
    n = len(read_results(str(out)))
    (clip_dir / "late_arrival.mp4").write_bytes((clip_dir / "carphone.mp4").read_bytes())
    try:
        added = run_score(ScoreConfig(sources=[str(clip_dir)], output=str(out), model_uri=tiny_model["uri"], face_workers=1))
        assert added.scored == 1 and added.skipped == n
        redo = run_score(ScoreConfig(sources=[str(clip_dir)], output=str(out), model_uri=tiny_model["uri"], rescore=True, face_workers=1))
        df = read_results(str(out))
        assert redo.scored == n + 1 and len(df) == n + 1 and df.video_id.is_unique
        assert set(df.mlflow_run_id) == {redo.mlflow_run_id}
    finally:
        (clip_dir / "late_arrival.mp4").unlink()


def test_s3_source_and_s3_output(ray_local, mlflow_uri, tiny_model, clip_dir, s3_endpoint):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="videos")
    s3.create_bucket(Bucket="results")
    s3.upload_file(str(clip_dir / "carphone.mp4"), "videos", "in/a/carphone.mp4")
    s3.upload_file(str(clip_dir / "faceless.mp4"), "videos", "in/b/faceless.MP4")
    s3.put_object(Bucket="videos", Key="in/b/readme.txt", Body=b"skip me")
    s3.upload_file(str(clip_dir / "broken" / "text.mp4"), "videos", "in/broken.mp4")
    summary = run_score(ScoreConfig(sources=["s3://videos/in/"], output="s3://results/run1", model_uri=tiny_model["uri"], s3_endpoint_url=s3_endpoint,
                                    face_workers=1))
    df = read_results("s3://results/run1", storage=Storage(s3_endpoint))
    got = dict(zip(df.video_uri, df.status))
    assert got == {"s3://videos/in/a/carphone.mp4": "ok", "s3://videos/in/b/faceless.MP4": "no_face", "s3://videos/in/broken.mp4": "failed"}
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="results", Prefix="run1/")["Contents"]]
    assert any(k.startswith("run1/videos/part-") for k in keys) and any(k.startswith("run1/faces/part-") for k in keys)
    assert summary.counts == {"ok": 1, "no_face": 1, "failed": 1, "fake": summary.counts["fake"]}
    # resume works against S3 too
    again = run_score(ScoreConfig(sources=["s3://videos/in/"], output="s3://results/run1", model_uri=tiny_model["uri"], s3_endpoint_url=s3_endpoint,
                                    face_workers=1))
    assert again.scored == 0 and again.skipped == 3


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dfbatch", *args], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["score", "/no/such/dir", "-o", "{tmp}/o"], r"no such file or directory"),
        (["score", "{clips}", "-o", "{tmp}/o", "--model", "models:/no-such-model@champion"], r"model"),
        (["score", "{clips}", "-o", "{tmp}/o", "--model", "{tmp}/missing.pt"], r"missing\.pt"),
        (["score", "{clips}", "-o", "{tmp}/o", "--tracking-uri", "sqlite:///{tmp}/none.db"], r"no database at .*none\.db"),
        (["score", "{clips}", "-o", "/proc/dfbatch-out"], r"cannot write to output"),
        (["score", "{clips}", "-o", "{tmp}/o", "--frames", "0"], r"--frames must be at least 1"),
        (["score", "{clips}", "-o", "{tmp}/o", "--precision", "fp16", "--device", "cpu"], r"fp16 needs a GPU"),
        (["score", "{clips}", "-o", "{tmp}/o", "--detect-max-side", "8"], r"--detect-max-side at least 12"),
    ],
)
def test_user_mistakes_are_one_line_errors(args, pattern, mlflow_uri, tiny_model, clip_dir, tmp_path):
    """A missing SOURCE, model file or MLflow store is found before Ray starts (about a second)."""
    res = _cli(*[a.format(tmp=tmp_path, clips=clip_dir) for a in args])
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("dfbatch: error:"), res.stderr
    assert re.search(pattern, lines[0]) and "Traceback" not in res.stderr


def test_relative_paths_on_a_joined_ray_are_the_callers(ray_address, mlflow_uri, tiny_model, clip_dir, tmp_path):
    """`dfbatch score` joining a running Ray (RAY_ADDRESS) whose workers work in another folder (the session's Ray:
    the repository): a relative SOURCE and OUT still mean the caller's folder, made absolute in the driver. Before,
    the workers wrote the rows under their own folder (a FileNotFoundError in the write)."""
    (tmp_path / "in").mkdir()
    os.link(clip_dir / "carphone.mp4", tmp_path / "in" / "a.mp4")
    stray = Path.cwd() / "out"  # the workers' folder: nothing may be written there (a user's own out/ may exist)
    before = sorted(stray.rglob("*")) if stray.exists() else None
    res = subprocess.run([sys.executable, "-m", "dfbatch", "score", "in/", "-o", "out", "--frames", "4", "--json"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "RAY_ADDRESS": ray_address})
    assert res.returncode == 0, res.stderr[-3000:]
    assert Path.cwd() != tmp_path and (sorted(stray.rglob("*")) if stray.exists() else None) == before
    df = read_results(str(tmp_path / "out"))
    assert list(df.video_uri) == [str(tmp_path / "in" / "a.mp4")] and list(df.status) == ["ok"]


def test_bad_flag_exits_nonzero_without_traceback():
    res = _cli("score", "x", "-o", "y", "--track-aggregation", "sum")
    assert res.returncode == 2 and "invalid choice" in res.stderr and "Traceback" not in res.stderr


def test_readme_documents_the_output_schema():
    readme = (REPO / "README.md").read_text()
    for schema, title in ((VIDEOS_SCHEMA, "videos/"), (FACES_SCHEMA, "faces/")):
        section = readme[readme.index(f"### `{title}`") :]
        rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]+)` \|", section.split("\n### ")[0], flags=re.M))
        assert rows == {f.name: str(f.type) for f in schema}, title
