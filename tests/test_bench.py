"""`dfbatch bench`: the quick mode runs end to end and writes its JSON with every field (no timing assertions:
the numbers depend on the machine and its load)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest


def test_bench_flags_parse():
    from dfbatch.cli import build_parser
    from dfbatch.cli.options import config_from_args

    args = build_parser().parse_args(["bench", "--quick", "-o", "x", "--detect-every", "2", "--size", "640x360", "--no-baseline"])
    s = config_from_args(args)
    assert s.quick and s.output == "x" and s.size == (640, 360) and not s.run_baseline
    assert s.fast.detect_every == 2 and s.fast.backend == "pyav"
    full = config_from_args(build_parser().parse_args(["bench"]))
    assert full.size == (1280, 720) and full.seconds == 10.0 and full.frames == 32 and full.videos >= 60


def test_steady_window_skips_startup_and_last_call():
    from dfbatch.bench import _steady_window

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    stamps = [t0, t0, t0 + timedelta(seconds=2), t0 + timedelta(seconds=4), t0 + timedelta(seconds=4)]
    start, end, videos = _steady_window(stamps)
    assert end - start == pytest.approx(4.0)
    assert videos == 3  # the two calls started before the last one
    assert _steady_window(stamps[:2]) is None


@pytest.mark.slow
def test_quick_bench_end_to_end(tmp_path):
    out = tmp_path / "bench"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    proc = subprocess.run([sys.executable, "-m", "dfbatch", "bench", "--quick", "-o", str(out), "--cpus", "2"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "targets:" in proc.stdout and "baseline" in proc.stdout

    report = json.loads((out / "bench.json").read_text())
    assert report["format"] == "dfbatch-bench/1" and report["quick"] is True
    for key in ("machine", "versions", "settings", "archive", "model", "stages", "agreement", "baseline", "pipeline", "startup", "summary", "load_start", "load_end"):
        assert key in report, key
    assert report["machine"]["usable_cpus"] >= 1 and report["versions"]["torch"]
    for profile in ("fast", "reference"):
        stage = report["stages"][profile]
        assert set(stage["cpu_s_per_video"]) == {"decode", "detect", "crop", "model"}
        assert stage["sum_cpu_s_per_video"] > 0
    assert report["agreement"]["same_frames"] is True and report["agreement"]["long_tracks_missed"] == 0
    assert report["baseline"]["videos"] >= 1 and report["baseline"]["videos_per_min"] > 0

    pipe = report["pipeline"]
    assert pipe["videos"] == report["archive"]["videos"] == 4
    assert pipe["counts"]["ok"] == 4
    assert pipe["videos_per_min"] > 0 and pipe["plan"]["fused"] is True
    roles = pipe["resources"]["per_role"]
    assert roles["face_score_worker"]["peak_rss_mb"] > 0 and roles["driver"]["peak_rss_mb"] > 0
    assert "object_store_peak_mb" in pipe["resources"]
    startup = report["startup"]  # a fresh `dfbatch score` process on one video, the model registered in OUT/mlflow.db
    assert len(startup["runs"]) == 1 and startup["model_uri"].startswith("models:/dfbatch-bench/")
    steps = startup["steps"]
    assert {"python_and_cli", "imports", "model", "ray_start", "job_setup", "graph", "run"} <= set(steps)
    assert 0 < steps["model"]["at_s"] < steps["run"]["at_s"] < startup["first_result_s"] <= startup["written_s"]
    assert startup["actors_and_first_video_s"] > 0 and startup["write_s"] >= 0
    assert set(startup["actor_construction"]) == {"imports", "mtcnn", "model"}
    assert all(v["wall_s"] > 0 and v["cpu_s"] > 0 for v in startup["actor_construction"].values())
    assert "start-up (fresh `dfbatch score` process" in proc.stdout
    summary = report["summary"]
    assert summary["startup_first_result_s"] == startup["first_result_s"]
    for key in ("ideal_videos_per_min", "pipeline_videos_per_min", "baseline_videos_per_min", "speedup_vs_baseline", "pipeline_overhead", "targets"):
        assert key in summary, key
    assert len(summary["targets"]) == 4
    assert list(out.glob("bench-*.json")), "timestamped copy missing"
