"""Listing at scale, measured: a moto S3 server (HTTP) holding 1,000 and 10,000 keys; the job lists them in Ray Data
read tasks, resumes past the 95 % that already have a row (the per-block anti-join) and scores the rest (1-byte
objects: `failed` rows, cheap). The first results are committed before the listing ends, and the driver's peak
memory grows by less than 50 MB from the 1,000- to the 10,000-key run. `python tests/test_listing_scale.py N...`
prints the same figures for other sizes (docs/performance.md)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BUCKET = "archive"
EVERY = 20  # one key in EVERY has no row yet; the others were scored by an earlier run
DRIVER = """
import json, sys
from dfbatch.config import SamplingConfig, ScoreConfig
from dfbatch.pipeline import run_score
s = run_score(ScoreConfig(sources=[sys.argv[1]], output=sys.argv[2], model_uri=sys.argv[3], s3_endpoint_url=sys.argv[4],
                          listing_lead=int(sys.argv[5]), rows_per_part=int(sys.argv[6]), sampling=SamplingConfig(frames=2)))
# the driver's own peak: VmHWM (getrusage's ru_maxrss would also count the parent's memory at fork time)
with open("/proc/self/status") as f:
    peak = [int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM")][0]
print(json.dumps({"summary": s.to_dict(), "peak_rss_mb": peak}))
"""


def moto_server():
    """moto's S3 server over HTTP in a thread of this process (its backend is filled directly: fast)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def fill(endpoint: str, prefix: str, n: int) -> list[str]:
    """n one-byte objects `prefix/000000.mp4`...; returns their video ids."""
    import boto3
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    from dfbatch.io.listing import video_id

    s3 = boto3.client("s3", endpoint_url=endpoint)
    if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=BUCKET)
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    keys = [f"{prefix}/{i:07d}.mp4" for i in range(n)]
    for key in keys:
        backend.put_object(BUCKET, key, b"x")
    etag = s3.head_object(Bucket=BUCKET, Key=keys[0])["ETag"].strip('"')
    return [video_id(f"s3://{BUCKET}/{k}", 1, etag) for k in keys]


def prescore(out: Path, ids: list[str], model: str, version: str, every: int = EVERY) -> int:
    """Rows for all but every `every`-th video, as an earlier run of the same model version would have left them."""
    from dfbatch.io.results import ResultStore
    from dfbatch.io.storage import Storage

    store = ResultStore(str(out), Storage())
    store.check_writable()
    done = [i for n, i in enumerate(ids) if n % every]
    for start in range(0, len(done), 5000):
        store.write_part([{"video_id": i, "video_uri": f"earlier-{i}", "status": "failed", "error": "earlier run", "model_name": model,
                           "model_version": version} for i in done[start : start + 5000]], job_id="earlier")
    return len(done)


def measure(endpoint: str, n: int, root: Path, model_uri: str, version: str, lead: int = 256, every: int = EVERY,
            part: int = 128, ray_address: str | None = None) -> dict:
    """One job over n keys (a driver subprocess joining the Ray at `ray_address`, else starting its own local
    Ray): its summary and peak RSS."""
    ids = fill(endpoint, f"n{n}", n)
    out = root / f"out-{n}"
    prescore(out, ids, "dfbatch-detector", version, every)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    t0 = time.time()
    res = subprocess.run([sys.executable, "-c", DRIVER, f"s3://{BUCKET}/n{n}/", str(out), model_uri, endpoint, str(lead),
                          str(part)],
                         capture_output=True, text=True, timeout=3600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    report["wall_s"] = time.time() - t0
    return report


def test_listing_streams_resumes_and_keeps_the_driver_small(mlflow_uri, tiny_model, ray_address, tmp_path):
    server, endpoint = moto_server()
    try:
        # parts of 32 rows: the listing lead (256 videos, about 5,000 keys) holds the listing back until results
        # commit, as it does with the default parts of 128 rows at 20,000 keys and more; both drivers join the
        # session's Ray (the same for both: only the driver's own memory is compared)
        small = measure(endpoint, 1_000, tmp_path, tiny_model["uri"], tiny_model["version"], part=32, ray_address=ray_address)
        big = measure(endpoint, 10_000, tmp_path, tiny_model["uri"], tiny_model["version"], part=32, ray_address=ray_address)
    finally:
        server.stop()
    for n, r in ((1_000, small), (10_000, big)):
        s = r["summary"]
        assert s["listed"] == n and s["skipped"] == n - n // EVERY and s["duplicates"] == 0, s
        assert s["scored"] == n // EVERY and s["counts"]["failed"] == n // EVERY
    s = big["summary"]
    # the first part was committed while the listing still had pages to go
    assert s["first_result_s"] < s["listing_s"], (s["first_result_s"], s["listing_s"])
    growth = big["peak_rss_mb"] - small["peak_rss_mb"]
    print(f"\nlisting scale: driver peak RSS {small['peak_rss_mb']:.0f} MB (1k) -> {big['peak_rss_mb']:.0f} MB (10k), "
          f"growth {growth:.1f} MB; 10k: first result {s['first_result_s']:.1f} s, last page {s['listing_s']:.1f} s, wall {big['wall_s']:.0f} s")
    assert growth < 50, growth


def _main(argv: list[str]) -> None:
    """python tests/test_listing_scale.py [--every K] N...: the same measurement for other sizes, one JSON line each
    (docs/performance.md). Registers the tiny model in a temporary MLflow store unless MLFLOW_TRACKING_URI is set."""
    import argparse
    import tempfile

    p = argparse.ArgumentParser(description=_main.__doc__)
    p.add_argument("sizes", nargs="+", type=int)
    p.add_argument("--every", type=int, default=EVERY, help="one key in EVERY has no row yet (default %(default)s)")
    p.add_argument("--lead", type=int, default=256, help="listing lead (default %(default)s)")
    p.add_argument("--part", type=int, default=128, help="rows per result part (default %(default)s)")
    args = p.parse_args(argv)
    root = Path(os.environ.get("SCALE_DIR") or tempfile.mkdtemp(prefix="dfbatch-scale-"))
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(k, v)  # moto accepts any credentials
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/mlflow.db"
        import torch

        from dfbatch.models import registry
        from dfbatch.models.detector import build_model
        from dfbatch.models.spec import ModelSpec

        torch.manual_seed(0)
        spec = ModelSpec(backbone="tiny", hidden_dim=32, input_size=64, seq_len=8, head="mean")
        registry.register(build_model(spec), spec, "dfbatch-detector", alias="champion", threshold=0.5)
    from dfbatch.models import registry

    uri = "models:/dfbatch-detector@champion"
    version = str(registry.fetch(uri).version)
    server, endpoint = moto_server()
    try:
        for n in args.sizes:
            r = measure(endpoint, n, root, uri, version, lead=args.lead, every=args.every, part=args.part)
            s = r["summary"]
            print(json.dumps({"keys": n, "every": args.every, "peak_rss_mb": round(r["peak_rss_mb"], 1),
                              "first_result_s": round(s["first_result_s"], 1), "listing_started_s": round(s["listing_started_s"], 1),
                              "listing_s": round(s["listing_s"], 1),
                              "elapsed_s": round(s["elapsed_s"], 1), "wall_s": round(r["wall_s"], 1), "scored": s["scored"],
                              "skipped": s["skipped"], "listed": s["listed"]}), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    _main(sys.argv[1:])
