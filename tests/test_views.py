"""Looking at results: `dfbatch query` (DuckDB), `score --save-crops`, `dfbatch report` (HTML + Grad-CAM) and
`dfbatch serve` (the single-video page) — on a real scoring run (local Ray, real clips, real MTCNN, MLflow
sqlite, S3 over HTTP), with the report and the page opened in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from chromium import Chromium, chromium_path, not_blank
from dfbatch.io.images import decode_jpeg, encode_strip
from dfbatch.io.results import FACES_SCHEMA, ResultStore, read_results, to_tables
from dfbatch.io.storage import Storage
from test_sink import _row

REPO = Path(__file__).resolve().parents[1]
NAME = "dfbatch-detector"


def _crops(seed: int, n: int = 3, size: int = 32) -> np.ndarray:
    """Smooth (JPEG-friendly) uint8 crops."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x, y, (x + y) / 2], axis=-1)
    return np.stack([(255 * np.clip(base * rng.uniform(0.5, 1.0, 3), 0, 1)).astype(np.uint8) for _ in range(n)])


# ----------------------------------------------------------------------------------- no Ray, no model
def test_saved_crops_are_committed_with_their_part(tmp_path):
    store = ResultStore(str(tmp_path / "out"), Storage())
    store.check_writable()
    crops = _crops(0, n=2)  # _row's track has 2 frames
    row = _row(1) | {"crop_jpegs": [encode_strip(crops)]}
    store.write_part([row, _row(2, "failed")], job_id="j1")
    faces = store.read("faces")
    (rel,) = faces.crops_file
    assert re.fullmatch(r"crops/part-m-v1-[0-9a-f]{16}/id1-0\.jpg", rel)
    back = store.read_crops(rel)
    assert back.shape == crops.shape and np.abs(back.astype(int) - crops).mean() < 3
    assert os.listdir(tmp_path / "out" / "_staging") == []
    with pytest.raises(ValueError, match="not a crops file"):
        store.read_crops("crops/part-x/../../../../etc/passwd.jpg")  # a crafted row cannot read outside OUT
    part_dir = rel.rsplit("/", 1)[0]

    # crops of a part whose videos file never committed (a crash) are removed by the next run's recover()
    orphan = tmp_path / "out" / "crops" / "part-m-v1-00000000deadbeef"
    orphan.mkdir()
    (orphan / "x-0.jpg").write_bytes(encode_strip(crops))
    assert store.recover() == 1 and not orphan.exists() and (tmp_path / "out" / rel).exists()
    # a rescore's newer rows replace the part's: its crops go with it
    store.write_part([_row(1) | {"scored_at": datetime.now(timezone.utc)}, _row(2, "failed") | {"scored_at": datetime.now(timezone.utc)}], job_id="j2")
    assert store.drop_superseded("m", "1") == 2
    assert not (tmp_path / "out" / part_dir).exists() and len(store.read("videos")) == 2


def test_faces_parts_from_before_crops_file_read_as_null(tmp_path):
    store = ResultStore(str(tmp_path / "out"), Storage())
    store.check_writable()
    videos, faces = to_tables([_row(1)])
    old = faces.drop_columns(["crops_file"])  # a part written before the column existed
    pq.write_table(old, tmp_path / "out" / "faces" / "part-m-v1-0.parquet")
    pq.write_table(videos, tmp_path / "out" / "videos" / "part-m-v1-0.parquet")
    df = read_results(str(tmp_path / "out"), "faces")
    assert len(df) == 1 and df.crops_file.isna().all()
    assert list(df.columns) == FACES_SCHEMA.names


@pytest.fixture()
def small_out(tmp_path) -> Path:
    out = tmp_path / "out"
    store = ResultStore(str(out), Storage())
    store.check_writable()
    rows = [_row(1), _row(2, "failed"), _row(3)]
    rows[0].update(fake_probability=0.9, label="FAKE", video_uri="/a/x.mp4")
    rows[2].update(fake_probability=0.2, video_uri="/b/y.mp4")
    store.write_part(rows, job_id="j")
    return out


def test_query_command_formats_without_torch_or_ray(small_out, tmp_path, capsys, monkeypatch):
    from dfbatch.cli import main

    sql = "SELECT video_uri, status, fake_probability FROM videos ORDER BY fake_probability DESC NULLS LAST"
    probe = ("import runpy, sys\n"
             "try:\n    runpy.run_module('dfbatch', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
             "print('LOADED', sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules), code, file=sys.stderr)\n")
    res = subprocess.run([sys.executable, "-c", probe, "query", str(small_out), sql, "--format", "json"], capture_output=True, text=True, timeout=120)
    assert "LOADED [] 0" in res.stderr, res.stderr  # `dfbatch query` starts without torch, Ray or MLflow
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["video_uri"] for r in rows] == ["/a/x.mp4", "/b/y.mp4", "/v/2.mp4"] and rows[2]["fake_probability"] is None

    def run(*args, stdin=None):
        capsys.readouterr()
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = main(["query", *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, _ = run(str(small_out), "SELECT status, count(*) AS n FROM videos GROUP BY status ORDER BY status", "--format", "csv")
    assert code == 0 and out.splitlines() == ['"status","n"', '"failed",1', '"ok",2']
    code, out, _ = run(str(small_out), "-", stdin="SELECT count(*) AS n_faces FROM faces")
    assert code == 0 and "n_faces" in out and "│" in out and " 2 " in out
    target = tmp_path / "sub" / "top.parquet"
    assert run(str(small_out), "SELECT video_id, fake_probability FROM videos WHERE status = 'ok'", "-o", str(target))[0] == 0
    assert pq.read_table(target).num_rows == 2
    for args, pattern in (([str(small_out), "SELECT nope FROM videos"], r"query failed: .*nope"),
                          ([str(tmp_path / "missing"), "SELECT count(*) FROM videos"], r"no results under .*missing"),
                          ([str(small_out), "SELECT count(*) FROM videos", "--format", "parquet"], r"--format parquet needs -o FILE")):
        code, _, err = run(*args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and re.search(pattern, lines[0]) and lines[0].startswith("dfbatch: error:"), err
    (tmp_path / "nothing-yet").mkdir()  # an OUT before its first run: empty views
    code, out, _ = run(str(tmp_path / "nothing-yet"), "SELECT count(*) AS n FROM videos", "--format", "csv")
    assert code == 0 and out.splitlines() == ['"n"', "0"]


def test_gradcam_on_the_last_conv_block():
    import torch

    from dfbatch.models.detector import ModelSpec, build_model
    from dfbatch.models.registry import ModelBundle
    from dfbatch.views.explain import GradCam, cam_target_layer

    crops = np.stack([np.roll(_crops(i, n=1, size=64)[0], 8 * i, axis=1) for i in range(5)])
    for spec in (ModelSpec(backbone="tiny", hidden_dim=32, input_size=64, seq_len=8, head="mean"),
                 ModelSpec(backbone="tiny", hidden_dim=16, input_size=64, seq_len=8, head="last", seed_compat=True)):  # seed layout
        torch.manual_seed(0)
        net = build_model(spec)
        body = net.model if spec.seed_compat else net.backbone.body
        assert cam_target_layer(net) is body[-1] and isinstance(body[-3], torch.nn.Conv2d)  # tiny: last conv + BN + ReLU
        maps = GradCam(ModelBundle(spec=spec, state_dict=net.state_dict()))(crops)
        assert maps.shape == (5, 64, 64) and maps.dtype == np.float32
        assert 0.0 <= maps.min() and maps.max() <= 1.0 and all(m.std() > 0.01 for m in maps)


# ------------------------------------------------------------------------------- a real scoring run
@pytest.fixture(scope="module")
def scored(ray_local, clip_dir, tmp_path_factory):
    """Two model versions (1 and 2, as in the README's SQL) in their own MLflow store score the same clips;
    version 1 with --save-crops."""
    import torch

    from dfbatch.config import ScoreConfig
    from dfbatch.models import registry
    from dfbatch.models.detector import ModelSpec, build_model
    from dfbatch.pipeline import run_score

    root = tmp_path_factory.mktemp("views")
    uri = f"sqlite:///{root}/mlflow.db"
    clips = root / "clips"
    (clips / "sub").mkdir(parents=True)
    for src, dst in (("carphone.mp4", "carphone.mp4"), ("sub/real_upscaled.mkv", "sub/real_upscaled.mkv"), ("faceless.mp4", "faceless.mp4"), ("broken/text.mp4", "text.mp4")):
        shutil.copy(clip_dir / src, clips / dst)
    out = root / "out"
    spec = ModelSpec(backbone="tiny", hidden_dim=32, input_size=64, seq_len=8, head="mean")
    with registry.using_tracking_uri(uri):  # register() writes through MLflow's global URI; the session's is restored after
        summaries = []
        for version, seed in (("1", 0), ("2", 1)):
            torch.manual_seed(seed)
            assert registry.register(build_model(spec), spec, NAME, alias="champion" if version == "1" else None, threshold=0.5, tracking_uri=uri) == version
            cfg = ScoreConfig(sources=[str(clips)], output=str(out), model_uri=f"models:/{NAME}/{version}", tracking_uri=uri, save_crops=version == "1",
                              face_workers=1)
            summaries.append(run_score(cfg))
    videos = read_results(str(out))
    assert sorted(videos.status) == ["failed", "failed", "no_face", "no_face", "ok", "ok", "ok", "ok"]
    return SimpleNamespace(root=root, uri=uri, clips=clips, out=out, runs=summaries, videos=videos, faces=read_results(str(out), "faces"))


def _readme_sql() -> dict[str, str]:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### SQL: `dfbatch query`"):].split("\n### ")[0]
    blocks = re.findall(r"```sql\n(.*?)```", section, flags=re.S)
    return {b.splitlines()[0].removeprefix("-- ").strip(): b for b in blocks}


def _query(out: str, sql: str, capsys, *extra: str) -> list[dict]:
    from dfbatch.cli import main

    capsys.readouterr()
    assert main(["query", out, sql, "--format", "json", *extra]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.slow
def test_readme_sql_examples_run_as_written(scored, capsys):
    examples = _readme_sql()
    assert set(examples) == {"the 50 most suspicious videos", "fake rate per folder", "fake rate per day and model version",
                             "two model versions' scores on the same videos, side by side"}
    out, v = str(scored.out), scored.videos
    ok = v[v.status == "ok"]

    top = _query(out, examples["the 50 most suspicious videos"], capsys)
    assert len(top) == len(ok) == 4
    assert [r["fake_probability"] for r in top] == sorted(ok.fake_probability, reverse=True)

    folders = {r["folder"]: r for r in _query(out, examples["fake rate per folder"], capsys)}
    assert set(folders) == {str(scored.clips), str(scored.clips / "sub")}
    assert (folders[str(scored.clips)]["videos"], folders[str(scored.clips)]["scored"]) == (6, 2)
    for r in folders.values():
        assert r["fake_rate"] == pytest.approx(r["fake"] / r["scored"], abs=1e-3)

    days = _query(out, examples["fake rate per day and model version"], capsys)
    assert [(r["model_version"], r["videos"], r["failed"]) for r in days] == [("1", 4, 1), ("2", 4, 1)]

    side = _query(out, examples["two model versions' scores on the same videos, side by side"], capsys)
    assert sorted(r["video_uri"] for r in side) == sorted(set(ok.video_uri))
    for r in side:
        mine = v[v.video_uri == r["video_uri"]].set_index("model_version").fake_probability
        assert (r["v1"], r["v2"]) == (mine["1"], mine["2"]) and r["change"] == pytest.approx(mine["2"] - mine["1"], abs=1e-4)


@pytest.mark.slow
def test_saved_crops_belong_to_the_scored_tracks(scored):
    faces, store = scored.faces, ResultStore(str(scored.out), Storage())
    v1, v2 = faces[faces.model_version == "1"], faces[faces.model_version == "2"]
    assert len(v1) >= 2 and v1.crops_file.notna().all() and v2.crops_file.isna().all()
    for t in v1.itertuples():
        crops = store.read_crops(t.crops_file)
        assert crops.shape == (len(t.frame_indices), 64, 64, 3) and crops.std() > 10  # a picture, not a blank


@pytest.mark.slow
def test_query_reads_s3_results(scored, s3_endpoint, capsys):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="views")
    for path in scored.out.rglob("*.parquet"):
        s3.upload_file(str(path), "views", f"run/{path.relative_to(scored.out)}")
    sql = _readme_sql()["two model versions' scores on the same videos, side by side"]
    assert _query("s3://views/run", sql, capsys) == _query(str(scored.out), sql, capsys)
    target = "s3://views/exports/top.csv"
    from dfbatch.cli import main

    assert main(["query", "s3://views/run", "SELECT video_id FROM faces", "--format", "csv", "-o", target]) == 0
    body = s3.get_object(Bucket="views", Key="exports/top.csv")["Body"].read().decode()
    assert body.splitlines()[0] == '"video_id"' and len(body.splitlines()) == 1 + len(scored.faces)


def _need_chromium():
    if chromium_path() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (make sysdeps installs Debian's chromium)")
        pytest.skip("chromium not installed (install Debian's chromium: make sysdeps)")


def _images(html: str, video_id: str, cls: str) -> list[np.ndarray]:
    article = re.search(rf'<article class="video" data-video-id="{video_id}".*?</article>', html, flags=re.S).group(0)
    return [decode_jpeg(base64.b64decode(src)) for src in re.findall(rf'<img class="{cls}" src="data:image/jpeg;base64,([^"]+)"', article)]


@pytest.mark.slow
def test_report_opens_offline_with_crops_and_heatmaps(scored, tmp_path):
    import mlflow

    from dfbatch.config import ReportConfig
    from dfbatch.views.report import build_report

    _need_chromium()
    saved = build_report(ReportConfig(output=scored.out, html=tmp_path / "v1.html", model_version="1", tracking_uri=scored.uri))
    again = build_report(ReportConfig(output=scored.out, html=tmp_path / "report.html", tracking_uri=scored.uri))  # v2: scored last, no crops saved
    assert (saved.model_version, again.model_version) == ("1", "2") and saved.top == again.top == 2
    v = scored.videos
    ok1 = v[(v.model_version == "1") & (v.status == "ok")].sort_values("fake_probability", ascending=False)
    failed = v[(v.model_version == "1") & (v.status == "failed")].iloc[0]

    with Chromium(width=1200, height=900) as b:
        b.goto((tmp_path / "v1.html").as_uri())
        counts = b.js("Object.fromEntries([...document.querySelectorAll('#status-counts tr[data-status]')].map(r => [r.dataset.status, +r.cells[1].textContent]))")
        assert counts == {"ok": 2, "no_face": 1, "failed": 1, "FAKE": int((ok1.label == "FAKE").sum()), "total": 4}
        cards = b.js("[...document.querySelectorAll('#top article.video')].map(a => [a.dataset.videoId, +a.dataset.pFake, a.querySelectorAll('img.crop').length, a.querySelectorAll('img.cam').length])")
        assert [c[0] for c in cards] == list(ok1.video_id) and [c[1] for c in cards] == pytest.approx(list(ok1.fake_probability), abs=1e-9)
        assert all(c[2] >= 1 and c[2] == c[3] for c in cards)  # every crop has its heatmap
        assert b.js("document.querySelectorAll('#top svg.strip rect.bar').length") >= 2
        assert b.js("[...document.querySelectorAll('img')].every(i => i.complete && i.naturalWidth > 0)")
        failed_rows = b.js("[...document.querySelectorAll('#failed-videos tr')].slice(1).map(r => [r.cells[0].textContent, r.cells[1].textContent])")
        assert failed_rows == [[failed.video_uri, failed.error]]
        assert b.js("document.querySelector('#model-version').textContent") == "1"
        assert scored.runs[0].mlflow_run_id in b.js("document.querySelector('#runs').textContent")
        assert [u for u in b.requests() if not u.startswith("data:")] == [(tmp_path / "v1.html").as_uri()]  # images inlined: nothing fetched
        assert not_blank(b.screenshot(str(tmp_path / "report.png")))

    # crops extracted again (no --save-crops) are the job's crops: same frames, same boxes (JPEG noise only)
    html1, html2 = (tmp_path / "v1.html").read_text(), (tmp_path / "report.html").read_text()
    assert "extracted again from the video" in html2 and "saved by the job" in html1
    for vid in ok1.video_id:
        a, c = _images(html1, vid, "crop"), _images(html2, vid, "crop")
        assert len(a) == len(c) >= 1 and max(np.abs(x.astype(int) - y).mean() for x, y in zip(a, c)) < 6
        assert len(_images(html2, vid, "cam")) == len(c)

    client = mlflow.MlflowClient(scored.uri)
    assert [f.path for f in client.list_artifacts(scored.runs[0].mlflow_run_id, "report")] == ["report/v1.html"]
    assert [f.path for f in client.list_artifacts(scored.runs[1].mlflow_run_id, "report")] == ["report/report.html"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(scored):
    """`dfbatch serve` with model version 1, as a user starts it."""
    import requests

    port = _free_port()
    log = open(scored.root / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "dfbatch", "serve", "--model", f"models:/{NAME}@champion", "--tracking-uri", scored.uri,
                             "--port", str(port), "--max-upload-mb", "1"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while True:
        try:
            info = requests.get(f"{url}/api/model", timeout=2).json()
            break
        except requests.RequestException:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("dfbatch serve did not start: " + (scored.root / "serve.log").read_text()[-2000:])
            time.sleep(0.5)
    assert info["model_version"] == "1" and info["threshold"] == 0.5
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.mark.slow
def test_served_page_gives_the_batch_jobs_probability(scored, server, tmp_path):
    _need_chromium()
    v = scored.videos.set_index(["video_uri", "model_version"])
    f1 = scored.faces[scored.faces.model_version == "1"].set_index("video_uri")
    carphone, upscaled = str(scored.clips / "carphone.mp4"), str(scored.clips / "sub" / "real_upscaled.mkv")
    with Chromium(width=1280, height=1000, timeout=300) as b:  # generous: CI machines are shared (speed is not tested)
        b.goto(server + "/")
        assert b.js("document.querySelectorAll('form#upload input[type=file]#video').length") == 1
        b.set_files("#video", [carphone])
        b.js("document.getElementById('upload').requestSubmit()")
        b.wait_for("document.querySelector('#result #p-fake')")
        row = v.loc[(carphone, "1")]
        got = b.js("({p: +document.querySelector('#p-fake').dataset.value, verdict: document.querySelector('#verdict').textContent,"
                   " model: document.querySelector('#model-version').textContent, threshold: document.querySelector('#threshold').textContent,"
                   " crops: document.querySelectorAll('img.crop').length, cams: document.querySelectorAll('img.cam').length,"
                   " frames: document.querySelectorAll('#frames figure').length, boxes: document.querySelectorAll('#frames rect.box').length,"
                   " bars: document.querySelectorAll('svg.strip rect.bar').length})")
        # the page and dfbatch score agree: to 5e-5 (7.6e-6 seen), as the job scores two videos in one forward pass and the page one
        # (a batch's float sums run in another order; a preprocessing difference moves P(fake) by 1e-3 or more)
        assert got["p"] == pytest.approx(row.fake_probability, abs=5e-5)
        assert got["verdict"] == row.label and got["model"] == "1" and got["threshold"] == "0.500"
        track_frames = len(f1.loc[carphone].frame_indices)
        assert got["crops"] == got["cams"] == track_frames and got["frames"] == row.n_frames and got["boxes"] == track_frames
        assert got["bars"] == sum(s is not None and not np.isnan(s) for s in row.frame_scores)
        assert b.js("[...document.querySelectorAll('img')].every(i => i.complete && i.naturalWidth > 0)")
        assert all(u.startswith((server, "data:")) for u in b.requests())
        assert not_blank(b.screenshot(str(tmp_path / "serve.png")))

        # a path instead of an upload: the same pipeline, the same number
        b.goto(server + "/")
        b.js(f"document.getElementById('uri').value = {json.dumps(upscaled)}; document.getElementById('upload').requestSubmit()")
        b.wait_for("document.querySelector('#result #p-fake')")
        assert float(b.js("document.querySelector('#p-fake').dataset.value")) == pytest.approx(v.loc[(upscaled, "1")].fake_probability, abs=5e-5)

        # bad uploads: a clear message, never a stack trace
        big = tmp_path / "big.mp4"
        big.write_bytes(os.urandom(1536 * 1024))  # over --max-upload-mb 1
        for path, kind, words in ((scored.clips / "text.mp4", "not_a_video", "Not a video"), (scored.clips / "faceless.mp4", "no_face", "No face found"),
                                  (big, "too_large", "File too large")):
            b.goto(server + "/")
            b.set_files("#video", [str(path)])
            b.js("document.getElementById('upload').requestSubmit()")
            b.wait_for("document.querySelector('#message')")
            assert b.js("document.querySelector('#message').dataset.kind") == kind
            text = b.js("document.body.innerText")
            assert words in text and "Traceback" not in text
            assert b.js("document.querySelectorAll('form#upload').length") == 1  # the form is there to try again


@pytest.mark.slow
def test_served_api_and_bad_requests(scored, server):
    import requests

    carphone = scored.clips / "carphone.mp4"
    with open(carphone, "rb") as f:
        r = requests.post(f"{server}/api/analyze", files={"video": ("clip.mp4", f, "video/mp4")}, timeout=120)
    assert r.status_code == 200
    got, row = r.json(), scored.videos.set_index(["video_uri", "model_version"]).loc[(str(carphone), "1")]
    assert got["fake_probability"] == pytest.approx(row.fake_probability, abs=5e-5) and got["label"] == row.label
    assert got["frame_indices"] == list(row.frame_indices) and got["tracks"][0]["boxes"] and got["model_version"] == "1"
    for kwargs, status, words in (
        ({"data": {}}, 400, "No video given"),
        ({"files": {"video": ("empty.mp4", io.BytesIO(b""), "video/mp4")}}, 400, "Empty file"),
        ({"files": {"video": ("notes.mp4", io.BytesIO(b"hello, not a video"), "video/mp4")}}, 422, "cannot open video"),
        ({"data": {"uri": str(scored.clips / "missing.mp4")}}, 400, "no such file"),
        ({"files": {"video": ("big.mp4", io.BytesIO(b"0" * (1024 * 1024 + 10)), "video/mp4")}}, 413, "too large"),
    ):
        res = requests.post(f"{server}/api/analyze", timeout=120, **kwargs)
        assert res.status_code == status and words in res.json()["error"] and "Traceback" not in res.text, (status, res.text)
