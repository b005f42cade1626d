"""Shared fixtures: a real local Ray, a real S3 endpoint (moto server over HTTP on 127.0.0.1), MLflow with a
sqlite store in a temp dir, real mp4 clips made from tests/data, and a small registered model."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
CARPHONE = DATA / "carphone_pristine.mp4"
CARPHONE_DISTORTED = DATA / "carphone_distorted.mp4"

# never let a test touch a real account or the user's MLflow
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_PROFILE", None)
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    """A sqlite MLflow store in a temp dir, exported so subprocesses and Ray workers use it too."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    import mlflow

    mlflow.set_tracking_uri(uri)
    return uri


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray for the session (2 CPUs, like this machine)."""
    import ray

    if not ray.is_initialized():
        # address="local": never join a cluster that `ray start` left on this machine
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_address(ray_local) -> str:
    """`ray_local`'s address, for a driver subprocess to join (RAY_ADDRESS) instead of starting a local Ray of its
    own (~25 CPU s of daemons and helper actors here). Its workers have this process's environment."""
    return ray_local.get_runtime_context().gcs_address


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server over real HTTP on 127.0.0.1 (a subprocess), as AWS_ENDPOINT_URL."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("moto server did not start")
    old = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = url
    yield url
    if old is None:
        os.environ.pop("AWS_ENDPOINT_URL", None)
    else:
        os.environ["AWS_ENDPOINT_URL"] = old
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def tiny_model(mlflow_uri):
    """A small random-weight detector registered as dfbatch-detector@champion (accuracy is not the point)."""
    from dfbatch.models import registry
    from dfbatch.models.detector import build_model
    from dfbatch.models.spec import ModelSpec

    import torch

    torch.manual_seed(0)
    spec = ModelSpec(backbone="tiny", hidden_dim=32, input_size=64, seq_len=8, head="mean")
    version = registry.register(build_model(spec), spec, "dfbatch-detector", alias="champion", threshold=0.5)
    return {"uri": "models:/dfbatch-detector@champion", "version": str(version), "spec": spec}


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    """Real clips: two carphone variants, an upscaled copy, a faceless clip; plus broken files."""
    from dfbatch.corpora import synth

    root = tmp_path_factory.mktemp("clips")
    shutil.copy(CARPHONE, root / "carphone.mp4")
    shutil.copy(CARPHONE_DISTORTED, root / "Carphone Distorted.MP4")
    synth.real_clip(root / "sub" / "real_upscaled.mkv", seed=1, size=(480, 270), seconds=2.0, fps=15)
    synth.faceless_clip(root / "faceless.mp4", seed=2, size=(320, 180), seconds=2.0, fps=15)
    expected = {"carphone.mp4": "ok", "Carphone Distorted.MP4": "ok", "sub/real_upscaled.mkv": "ok", "faceless.mp4": "no_face"}
    broken = root / "broken"
    broken.mkdir()
    for name, status in synth.broken_files(broken).items():
        expected[f"broken/{name}"] = status
    (root / "notes.txt").write_text("not a video, skipped by extension")
    (root / ".hidden.mp4").write_bytes(CARPHONE.read_bytes())
    (root / "dir_named.mp4").mkdir()
    root.joinpath("expected.json").write_text(__import__("json").dumps(expected))
    return root


# `make test` runs two xdist workers, one test file each at a time (--dist loadfile, --no-loadscope-reorder: xdist
# would otherwise start with the files holding the most tests); the slowest files go first so both workers end
# together (measured: docs in README "Tests")
SLOWEST_FIRST = ("test_demo.py", "test_faults.py", "test_train.py", "test_cluster.py", "test_listing_scale.py",
                 "test_lomo.py", "test_pipeline.py", "test_bench.py", "test_evaluate.py", "test_resume.py",
                 "test_views.py", "test_security.py", "test_hostile.py", "test_fast_path.py", "test_imports.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order otherwise kept
