"""The scoring job on a CUDA GPU (skipped without one; `make gpu-check` runs these on a GPU machine)."""

from __future__ import annotations

import pytest
import torch

from dfbatch.config import SamplingConfig, ScoreConfig
from dfbatch.io.results import read_results

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]


def test_plan_gives_each_model_actor_a_gpu_gpu(ray_local):
    from dfbatch.pipeline import plan_resources

    plan = plan_resources(ScoreConfig(sources=["x"], output="y"))
    assert plan["device"] == "cuda" and not plan["fused"]
    assert plan["score_gpus"] == 1.0 and plan["score_cpus"] == 0.0 and plan["face_gpus"] == 0.0
    assert plan["score_workers"] == int(ray_local.cluster_resources()["GPU"])


@pytest.mark.parametrize("precision, tol", [("fp32", 1e-3), ("bf16", 0.03)])
def test_scoring_job_on_the_gpu_agrees_with_the_cpu_gpu(precision, tol, ray_local, mlflow_uri, tiny_model, clip_dir, tmp_path):
    from dfbatch.pipeline import run_score

    def score(device: str, prec: str):
        out = tmp_path / f"{device}-{prec}"
        s = run_score(ScoreConfig(sources=[str(clip_dir)], output=str(out), model_uri=tiny_model["uri"], device=device, precision=prec,
                                  sampling=SamplingConfig(frames=8)))
        return s, read_results(str(out)).set_index("video_uri").sort_index()

    gpu_summary, gpu = score("cuda", precision)
    assert gpu_summary.resources["device"] == "cuda" and gpu_summary.resources["score_gpus"] == 1.0
    _, cpu = score("cpu", "fp32")
    assert list(gpu.status) == list(cpu.status) and list(gpu.n_tracks) == list(cpu.n_tracks)
    ok = cpu.status == "ok"
    assert ok.any() and (gpu.fake_probability[ok] - cpu.fake_probability[ok]).abs().max() <= tol
