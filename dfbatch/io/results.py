"""Result tables: the one place that defines the output schema, writes it, and reads it back.

Layout under OUT (local path or s3://):
  videos/part-<model>-<hash>.parquet   one row per (input video, model version)
  faces/part-<model>-<hash>.parquet    one row per scored face track (same file name as its videos part)
  crops/part-<model>-<hash>/<video_id>-<track>.jpg
                                       with `--save-crops`: one JPEG per track, its crops side by side
                                       (named in the faces column `crops_file`, relative to OUT)

Commit protocol: a write task writes the crops, then both tables to `_staging/`, and renames faces first,
videos last; the videos part is the commit point. A part's name is a hash of (job id, its video ids), so a
retried write task overwrites rather than duplicates, and a rerun skips every video with a committed row.
Readers see only complete files (local rename is atomic; an S3 PUT is atomic). `recover()` removes staging
leftovers, and faces parts and crops folders whose videos part never committed.

Replacing rows (`--rescore`, `--retry-failed`): the new rows are committed like any others, then
`drop_superseded()` removes every row that a newer row (`scored_at`) of the same video and model version replaces,
by rewriting the parts that hold one (faces first, then those rows' crops, then videos: each file swapped whole).
A row is only ever removed after its replacement committed, so a kill at any point loses none; the next job's
`drop_superseded()` finishes what a killed one left. Model versions are told apart by the model_name and
model_version columns, never by file names.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections import Counter

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
        ("error_class", pa.string()),  # null unless failed: storage, time_budget, corrupt, ... (stages/failures.py)
        ("error_kind", pa.string()),  # null unless failed: transient (a rerun may pass) | permanent
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

# what the score stage hands the sink: the videos columns plus the per-track details (JSON) and, with
# --save-crops, one JPEG strip per track (io.images.encode_strip)
SCORED_SCHEMA = VIDEOS_SCHEMA.append(pa.field("tracks", pa.string())).append(pa.field("crop_jpegs", pa.list_(pa.binary())))

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
        ("crops_file", pa.string()),  # --save-crops: the track's JPEG strip, relative to OUT; else null
    ]
)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text))


def model_filter(model_name: str, model_version: str) -> pc.Expression:
    """Rows of exactly this model version (model `det` version 1 is not model `det-v1`)."""
    return (pc.field("model_name") == model_name) & (pc.field("model_version") == str(model_version))


def retry_filter(retry: tuple[str, ...]) -> pc.Expression:
    """Failed rows to score again: `retry` holds error kinds (transient, permanent), classes (storage, over_limit,
    ... : `stages.failures.ERROR_CLASSES`) or `all`. Rows written before error kinds were recorded count as
    transient."""
    failed = pc.field("status") == "failed"
    if "all" in retry:
        return failed
    kinds = [r for r in retry if r in ("transient", "permanent")]
    classes = [r for r in retry if r not in kinds]
    match = pc.field("error_kind").isin(pa.array(kinds, pa.string())) | pc.field("error_class").isin(pa.array(classes, pa.string()))
    if "transient" in kinds:
        match = match | pc.field("error_kind").is_null()
    return failed & match


def resume_filter(model_name: str, model_version: str, retry: tuple[str, ...] | None = None) -> pc.Expression:
    """Rows that make a video done for this model version: all of them, minus those `retry_filter(retry)` picks."""
    flt = model_filter(model_name, model_version)
    return flt & ~retry_filter(retry) if retry else flt


def model_key(name: str, version: str) -> str:
    """A file-name-safe key for one model version in part names (for people: the columns say whose rows they are)."""
    return _safe(f"{name}-v{version}")


def crop_files(rows: list[dict], part: str) -> dict[tuple[str, int], tuple[str, bytes]]:
    """(video_id, track) -> (path relative to OUT, JPEG strip) for the rows' saved crops (part: the part's stem)."""
    out = {}
    for r in rows:
        for i, jpeg in enumerate(r.get("crop_jpegs") or []):
            out[(r["video_id"], i)] = (f"crops/{part}/{_safe(r['video_id'])}-{i}.jpg", jpeg)
    return out


def to_tables(rows: list[dict], crops: dict[tuple[str, int], tuple[str, bytes]] | None = None) -> tuple[pa.Table, pa.Table]:
    """Split scored rows (score stage output) into the videos and faces tables (`crops`: from `crop_files`)."""
    videos = pa.Table.from_pylist([{k: r.get(k) for k in VIDEOS_SCHEMA.names} for r in rows], schema=VIDEOS_SCHEMA)
    faces = []
    for r in rows:
        for i, track in enumerate(json.loads(r.get("tracks") or "[]")):
            crop = (crops or {}).get((r["video_id"], i))
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
                    "crops_file": crop[0] if crop else None,
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

    def _crops_dirs(self) -> list[str]:
        try:
            return sorted(p for p in self.fs.ls(self._dir("crops"), detail=False) if p.rsplit("/", 1)[-1].startswith("part-"))
        except FileNotFoundError:
            return []

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
        crops = crop_files(rows, name[: -len(".parquet")])
        videos, faces = to_tables(rows, crops)
        local = not is_s3(self.output)
        if crops:  # before the tables: a committed row never names a missing file
            self._write_files({f"{self.root}/{rel}": data for rel, data in crops.values()}, local)
        for table, sub in ((faces, "faces"), (videos, "videos")):  # videos last: the commit point
            self._put_table(table, f"{self._dir(sub)}/{name}", local)
        return dict(Counter(r["status"] for r in rows)) | {"fake": sum(1 for r in rows if r.get("label") == "FAKE")}

    def _put_table(self, table: pa.Table, final: str, local: bool) -> None:
        """The file appears (or is replaced) whole: locally staged + renamed, on S3 one PUT."""
        if local:
            os.makedirs(self._dir("_staging"), exist_ok=True)
            staging = f"{self._dir('_staging')}/{uuid.uuid4().hex}-{final.rsplit('/', 1)[-1]}"
            pq.write_table(table, staging)
            os.replace(staging, final)
        else:
            with self.fs.open(final, "wb") as f:
                pq.write_table(table, f)

    def _write_files(self, files: dict[str, bytes], local: bool) -> None:
        """Each file appears whole or not at all: locally staged + renamed, on S3 one PUT each (concurrent)."""
        if not local:
            self.fs.pipe(files)
            return
        for final, data in files.items():
            os.makedirs(os.path.dirname(final), exist_ok=True)
            staging = f"{self._dir('_staging')}/crop-{uuid.uuid4().hex}.jpg"
            with open(staging, "wb") as f:
                f.write(data)
            os.replace(staging, final)

    def read_crops(self, crops_file: str):
        """A track's saved crops (a faces row's `crops_file`) as uint8 (T, S, S, 3) RGB."""
        from dfbatch.io.images import decode_strip

        if not re.fullmatch(r"crops/part-[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+\.jpg", crops_file or "") or ".." in crops_file:
            raise ValueError(f"not a crops file of this store: {crops_file!r}")
        with self.fs.open(f"{self.root}/{crops_file}", "rb") as f:
            return decode_strip(f.read())

    def _parts(self, sub: str) -> list[str]:
        try:
            return sorted(p for p in self.fs.ls(self._dir(sub), detail=False) if p.endswith(".parquet"))
        except FileNotFoundError:
            return []

    def recover(self) -> int:
        """Remove staging leftovers, and faces parts and crops folders whose videos part never committed.
        Returns the files and folders removed."""
        removed = 0
        committed = {p.rsplit("/", 1)[-1] for p in self._parts("videos")}
        for p in self._parts("faces"):
            if p.rsplit("/", 1)[-1] not in committed:
                self.fs.rm(p)
                removed += 1
        for p in self._crops_dirs():
            if p.rsplit("/", 1)[-1] + ".parquet" not in committed:
                self.fs.rm(p, recursive=True)
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

    def superseded(self, model_name: str, model_version: str) -> dict[str, dict[str, object]]:
        """Rows of this model version that a newer row of the same video replaces: {videos part path: {video_id:
        the newest row's scored_at}}.
        Reads two columns of the version's rows; the part names only for videos that have more than one row."""
        ds = self.dataset("videos")
        if ds is None:
            return {}
        flt = model_filter(model_name, model_version)
        ids = ds.to_table(columns=["video_id"], filter=flt).column("video_id")
        counts = pc.value_counts(ids)
        repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
        if not len(repeated):
            return {}
        rows = ds.to_table(columns=["video_id", "scored_at", "__filename"], filter=flt & pc.field("video_id").isin(repeated))
        rows = rows.set_column(1, "scored_at", pc.fill_null(rows.column("scored_at"), pa.scalar(0, rows.schema.field("scored_at").type)))
        latest = rows.group_by("video_id").aggregate([("scored_at", "max")])
        rows = rows.join(latest, "video_id")
        stale = rows.filter(pc.less(rows.column("scored_at"), rows.column("scored_at_max")))
        out: dict[str, dict[str, object]] = {}
        for vid, path, newest in zip(*(stale.column(c).to_pylist() for c in ("video_id", "__filename", "scored_at_max"))):
            out.setdefault(path, {})[vid] = newest
        return out

    def drop_superseded(self, model_name: str, model_version: str) -> int:
        """Remove every row of this model version that a newer row of the same video replaces (what a rescore or a
        retry leaves behind); returns the video rows removed. Idempotent: a killed run is finished by the next."""
        removed = 0
        for path, newest in sorted(self.superseded(model_name, model_version).items()):
            removed += self._drop_rows(path, newest, model_name, model_version)
        return removed

    def _drop_rows(self, videos_path: str, newest: dict, model_name: str, model_version: str) -> int:
        """Rewrite one part without its rows of this model version that are older than their video's newest row
        (`newest`: video_id -> scored_at). Faces first, then those videos' crops, then videos (the commit point)."""
        name = videos_path.rsplit("/", 1)[-1]
        stem = name[: -len(".parquet")]
        local = not is_s3(self.output)

        def older(table: pa.Table) -> pa.Array:
            cols = [table.column(c).to_pylist() for c in ("model_name", "model_version", "video_id", "scored_at")]
            return pa.array([m == model_name and v == str(model_version) and vid in newest and (at is None or at < newest[vid])
                             for m, v, vid, at in zip(*cols)], pa.bool_())

        videos = pads.dataset([videos_path], schema=VIDEOS_SCHEMA, format="parquet", filesystem=self.fs).to_table()
        drop = older(videos)
        keep = videos.filter(pc.invert(drop))
        gone = set(videos.filter(drop).column("video_id").to_pylist()) - set(keep.column("video_id").to_pylist())
        faces_path = f"{self._dir('faces')}/{name}"
        crops_dir = f"{self._dir('crops')}/{stem}"
        if not keep.num_rows:  # nothing left: faces, crops, then videos (no faces row ever outlives its video row)
            for p in (faces_path, crops_dir, videos_path):
                try:
                    self.fs.rm(p, recursive=p == crops_dir)
                except FileNotFoundError:
                    pass
            return videos.num_rows
        if self.fs.exists(faces_path):
            faces = pads.dataset([faces_path], schema=FACES_SCHEMA, format="parquet", filesystem=self.fs).to_table()
            kept_faces = faces.filter(pc.invert(older(faces)))
            if kept_faces.num_rows < faces.num_rows:
                self._put_table(kept_faces, faces_path, local)
        prefixes = tuple(f"{_safe(v)}-" for v in gone)
        try:
            doomed = [p for p in self.fs.ls(crops_dir, detail=False) if prefixes and p.rsplit("/", 1)[-1].startswith(prefixes)]
        except (FileNotFoundError, NotADirectoryError):
            doomed = []
        if doomed:
            self.fs.rm(doomed)
        self._put_table(keep, videos_path, local)
        return videos.num_rows - keep.num_rows

    def failures(self, model_name: str, model_version: str) -> dict[str, dict[str, int]]:
        """The version's failed rows counted by kind, then class: {"transient": {"storage": 3}, "permanent": {...}}.
        Rows written before dfbatch recorded error classes count as transient class "unclassified"."""
        ds = self.dataset("videos")
        if ds is None:
            return {}
        flt = model_filter(model_name, model_version) & (pc.field("status") == "failed")
        t = ds.to_table(columns=["error_class", "error_kind"], filter=flt)
        out: dict[str, dict[str, int]] = {}
        for cls, kind in zip(t.column("error_class").to_pylist(), t.column("error_kind").to_pylist()):
            bucket = out.setdefault(kind or "transient", {})
            bucket[cls or "unclassified"] = bucket.get(cls or "unclassified", 0) + 1
        return out

    def read(self, sub: str = "videos", columns: list[str] | None = None):
        """The table as pandas (empty with the schema's columns when nothing was written yet). A part replaced or
        removed while it is read (a job's `drop_superseded` running meanwhile) makes it list the parts again."""
        for attempt in range(3):
            ds = self.dataset(sub)
            if ds is None:
                schema = VIDEOS_SCHEMA if sub == "videos" else FACES_SCHEMA
                return schema.empty_table().to_pandas()
            try:
                return ds.to_table(columns=columns).to_pandas()
            except OSError:  # FileNotFoundError, or s3fs's FileExpired (the object changed under the reader)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def read_results(output: str, sub: str = "videos", storage: Storage | None = None):
    """Results under OUT as a pandas DataFrame (`sub` = videos | faces)."""
    return ResultStore(output, storage or Storage()).read(sub)
