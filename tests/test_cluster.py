"""The scoring job on a multi-node Ray cluster on one machine (tests/ray_cluster.py): a head with no CPUs, worker
nodes that join mid-job, a node killed mid-job, a node that stands for the GPU node (a custom resource, the model
on CPU), and `ray job submit` against the head's job server. Placement is read through Ray's state API.

The tests share one cluster and run in file order: node A, added by the first, stays for the second.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dfbatch.config import SamplingConfig, ScoreConfig
from dfbatch.io.results import read_results
from ray_cluster import LocalCluster  # tests/ is on sys.path (pytest's rootdir-relative import)
from worker_hooks import hook_env

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
CARPHONE = REPO / "tests" / "data" / "carphone_pristine.mp4"


def _copies(root: Path, n: int, tag: str = "") -> list[Path]:
    """The real carphone clip under n names (hard links: distinct URIs, so distinct video ids)."""
    root.mkdir(parents=True, exist_ok=True)
    first = root / f"clip000{tag}.mp4"
    shutil.copy(CARPHONE, first)
    for i in range(1, n):
        os.link(first, root / f"clip{i:03d}{tag}.mp4")
    return sorted(root.glob("*.mp4"))


def _score(cluster: LocalCluster, *args: str, frames: int = 4) -> subprocess.Popen:
    """`dfbatch score ... --json` joining the cluster; its stderr lines collect in `proc.err` as they come."""
    cmd = [sys.executable, "-m", "dfbatch", "score", *map(str, args), "--frames", str(frames), "--json"]
    proc = subprocess.Popen(cmd, env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.err = []
    threading.Thread(target=lambda: proc.err.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    return proc


def _json_block(text: str) -> dict:
    """The first JSON object printed from column 0 ('{' line to '}' line) in `text`."""
    lines = text.splitlines()
    start = lines.index("{")
    return json.loads("\n".join(lines[start : lines.index("}", start) + 1]))


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out = proc.stdout.read()
    proc.wait(timeout=timeout)
    return out


def _summary(proc: subprocess.Popen, timeout: float = 600) -> dict:
    out = _finish(proc, timeout)
    assert proc.returncode == 0, "".join(proc.err)[-3000:]
    return _json_block(out)


def _wait(cond, timeout: float, what: str, poll: float = 1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _alive(cluster: LocalCluster, cls: str, node: str | None = None) -> list[dict]:
    return [a for a in cluster.actors() if a["class_name"] == f"MapWorker(MapBatches({cls}))" and a["state"] == "ALIVE"
            and (node is None or a["node_id"] == node)]


def _ran_on(cluster: LocalCluster, prefix: str) -> dict[str, int]:
    """{node_id: finished tasks} of the tasks whose name starts with `prefix` (actor tasks: 'MapWorker(...).submit')."""
    counts: dict[str, int] = {}
    for t in cluster.tasks():
        if (t["name"] or "").startswith(prefix) and t["state"] == "FINISHED" and t["node_id"]:
            counts[t["node_id"]] = counts.get(t["node_id"], 0) + 1
    return counts


def _one_row_each(out: Path, videos: list[Path]) -> pd.DataFrame:
    df = read_results(str(out))
    assert df.video_id.is_unique, df[df.video_id.duplicated(keep=False)].video_uri.tolist()
    assert sorted(df.video_uri) == sorted(map(str, videos))
    faces = read_results(str(out), "faces")
    assert not faces.duplicated(["video_id", "track_id"]).any()
    return df


# videos named *SLOW* take SLOW_S seconds each in the decoder, sleeping (tests/worker_hooks.py), until the file
# RELEASE exists: a job that lasts while nodes join and leave, at no CPU cost
SLOW_S = 2.5


@pytest.fixture(scope="module")
def cluster(mlflow_uri, tiny_model, tmp_path_factory):
    hooks = tmp_path_factory.mktemp("hooks")
    # the driver subprocesses inherit MLFLOW_TRACKING_URI (the tiny model) through env()
    c = LocalCluster(env=hook_env(hooks, base={}, DFBATCH_TEST_SLOW_S=str(SLOW_S), DFBATCH_TEST_RELEASE=str(hooks / "release")))
    c.release = hooks / "release"
    yield c
    c.shutdown()


def test_head_without_cpus_then_a_node_joins_mid_job_and_one_is_killed(cluster, tmp_path):
    """Submitted to a head with no CPUs (and no autoscaler), the job waits; it runs once a 1-CPU worker joins; a
    2-CPU worker that joins mid-job gets actors of the autoscaling pool, which run tasks there; that worker is then
    killed (all its processes, SIGKILL) while it works: the job ends (Ray runs the lost work again elsewhere) or
    fails, and the same command run again leaves exactly one row per video."""
    # 64 slow videos: 160 s for one actor (2 videos a call), several times what the node changes take (measured
    # here with real work: node A's first tasks 7 s after it was added, node C's 15 s after it was added); once C
    # is gone the rest are released and take their real time (a few seconds)
    videos = _copies(tmp_path / "src", 64, tag="_SLOW")
    job = _score(cluster, tmp_path / "src", "-o", tmp_path / "out")
    _wait(lambda: any("the job waits" in line for line in job.err) or job.poll() is not None, 300, "the job's plan")
    time.sleep(5)
    assert job.poll() is None, "".join(job.err)[-3000:]
    assert not _alive(cluster, "FaceScoreStage"), "an actor runs on a cluster without CPUs?"
    assert not list((tmp_path / "out" / "videos").glob("*.parquet"))
    a = cluster.add("A", 1)
    _wait(lambda: _ran_on(cluster, "MapWorker(MapBatches(FaceScoreStage))").get(a), 300, "the first tasks on node A")
    assert job.poll() is None, "the job ended before the second node could join"
    c = cluster.add("C", 2)
    _wait(lambda: _ran_on(cluster, "MapWorker(MapBatches(FaceScoreStage))").get(c) and _alive(cluster, "FaceScoreStage", c), 300,
          "tasks on the node that joined mid-job")
    assert job.poll() is None, "the job ended before the node could be killed"
    cluster.remove("C")
    cluster.release.touch()
    out = _finish(job)
    first = _json_block(out) if job.returncode == 0 else None
    if first:
        # 64 videos counted while planning: at most 8 actors, whatever joins
        assert first["resources"]["cluster_cpus"] == 0 and first["resources"]["face_pool"] == [1, 8]
    again = _summary(_score(cluster, tmp_path / "src", "-o", tmp_path / "out"))
    df = _one_row_each(tmp_path / "out", videos)
    assert set(df.status) == {"ok"}
    assert again["scored"] + again["skipped"] == len(videos) and (first is None or (first["scored"] == len(videos) and again["scored"] == 0))


def test_ray_job_submit_places_stages_and_matches_one_node(cluster, clip_dir, ray_local, tmp_path):
    """`ray job submit --working-dir .` against the head's job server (token auth). A node that stands for the GPU
    node (custom resource `model_node`, no CPUs to lend: the model alone) gets the model actors and nothing else;
    listing and face actors run on the CPU node, never on the head; the results are those of a single-node run."""
    from ray._private.runtime_env.packaging import create_package

    from dfbatch.pipeline import run_score

    pkg = tmp_path / "pkg.zip"
    create_package(str(REPO), pkg, include_gitignore=True)  # what `--working-dir .` uploads
    names = zipfile.ZipFile(pkg).namelist()
    assert "jobs/score.py" in names and "dfbatch/pipeline.py" in names and "tests/data/carphone_pristine.mp4" in names
    assert not [n for n in names if n.split("/")[0] in (".git", ".venv", "demo", "mlruns", "bench-out")]
    assert pkg.stat().st_size < 20 * 1024**2

    a = cluster.nodes.get("A") or cluster.add("A", 1)  # the CPU node (added by the test before, when it ran)
    b = cluster.add("B", 0, {"model_node": 1})
    runtime_env = json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}})
    submit = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", cluster.dashboard_url, "--working-dir", str(REPO),
              "--runtime-env-json", runtime_env, "--", "python", "jobs/score.py", str(clip_dir), "-o", str(tmp_path / "multi"),
              "--frames", "4", "--precision", "fp32", "--model-resource", "model_node", "--json"]
    res = subprocess.run(submit, env=cluster.env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "succeeded" in res.stdout, (res.stdout[-3000:], res.stderr[-3000:])
    summary = _json_block(res.stdout)
    assert summary["resources"]["score_resources"] == {"model_node": 1.0} and not summary["resources"]["fused"]
    actors = [x for x in cluster.actors() if x["class_name"] in ("MapWorker(MapBatches(ScoreStage))", "MapWorker(MapBatches(FaceStage))")]
    assert {x["node_id"] for x in actors if "ScoreStage" in x["class_name"]} == {b}, (actors, cluster.nodes)
    assert {x["node_id"] for x in actors if "FaceStage" in x["class_name"]} == {a}, (actors, cluster.nodes)
    read_nodes = set(_ran_on(cluster, "ReadVideo"))
    assert read_nodes and read_nodes <= {a}, (read_nodes, cluster.nodes)

    run_score(ScoreConfig(sources=[str(clip_dir)], output=str(tmp_path / "one"), model_uri="models:/dfbatch-detector@champion",
                          precision="fp32", sampling=SamplingConfig(frames=4)))  # the session's local Ray: one node
    cols = ["video_uri", "status", "n_frames", "n_faces", "n_tracks", "width", "height", "label"]
    multi, single = (read_results(str(tmp_path / d)).sort_values("video_uri").reset_index(drop=True) for d in ("multi", "one"))
    pd.testing.assert_frame_equal(multi[cols], single[cols])
    assert (multi.fake_probability.fillna(-1) - single.fake_probability.fillna(-1)).abs().max() < 1e-5
    assert [list(x) for x in multi.frame_indices] == [list(x) for x in single.frame_indices]
    mf, sf = (read_results(str(tmp_path / d), "faces").sort_values(["video_uri", "track_id"]).reset_index(drop=True) for d in ("multi", "one"))
    assert len(mf) == len(sf) and all(np.allclose(np.stack(x), np.stack(y), atol=1e-3) for x, y in zip(mf.boxes, sf.boxes))
