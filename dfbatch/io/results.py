"""Result tables: the one place that defines the output schema, writes it, and reads it back.

Layout under OUT (local path or s3://):
  videos/part-<model>-<hash>.parquet   one row per (input video, model version)
  faces/part-<model>-<hash>.parquet    one row per scored face track (same file name as its videos part)

Commit protocol: a write task writes both tables to `_staging/` and renames faces first, videos last; the
videos part is the commit point. A part's name is a hash of (job id, its video ids), so a retried write task
overwrites rather than duplicates, and a rerun skips every video with a committed row. Readers see only complete files (local rename is atomic; an S3
PUT is atomic). `recover()` removes staging leftovers and faces parts whose videos part never committed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections import Counter
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from dfbatch.io.storage import Storage, is_s3

VIDEOS_SCHEMA = pa.schema(
    [
        ("video_uri", pa.string()),
        ("video_id", pa.string()),
        ("status", pa.string()),  # ok | no_face | failed
        ("error", pa.string()),  # null unless failed: a one-line reason
        ("fake_probability", pa.float64()),  # null unless ok
        ("label", pa.string()),  # FAKE | REAL, null unless ok
        ("threshold", pa.float64()),
        ("n_frames", pa.int32()),  # sampled frames decoded
        ("n_faces", pa.int32()),  # face detections over the sampled frames
        ("n_tracks", pa.int32()),  # tracks scored
        ("duration_s", pa.float64()),
        ("fps", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("size_bytes", pa.int64()),
        ("frame_indices", pa.list_(pa.int32())),  # the sampled frame indices
        ("frame_scores", pa.list_(pa.float64())),  # per sampled frame: max P(fake) over its faces, null if none
        ("aggregation", pa.string()),  # e.g. "tracks=max,frames=mean"
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("model_uri", pa.string()),
        ("mlflow_run_id", pa.string()),
        ("scored_at", pa.timestamp("us", tz="UTC")),
    ]
)

# what the score stage hands the sink: the videos columns plus the per-track details (JSON)
SCORED_SCHEMA = VIDEOS_SCHEMA.append(pa.field("tracks", pa.string()))

FACES_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("video_uri", pa.string()),
        ("track_id", pa.int32()),
        ("frame_indices", pa.list_(pa.int32())),
        ("boxes", pa.list_(pa.list_(pa.float32(), 4))),  # x1, y1, x2, y2 in displayed full-resolution pixels
        ("det_probs", pa.list_(pa.float32())),  # MTCNN probability; null where the box was interpolated
        ("frame_scores", pa.list_(pa.float64())),  # per-frame P(fake) from the model
        ("fake_probability", pa.float64()),  # the track's score
        ("sequence_probability", pa.float64()),  # the model's own P(fake) of the sequence (its temporal head)
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("mlflow_run_id", pa.string()),
        ("scored_at", pa.timestamp("us", tz="UTC")),
    ]
)


def model_key(name: str, version: str) -> str:
    """A file-name-safe key for one model version (also used to find its parts)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{name}-v{version}")


def to_tables(rows: list[dict]) -> tuple[pa.Table, pa.Table]:
    """Split scored rows (score stage output) into the videos and faces tables."""
    videos = pa.Table.from_pylist([{k: r.get(k) for k in VIDEOS_SCHEMA.names} for r in rows], schema=VIDEOS_SCHEMA)
    faces = []
    for r in rows:
        for i, track in enumerate(json.loads(r.get("tracks") or "[]")):
            faces.append(
                {
                    "video_id": r["video_id"],
                    "video_uri": r["video_uri"],
                    "track_id": i,
                    "frame_indices": track["frame_indices"],
                    "boxes": track["boxes"],
                    "det_probs": track["probs"],
                    "frame_scores": track.get("frame_scores"),
                    "fake_probability": track.get("fake_probability"),
                    "sequence_probability": track.get("sequence_probability"),
                    "model_name": r.get("model_name"),
                    "model_version": r.get("model_version"),
                    "mlflow_run_id": r.get("mlflow_run_id"),
                    "scored_at": r.get("scored_at"),
                }
            )
    return videos, pa.Table.from_pylist(faces, schema=FACES_SCHEMA)


class ResultStore:
    """Reads and writes the result tables under one OUT location."""

    def __init__(self, output: str, storage: Storage):
        self.output = output
        self.storage = storage
        self.fs = storage.fs(output)
        self.root = storage.path(output)

    def _dir(self, name: str) -> str:
        return f"{self.root}/{name}"

    def check_writable(self) -> None:
        """Create OUT and prove it is writable (raises OSError/PermissionError otherwise)."""
        for name in ("videos", "faces", "_staging"):
            self.fs.makedirs(self._dir(name), exist_ok=True)
        probe = f"{self._dir('_staging')}/.probe-{uuid.uuid4().hex}"
        with self.fs.open(probe, "wb") as f:
            f.write(b"ok")
        self.fs.rm(probe)

    def write_part(self, rows: list[dict], job_id: str) -> dict:
        """Write one block of scored rows with the commit protocol; returns per-status counts.

        The part name hashes (job, video ids): a retried write task of the same job overwrites its own part.
        """
        if not rows:
            return {}
        key = model_key(rows[0]["model_name"], rows[0]["model_version"])
        digest = hashlib.sha1("\n".join([job_id, *sorted(r["video_id"] for r in rows)]).encode()).hexdigest()[:16]
        name = f"part-{key}-{digest}.parquet"
        videos, faces = to_tables(rows)
        local = not is_s3(self.output)
        for table, sub in ((faces, "faces"), (videos, "videos")):  # videos last: the commit point
            final = f"{self._dir(sub)}/{name}"
            if local:
                staging = f"{self._dir('_staging')}/{sub}-{uuid.uuid4().hex}-{name}"
                pq.write_table(table, staging)
                os.replace(staging, final)
            else:
                with self.fs.open(final, "wb") as f:
                    pq.write_table(table, f)
        return dict(Counter(r["status"] for r in rows)) | {"fake": sum(1 for r in rows if r.get("label") == "FAKE")}

    def _parts(self, sub: str) -> list[str]:
        try:
            return sorted(p for p in self.fs.ls(self._dir(sub), detail=False) if p.endswith(".parquet"))
        except FileNotFoundError:
            return []

    def recover(self) -> int:
        """Remove staging leftovers and faces parts whose videos part never committed. Returns files removed."""
        removed = 0
        committed = {p.rsplit("/", 1)[-1] for p in self._parts("videos")}
        for p in self._parts("faces"):
            if p.rsplit("/", 1)[-1] not in committed:
                self.fs.rm(p)
                removed += 1
        try:
            for p in self.fs.ls(self._dir("_staging"), detail=False):
                self.fs.rm(p)
                removed += 1
        except FileNotFoundError:
            pass
        return removed

    def dataset(self, sub: str = "videos") -> pads.Dataset | None:
        parts = self._parts(sub)
        if not parts:
            return None
        schema = VIDEOS_SCHEMA if sub == "videos" else FACES_SCHEMA
        return pads.dataset(parts, schema=schema, format="parquet", filesystem=self.fs)

    def scored_ids(self, model_name: str, model_version: str) -> set[str]:
        """video_ids that already have a row for this model version (the resume set)."""
        ds = self.dataset("videos")
        if ds is None:
            return set()
        flt = (pc.field("model_name") == model_name) & (pc.field("model_version") == str(model_version))
        return set(ds.to_table(columns=["video_id"], filter=flt).column("video_id").to_pylist())

    def parts_for(self, model_name: str, model_version: str) -> list[str]:
        prefix = f"part-{model_key(model_name, model_version)}-"
        return [p for sub in ("videos", "faces") for p in self._parts(sub) if p.rsplit("/", 1)[-1].startswith(prefix)]

    def remove(self, paths: Iterable[str]) -> None:
        """Delete parts, videos first (an interrupted removal leaves only orphan faces, which recover() drops)."""
        for p in sorted(paths, key=lambda p: "/faces/" in p):
            self.fs.rm(p)

    def read(self, sub: str = "videos", columns: list[str] | None = None):
        """The table as pandas (empty with the schema's columns when nothing was written yet)."""
        ds = self.dataset(sub)
        if ds is None:
            schema = VIDEOS_SCHEMA if sub == "videos" else FACES_SCHEMA
            return schema.empty_table().to_pandas()
        return ds.to_table(columns=columns).to_pandas()


def read_results(output: str, sub: str = "videos", storage: Storage | None = None):
    """Results under OUT as a pandas DataFrame (`sub` = videos | faces)."""
    return ResultStore(output, storage or Storage()).read(sub)
