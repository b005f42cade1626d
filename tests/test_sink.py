"""Result tables: schema, commit protocol, recovery of interrupted writes, resume set."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import pyarrow.parquet as pq

from dfbatch.io.results import FACES_SCHEMA, VIDEOS_SCHEMA, ResultStore, to_tables
from dfbatch.io.storage import Storage


def _row(i: int, status: str = "ok", version: str = "1") -> dict:
    tracks = [{"frame_indices": [0, 5], "boxes": [[1, 2, 30, 40], [2, 3, 31, 41]], "probs": [0.99, None], "frame_scores": [0.2, 0.4], "fake_probability": 0.3}]
    return {
        "video_uri": f"/v/{i}.mp4", "video_id": f"id{i}", "status": status, "error": None if status != "failed" else "boom",
        "fake_probability": 0.3 if status == "ok" else None, "label": "REAL" if status == "ok" else None, "threshold": 0.5,
        "n_frames": 2, "n_faces": 2, "n_tracks": 1, "duration_s": 1.0, "fps": 30.0, "width": 64, "height": 48, "size_bytes": 10,
        "frame_indices": [0, 5], "frame_scores": [0.2, 0.4], "aggregation": "tracks=max,frames=mean",
        "model_name": "m", "model_version": version, "model_uri": "models:/m/1", "mlflow_run_id": "r1",
        "scored_at": datetime.now(timezone.utc), "tracks": json.dumps(tracks if status == "ok" else []),
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
    assert store.scored_ids("m", "1") == {"id1", "id2", "id3"} and store.scored_ids("m", "2") == set()


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


def test_parts_for_a_model_version_and_remove(tmp_path):
    store = ResultStore(str(tmp_path / "out"), Storage())
    store.check_writable()
    store.write_part([_row(1)], job_id="a")
    store.write_part([_row(1, version="2")], job_id="a")
    old = store.parts_for("m", "1")
    assert len(old) == 2  # videos + faces
    store.remove(old)
    assert list(store.read("videos").model_version) == ["2"]


def test_empty_store_reads_as_empty_frame(tmp_path):
    df = ResultStore(str(tmp_path / "none"), Storage()).read("videos")
    assert len(df) == 0 and list(df.columns) == VIDEOS_SCHEMA.names
