"""Result tables: schema, commit protocol, recovery of interrupted writes, resume set."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from dfbatch.io.images import encode_strip
from dfbatch.io.results import FACES_SCHEMA, VIDEOS_SCHEMA, ResultStore, to_tables
from dfbatch.io.storage import Storage

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _ids(store: ResultStore, model_name: str, model_version: str, retry: tuple[str, ...] | None = None) -> set[str]:
    """The resume set (`io.resume.scored_index`) as strings."""
    from dfbatch.io.resume import scored_index

    return {i.decode() for i in scored_index(store, model_name, model_version, retry=retry)}


def _row(i: int, status: str = "ok", version: str = "1", *, model: str = "m", at: float | None = None, crops: bool = False,
         error_class: str | None = None) -> dict:
    tracks = [{"frame_indices": [0, 5], "boxes": [[1, 2, 30, 40], [2, 3, 31, 41]], "probs": [0.99, None], "frame_scores": [0.2, 0.4], "fake_probability": 0.3}]
    return {
        "video_uri": f"/v/{i}.mp4", "video_id": f"id{i}", "status": status, "error": None if status != "failed" else "boom",
        "fake_probability": 0.3 if status == "ok" else None, "label": "REAL" if status == "ok" else None, "threshold": 0.5,
        "n_frames": 2, "n_faces": 2, "n_tracks": 1, "duration_s": 1.0, "fps": 30.0, "width": 64, "height": 48, "size_bytes": 10,
        "frame_indices": [0, 5], "frame_scores": [0.2, 0.4], "aggregation": "tracks=max,frames=mean",
        "model_name": model, "model_version": version, "model_uri": f"models:/{model}/{version}", "mlflow_run_id": "r1",
        "scored_at": datetime.now(timezone.utc) if at is None else T0 + timedelta(seconds=at),
        "tracks": json.dumps(tracks if status == "ok" else []),
        "crop_jpegs": [encode_strip(np.full((2, 8, 8, 3), i, np.uint8))] if crops and status == "ok" else None,
        "error_class": error_class if status == "failed" else None,
        "error_kind": {"storage": "transient", "corrupt": "permanent"}.get(error_class) if status == "failed" else None,
    }


def test_to_tables_follow_the_schemas():
    videos, faces = to_tables([_row(1), _row(2, "failed")])
    assert videos.schema == VIDEOS_SCHEMA and faces.schema == FACES_SCHEMA
    assert videos.num_rows == 2 and faces.num_rows == 1
    assert faces.column("det_probs").to_pylist() == [[0.9900000095367432, None]]


def test_write_part_commits_both_tables_and_counts(tmp_path):
    store = ResultStore(str(tmp_path / "out"), Storage())
    store.check_writable()
    counts = store.write_part([_row(1), _row(2, "no_face"), _row(3, "failed")], job_id="j1")
    assert counts == {"ok": 1, "no_face": 1, "failed": 1, "fake": 0}
    videos = store.read("videos")
    assert sorted(videos.video_id) == ["id1", "id2", "id3"]
    assert len(store.read("faces")) == 1
    assert os.listdir(tmp_path / "out" / "_staging") == []
    # a retried write of the same block (same job) overwrites its part instead of duplicating it
    store.write_part([_row(3, "failed"), _row(1), _row(2, "no_face")], job_id="j1")
    assert len(store.read("videos")) == 3
    assert _ids(store, "m", "1") == {"id1", "id2", "id3"} and _ids(store, "m", "2") == set()


def test_recover_drops_uncommitted_faces_and_staging(tmp_path):
    store = ResultStore(str(tmp_path / "out"), Storage())
    store.check_writable()
    store.write_part([_row(1)], job_id="j1")
    # a crash between the faces rename and the videos rename leaves an orphan faces part
    orphan = tmp_path / "out" / "faces" / "part-m-v1-deadbeef.parquet"
    pq.write_table(to_tables([_row(9)])[1], orphan)
    (tmp_path / "out" / "_staging" / "videos-x.parquet").write_bytes(b"PAR1 partial")
    assert store.recover() == 2
    assert not orphan.exists() and len(store.read("faces")) == 1 and len(store.read("videos")) == 1


def _state(store: ResultStore) -> dict:
    """{(model, video_id): scored_at} of the videos rows; checks faces and crops agree with them."""
    videos, faces = store.read("videos"), store.read("faces")
    rows = {(r.model_name, r.video_id): r.scored_at for r in videos.itertuples()}
    ok = {(r.model_name, r.video_id, r.scored_at) for r in videos.itertuples() if r.status == "ok"}
    assert {(f.model_name, f.video_id, f.scored_at) for f in faces.itertuples()} <= ok  # no faces row of a dropped row
    referenced = {f.crops_file for f in faces.itertuples() if isinstance(f.crops_file, str)}
    on_disk = {str(p.relative_to(store.root)) for p in Path(store.root, "crops").rglob("*.jpg")}
    assert referenced <= on_disk
    return rows


def test_drop_superseded_replaces_exactly_the_rows_of_rescored_videos(tmp_path):
    """`dfbatch score A`, `dfbatch score B`, then A again with --rescore into the same OUT: only A's old rows go.
    Model `det` version 1 must not touch model `det-v1` version 1 (its part names start alike)."""
    store = ResultStore(str(tmp_path / "out"), Storage())
    store.check_writable()
    store.write_part([_row(1, model="det", at=1, crops=True), _row(2, model="det", at=1, crops=True)], job_id="A")
    store.write_part([_row(3, model="det", at=2, crops=True)], job_id="B")
    store.write_part([_row(1, model="det-v1", at=1, crops=True), _row(4, model="det-v1", at=1)], job_id="other-model")
    store.write_part([_row(1, model="det", at=10, crops=True)], job_id="rescore-A")  # id1 re-scored; id2 unchanged
    before = _state(store)
    assert len(before) == 5  # det/id1 is a single key: old and new rows both exist until the drop
    assert store.drop_superseded("det", "1") == 1
    after = _state(store)
    assert after == {("det", "id1"): T0 + timedelta(seconds=10), ("det", "id2"): T0 + timedelta(seconds=1),
                     ("det", "id3"): T0 + timedelta(seconds=2), ("det-v1", "id1"): T0 + timedelta(seconds=1),
                     ("det-v1", "id4"): T0 + timedelta(seconds=1)}
    assert len(store.read("videos")) == 5 and len(store.read("faces")) == 5
    crops = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out" / "crops").rglob("*.jpg"))
    assert len(crops) == 4 and sum(c.endswith("/id1-0.jpg") for c in crops) == 2  # det's new one and det-v1's
    assert store.drop_superseded("det", "1") == 0 and _state(store) == after  # idempotent
    # a part left with no row goes whole: videos, faces and its crops folder
    store.write_part([_row(2, model="det", at=20, crops=True), _row(3, model="det", at=20)], job_id="rescore-all")
    assert store.drop_superseded("det", "1") == 2
    assert len(list((tmp_path / "out" / "videos").glob("*.parquet"))) == 3
    assert len(list((tmp_path / "out" / "faces").glob("*.parquet"))) == 3 and len(list((tmp_path / "out" / "crops").iterdir())) == 3
    assert _state(store)[("det", "id2")] == T0 + timedelta(seconds=20)


_KILLER = textwrap.dedent("""
    # drop_superseded, SIGKILLed right before its k-th file operation (a write or a removal)
    import os, signal, sys
    from dfbatch.io.results import ResultStore
    from dfbatch.io.storage import Storage

    k, seen = int(sys.argv[2]), [0]

    def before(op):
        def run(*args, **kwargs):
            seen[0] += 1
            if seen[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
            return op(*args, **kwargs)
        return run

    store = ResultStore(sys.argv[1], Storage())
    store._put_table, store.fs.rm = before(store._put_table), before(store.fs.rm)
    store.drop_superseded("m", "1")
    print(seen[0])
""")


def test_drop_superseded_killed_at_every_step_loses_no_row(tmp_path):
    """A kill at any point of the replacement leaves every video with its old or its new row (never neither, no
    partial file); the next run (the rerun's own drop_superseded) ends with exactly the newest row per video."""
    base = ResultStore(str(tmp_path / "base"), Storage())
    base.check_writable()
    base.write_part([_row(i, at=1, crops=True) for i in (1, 2, 3)], job_id="A")  # partly re-scored: rewritten
    base.write_part([_row(i, at=1, crops=True) for i in (4, 5)], job_id="B")  # wholly re-scored: removed
    base.write_part([_row(6, at=1, crops=True)], job_id="C")  # not re-scored
    base.write_part([_row(i, at=9, crops=True) for i in (1, 4, 5)] + [_row(2, "failed", at=9)], job_id="rescore")
    newest = {("m", f"id{i}"): T0 + timedelta(seconds=9 if i in (1, 2, 4, 5) else 1) for i in range(1, 7)}
    k, finished = 0, False
    while not finished:
        k += 1
        out = tmp_path / f"k{k}"
        shutil.copytree(tmp_path / "base", out)
        proc = subprocess.run([sys.executable, "-c", _KILLER, str(out), str(k)], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
        finished = proc.returncode == 0
        assert finished or proc.returncode == -9, proc.stderr[-2000:]
        store = ResultStore(str(out), Storage())
        seen = _state(store)  # every file readable
        assert set(seen) == set(newest)  # no video without a row
        for p in (out / "videos").glob("*.parquet"):
            pq.read_table(p)
        store.recover()
        store.drop_superseded("m", "1")  # the rerun finishes what the killed run left
        assert _state(store) == newest and len(store.read("videos")) == 6
        assert sorted(store.read("faces").video_id) == ["id1", "id3", "id4", "id5", "id6"]
        assert len(list((out / "crops").rglob("*.jpg"))) == 5
    assert k >= 6  # it was killed before each of its file operations at least once


def test_resume_set_and_retry_filter(tmp_path):
    store = ResultStore(str(tmp_path / "out"), Storage())
    store.check_writable()
    legacy = _row(4, "failed") | {"error_class": None, "error_kind": None}  # written before error kinds existed
    store.write_part([_row(1), _row(2, "failed", error_class="storage"), _row(3, "failed", error_class="corrupt"), legacy,
                      _row(5, "no_face")], job_id="j")
    assert _ids(store, "m", "1") == {"id1", "id2", "id3", "id4", "id5"}
    assert _ids(store, "m", "1", retry=("transient",)) == {"id1", "id3", "id5"}
    assert _ids(store, "m", "1", retry=("corrupt",)) == {"id1", "id2", "id4", "id5"}
    assert _ids(store, "m", "1", retry=("all",)) == {"id1", "id5"}
    assert store.failures("m", "1") == {"transient": {"storage": 1, "unclassified": 1}, "permanent": {"corrupt": 1}}


def test_empty_store_reads_as_empty_frame(tmp_path):
    df = ResultStore(str(tmp_path / "none"), Storage()).read("videos")
    assert len(df) == 0 and list(df.columns) == VIDEOS_SCHEMA.names
