"""Failed rows say whether a retry can help (error_class, error_kind), and crash markers belong to one job: a video
that keeps killing its worker gets a `worker_died` row after `limit` deaths; its batch neighbours are scored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from dfbatch.config import FaceConfig, LimitsConfig, SamplingConfig
from dfbatch.corpora import hostile
from dfbatch.io.listing import _local_ref
from dfbatch.io.storage import Storage
from dfbatch.stages.failures import ERROR_CLASSES, InflightMarkers, classify
from dfbatch.stages.faces import FaceDetector, process_video

REPO = Path(__file__).resolve().parents[1]

# what a user should be told about each file: can a rerun help (transient) or is the file itself the problem
CLASSES = {
    "empty.mp4": "corrupt",
    "text.mp4": "corrupt",
    "truncated_before_moov.mp4": "corrupt",
    "png_named.mp4": "unsupported",
    "audio_only.mp4": "unsupported",
    "fifo.mp4": "unsupported",
    "broken_symlink.mp4": "not_found",  # a listing error: the stat failed
    "loop.mp4": "not_found",
}
LIMITS = {  # base.mp4: 176x144, 2.7 s, 85 kB
    "over_limit": LimitsConfig(max_duration_s=1.0),
    "time_budget": LimitsConfig(time_budget_s=1e-6),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    hostile.hostile_corpus(root)
    yield root
    hostile.restore_permissions(root)


def _ref(path: Path) -> dict:
    return asdict(_local_ref(str(path))) | {"video_id": "test"}


def test_failed_rows_carry_their_class_and_kind(corpus):
    detector = FaceDetector(FaceConfig())
    got = {}
    for name in CLASSES:
        row = process_video(_ref(corpus / name), detector, Storage(), SamplingConfig(), LimitsConfig(), frames=4, crop_size=64)
        got[name] = (row["status"], row["error_class"], row["error_kind"])
    for cls, limits in LIMITS.items():
        row = process_video(_ref(corpus / "base.mp4"), detector, Storage(), SamplingConfig(), limits, frames=4, crop_size=64)
        got[cls] = (row["status"], row["error_class"], row["error_kind"])
    want = {k: ("failed", c, ERROR_CLASSES[c]) for k, c in CLASSES.items()} | {
        "over_limit": ("failed", "over_limit", "permanent"), "time_budget": ("failed", "time_budget", "transient")}
    assert got == want
    ok = process_video(_ref(corpus / "base.mp4"), detector, Storage(), SamplingConfig(), LimitsConfig(), frames=4, crop_size=64)
    assert ok["status"] == "ok" and ok["error_class"] is None and ok["error_kind"] is None


def test_storage_errors_are_transient_and_missing_objects_permanent(s3_endpoint, tmp_path):
    """Real errors from an S3 endpoint (moto behind the fault proxy): a persistent 503 is a storage (transient)
    failure through boto3 and through s3fs; a missing key or a denied one is permanent."""
    from test_faults import FaultProxy

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="classes")
    for key in ("down.mp4", "denied.mp4"):
        s3.put_object(Bucket="classes", Key=key, Body=b"x")
    proxy = FaultProxy(s3_endpoint, lambda method, bucket, key, query, n: {"down.mp4": 503, "denied.mp4": 403}.get(key))
    try:
        once = boto3.client("s3", endpoint_url=proxy.url, config=Config(retries={"max_attempts": 1}))
        import s3fs

        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": proxy.url}, use_listings_cache=False,
                               config_kwargs={"retries": {"max_attempts": 1}}, skip_instance_cache=True)
        fs.retries = 1  # s3fs's own retries on top of botocore's
        found = {}
        for key in ("down.mp4", "denied.mp4", "missing.mp4"):
            for via, read in (("boto3", lambda k: once.get_object(Bucket="classes", Key=k)), ("s3fs", lambda k: fs.cat(f"classes/{k}"))):
                with pytest.raises(Exception) as err:
                    read(key)
                found[(key, via)] = classify(err.value)
    finally:
        proxy.close()
    assert found == {("down.mp4", "boto3"): "storage", ("down.mp4", "s3fs"): "storage",
                     ("denied.mp4", "boto3"): "access_denied", ("denied.mp4", "s3fs"): "access_denied",
                     ("missing.mp4", "boto3"): "not_found", ("missing.mp4", "s3fs"): "not_found"}
    assert {ERROR_CLASSES[c] for c in ("storage", "time_budget", "worker_died", "model")} == {"transient"}


_WORKER = textwrap.dedent("""
    # one attempt of a task over five videos under crash markers; `poison` kills the process like a segfault
    import json, os, signal, sys
    from dfbatch.io.storage import Storage
    from dfbatch.stages.failures import InflightMarkers, fail, run_guarded

    out, job, log = sys.argv[1], sys.argv[2], sys.argv[3]
    ids = ["a", "poison", "b", "c", "d"]

    def work(idx):
        with open(log, "a") as f:
            f.write(json.dumps([ids[i] for i in idx]) + "\\n")
        if any(ids[i] == "poison" for i in idx) and os.environ.get("POISON") == "1":
            os.kill(os.getpid(), signal.SIGKILL)
        return [{"video_id": ids[i], "status": "ok"} for i in idx]

    rows = run_guarded(InflightMarkers(out, Storage(), job, "faces"), ids, work,
                       lambda i, deaths: fail({"video_id": ids[i]}, f"died {deaths}", "worker_died"))
    print(json.dumps(rows))
""")


def _attempts(out: Path, job: str, log: Path, poison: bool) -> tuple[int, list]:
    """Run the task again after each death, as Ray does; returns (deaths, rows of the attempt that finished)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), POISON="1" if poison else "0")
    for deaths in range(6):
        proc = subprocess.run([sys.executable, "-c", _WORKER, str(out), job, str(log)], env=env, capture_output=True,
                              text=True, timeout=60)
        if proc.returncode == 0:
            return deaths, json.loads(proc.stdout)
        assert proc.returncode == -9, proc.stderr[-2000:]
    raise AssertionError("the task never finished: the poison video was retried without limit")


def test_a_poison_video_gets_a_failed_row_and_its_batch_is_scored(tmp_path):
    out, log = tmp_path / "out", tmp_path / "calls.log"
    deaths, rows = _attempts(out, "job1", log, poison=True)
    assert InflightMarkers.limit == 2 and deaths == 3  # one while in a batch (charged to none), then two alone
    assert [(r["video_id"], r["status"], r.get("error_class")) for r in rows] == [
        ("a", "ok", None), ("poison", "failed", "worker_died"), ("b", "ok", None), ("c", "ok", None), ("d", "ok", None)]
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls[0] == ["a", "poison", "b", "c", "d"]  # the first attempt: one batch
    assert all(len(c) == 1 for c in calls[1:])  # after a death: one video at a time
    assert calls.count(["poison"]) == 2  # two deaths of its own, then never again
    # the markers live with the job under OUT/_inflight/<job>/<stage>/; the poison one is left until clear()
    left = list((out / "_inflight" / "job1" / "faces").iterdir())
    assert len(left) == 1 and left[0].read_text() == "2"
    # another job on the same OUT and the same video ids starts from nothing: nothing is poisoned for it
    deaths, rows = _attempts(out, "job2", log, poison=False)
    assert deaths == 0 and all(r["status"] == "ok" for r in rows)
    InflightMarkers(str(out), Storage(), "job1", "faces").clear()
    assert not (out / "_inflight" / "job1").exists()
