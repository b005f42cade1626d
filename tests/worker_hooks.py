"""Test-only faults inside Ray's workers: a `sitecustomize.py` that every Python process started with `hook_env`'s
environment loads (the driver, and the Ray workers of the Ray it starts or of nodes started with it), patching
dfbatch's decoder and model stage by file name. Used by tests/test_faults.py and tests/test_cluster.py."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

HOOK = textwrap.dedent(
    """
    # test-only: a decoder that segfaults on every file named *POISON*, never returns on *HANG* and takes
    # DFBATCH_TEST_SLOW_S seconds on *SLOW* (no time once the file DFBATCH_TEST_RELEASE exists: CPU-free work that
    # holds a job for as long as a test needs); a model that segfaults on a batch holding *MODELCRASH*; all off
    # with DFBATCH_TEST_CRASH_OFF=1
    import importlib.abc, importlib.util, os, signal, sys, time

    def _crash(name):
        with open(os.environ["DFBATCH_TEST_CRASH_LOG"], "a") as f:
            f.write(f"{name}:{os.getpid()}\\n")
        if "HANG" not in name:
            os.kill(os.getpid(), signal.SIGSEGV)
        time.sleep(3600)

    def _slow():
        end = time.time() + float(os.environ["DFBATCH_TEST_SLOW_S"])
        release = os.environ.get("DFBATCH_TEST_RELEASE")
        while time.time() < end and not (release and os.path.exists(release)):
            time.sleep(0.05)

    def _patch_decode(module):
        probe = module.probe

        def crashing_probe(p):
            name = os.path.basename(p)
            if os.environ.get("DFBATCH_TEST_CRASH_OFF") != "1":
                if "SLOW" in name:
                    _slow()
                if "POISON" in name or "HANG" in name:
                    _crash(name)
            return probe(p)

        module.probe = crashing_probe

    def _patch_score(module):
        score_rows = module.score_rows

        def crashing_score_rows(rows, *args, **kwargs):
            crash = [os.path.basename(r["video_uri"]) for r in rows if "MODELCRASH" in r["video_uri"] and r["status"] == "ok"]
            if crash and os.environ.get("DFBATCH_TEST_CRASH_OFF") != "1":
                _crash(crash[0])
            return score_rows(rows, *args, **kwargs)

        module.score_rows = crashing_score_rows

    class _Poison(importlib.abc.MetaPathFinder):
        patches = {"dfbatch.stages.decode": _patch_decode, "dfbatch.stages.score": _patch_score}

        def find_spec(self, name, path, target=None):
            patch = self.patches.pop(name, None)
            if patch is None:
                return None
            if not self.patches:
                sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                patch(module)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _Poison())
    """
)


def hook_env(folder: Path, base: dict | None = None, **env) -> dict:
    """Environment (`base`, default os.environ, plus `env`) whose Python processes load HOOK, written to `folder`/hook."""
    hook = Path(folder) / "hook"
    hook.mkdir(parents=True, exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK)
    base = dict(os.environ if base is None else base)
    return dict(base, PYTHONPATH=os.pathsep.join([str(hook), str(REPO)]), **env)
