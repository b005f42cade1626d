"""`dfbatch prepare`: labelled videos -> face-sequence shards for training (a Ray Data job).

The job runs the scoring pipeline's own decode + face stages (`faces.FaceStage` / `process_video`: the same
frame sampling, MTCNN, tracking and crops that scoring feeds the model) over the labelled videos, so a model
trains on exactly the crops it will later score. Each face track becomes one shard row holding its crops as
JPEG frames.

Output under OUT (local path or s3://):

    _prepare.json                 the parameters the shards were made with (checked on every rerun)
    split.parquet                 the label table (datasets.load_labels + assign_splits) with video ids
    videos/part-*.parquet         one row per processed video (status ok | no_face | failed, error, n_tracks):
                                  the commit record, and the resume set
    shards/{train,val,test}/part-*.parquet
                                  one row per face track: video_id, video_uri, label, group, split, dataset,
                                  track, n_frames, frame_indices, crop_size, fps, frames (list of JPEG bytes)

Commit protocol (as the score sink): a write task writes its shard parts, then the videos part with the same
name (the commit point). A rerun first removes shard parts without a committed videos part, then skips every
video id already in videos/ (failed ones too, unless `retry_failed`). Splits are pinned across reruns: a group
that already has a split keeps it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dfbatch import __version__
from dfbatch.config import PrepareConfig
from dfbatch.errors import UserError, one_line, redact
from dfbatch.io.images import decode_jpeg, encode_jpeg  # noqa: F401 (re-exported: trainer, tests)
from dfbatch.io.listing import LISTING_SCHEMA
from dfbatch.io.results import VIDEOS_SCHEMA
from dfbatch.io.storage import Storage, is_s3
from dfbatch.models.spec import DEFAULT_CROP_MARGIN, DETECTION_KEYS
from dfbatch.stages.failures import InflightMarkers, clear_markers

log = logging.getLogger(__name__)

PREPARE_FORMAT = "dfbatch-shards/1"
SPLIT_DIRS = ("train", "val", "test")
LABEL_COLUMNS = ("label", "group", "split", "dataset", "original")
_LABEL_FIELDS = [pa.field(c, pa.string()) for c in LABEL_COLUMNS]


def _result_fields(*names: str) -> list[pa.Field]:
    """Columns shared with the scoring job's results: defined once, in `io.results.VIDEOS_SCHEMA`."""
    return [VIDEOS_SCHEMA.field(n) for n in names]


# the prepare job's listing: the scoring job's listing rows plus the label columns
LABELLED_LISTING_SCHEMA = pa.schema(list(LISTING_SCHEMA) + _LABEL_FIELDS)
# PrepareStage output: one row per video, tracks nested
PREPARED_SCHEMA = pa.schema(
    _result_fields("video_uri", "video_id") + _LABEL_FIELDS
    + _result_fields("status", "error", "n_frames", "n_faces", "n_tracks") + [pa.field("crop_size", pa.int32())]
    + _result_fields("fps", "duration_s")
    + [pa.field("track_frame_indices", pa.list_(pa.list_(pa.int32()))),
       pa.field("track_frames", pa.list_(pa.list_(pa.binary())))])
# OUT/videos/: the index of prepared videos (the commit record and the resume set) — not scoring results
PREPARED_VIDEOS_SCHEMA = pa.schema([f for f in PREPARED_SCHEMA if not f.name.startswith("track_")]
                                   + [pa.field("prepared_at", pa.string()), pa.field("job_id", pa.string())])
SHARD_SCHEMA = pa.schema([
    ("video_id", pa.string()), ("video_uri", pa.string()), ("label", pa.string()), ("group", pa.string()),
    ("split", pa.string()), ("dataset", pa.string()), ("track", pa.int32()), ("n_frames", pa.int32()),
    ("frame_indices", pa.list_(pa.int32())), ("crop_size", pa.int32()), ("fps", pa.float64()),
    ("frames", pa.list_(pa.binary())),
])
SHARD_COLUMNS = ["video_id", "label", "track", "frames"]  # what training reads of a shard row
# the quality of shards whose parameters do not name one: PrepareConfig's default
DEFAULT_JPEG_QUALITY = PrepareConfig.__pydantic_fields__["jpeg_quality"].default


@dataclass
class PrepareSummary:
    output: str
    job_id: str
    labelled: int = 0
    skipped: int = 0  # already prepared (resume)
    processed: int = 0
    counts: dict = field(default_factory=dict)  # ok / no_face / failed
    tracks: dict = field(default_factory=dict)  # shard rows per split written by this run
    split_counts: dict = field(default_factory=dict)  # videos per split x label (whole table)
    actors: int = 0  # face actors this run started (one per core, at most one per 8 videos; 0: nothing to prepare)
    elapsed_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ the stage
def prepared_row(ref: dict, face_row: dict, jpeg_quality: int) -> dict:
    """A FaceStage row (+ the label columns of its listing row) -> a PREPARED_SCHEMA row (tracks as JPEGs)."""
    out = {k: face_row.get(k) for k in ("video_uri", "video_id", "status", "error", "n_frames", "n_faces",
                                        "n_tracks", "crop_size", "fps", "duration_s")}
    out.update({k: ref.get(k) for k in LABEL_COLUMNS})
    tracks = json.loads(face_row.get("tracks") or "[]")
    size = int(face_row.get("crop_size") or 0)
    crops = np.frombuffer(face_row.get("crops") or b"", np.uint8)
    idx_lists, frame_lists = [], []
    if tracks and size:
        crops = crops.reshape(-1, size, size, 3)
        pos = 0
        for t in tracks:
            n = len(t["frame_indices"])
            idx_lists.append([int(i) for i in t["frame_indices"]])
            frame_lists.append([encode_jpeg(c, jpeg_quality) for c in crops[pos:pos + n]])
            pos += n
        if pos != len(crops):
            out.update(status="failed", error=f"crop count {len(crops)} does not match tracks ({pos})")
            idx_lists, frame_lists = [], []
    out["track_frame_indices"], out["track_frames"] = idx_lists, frame_lists
    return out


def _face_stage_base():
    from dfbatch.stages.faces import FaceStage

    return FaceStage


class PrepareStage:
    """Ray Data adapter: the scoring job's `FaceStage` (decode + MTCNN + tracks + crops), then JPEG-encode
    each track and carry the label columns through. One row per video."""

    def __init__(self, *, jpeg_quality: int = DEFAULT_JPEG_QUALITY, **face_stage_kwargs):
        self.inner = _face_stage_base()(**face_stage_kwargs)
        self.jpeg_quality = jpeg_quality

    def __call__(self, batch: pa.Table) -> pa.Table:
        faces = self.inner(batch.select([c for c in LISTING_SCHEMA.names if c in batch.column_names]))
        rows = [prepared_row(ref, face, self.jpeg_quality) for ref, face in zip(batch.to_pylist(), faces.to_pylist())]
        return pa.Table.from_pylist(rows, schema=PREPARED_SCHEMA)


def pinned_params(params: dict) -> dict:
    """The pinned parameters (`PrepareConfig.pinned`) of a `_prepare.json`; `detection` of shards made before it
    was pinned comes from their recorded face settings."""
    out = dict(params)
    if out.get("detection") is None and isinstance(out.get("faces"), dict):
        out["detection"] = {k: out["faces"].get(k) for k in DETECTION_KEYS}
    return out


def check_params(old: dict | None, cfg: PrepareConfig) -> None:
    """Refuse to add shards made with other pinned parameters than those already in OUT (`old`)."""
    if old is None:
        return
    old = pinned_params(old)
    changed = {k: (old.get(k), v) for k, v in cfg.pinned().items() if old.get(k) != v}
    if changed:
        detail = ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items())
        raise UserError(f"{redact(cfg.output)} holds shards made with other parameters ({detail}); "
                        f"use the same parameters to resume, or a new output")


def model_input(params: dict) -> dict:
    """The `ModelSpec` input-contract fields of a model trained on shards with these parameters
    (`_prepare.json`): how their crops were cut and encoded, and the detection that found the faces."""
    p = pinned_params(params)
    return {"crop_margin": float(p["margin"]) if p.get("margin") is not None else DEFAULT_CROP_MARGIN,
            "crop_size": int(p["crop_size"]) if p.get("crop_size") else None,
            "crop_jpeg_quality": int(p.get("jpeg_quality") or DEFAULT_JPEG_QUALITY),
            "detection": p.get("detection")}


# ----------------------------------------------------------------------------------------------- the store
class ShardStore:
    """Reads and writes the prepared data under OUT (local or s3://)."""

    def __init__(self, output: str, storage: Storage | None = None):
        self.output = output
        self.storage = storage or Storage()
        self.fs = self.storage.fs(output)
        self.root = self.storage.path(output).rstrip("/")

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def uri(self, *parts: str) -> str:
        return self.storage.uri(self.output, self.path(*parts))

    def _ls(self, sub: str) -> list[str]:
        try:
            return sorted(p for p in self.fs.ls(self.path(sub), detail=False) if p.endswith(".parquet"))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def check_writable(self) -> None:
        for sub in ("videos", "_staging", *(f"shards/{s}" for s in SPLIT_DIRS)):
            self.fs.makedirs(self.path(sub), exist_ok=True)
        probe = self.path("_staging", f".probe-{uuid.uuid4().hex}")
        with self.fs.open(probe, "wb") as f:
            f.write(b"ok")
        self.fs.rm(probe)

    # -- parameters
    def read_params(self) -> dict | None:
        p = self.path("_prepare.json")
        if not self.fs.exists(p):
            return None
        with self.fs.open(p, "rb") as f:
            return json.loads(f.read().decode("utf-8"))

    def write_params(self, params: dict) -> None:
        with self.fs.open(self.path("_prepare.json"), "wb") as f:
            f.write(json.dumps(params, indent=2, sort_keys=True).encode("utf-8"))

    # -- commit protocol
    def write_part(self, rows: list[dict], job_id: str) -> dict:
        """Shard parts first (one per split present), then the videos part (commit). Returns counts."""
        if not rows:
            return {}
        digest = hashlib.sha1("\n".join([job_id, *sorted(r["video_id"] for r in rows)]).encode()).hexdigest()[:16]
        name = f"part-{digest}.parquet"
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # orders retries of a video
        shards: dict[str, list[dict]] = {}
        for r in rows:
            for t, (idx, frames) in enumerate(zip(r.get("track_frame_indices") or [], r.get("track_frames") or [])):
                split = r.get("split") if r.get("split") in SPLIT_DIRS else "train"
                shards.setdefault(split, []).append({
                    "video_id": r["video_id"], "video_uri": r["video_uri"], "label": r["label"], "group": r["group"],
                    "split": split, "dataset": r.get("dataset"), "track": t, "n_frames": len(frames),
                    "frame_indices": idx, "crop_size": r.get("crop_size"), "fps": r.get("fps"), "frames": frames})
        videos = [{**{k: r.get(k) for k in PREPARED_VIDEOS_SCHEMA.names}, "prepared_at": now, "job_id": job_id} for r in rows]
        tables = [(f"shards/{s}", pa.Table.from_pylist(v, schema=SHARD_SCHEMA)) for s, v in sorted(shards.items())]
        tables.append(("videos", pa.Table.from_pylist(videos, schema=PREPARED_VIDEOS_SCHEMA)))
        for sub, table in tables:  # videos last: the commit point
            final = self.path(sub, name)
            if not is_s3(self.output):
                staging = self.path("_staging", f"{uuid.uuid4().hex}-{name}")
                pq.write_table(table, staging)
                os.replace(staging, final)
            else:
                with self.fs.open(final, "wb") as f:
                    pq.write_table(table, f)
        counts = Counter(r["status"] for r in rows)
        counts.update({f"tracks_{s}": len(v) for s, v in shards.items()})
        return dict(counts)

    def recover(self) -> int:
        """Remove staging leftovers and shard parts whose videos part never committed."""
        committed = {p.rsplit("/", 1)[-1] for p in self._ls("videos")}
        removed = 0
        for s in SPLIT_DIRS:
            for p in self._ls(f"shards/{s}"):
                if p.rsplit("/", 1)[-1] not in committed:
                    self.fs.rm(p)
                    removed += 1
        try:
            for p in self.fs.ls(self.path("_staging"), detail=False):
                self.fs.rm(p)
                removed += 1
        except FileNotFoundError:
            pass
        return removed

    # -- reading
    def videos(self, columns: list[str] | None = None):
        """The videos table (pandas; empty with the schema's columns before anything was written)."""
        parts = self._ls("videos")
        if not parts:
            return PREPARED_VIDEOS_SCHEMA.empty_table().to_pandas()
        import pyarrow.dataset as pads

        df = pads.dataset(parts, schema=PREPARED_VIDEOS_SCHEMA, format="parquet", filesystem=self.fs).to_table().to_pandas()
        # a retried video has several rows: the latest wins
        df = df.sort_values("prepared_at", kind="stable").drop_duplicates("video_id", keep="last").reset_index(drop=True)
        return df[columns] if columns else df

    def prepared_ids(self, include_failed: bool = True) -> set[str]:
        v = self.videos(columns=["video_id", "status"])
        if not include_failed:
            v = v[v["status"] != "failed"]
        return set(v["video_id"])

    def shard_files(self, split: str) -> list[str]:
        """URIs of the shard parts of one split."""
        return [self.storage.uri(self.output, p) for p in self._ls(f"shards/{split}")]

    def split_table(self):
        from dfbatch.training.labels import load_split

        p = self.uri("split.parquet")
        if not self.fs.exists(self.path("split.parquet")):
            return None
        return load_split(p, storage_options=_storage_options(self.output, self.storage.endpoint_url))


def read_shards(output: str, split: str | None = None, storage: Storage | None = None):
    """Shard rows (pandas) of one split or all — for inspection and small tests; training reads with Ray Data."""
    store = ShardStore(output, storage)
    files = [f for s in ([split] if split else SPLIT_DIRS) for f in store._ls(f"shards/{s}")]
    if not files:
        return SHARD_SCHEMA.empty_table().to_pandas()
    import pyarrow.dataset as pads

    return pads.dataset(files, schema=SHARD_SCHEMA, format="parquet", filesystem=store.fs).to_table().to_pandas()


def ShardDatasink(output: str, storage: Storage, job_id: str):
    """Ray Data datasink: each write task commits one shard part (see ShardStore.write_part)."""
    from dfbatch.io.datasink import CommitDatasink

    return CommitDatasink(output, storage, job_id, store_cls=ShardStore, min_rows=32)


# ----------------------------------------------------------------------------------------------------- job
def _storage_options(uri: str, endpoint: str | None) -> dict:
    return {"client_kwargs": {"endpoint_url": endpoint}} if (is_s3(uri) and endpoint) else {}


def label_table(cfg: PrepareConfig, pin: dict[str, str] | None = None):
    """Labels of every source, with leak-free splits (pinned to an earlier run's groups)."""
    from dfbatch.training import labels as datasets

    opts = {}
    for src in cfg.sources:
        opts = _storage_options(src, cfg.endpoint_url) or opts
    options = {**cfg.reader_options, **({"compression": cfg.compression} if cfg.compression else {})}
    df = datasets.load_labels(cfg.sources, cfg.layout, storage_options=opts or None, **options)
    df = datasets.assign_splits(df, dict(zip(datasets.SPLITS, cfg.fractions)), seed=cfg.split_seed,
                                official=cfg.official, pin=pin)
    datasets.check_splits(df)
    if cfg.limit:
        df = df.iloc[: int(cfg.limit)].reset_index(drop=True)
    return df


def _listing(labels, store: ShardStore, storage: Storage, work: str, skip: set[str], chunk: int = 5000):
    """Stat every labelled video (through `sources.iter_videos` on a manifest, so ids match scoring), attach
    the label columns, drop already-prepared ids. Yields Arrow tables of up to `chunk` rows; fills `ids`
    (uri -> video_id) and `counts` (returned first, as a mutable pair)."""
    from dfbatch.io.listing import iter_videos

    manifest = f"{work}/manifest.parquet"
    store.fs.makedirs(work, exist_ok=True)
    with store.fs.open(manifest, "wb") as f:
        pq.write_table(pa.table({"uri": [str(u) for u in labels["uri"]]}), f)
    by_uri = {r["uri"]: r for r in labels.to_dict("records")}
    ids: dict[str, str] = {}
    counts: Counter = Counter()

    def chunks():
        buf, seen = [], set()
        for ref in iter_videos([storage.uri(store.output, manifest)], storage):
            lab = by_uri.get(ref.video_uri)
            if lab is None:
                continue
            vid = ref.video_id
            ids[ref.video_uri] = vid
            if vid in skip:
                counts["skipped"] += 1
                continue
            if vid in seen:  # the same file labelled twice
                continue
            seen.add(vid)
            buf.append({"video_uri": ref.video_uri, "video_id": vid, "size_bytes": ref.size_bytes, "mtime": ref.mtime,
                        "list_error": ref.list_error, **{k: lab.get(k) for k in LABEL_COLUMNS}})
            counts["to_prepare"] += 1
            if len(buf) >= chunk:
                yield pa.Table.from_pylist(buf, schema=LABELLED_LISTING_SCHEMA)
                buf = []
        if buf:
            yield pa.Table.from_pylist(buf, schema=LABELLED_LISTING_SCHEMA)

    return ids, counts, chunks()


def run_prepare(cfg: PrepareConfig) -> PrepareSummary:
    """Prepare (or resume preparing) face-sequence shards for every labelled video."""
    cfg = cfg.with_absolute_paths()
    import ray

    from dfbatch.training.labels import save_split, split_summary
    from dfbatch.pipeline import init_ray, small_job_cap

    started = time.time()
    storage = Storage(cfg.endpoint_url)
    store = ShardStore(cfg.output, storage)
    try:
        store.check_writable()
    except Exception as exc:
        raise UserError(f"cannot write to {redact(cfg.output)}: {one_line(exc)}") from None
    check_params(store.read_params(), cfg)
    store.recover()
    previous = store.split_table()
    pin = dict(zip(previous["group"], previous["split"])) if previous is not None else None
    labels = label_table(cfg, pin)
    job_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
    summary = PrepareSummary(cfg.output, job_id, labelled=len(labels))
    work = store.path("_work", job_id)
    skip = store.prepared_ids(include_failed=not cfg.retry_failed)
    try:
        init_ray()
        ids, counts, chunks = _listing(labels, store, storage, work, skip)
        # the listing goes chunk by chunk into the object store (no Parquet listing: Ray Data's ListFiles
        # step wants a free CPU, which the face actors may all hold)
        tables = list(chunks)
        labels = labels.assign(video_id=[ids.get(u) for u in labels["uri"]])
        save_split(labels, cfg.output.rstrip("/") + "/split.parquet", storage_options=_storage_options(cfg.output, cfg.endpoint_url))
        params = {"format": PREPARE_FORMAT, "dfbatch_version": __version__, **cfg.pinned(),
                  "sources": [redact(s) for s in cfg.sources], "layout": cfg.layout,
                  "faces": asdict(cfg.faces), "sampling": asdict(cfg.sampling)}
        store.write_params(params)
        summary.skipped = counts["skipped"]
        totals: Counter = Counter()
        if counts["to_prepare"]:
            n_cpu = int(ray.cluster_resources().get("CPU", 1))
            n = counts["to_prepare"]
            # one actor per core, at most one per VIDEOS_PER_ACTOR videos (as the scoring job's pools)
            workers = cfg.face_workers or min(max(1, int(n_cpu // cfg.cpus_per_face_worker)), small_job_cap(n, None))
            summary.actors = workers
            per_block = max(1, min(16, math.ceil(n / (2 * workers))))  # small blocks: videos are slow
            refs = [ray.put(t.slice(i, per_block)) for t in tables for i in range(0, t.num_rows, per_block)]
            del tables
            ds = ray.data.from_arrow_refs(refs)
            ds = ds.map_batches(
                PrepareStage,
                fn_constructor_kwargs=dict(jpeg_quality=cfg.jpeg_quality, storage=storage, sampling=cfg.sampling,
                                           faces=cfg.faces, limits=cfg.limits, frames=cfg.frames,
                                           crop_size=cfg.crop_size, threads=max(1, int(cfg.cpus_per_face_worker)),
                                           markers=InflightMarkers(cfg.output, storage, job_id, "prepare")),
                batch_size=1, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=cfg.cpus_per_face_worker)
            sink = ShardDatasink(cfg.output, storage, job_id)
            ds.write_datasink(sink, ray_remote_args={"num_cpus": 0})
            totals = sink.totals
        summary.counts = {k: int(totals.get(k, 0)) for k in ("ok", "no_face", "failed")}
        summary.processed = sum(summary.counts.values())
        summary.tracks = {s: int(totals.get(f"tracks_{s}", 0)) for s in SPLIT_DIRS}
        summary.split_counts = {s: {k: int(v) for k, v in row.items()} for s, row in split_summary(labels).iterrows()}
    finally:
        clear_markers(cfg.output, storage, job_id)
        try:
            store.fs.rm(work, recursive=True)
        except (FileNotFoundError, OSError):
            pass
    summary.elapsed_s = time.time() - started
    log.info("prepare summary: %s", json.dumps(summary.to_dict()))
    return summary


__all__ = ["PrepareConfig", "PrepareSummary", "PrepareStage", "ShardStore", "ShardDatasink", "run_prepare",
           "read_shards", "prepared_row", "encode_jpeg", "decode_jpeg", "label_table", "model_input", "SHARD_SCHEMA",
           "PREPARED_VIDEOS_SCHEMA", "PREPARED_SCHEMA", "LABELLED_LISTING_SCHEMA"]
