"""List the videos of an archive (local dir, glob, file, s3:// prefix, manifest) as a stream of VideoRefs.

The listing never materialises on the driver: `Listing` streams it as small Arrow tables that the pipeline
hands to the object store one by one as Ray Data blocks, skipping videos that already have a result (resume).
"""

from __future__ import annotations

import fnmatch
import glob as globlib
import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.parquet as pq  # manifests

from dfbatch.config import VIDEO_EXTENSIONS
from dfbatch.errors import UserError, one_line, redact
from dfbatch.io.storage import Storage, is_s3, strip_userinfo

MANIFEST_EXTENSIONS = (".txt", ".csv", ".parquet", ".lst")
LISTING_SCHEMA = pa.schema(
    [
        ("video_uri", pa.string()),
        ("video_id", pa.string()),
        ("size_bytes", pa.int64()),
        ("mtime", pa.string()),
        ("list_error", pa.string()),
    ]
)


@dataclass
class VideoRef:
    video_uri: str
    size_bytes: int | None
    mtime: str | None  # local mtime (ns) or S3 ETag: changes when the content changes
    list_error: str | None = None

    def __post_init__(self) -> None:
        self.video_uri = strip_userinfo(self.video_uri)  # s3://key:secret@bucket/... must not reach the results

    @property
    def video_id(self) -> str:
        return video_id(self.video_uri, self.size_bytes, self.mtime)


def video_id(uri: str, size: int | None, version: str | None) -> str:
    """Stable id of one version of one video: URI + size + mtime/ETag."""
    return hashlib.sha1(f"{uri}\0{size}\0{version}".encode()).hexdigest()[:20]


def is_video_name(name: str) -> bool:
    base = name.rstrip("/").rsplit("/", 1)[-1]
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in VIDEO_EXTENSIONS


def _hidden(rel_path: str) -> bool:
    return any(part.startswith(".") for part in rel_path.split("/") if part)


def _has_magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def _local_ref(path: str) -> VideoRef:
    try:
        st = os.stat(path)  # follows symlinks
    except OSError as exc:
        return VideoRef(path, None, None, f"cannot stat: {exc.strerror or exc}")
    return VideoRef(path, st.st_size, str(st.st_mtime_ns))


def _walk_local(root: str) -> Iterator[VideoRef]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if is_video_name(name):
                path = os.path.join(dirpath, name)
                if os.path.isdir(path):
                    continue
                yield _local_ref(path)


def _s3_split(uri: str) -> tuple[str, str]:
    rest = uri.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    return bucket, key


def _s3_objects(storage: Storage, bucket: str, prefix: str) -> Iterator[dict]:
    """Paginated listing (1000 keys a page): a million-object prefix streams."""
    paginator = storage.boto3_client().get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])


def _s3_ref(bucket: str, obj: dict) -> VideoRef:
    return VideoRef(f"s3://{bucket}/{obj['Key']}", int(obj["Size"]), str(obj.get("ETag", "")).strip('"'))


def _iter_s3(uri: str, storage: Storage) -> Iterator[VideoRef]:
    bucket, key = _s3_split(uri)
    if not bucket:
        raise UserError(f"bad S3 URI {uri!r} (expected s3://bucket/prefix)")
    try:
        if _has_magic(key):
            prefix = key[: min(key.index(c) for c in "*?[" if c in key)]
            pattern = key
            found = False
            for obj in _s3_objects(storage, bucket, prefix):
                if fnmatch.fnmatchcase(obj["Key"], pattern) and is_video_name(obj["Key"]) and not _hidden(obj["Key"]):
                    found = True
                    yield _s3_ref(bucket, obj)
            if not found:
                raise UserError(f"{redact(uri)} matched no videos")
            return
        if key and not key.endswith("/") and is_video_name(key):
            client = storage.boto3_client()
            try:
                head = client.head_object(Bucket=bucket, Key=key)
                yield VideoRef(uri, int(head["ContentLength"]), str(head.get("ETag", "")).strip('"'))
                return
            except client.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                    raise
        prefix = key if (not key or key.endswith("/")) else key + "/"
        found = False
        for obj in _s3_objects(storage, bucket, prefix):
            rel = obj["Key"][len(prefix):]
            if obj["Key"].endswith("/") or _hidden(rel) or not is_video_name(rel):
                continue
            found = True
            yield _s3_ref(bucket, obj)
        if not found and not any(True for _ in _s3_objects(storage, bucket, prefix)):
            raise UserError(f"{redact(uri)}: no such S3 prefix or object (or it is empty)")
    except UserError:
        raise
    except Exception as exc:  # botocore errors: access denied, no such bucket, no endpoint
        raise UserError(f"cannot list {redact(uri)}: {one_line(exc)}") from None


def _manifest_entries(uri: str, storage: Storage) -> Iterator[dict]:
    """Rows of a manifest: .txt (one URI per line, # comments), .csv or .parquet with a `uri` column."""
    ext = os.path.splitext(uri.lower())[1]
    fs = storage.fs(uri)
    path = storage.path(uri)
    if ext == ".parquet":
        pf = pq.ParquetFile(fs.open(path, "rb"))
        if "uri" not in pf.schema_arrow.names:
            raise UserError(f"manifest {redact(uri)} has no 'uri' column (columns: {', '.join(pf.schema_arrow.names)})")
        cols = [c for c in ("uri", "size_bytes", "etag", "mtime") if c in pf.schema_arrow.names]
        for batch in pf.iter_batches(batch_size=10_000, columns=cols):
            yield from batch.to_pylist()
    elif ext == ".csv":
        import csv

        with fs.open(path, "rt", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "uri" not in reader.fieldnames:
                raise UserError(f"manifest {redact(uri)} has no 'uri' column (header: {reader.fieldnames})")
            yield from reader
    else:
        with fs.open(path, "rt") as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    yield {"uri": line}


def _iter_manifest(uri: str, storage: Storage) -> Iterator[VideoRef]:
    base = uri.rsplit("/", 1)[0] if is_s3(uri) else os.path.dirname(os.path.abspath(uri))
    for row in _manifest_entries(uri, storage):
        entry = strip_userinfo(str(row.get("uri") or "").strip())
        if not entry:
            continue
        if not is_s3(entry) and not os.path.isabs(os.path.expanduser(entry)):
            entry = f"{base}/{entry}" if is_s3(base) else os.path.normpath(os.path.join(base, entry))
        size, version = row.get("size_bytes"), row.get("etag") or row.get("mtime")
        if size not in (None, "") and version not in (None, ""):
            yield VideoRef(entry, int(size), str(version))
        elif is_s3(entry):
            yield _stat_s3(entry, storage)
        else:
            yield _local_ref(os.path.expanduser(entry))


def _stat_s3(uri: str, storage: Storage) -> VideoRef:
    bucket, key = _s3_split(uri)
    try:
        head = storage.boto3_client().head_object(Bucket=bucket, Key=key)
        return VideoRef(uri, int(head["ContentLength"]), str(head.get("ETag", "")).strip('"'))
    except Exception as exc:
        return VideoRef(uri, None, None, f"cannot stat: {one_line(exc)}")


def iter_videos(sources: Iterable[str], storage: Storage) -> Iterator[VideoRef]:
    """Stream VideoRefs for every SOURCE. Raises UserError for a SOURCE that does not exist."""
    for src in sources:
        src = strip_userinfo(str(src))  # credentials come from the environment, never from a URI
        if is_s3(src):
            lower = src.lower()
            if lower.endswith(MANIFEST_EXTENSIONS) and not _has_magic(src):
                yield from _iter_manifest(src, storage)
            else:
                yield from _iter_s3(src, storage)
            continue
        path = os.path.expanduser(src)
        if _has_magic(path) and not os.path.exists(path):
            matched = False
            for hit in globlib.iglob(path, recursive=True):
                if os.path.isfile(hit) and is_video_name(hit):
                    matched = True
                    yield _local_ref(os.path.abspath(hit))
            if not matched:
                raise UserError(f"{src!r} matched no videos")
        elif os.path.isdir(path):
            yield from _walk_local(os.path.abspath(path))
        elif os.path.isfile(path):
            if path.lower().endswith(MANIFEST_EXTENSIONS):
                yield from _iter_manifest(os.path.abspath(path), storage)
            else:  # an explicitly named file is scored whatever its extension
                yield _local_ref(os.path.abspath(path))
        elif os.path.lexists(path):
            raise UserError(f"{src}: broken symbolic link")
        else:
            raise UserError(f"{src}: no such file or directory")


class Listing:
    """Streams refs as small Arrow tables (the Ray Data blocks of the job), dropping duplicates and ids in
    skip_ids (already scored). Counts fill in while it is consumed: listed, skipped, duplicates, to_score."""

    def __init__(self, refs: Iterable[VideoRef], *, skip_ids: set[str] | frozenset = frozenset(), rows_per_table: int = 8):
        self.refs, self.skip_ids, self.rows = refs, skip_ids, max(1, rows_per_table)
        self.counts = {"listed": 0, "skipped": 0, "duplicates": 0, "to_score": 0}

    def __iter__(self) -> Iterator[pa.Table]:
        seen: set[str] = set()
        buf: list[dict] = []
        for ref in self.refs:
            self.counts["listed"] += 1
            vid = ref.video_id
            if vid in seen:
                self.counts["duplicates"] += 1
                continue
            seen.add(vid)
            if vid in self.skip_ids:
                self.counts["skipped"] += 1
                continue
            buf.append(asdict(ref) | {"video_id": vid})
            self.counts["to_score"] += 1
            if len(buf) >= self.rows:
                yield pa.Table.from_pylist(buf, schema=LISTING_SCHEMA)
                buf = []
        if buf:
            yield pa.Table.from_pylist(buf, schema=LISTING_SCHEMA)
