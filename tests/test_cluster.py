"""The scoring job on a multi-node Ray cluster on one machine (tests/ray_cluster.py): a head with no CPUs, worker
nodes that join mid-job, a node that stands for the GPU node (a custom resource, the model on CPU), a node
killed mid-job, and `ray job submit` against the head's job server. Placement is read through Ray's state API.

The tests share one cluster and run in file order: nodes added by one stay for the next.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from dfbatch.io.results import read_results
from ray_cluster import LocalCluster  # tests/ is on sys.path (pytest's rootdir-relative import)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
CARPHONE = REPO / "tests" / "data" / "carphone_pristine.mp4"


def _copies(root: Path, n: int) -> list[Path]:
    """The real carphone clip under n names (hard links: distinct URIs, so distinct video ids)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(CARPHONE, root / "clip000.mp4")
    for i in range(1, n):
        os.link(root / "clip000.mp4", root / f"clip{i:03d}.mp4")
    return sorted(root.glob("*.mp4"))


def _score(cluster: LocalCluster, *args: str, frames: int = 4) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dfbatch", "score", *map(str, args), "--frames", str(frames), "--json"]
    return subprocess.Popen(cmd, env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _json_block(text: str) -> dict:
    """The first JSON object printed from column 0 ('{' line to '}' line) in `text`."""
    lines = text.splitlines()
    start = lines.index("{")
    return json.loads("\n".join(lines[start : lines.index("}", start) + 1]))


def _summary(proc: subprocess.Popen, timeout: float = 600) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
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


@pytest.fixture(scope="module")
def cluster(mlflow_uri, tiny_model):
    c = LocalCluster()  # the driver subprocesses inherit MLFLOW_TRACKING_URI (the tiny model) through env()
    yield c
    c.shutdown()


def test_a_head_without_cpus_waits_and_nodes_that_join_get_work(cluster, tmp_path):
    """Submitted to a head with no CPUs (and no autoscaler), the job waits; it runs once a 1-CPU worker joins,
    and a 2-CPU worker that joins mid-job gets actors of the autoscaling pool, which run tasks there."""
    videos = _copies(tmp_path / "src", 400)  # about a minute of work for one core: the second node joins well before the end
    job = _score(cluster, tmp_path / "src", "-o", tmp_path / "out", frames=16)
    time.sleep(20)
    assert job.poll() is None, job.communicate()[1][-3000:]
    assert not _alive(cluster, "FaceScoreStage"), "an actor runs on a cluster without CPUs?"
    assert not list((tmp_path / "out" / "videos").glob("*.parquet"))
    a = cluster.add("A", 1)
    _wait(lambda: _ran_on(cluster, "MapWorker(MapBatches(FaceScoreStage))").get(a), 300, "the first tasks on node A")
    assert job.poll() is None, "the job ended before the second node could join"
    c = cluster.add("C", 2)
    summary = _summary(job)
    on = _ran_on(cluster, "MapWorker(MapBatches(FaceScoreStage))")
    assert on.get(c), f"no task ran on the node that joined mid-job: {on}"
    assert summary["scored"] == len(videos) and summary["counts"]["ok"] == len(videos)
    assert summary["resources"]["cluster_cpus"] == 0 and summary["resources"]["face_pool"] == [1, None]
    _one_row_each(tmp_path / "out", videos)


def test_stages_land_on_their_nodes_and_results_match_one_node(cluster, clip_dir, tmp_path):
    """A node that stands for the GPU node (custom resource `model_node`, no CPUs to lend: the model alone) gets
    the model actors and nothing else; listing and face actors run on the CPU nodes, never on the head; the
    results are those of a single-node run."""
    b = cluster.add("B", 0, {"model_node": 1})
    job = _score(cluster, clip_dir, "-o", tmp_path / "multi", "--model-resource", "model_node", "--precision", "fp32")
    summary = _summary(job)
    assert summary["resources"]["score_resources"] == {"model_node": 1.0} and not summary["resources"]["fused"]
    actors = [a for a in cluster.actors() if a["class_name"].startswith("MapWorker(")]
    score_nodes = {a["node_id"] for a in actors if "ScoreStage" in a["class_name"] and "Face" not in a["class_name"]}
    face_nodes = {a["node_id"] for a in actors if a["class_name"] == "MapWorker(MapBatches(FaceStage))"}
    assert score_nodes == {b}, (score_nodes, cluster.nodes)
    assert face_nodes and face_nodes <= {cluster.nodes["A"], cluster.nodes["C"]}, (face_nodes, cluster.nodes)
    read_nodes = set(_ran_on(cluster, "ReadVideo"))
    assert read_nodes and read_nodes <= {cluster.nodes["A"], cluster.nodes["C"]}, (read_nodes, cluster.nodes)

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    one = subprocess.run([sys.executable, "-m", "dfbatch", "score", str(clip_dir), "-o", str(tmp_path / "one"), "--frames", "4", "--precision", "fp32", "--json"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    cols = ["video_uri", "status", "n_frames", "n_faces", "n_tracks", "width", "height", "label"]
    multi, single = (read_results(str(tmp_path / d)).sort_values("video_uri").reset_index(drop=True) for d in ("multi", "one"))
    pd.testing.assert_frame_equal(multi[cols], single[cols])
    assert (multi.fake_probability.fillna(-1) - single.fake_probability.fillna(-1)).abs().max() < 1e-5
    assert [list(x) for x in multi.frame_indices] == [list(x) for x in single.frame_indices]
    mf, sf = (read_results(str(tmp_path / d), "faces").sort_values(["video_uri", "track_id"]).reset_index(drop=True) for d in ("multi", "one"))
    assert len(mf) == len(sf) and [len(x) for x in mf.boxes] == [len(x) for x in sf.boxes]


def test_ray_job_submit_with_the_working_dir(cluster, tmp_path):
    """`ray job submit --working-dir .` against the head's job server (token auth), the job's own entry point;
    the uploaded package is what Ray builds from the repo: no .git, no virtualenv."""
    from ray._private.runtime_env.packaging import create_package

    pkg = tmp_path / "pkg.zip"
    create_package(str(REPO), pkg, include_gitignore=True)
    names = zipfile.ZipFile(pkg).namelist()
    assert "jobs/score.py" in names and "dfbatch/pipeline.py" in names and "tests/data/carphone_pristine.mp4" in names
    assert not [n for n in names if n.split("/")[0] in (".git", ".venv", "demo", "mlruns", "bench-out")]
    assert pkg.stat().st_size < 20 * 1024**2

    videos = _copies(tmp_path / "src", 3)
    runtime_env = json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}})
    res = subprocess.run([str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", cluster.dashboard_url, "--working-dir", str(REPO), "--runtime-env-json", runtime_env,
                          "--", "python", "jobs/score.py", str(tmp_path / "src"), "-o", str(tmp_path / "out"), "--frames", "4", "--json"],
                         env=cluster.env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "succeeded" in res.stdout, (res.stdout[-3000:], res.stderr[-3000:])
    summary = _json_block(res.stdout)
    assert summary["scored"] == 3 and summary["counts"]["ok"] == 3
    _one_row_each(tmp_path / "out", videos)


def test_a_worker_killed_mid_job_loses_nothing_and_duplicates_nothing(cluster, tmp_path):
    """Node C is killed (all its processes, SIGKILL) while it runs tasks; the job ends (Ray retries the tasks
    elsewhere) or fails, and the same command run again leaves exactly one row per video."""
    videos = _copies(tmp_path / "src", 300)
    job = _score(cluster, tmp_path / "src", "-o", tmp_path / "out", frames=16)
    c = cluster.nodes["C"]
    before = _ran_on(cluster, "MapWorker(MapBatches(FaceScoreStage))").get(c, 0)  # the earlier jobs' tasks
    _wait(lambda: _ran_on(cluster, "MapWorker(MapBatches(FaceScoreStage))").get(c, 0) > before and _alive(cluster, "FaceScoreStage", c), 300,
          "tasks of this job on node C")
    cluster.remove("C")
    out, err = job.communicate(timeout=600)
    first = _json_block(out) if job.returncode == 0 else None
    again = _summary(_score(cluster, tmp_path / "src", "-o", tmp_path / "out", frames=16))
    df = _one_row_each(tmp_path / "out", videos)
    assert set(df.status) == {"ok"}
    done_first = first["scored"] if first else len(videos) - again["scored"]
    assert again["skipped"] == done_first and again["scored"] + again["skipped"] == len(videos)
