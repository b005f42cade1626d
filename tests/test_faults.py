"""Faults: a scoring actor killed mid-job, the driver SIGKILLed mid-write then rerun, a video that kills its
worker every time, S3 errors (object gone after listing, access denied, transient and persistent 5xx)."""

from __future__ import annotations

import glob
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest

from dfbatch.corpora import hostile
from dfbatch.config import SamplingConfig, ScoreConfig
from dfbatch.errors import UserError
from dfbatch.io.results import read_results
from dfbatch.pipeline import Summary
from worker_hooks import hook_env as _hook_env  # tests/ is on sys.path


pytestmark = pytest.mark.slow
FRAMES = 4


def _clips(root: Path, n: int, distinct: int = 8) -> list[Path]:
    """n small real clips (carphone, 8 frames each); `distinct` encodes, the rest byte copies under other names."""
    root.mkdir(parents=True, exist_ok=True)
    cp = hostile._carphone()
    out = []
    for i in range(n):
        p = root / f"clip{i:03d}.mp4"
        if i < distinct:
            hostile.encode(p, cp[i * 5 : i * 5 + 40 : 5], 10)
        else:
            p.write_bytes((root / f"clip{i % distinct:03d}.mp4").read_bytes())
        out.append(p)
    return out


def _descendants(root_pid: int) -> dict[int, str]:
    """{pid: command line} of every live process below root_pid (Ray's workers under our driver)."""
    parent, cmd = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd[int(d)] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = {}, {root_pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier and p not in found}
        found.update({p: cmd.get(p, "") for p in frontier})
    return found


def _score_cli(src, out, *, frames: int = FRAMES, extra=()) -> list[str]:
    return [sys.executable, "-m", "dfbatch", "score", str(src), "-o", str(out), "--model", "models:/dfbatch-detector@champion", "--frames", str(frames), *extra]


def _check_one_row_per_video(out: Path, videos: list[Path]) -> None:
    df = read_results(str(out))
    assert df.video_id.is_unique, df[df.video_id.duplicated(keep=False)].video_uri.tolist()
    assert sorted(df.video_uri) == sorted(map(str, videos))
    faces = read_results(str(out), "faces")
    assert set(faces.video_id) == set(df[df.status == "ok"].video_id)
    assert not faces.duplicated(["video_id", "track_id"]).any()
    assert os.listdir(out / "_staging") == []


# ------------------------------------------------------------------------------------------ actor killed
def test_scoring_actor_killed_mid_job_is_restarted(ray_local, mlflow_uri, tiny_model, tmp_path):
    from dfbatch.pipeline import run_score

    videos = _clips(tmp_path / "src", 24)
    killed: list[int] = []
    seen: set[int] = set()
    done = threading.Event()

    def killer():  # SIGKILL the scoring actor's process while it runs a task (or 1 s after it is ready)
        ready: dict[int, float] = {}
        while not done.is_set():
            for pid, cmd in _descendants(os.getpid()).items():
                if "ScoreStage" in cmd:
                    seen.add(pid)
                    if not cmd.endswith("__init__"):
                        ready.setdefault(pid, time.time())
                    if not killed and (cmd.endswith(".submit") or time.time() - ready.get(pid, time.time()) > 1.0):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
            time.sleep(0.5 if killed else 0.02)  # after the kill: only to see the restarted actor

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    try:
        summary = run_score(ScoreConfig(sources=[str(tmp_path / "src")], output=str(tmp_path / "out"), model_uri=tiny_model["uri"],
                                        sampling=SamplingConfig(frames=FRAMES), rows_per_block=2, videos_per_score_batch=2, face_workers=1, score_workers=1))
    finally:
        done.set()
        th.join()
    assert killed, "the scoring actor was never seen running a task"
    assert seen - set(killed), "no restarted scoring actor process was seen"
    assert summary.scored == len(videos) and summary.counts["ok"] == len(videos)
    _check_one_row_per_video(tmp_path / "out", videos)


# ------------------------------------------------------------------------------------------ driver killed
def test_driver_sigkill_mid_write_then_rerun(mlflow_uri, tiny_model, tmp_path):
    """SIGKILL `dfbatch score` right after its first part commits (parts of >= 16 rows here, 128 by default; two
    videos at the end of the listing are held up, so the first part cannot hold everything); a reader polls
    every Parquet file throughout and never sees a partial one; the rerun scores only the rest."""
    videos = _clips(tmp_path / "src", 30)
    for i in range(2):
        videos.append(tmp_path / "src" / f"zz_SLOW_{i}.mp4")
        videos[-1].write_bytes(videos[i].read_bytes())
    out = tmp_path / "out"
    (tmp_path / "parts.yaml").write_text("rows_per_part: 16\n")
    cmd = _score_cli(tmp_path / "src", out, frames=2, extra=["--config", str(tmp_path / "parts.yaml")])
    bad: list = []
    reads = Counter()
    stop = threading.Event()

    def reader():
        whole: set = set()  # (path, size, mtime) read whole once: a committed part never changes (only new ones come)
        while not stop.is_set():
            for p in glob.glob(str(out / "videos" / "*.parquet")) + glob.glob(str(out / "faces" / "*.parquet")):
                try:
                    st = os.stat(p)
                    if (p, st.st_size, st.st_mtime_ns) in whole:
                        continue
                    pq.read_table(p)
                    whole.add((p, st.st_size, st.st_mtime_ns))
                    reads["ok"] += 1
                except FileNotFoundError:
                    pass
                except Exception as exc:  # a partial or torn file
                    bad.append((p, repr(exc)))
            time.sleep(0.005)

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    try:
        env = _hook_env(tmp_path, DFBATCH_TEST_SLOW_S="120")
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 240
        while proc.poll() is None and not glob.glob(str(out / "videos" / "*.parquet")) and time.time() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, f"the first run ended before it could be killed: {proc.stdout.read()[-3000:]!r}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        # the local Ray the driver started (its own session) goes too, as a crashed machine's would: no write task
        # of the dead job may race the rerun (left alone, some were still running 30 s later)
        while pids := _session_pids(proc.pid):
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        committed = len(read_results(str(out)))
        assert 16 <= committed < len(videos)  # a whole part (rows_per_part) or more, never everything
        rerun = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
    finally:
        stop.set()
        th.join()
    summary = Summary.from_printed(rerun.stdout)
    assert summary["listed"] == len(videos) and summary["skipped"] == committed and summary["scored"] == len(videos) - committed
    _check_one_row_per_video(out, videos)
    assert not bad, bad[:3]
    assert reads["ok"] > 0  # the reader did read committed parts while the jobs ran


def _session_pids(sid: int) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.getsid(int(d)) == sid:
                    with open(f"/proc/{d}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                            pids.append(int(d))
            except OSError:
                pass
    return pids


# ------------------------------------------------------------------------------------------ poison video
def test_videos_that_crash_or_hang_their_worker_every_time_get_failed_rows(mlflow_uri, tiny_model, tmp_path):
    """Ray restarts a dead actor and retries its task forever. A segfault on every attempt, in the decoder or in the
    model of the fused CPU actor, or a native call that never returns (the watchdog exits the actor after 2 x
    time_budget_s): the job's crash markers turn the second death on the same video into a `failed` row
    (`worker_died`, transient) instead of a stalled job. A later job on the same OUT starts with no markers:
    `--retry-failed` scores those videos again (here the crashes are gone) and leaves the corrupt file's row alone."""
    videos = _clips(tmp_path / "src", 3)
    poison, hang, model = (tmp_path / "src" / n for n in ("POISON.mp4", "HANG.mp4", "MODELCRASH.mp4"))
    for p in (poison, hang, model):
        p.write_bytes(videos[0].read_bytes())
    corrupt = tmp_path / "src" / "corrupt.mp4"
    corrupt.write_text("not a video")
    log = tmp_path / "crashes.log"
    env = _hook_env(tmp_path, DFBATCH_TEST_CRASH_LOG=str(log))
    out = tmp_path / "out"
    cmd = _score_cli(tmp_path / "src", out, extra=["--face-workers", "1", "--time-budget", "4", "--json"])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = Summary.from_printed(proc.stdout)  # the JSON alone: Ray's "(raylet) A worker died" notices go to stderr
    deaths = Counter(line.split(":")[0] for line in log.read_text().split())
    # each killed two worker processes on its own (and maybe one more while sharing a batch, charged to no video),
    # then no more attempts
    assert set(deaths) == {"POISON.mp4", "HANG.mp4", "MODELCRASH.mp4"} and set(deaths.values()) <= {2, 3}, deaths
    assert len(set(log.read_text().split())) == sum(deaths.values())  # a new process each time
    df = read_results(str(out)).set_index("video_uri")
    assert len(df) == 7 and df.video_id.is_unique
    for bad in (poison, hang, model):
        row = df.loc[str(bad)]
        assert (row.status, row.error_class, row.error_kind) == ("failed", "worker_died", "transient")
        assert "worker process died 2 times" in row.error
    assert (df.loc[str(corrupt), ["status", "error_class", "error_kind"]] == ["failed", "corrupt", "permanent"]).all()
    assert (df.loc[list(map(str, videos))].status == "ok").all()
    assert first["failed_rows"] == {"transient": {"worker_died": 3}, "permanent": {"corrupt": 1}}
    assert not (out / "_inflight" / first["job_id"]).exists()  # the job's markers went with it

    proc = subprocess.run([*cmd, "--retry-failed"], env=env | {"DFBATCH_TEST_CRASH_OFF": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = Summary.from_printed(proc.stdout)
    assert (second["listed"], second["skipped"], second["scored"], second["replaced"]) == (7, 4, 3, 3)
    after = read_results(str(out)).set_index("video_uri")
    assert len(after) == 7 and after.video_id.is_unique
    assert (after.loc[[str(p) for p in (poison, hang, model)]].status == "ok").all()
    assert after.scored_at[str(corrupt)] == df.scored_at[str(corrupt)]  # permanent: not retried by default
    assert second["failed_rows"] == {"permanent": {"corrupt": 1}}


# ------------------------------------------------------------------------------------------ S3 faults
_ERRORS = {403: ("AccessDenied", "Access Denied"), 404: ("NoSuchKey", "The specified key does not exist."), 503: ("SlowDown", "Please reduce your request rate.")}


class FaultProxy:
    """HTTP proxy on 127.0.0.1 in front of moto: `rules(method, bucket, key, query) -> status | None` injects S3
    errors; everything else is forwarded. `hits` counts injected errors per (bucket, key, status)."""

    def __init__(self, upstream: str, rules):
        self.upstream = upstream.split("://", 1)[1]
        self.rules = rules
        self.hits: Counter = Counter()
        self.requests: Counter = Counter()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path, _, query = self.path.partition("?")
                bucket, _, key = path.lstrip("/").partition("/")
                proxy.requests[(bucket, key)] += 1
                status = proxy.rules(self.command, bucket, key, query, proxy.requests[(bucket, key)])
                if status:
                    proxy.hits[(bucket, key, status)] += 1
                    code, msg = _ERRORS[status]
                    data = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{msg}</Message><RequestId>fault</RequestId></Error>'.encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                conn.request(self.command, self.path, body=body or None, headers={k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"})
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _rules(method, bucket, key, query, n):
    if bucket == "nolist" and not key:
        return 403  # listing denied
    if bucket == "flakylist" and not key and n <= 2:
        return 503
    if key.endswith("vanished.mp4"):
        return 404  # listed, then gone
    if key.endswith("denied.mp4"):
        return 403
    if key.endswith("flaky.mp4") and n <= 3:
        return 503  # transient: the first three requests
    return None


@pytest.fixture()
def s3_faults(s3_endpoint, tmp_path):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    clip = _clips(tmp_path / "clips", 1)[0].read_bytes()
    for bucket in ("faults", "nolist", "flakylist"):
        s3.create_bucket(Bucket=bucket)
    for key in ("in/ok1.mp4", "in/ok2.mp4", "in/flaky.mp4", "in/vanished.mp4", "in/denied.mp4"):
        s3.put_object(Bucket="faults", Key=key, Body=clip)
    s3.put_object(Bucket="nolist", Key="a.mp4", Body=clip)
    s3.put_object(Bucket="flakylist", Key="a.mp4", Body=clip)
    proxy = FaultProxy(s3_endpoint, _rules)
    yield proxy
    proxy.close()


def test_s3_listing_errors(s3_faults):
    from dfbatch.io.listing import iter_videos
    from dfbatch.io.storage import Storage

    storage = Storage(s3_faults.url)
    with pytest.raises(UserError) as err:
        list(iter_videos(["s3://nolist/"], storage))
    msg = str(err.value)
    assert "cannot list s3://nolist/" in msg and "AccessDenied" in msg and "\n" not in msg
    refs = list(iter_videos(["s3://flakylist/"], storage))  # two 503s on the listing, retried
    assert [r.video_uri for r in refs] == ["s3://flakylist/a.mp4"] and s3_faults.hits[("flakylist", "", 503)] == 2


def test_s3_object_faults_in_a_job(s3_faults, ray_local, mlflow_uri, tiny_model, tmp_path):
    from dfbatch.pipeline import run_score

    cfg = ScoreConfig(sources=["s3://faults/in/"], output=str(tmp_path / "out"), model_uri=tiny_model["uri"], s3_endpoint_url=s3_faults.url,
                      sampling=SamplingConfig(frames=FRAMES), face_workers=1, score_workers=1)
    run_score(cfg)
    df = read_results(str(tmp_path / "out")).set_index("video_uri")
    assert df.index.is_unique and len(df) == 5
    status = df.status.to_dict()
    assert status == {"s3://faults/in/ok1.mp4": "ok", "s3://faults/in/ok2.mp4": "ok", "s3://faults/in/flaky.mp4": "ok",
                      "s3://faults/in/vanished.mp4": "failed", "s3://faults/in/denied.mp4": "failed"}, df.error.to_dict()
    assert s3_faults.hits[("faults", "in/flaky.mp4", 503)] == 3  # retried with backoff, then read
    assert "object not found" in df.error["s3://faults/in/vanished.mp4"]
    assert "access denied" in df.error["s3://faults/in/denied.mp4"]
    # neither can pass on a rerun as it stands: permanent (--retry-failed leaves them; --retry-errors names them)
    assert df.loc["s3://faults/in/vanished.mp4", ["error_class", "error_kind"]].tolist() == ["not_found", "permanent"]
    assert df.loc["s3://faults/in/denied.mp4", ["error_class", "error_kind"]].tolist() == ["access_denied", "permanent"]
    assert not df.error.dropna().str.contains("\n").any()
