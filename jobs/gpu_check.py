"""The GPU check: on a machine with an NVIDIA GPU, run the GPU tests and `dfbatch bench --device cuda` on 1080p
clips (in under 8 minutes) and write OUT/gpu-check.json. Without a GPU it writes a report that says so and
exits 0.

    make gpu-check                                                   # a checkout (.venv)
    docker run --gpus all dfbatch:0.1.0 python jobs/gpu_check.py     # the image (cluster/Dockerfile)
    ray job submit --address ... --entrypoint-num-gpus 1 -- python jobs/gpu_check.py   # a GPU node of a cluster
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = ["tests/test_gpu.py", "tests/test_model.py", "-k", "gpu"]  # the tests that need CUDA (skipped elsewhere)
TESTS_TIMEOUT_S = 240


def bench_args(out: Path) -> list[str]:
    """`dfbatch bench` on 1080p clips through the CUDA model actors, sized to finish in a few minutes."""
    return ["bench", "--device", "cuda", "--size", "1920x1080", "--seconds", "6", "--unique", "4", "--videos", "48",
            "--stage-videos", "2", "--baseline-videos", "2", "-o", str(out)]


def gpu_info() -> dict | None:
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    info = {"name": props.name, "count": torch.cuda.device_count(), "capability": f"{props.major}.{props.minor}",
            "memory_gb": round(props.total_memory / 1024**3, 1), "torch": torch.__version__, "cuda": torch.version.cuda,
            "bf16": torch.cuda.is_bf16_supported()}
    try:
        info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                        text=True, timeout=30).stdout.strip().splitlines()[0]
    except Exception:
        pass
    return info


def run_tests(out: Path) -> dict:
    junit = out / "gpu-tests.xml"
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *TESTS],
                         cwd=REPO, capture_output=True, text=True, timeout=TESTS_TIMEOUT_S)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if junit.exists():
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in counts}
    return {**counts, "exit_code": res.returncode, "seconds": round(time.time() - t0, 1), "tail": res.stdout[-2000:]}


def run_bench(out: Path, timeout: float) -> dict:
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "dfbatch", *bench_args(out / "bench")], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    report = {"exit_code": res.returncode, "seconds": round(time.time() - t0, 1), "args": bench_args(out / "bench")}
    path = out / "bench" / "bench.json"
    if res.returncode == 0 and path.exists():
        bench = json.loads(path.read_text())
        pipe = bench.get("pipeline") or {}
        report |= {"pipeline": {k: pipe.get(k) for k in ("videos", "videos_per_min", "steady_videos_per_min", "first_result_s", "plan", "counts")},
                   "stages": bench.get("stages"), "summary": bench.get("summary")}
    else:
        report["tail"] = (res.stdout + res.stderr)[-3000:]
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", default="gpu-check", help="folder for the report (gpu-check.json) and the bench's files")
    p.add_argument("--budget", type=float, default=480.0, help="seconds for the whole check (default 8 minutes)")
    args = p.parse_args(argv)
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    report: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": platform.node(), "cpus": os.cpu_count()}
    gpu = gpu_info()
    if gpu is None:
        report |= {"skipped": "no CUDA GPU visible (torch.cuda.is_available() is False): nothing measured", "passed": None}
    else:
        report["gpu"] = gpu
        report["tests"] = run_tests(out)
        report["bench"] = run_bench(out, timeout=max(60.0, args.budget - (time.time() - t0)))
        report["passed"] = report["tests"]["exit_code"] == 0 and report["tests"]["tests"] > 0 and report["bench"]["exit_code"] == 0
    report["seconds"] = round(time.time() - t0, 1)
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2, default=str))
    if gpu is None:
        print(f"gpu-check: skipped ({report['skipped']}); report: {out / 'gpu-check.json'}")
        return 0
    pipe = report["bench"].get("pipeline") or {}
    print(f"gpu-check: {gpu['name']}: tests {report['tests']['tests']} run, {report['tests']['failures'] + report['tests']['errors']} failed; "
          f"bench 1080p {pipe.get('videos_per_min') or 'n/a'} videos/min; {report['seconds']:.0f} s; "
          f"{'PASS' if report['passed'] else 'FAIL'}; report: {out / 'gpu-check.json'}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
