"""cluster/ checked without a cloud: the `ray up` YAML against the autoscaler schema Ray ships, the KubeRay RayJob
against the RayJob CRD (tests/data/kuberay), the image against the Makefile, the plan a job makes from the YAML's
node types before any worker is up, and the GPU check's skip path."""

from __future__ import annotations

import copy
import gzip
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from dfbatch.config import ScoreConfig
from dfbatch.errors import UserError

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"


def test_ray_up_yaml_passes_the_autoscaler_schema():
    """What `ray up` does before it launches anything: fill the defaults, then validate (ray-schema.json + checks)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert any(t["resources"].get("GPU") for t in types.values()) and all(t.get("min_workers", 0) == 0 for t in types.values())
    assert all("RAY_AUTH_MODE=token" in " ".join(config[k]) for k in ("head_start_ray_commands", "worker_start_ray_commands"))
    assert "~/.ray/auth_token" in config["file_mounts"]
    bad = copy.deepcopy(config)
    bad["available_node_types"]["gpu_worker"]["max_wokers"] = 8  # a typo is refused, not ignored
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


def _strict(value, schema: dict, path: str = "") -> list[str]:
    """Fields the schema does not know (Kubernetes would drop them without a word)."""
    errors = []
    if isinstance(value, dict) and "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        for k, v in value.items():
            if k not in schema["properties"]:
                errors.append(f"{path}.{k}")
            else:
                errors += _strict(v, schema["properties"][k], f"{path}.{k}")
    elif isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            errors += _strict(v, schema["items"], f"{path}[{i}]")
    return errors


def test_rayjob_matches_the_kuberay_crd():
    crd = yaml.safe_load(gzip.decompress((REPO / "tests" / "data" / "kuberay" / "ray.io_rayjobs-v1.7.0.yaml.gz").read_bytes()))
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = v1["schema"]["openAPIV3Schema"]
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    assert job["apiVersion"] == f"{crd['spec']['group']}/v1" and job["kind"] == crd["spec"]["names"]["kind"]
    jsonschema.validate(job, schema)  # types, enums and every `required` field of the CRD
    assert _strict(job, schema) == []
    spec = job["spec"]["rayClusterSpec"]
    assert spec["enableInTreeAutoscaling"] and spec["authOptions"]["mode"] == "token" and spec["rayVersion"] == "2.60.0"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert all(g["minReplicas"] == 0 for g in groups.values()) and "--device cuda" in job["spec"]["entrypoint"]
    bad = copy.deepcopy(job)
    del bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["groupName"]  # required by the CRD
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def _pins(text: str) -> set[str]:
    """name==version pins and .[extra] installs of the pip install commands in a Makefile / Dockerfile."""
    found = set()
    for line in re.findall(r"pip install[^\n&\\]*", text.replace("$(PIP)", "pip install")):
        found |= set(re.findall(r"[A-Za-z0-9_.-]+==[0-9][^\s'\"]*", line))
        found |= {"." + m for m in re.findall(r"['\"]?\.(\[[a-z,]+\])['\"]?", line)}
        found |= {"--no-deps"} if "--no-deps" in line else set()
    return found


def test_image_installs_what_the_makefile_installs_and_what_jobs_need():
    docker, make = (CLUSTER / "Dockerfile").read_text(), (REPO / "Makefile").read_text()
    assert _pins(docker) == _pins(make), (_pins(docker) ^ _pins(make))
    assert {"torch==2.14.1", "facenet-pytorch==2.6.0", ".[test]"} <= _pins(docker)
    pyproject = (REPO / "pyproject.toml").read_text()
    ray_pin = re.search(r'"ray\[([a-z,]+)\]==([0-9.]+)"', pyproject)
    assert "default" in ray_pin.group(1).split(",") and f"rayproject/ray:{ray_pin.group(2)}-" in docker
    copied = {p.rstrip("/").removeprefix("./") for line in re.findall(r"^COPY .*$", docker, re.M) for p in line.split()[2:-1]}
    # every module jobs/*.py reach is in the image: the package, the entry points, the bench's and demo's material
    assert {"dfbatch", "jobs", "tests", "pyproject.toml"} <= copied
    assets = re.search(r"^ENV DFBATCH_ASSETS=/home/ray/dfbatch/(\S+)$", docker, re.M).group(1)
    corpora = "".join(p.read_text() for p in (REPO / "dfbatch" / "corpora").glob("*.py"))
    needed = set(re.findall(r'assets_dir\(\) / "([^"]+)"', corpora)) | {"carphone_pristine.mp4", "carphone_distorted.mp4"}  # + f"carphone_{source}.mp4"
    assert needed and all((REPO / assets / name).exists() for name in needed), needed
    for job in (REPO / "jobs").glob("*.py"):
        for mod in re.findall(r"^\s*from (dfbatch[\w.]*) import", job.read_text(), re.M):
            assert (REPO / (mod.replace(".", "/") + ".py")).exists() or (REPO / mod.replace(".", "/")).is_dir(), (job.name, mod)


def _view(resources: dict, *, node_types=None, autoscaler=False) -> dict:
    return {"resources": resources, "node_types": node_types, "autoscaler": autoscaler}


def test_plan_from_the_node_types_before_any_worker_is_up(monkeypatch):
    """A head with CPU 0 and nothing else at submit time: the job plans for the GPU nodes of the YAML (the model
    actor asks for a GPU, which makes the autoscaler add a GPU node); the pools can grow to what the node types
    hold; `--device cuda` is accepted."""
    from dfbatch.pipeline import autoscaler_node_types, plan_resources

    monkeypatch.setenv("DFBATCH_CLUSTER_CONFIG", str(CLUSTER / "aws-gpu.yaml"))
    types = autoscaler_node_types()
    assert {t["name"]: t["max"] for t in types} == {"head": 1, "cpu_worker": 16, "gpu_worker": 8}
    head_only = _view({"CPU": 0.0}, node_types=types, autoscaler=True)
    for device in ("auto", "cuda"):
        plan = plan_resources(ScoreConfig(sources=["x"], output="y", device=device), head_only)
        assert plan["device"] == "cuda" and plan["possible_gpus"] == 8 and plan["possible_cpus"] == 16 * 32 + 8 * 16
        assert plan["score_workers"] == 1 and plan["score_pool"] == [1, 8] and plan["score_gpus"] == 1.0
        assert plan["face_workers"] == 1 and plan["face_pool"][0] == 1 and plan["face_pool"][1] == int((16 * 32 + 8 * 16) // plan["face_cpus"])
    cpu = plan_resources(ScoreConfig(sources=["x"], output="y", device="cpu"), head_only)
    assert cpu["fused"] and cpu["face_pool"][1] == int((16 * 32 + 8 * 16) // cpu["face_cpus"])


def test_a_counted_small_job_starts_one_actor_per_eight_videos():
    """A job whose videos the listing counted while planning never starts an actor per core of a large cluster:
    each pool holds at most one actor per 8 videos; an uncounted job, or a pool whose size was given, is as before."""
    from dfbatch.pipeline import VIDEOS_PER_ACTOR, plan_resources

    assert VIDEOS_PER_ACTOR == 8
    cfg = ScoreConfig(sources=["x"], output="y")
    big = _view({"CPU": 64.0})
    per_core = plan_resources(cfg, big)["face_workers"]  # one per core (less the listing's share)
    assert per_core > 60 and plan_resources(cfg, big)["face_pool"] == [1, None]
    for videos, actors in ((1, 1), (8, 1), (9, 2), (100, 13), (10_000, per_core)):
        plan = plan_resources(cfg, big, videos=videos)
        assert plan["face_workers"] == actors and plan["face_pool"] == [1, max(actors, math.ceil(videos / 8))], (videos, plan)
    fixed = plan_resources(ScoreConfig(sources=["x"], output="y", face_workers=6), big, videos=4)
    assert fixed["face_workers"] == 6 and fixed["face_pool"] == [6, 6]
    gpus = plan_resources(cfg, _view({"CPU": 64.0, "GPU": 4.0}), videos=12)
    assert gpus["device"] == "cuda" and (gpus["score_workers"], gpus["score_pool"]) == (2, [1, 2])
    assert (gpus["face_workers"], gpus["face_pool"]) == (2, [1, 2])
    assert plan_resources(cfg, _view({"CPU": 64.0, "GPU": 4.0}))["score_workers"] == 4


def test_device_cuda_refused_only_where_no_gpu_can_come():
    from dfbatch.pipeline import plan_resources

    cfg = ScoreConfig(sources=["x"], output="y", device="cuda")
    with pytest.raises(UserError, match="no GPUs and no autoscaler"):
        plan_resources(cfg, _view({"CPU": 8.0}))
    assert plan_resources(cfg, _view({"CPU": 8.0}, autoscaler=True))["device"] == "cuda"  # node types unknown (KubeRay)
    cpu_types = [{"name": "cpu", "resources": {"CPU": 8.0}, "max": 4}]
    assert plan_resources(ScoreConfig(sources=["x"], output="y"), _view({"CPU": 8.0}, node_types=cpu_types, autoscaler=True))["device"] == "cpu"
    custom = plan_resources(ScoreConfig(sources=["x"], output="y", model_resource="model_node"), _view({"CPU": 4.0, "model_node": 1.0}))
    assert custom["score_resources"] == {"model_node": 1.0} and custom["score_cpus"] == 0.0 and not custom["fused"]
    assert custom["face_workers"] == 4 and custom["score_pool"] == [1, None]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU: `make gpu-check` runs the real check")
def test_gpu_check_skips_cleanly_without_a_gpu(tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "jobs" / "gpu_check.py"), "-o", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "skipped" in res.stdout, res.stderr[-2000:]
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert report["passed"] is None and "no CUDA GPU" in report["skipped"]


def test_gpu_check_commands_parse():
    """The bench the GPU check runs is a valid `dfbatch bench` command line (1080p, CUDA)."""
    sys.path.insert(0, str(REPO / "jobs"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    from dfbatch.cli import build_parser
    from dfbatch.cli.options import config_from_args

    settings = config_from_args(build_parser().parse_args(gpu_check.bench_args(Path("out"))))
    assert settings.device == "cuda" and settings.size == (1920, 1080) and settings.run_pipeline


def test_readme_and_cluster_files_state_what_each_actor_asks_for():
    """The README's and cluster/'s words on resources are what the plan asks Ray for."""
    from dfbatch.pipeline import plan_resources

    plan = plan_resources(ScoreConfig(sources=["x"], output="y"), _view({"CPU": 16.0, "GPU": 1.0}))
    readme = (REPO / "README.md").read_text()
    assert plan["score_gpus"] == 1.0 and "a model actor 1 GPU (`num_gpus=1`, no logical CPU" in readme and plan["score_cpus"] == 0.0
    assert f"a face actor (PyAV decode + MTCNN + crops, on its CPU) {plan['face_cpus']} CPU" in readme and plan["face_device"] == "cpu"
    assert f"a listing task {plan['listing_cpus']} CPU" in readme
    assert "one model actor per GPU (num_gpus=1)" in (CLUSTER / "aws-gpu.yaml").read_text()
