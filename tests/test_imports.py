"""Light imports: reading results, the model registry and the CLI's --help load neither Ray nor torch, and a
scoring job's driver never loads torch (each checked in a fresh interpreter, from `sys.modules`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("ray", "torch", "torchvision")
REPORT = "\nimport json, sys\nprint(json.dumps(sorted(m for m in %r if m in sys.modules)))\n" % (HEAVY,)


def heavy_modules_after(code: str) -> tuple[list[str], str]:
    """Run `code` in a fresh interpreter: (the heavy modules it left in sys.modules, what it printed)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code + REPORT], env=env, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    *printed, last = done.stdout.strip().splitlines()
    return json.loads(last), "\n".join(printed)


def cli(*argv: str) -> str:
    """`python -m dfbatch ARGV` inside the fresh interpreter (exit status checked, output kept)."""
    return (f"import runpy, sys\nsys.argv = ['dfbatch', *{list(argv)!r}]\n"
            "try:\n    runpy.run_module('dfbatch', run_name='__main__', alter_sys=True)\n"
            "except SystemExit as exc:\n    assert exc.code in (0, None), exc.code\n")


@pytest.mark.parametrize("code", [
    "import dfbatch\ndfbatch.read_results\nimport dfbatch.io.results",
    "import dfbatch.models.registry",
    "from dfbatch.models.spec import ModelSpec\nModelSpec(seq_len=8, temporal='transformer')",
    cli("--help"),
], ids=["read_results", "registry", "spec", "cli-help"])
def test_light_imports(code):
    assert heavy_modules_after(code)[0] == []


def test_models_list_and_show_without_torch(tiny_model):
    """`dfbatch models list/show` read tags, spec.json and MLmodel metadata; the weights stay where they are."""
    from dfbatch.models.detector import build_model

    heavy, listed = heavy_modules_after(cli("models", "list"))
    assert heavy == [] and "dfbatch-detector" in listed and "champion" in listed
    heavy, shown = heavy_modules_after(cli("models", "show", tiny_model["uri"], "--json"))
    assert heavy == []
    info = json.loads(shown)
    spec = tiny_model["spec"]
    assert info["spec"] == spec.to_dict() and info["summary"] == spec.describe()
    assert info["parameters"] == sum(int(v.numel()) for v in build_model(spec).state_dict().values())


def script(path: Path, *argv: str) -> str:
    """`python PATH ARGV` (a plain script, as `ray job submit -- python PATH` runs it) inside the fresh interpreter."""
    return (f"import runpy, sys\nsys.argv = [{str(path)!r}, *{list(argv)!r}]\n"
            f"try:\n    runpy.run_path({str(path)!r}, run_name='__main__')\n"
            "except SystemExit as exc:\n    assert exc.code in (0, None), exc.code\n")


@pytest.mark.slow
def test_scoring_driver_never_imports_torch(tiny_model, clip_dir, tmp_path):
    """The job's entry point for `ray job submit` (`jobs/score.py`, run here as a plain script with the default
    model, the registered champion): it scores, and its driver hands the weights to the actors as stored (checked
    against their sha256): only the actors import torch, so the driver's start-up is not spent on it."""
    out = tmp_path / "out"
    heavy, printed = heavy_modules_after(script(ROOT / "jobs" / "score.py", str(clip_dir / "carphone.mp4"), "-o", str(out),
                                                "--face-workers", "1", "--json"))
    assert heavy == ["ray"], heavy
    summary = json.loads(printed[printed.index("{"):])
    assert summary["counts"]["ok"] == 1 and summary["scored"] == 1
    assert summary["model_uri"].startswith("models:/dfbatch-detector/")  # the default: the registered champion
    steps = summary["startup"]["steps"]
    assert {"python_and_cli", "model", "ray_start", "run"} <= set(steps) and steps["model"]["s"] > 0
    assert steps["ray_start"]["at_s"] <= steps["model"]["at_s"]  # Ray comes up while the model is read
    from dfbatch.io.results import read_results

    assert list(read_results(str(out)).status) == ["ok"]
