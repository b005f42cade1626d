"""List the videos of an archive (local dir, glob, file, s3:// prefix, manifest) as a stream of VideoRefs.

A SOURCE is cut into shards (`source_shards`: S3 key ranges, a directory's subtrees, a Parquet manifest's row
groups); `list_shard` lists one shard as pages of refs. The scoring job lists each shard in a Ray Data read
task (`io/datasource.py`), so decoding starts while listing goes on and the driver never holds the listing.
`iter_videos` lists SOURCEs sequentially (for tests, `prepare`, and the driver's check that each SOURCE exists).
"""

from __future__ import annotations

import glob as globlib
import hashlib
import os
import re
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
    real_path: str | None = None  # local: the file's resolved path when the lister knows it (else resolved here)

    def __post_init__(self) -> None:
        self.video_uri = strip_userinfo(self.video_uri)  # s3://key:secret@bucket/... must not reach the results
        if is_s3(self.video_uri):  # s3a://, s3n://: the same object as s3://
            self.video_uri = canonical_uri(self.video_uri)

    @property
    def video_id(self) -> str:
        return video_id(self.real_path or canonical_uri(self.video_uri), self.size_bytes, self.mtime)


def video_id(uri: str, size: int | None, version: str | None) -> str:
    """Stable id of one version of one video: its canonical URI (`canonical_uri`) + size + mtime/ETag."""
    return hashlib.sha1(f"{uri}\0{size}\0{version}".encode()).hexdigest()[:20]


def canonical_uri(uri: str) -> str:
    """One name per stored object: `s3a://` and `s3n://` are `s3://`; a local path is made absolute with its
    symbolic links resolved (a file reached through a symlinked folder is the same file)."""
    if is_s3(uri):
        return "s3://" + uri.split("://", 1)[1]
    return os.path.realpath(os.path.expanduser(uri))


def is_video_name(name: str) -> bool:
    base = name.rstrip("/").rsplit("/", 1)[-1]
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in VIDEO_EXTENSIONS


def _hidden(rel_path: str) -> bool:
    return any(part.startswith(".") for part in rel_path.split("/") if part)


def _has_magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def _segment(part: str) -> str:
    """One path segment of a glob as a regex: `*` and `?` never match `/`; `[...]` is a class (`[!...]` negated)."""
    out, i, n = [], 0, len(part)
    while i < n:
        c = part[i]
        i += 1
        if c == "*":
            while i < n and part[i] == "*":
                i += 1
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i
            if j < n and part[j] == "!":
                j += 1
            if j < n and part[j] == "]":
                j += 1
            while j < n and part[j] != "]":
                j += 1
            if j >= n:
                out.append("\\[")
                continue
            body = re.sub(r"([\\\[&~|])", r"\\\1", part[i:j])  # literal inside the class
            i = j + 1
            if body.startswith("!"):
                body = "^" + body[1:]
            elif body.startswith("^"):
                body = "\\" + body
            out.append(f"(?!/)[{body}]")
        else:
            out.append(re.escape(c))
    return "".join(out)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Python's `glob(pattern, recursive=True)` semantics as a regex over '/'-separated paths (S3 keys, local
    paths alike): `*`, `?` and `[...]` match within one segment, a `**` segment matches any number of segments;
    wildcards do not match names that start with '.' (hidden), literal segments may."""
    one = r"[^/.][^/]*"
    parts = pattern.split("/")
    out = []
    last = len(parts) - 1
    for idx, part in enumerate(parts):
        if part == "**":
            if idx < last:
                if parts[idx + 1] != "**":
                    out.append(f"(?:{one}/)*")
            else:
                out.append(f"(?:{one}/)*(?:{one})?")
            continue
        if part == "*":
            out.append(one)
        elif part:
            if part[0] in "*?[":
                out.append(r"(?!\.)")
            out.append(_segment(part))
        if idx < last:
            out.append("/")
    return re.compile("(?s:" + "".join(out) + r")\Z")



def _local_ref(path: str, real_path: str | None = None) -> VideoRef:
    try:
        st = os.stat(path)  # follows symlinks
    except OSError as exc:
        return VideoRef(path, None, None, f"cannot stat: {exc.strerror or exc}")
    return VideoRef(path, st.st_size, str(st.st_mtime_ns), real_path=real_path or os.path.realpath(path))


def _lists_itself(real: str, real_root: str) -> bool:
    """Whether a walk of `real_root` lists the file at resolved path `real` under its own name (a symlink to it
    then names the same video again and is not listed)."""
    rel = os.path.relpath(real, real_root)
    return (not rel.startswith(os.pardir + os.sep) and rel != os.pardir and not _hidden(rel.replace(os.sep, "/"))
            and is_video_name(real) and os.path.isfile(real))


def _dir_files(dirpath: str, names, real_root: str) -> Iterator[VideoRef]:
    """The video files among `names` in `dirpath` (sorted), a symlink to a file the walk lists itself left out."""
    real_dir = os.path.realpath(dirpath)  # once per folder; a file is resolved itself only when it is a link
    for name in sorted(names):
        if not is_video_name(name):
            continue
        path = os.path.join(dirpath, name)
        if os.path.islink(path):
            real = os.path.realpath(path)
            if real != os.path.join(real_dir, name) and _lists_itself(real, real_root):
                continue
        else:
            real = os.path.join(real_dir, name)
        if os.path.isdir(path):
            continue
        yield _local_ref(path, real)


def _walk(root: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk as the listing walks a tree: links to folders not followed, hidden folders skipped, in name order."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        yield dirpath, dirnames, filenames


def _walk_local(root: str, source_root: str | None = None) -> Iterator[VideoRef]:
    real_root = os.path.realpath(source_root or root)
    for dirpath, _, filenames in _walk(root):
        yield from _dir_files(dirpath, filenames, real_root)


def _s3_split(uri: str) -> tuple[str, str]:
    rest = uri.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    return bucket, key


def _s3_ref(bucket: str, obj: dict) -> VideoRef:
    return VideoRef(f"s3://{bucket}/{obj['Key']}", int(obj["Size"]), str(obj.get("ETag", "")).strip('"'))


def _s3_pages(storage: Storage, bucket: str, prefix: str, start: str | None = None, stop: str | None = None) -> Iterator[list[dict]]:
    """Pages (1000 keys) of the objects under `prefix` with start < key <= stop (None: unbounded)."""
    kwargs = {"Bucket": bucket, "Prefix": prefix} | ({"StartAfter": start} if start else {})
    for page in storage.boto3_client().get_paginator("list_objects_v2").paginate(**kwargs):
        objs = page.get("Contents", [])
        if stop is not None and objs and objs[-1]["Key"] > stop:
            yield [o for o in objs if o["Key"] <= stop]
            return
        yield objs


# ------------------------------------------------------------------------------------------------- shards
SHARD_PAGE = 1000  # refs per page a shard yields (an S3 LIST page)
MAX_ROOT_ENTRIES = 1000  # a directory is split by its subdirectories only when its root has at most this many entries
_RANGE_CHARS = "0123456789abcdefghijklmnopqrstuvwxyz"  # first key characters that split a flat S3 prefix


@dataclass(frozen=True)
class Shard:
    """One slice of one SOURCE, listed by one Ray Data read task as pages of refs (`list_shard`).

    kind: "s3" (keys under `prefix` with start < key <= stop, matching `pattern` if a glob), "s3obj" (one
    object), "tree" (directories in `paths`, recursively), "dirfiles" (the files directly in `paths[0]`),
    "glob" (a local glob), "file" (an explicitly named file), "manifest" (`row_groups` of a Parquet manifest,
    or the whole .txt/.csv manifest when empty)."""

    source: int  # index of the SOURCE (dedup owners and per-source counts)
    kind: str
    uri: str  # the SOURCE itself
    prefix: str = ""
    pattern: str | None = None
    start: str | None = None
    stop: str | None = None
    paths: tuple[str, ...] = ()
    row_groups: tuple[int, ...] = ()
    first_row: int = 0  # manifest: row number of the shard's first row (dedup owner of each row)
    videos: int | None = None  # at most this many videos, counted while planning (a small source); None: not counted


def _groups(items: list, n: int) -> list[list]:
    """`items` in at most n contiguous groups of near-equal size."""
    n = max(1, min(n, len(items)))
    return [items[len(items) * i // n : len(items) * (i + 1) // n] for i in range(n)]


def _s3_shards(i: int, uri: str, storage: Storage, max_shards: int, page: int = SHARD_PAGE) -> list[Shard]:
    """Key ranges of one S3 SOURCE: one shard when the first LIST page holds every key (no "folders", at most
    `page` keys), its first-level "folders" when one page shows them all, else ranges by the first character
    after the prefix. Ranges (start, stop] partition the key space: each key is in one."""
    bucket, key = _s3_split(uri)
    if not bucket:
        raise UserError(f"bad S3 URI {uri!r} (expected s3://bucket/prefix)")
    pattern = None
    client = storage.boto3_client()
    try:
        if _has_magic(key):
            pattern, prefix = key, key[: min(key.index(c) for c in "*?[" if c in key)]
        elif key and not key.endswith("/") and is_video_name(key):
            try:
                client.head_object(Bucket=bucket, Key=key)
                return [Shard(i, "s3obj", uri, videos=1)]
            except client.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                    raise
            prefix = key + "/"
        else:
            prefix = key if (not key or key.endswith("/")) else key + "/"
        probe = client.list_objects_v2(Bucket=bucket, Prefix=prefix, Delimiter="/", MaxKeys=1000)
    except Exception as exc:  # botocore errors: access denied, no such bucket, no endpoint
        raise UserError(f"cannot list {redact(uri)}: {one_line(exc)}") from None
    folders = sorted(p["Prefix"] for p in probe.get("CommonPrefixes", []))
    if not folders and not probe.get("Contents"):
        raise UserError(f"{redact(uri)} matched no videos" if pattern else f"{redact(uri)}: no such S3 prefix or object (or it is empty)")
    if not folders and not probe.get("IsTruncated") and len(probe.get("Contents", [])) <= page:  # the probe saw every key
        videos = sum(is_video_name(o["Key"]) for o in probe.get("Contents", []))
        return [Shard(i, "s3", uri, prefix=prefix, pattern=pattern, paths=(bucket,), videos=videos)]
    if len(folders) > 1 and not probe.get("IsTruncated"):
        bounds = [g[0] for g in _groups(folders, max_shards)[1:]]
    else:
        bounds = [prefix + c for c in sorted({_RANGE_CHARS[len(_RANGE_CHARS) * j // max_shards] for j in range(1, max_shards)})]
    edges = [None, *bounds, None]
    return [Shard(i, "s3", uri, prefix=prefix, pattern=pattern, start=a, stop=b, paths=(bucket,)) for a, b in zip(edges, edges[1:])]


def _tree_videos(root: str, limit: int) -> int | None:
    """The video names in the tree the listing walks under `root`, or None when it holds more than `limit` entries
    (stops counting there)."""
    n = videos = 0
    for _, dirnames, filenames in _walk(root):
        n += len(dirnames) + len(filenames)
        if n > limit:
            return None
        videos += sum(map(is_video_name, filenames))
    return videos


def _dir_shards(i: int, root: str, max_shards: int, page: int = SHARD_PAGE) -> list[Shard]:
    """A directory: its own files, then its subdirectories in groups (one walk each). One shard for a root with more
    than MAX_ROOT_ENTRIES entries (the driver never reads a huge directory) and for a tree of at most `page` entries
    (one listing page: more read tasks would only add processes)."""
    names = []
    with os.scandir(root) as it:
        for entry in it:
            if len(names) >= MAX_ROOT_ENTRIES:
                return [Shard(i, "tree", root, paths=(root,))]
            names.append((entry.name, entry.is_dir(follow_symlinks=False)))  # a link loop must not raise
    subdirs = sorted(os.path.join(root, n) for n, is_dir in names if is_dir and not n.startswith("."))
    if not subdirs:
        return [Shard(i, "dirfiles", root, paths=(root,), videos=sum(is_video_name(n) for n, is_dir in names if not is_dir))]
    videos = _tree_videos(root, page)
    if videos is not None:
        return [Shard(i, "tree", root, paths=(root,), videos=videos)]
    return [Shard(i, "dirfiles", root, paths=(root,))] + [Shard(i, "tree", root, paths=tuple(g)) for g in _groups(subdirs, max_shards - 1) if g]


def _manifest_shards(i: int, uri: str, storage: Storage, max_shards: int) -> list[Shard]:
    if not uri.lower().endswith(".parquet"):
        return [Shard(i, "manifest", uri)]
    try:
        meta = pq.ParquetFile(storage.fs(uri).open(storage.path(uri), "rb")).metadata  # the footer only
    except Exception as exc:
        raise UserError(f"cannot read manifest {redact(uri)}: {one_line(exc)}") from None
    rows = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    shards, first = [], 0
    for group in _groups(list(range(len(rows))), max_shards):
        n = sum(rows[g] for g in group)
        shards.append(Shard(i, "manifest", uri, row_groups=tuple(group), first_row=first, videos=n))
        first += n
    return shards or [Shard(i, "manifest", uri)]


def source_shards(i: int, src: str, storage: Storage, max_shards: int = 16, page: int = SHARD_PAGE) -> list[Shard]:
    """The shards of SOURCE number i; a folder or S3 prefix whose listing fits in `page` entries is one shard. Raises
    UserError for a SOURCE that does not exist or cannot be listed."""
    src = strip_userinfo(str(src))  # credentials come from the environment, never from a URI
    if is_s3(src):
        if src.lower().endswith(MANIFEST_EXTENSIONS) and not _has_magic(src):
            return _manifest_shards(i, src, storage, max_shards)
        return _s3_shards(i, src, storage, max_shards, page)
    path = os.path.expanduser(src)
    if _has_magic(path) and not os.path.exists(path):
        return [Shard(i, "glob", src, pattern=path)]
    if os.path.isdir(path):
        return _dir_shards(i, os.path.abspath(path), max_shards, page)
    if os.path.isfile(path):
        if path.lower().endswith(MANIFEST_EXTENSIONS):
            return _manifest_shards(i, os.path.abspath(path), storage, max_shards)
        return [Shard(i, "file", src, paths=(os.path.abspath(path),), videos=1)]  # scored whatever its extension
    if os.path.lexists(path):
        raise UserError(f"{src}: broken symbolic link")
    raise UserError(f"{src}: no such file or directory")


def _pages(refs: Iterable[tuple[VideoRef, int]]) -> Iterator[list[tuple[VideoRef, int]]]:
    page: list = []
    for item in refs:
        page.append(item)
        if len(page) >= SHARD_PAGE:
            yield page
            page = []
    if page:
        yield page


def _shard_refs(shard: Shard, storage: Storage) -> Iterator[tuple[VideoRef, int]]:
    """(ref, ordinal) for every video of a shard; ordinal: the manifest row (0 elsewhere: a URI is unique)."""
    if shard.kind == "s3obj":
        bucket, key = _s3_split(shard.uri)
        head = storage.boto3_client().head_object(Bucket=bucket, Key=key)
        yield VideoRef(shard.uri, int(head["ContentLength"]), str(head.get("ETag", "")).strip('"')), 0
    elif shard.kind == "s3":
        bucket = shard.paths[0]
        match = glob_regex(shard.pattern).match if shard.pattern is not None else None
        for page in _s3_pages(storage, bucket, shard.prefix, shard.start, shard.stop):
            for obj in page:
                k = obj["Key"]
                if match is not None:
                    keep = match(k) is not None and is_video_name(k)
                else:
                    rel = k[len(shard.prefix):]
                    keep = not k.endswith("/") and not _hidden(rel) and is_video_name(rel)
                if keep:
                    yield _s3_ref(bucket, obj), 0
    elif shard.kind == "tree":
        for root in shard.paths:
            for ref in _walk_local(root, _source_dir(shard)):
                yield ref, 0
    elif shard.kind == "dirfiles":
        root = shard.paths[0]
        with os.scandir(root) as it:
            names = [e.name for e in it if not e.is_dir(follow_symlinks=False)]  # links to folders: _dir_files skips
        for ref in _dir_files(root, names, os.path.realpath(_source_dir(shard))):
            yield ref, 0
    elif shard.kind == "glob":
        # Python's glob finds the candidates (it follows symlinked folders like a shell); `glob_regex` decides,
        # the same matcher as for S3 keys; a file reached twice (a link and its target) is listed once
        match, seen = glob_regex(shard.pattern).match, set()
        for hit in globlib.iglob(shard.pattern, recursive=True):
            if match(hit) and os.path.isfile(hit) and is_video_name(hit):
                real = os.path.realpath(hit)
                if real not in seen:
                    seen.add(real)
                    yield _local_ref(os.path.abspath(hit), real), 0
    elif shard.kind == "file":
        yield _local_ref(shard.paths[0]), 0
    elif shard.kind == "manifest":
        yield from _iter_manifest(shard.uri, storage, shard.row_groups, shard.first_row)
    else:
        raise ValueError(f"unknown shard kind {shard.kind!r}")


def _source_dir(shard: Shard) -> str:
    """The directory SOURCE a tree or dirfiles shard belongs to."""
    return os.path.abspath(os.path.expanduser(shard.uri))


def list_shard(shard: Shard, storage: Storage) -> Iterator[list[tuple[VideoRef, int]]]:
    """Pages of (ref, ordinal) of one shard, in a fixed order (a retried read task lists the same pages).
    Listing errors (S3 access denied mid-listing, ...) become UserError."""
    try:
        yield from _pages(_shard_refs(shard, storage))
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot list {redact(shard.uri)}: {one_line(exc)}") from None


def _manifest_entries(uri: str, storage: Storage, row_groups: tuple[int, ...] = ()) -> Iterator[dict]:
    """Rows of a manifest: .txt (one URI per line, # comments), .csv or .parquet with a `uri` column
    (`row_groups`: only those row groups of a Parquet manifest)."""
    ext = os.path.splitext(uri.lower())[1]
    fs = storage.fs(uri)
    path = storage.path(uri)
    if ext == ".parquet":
        pf = pq.ParquetFile(fs.open(path, "rb"))
        if "uri" not in pf.schema_arrow.names:
            raise UserError(f"manifest {redact(uri)} has no 'uri' column (columns: {', '.join(pf.schema_arrow.names)})")
        cols = [c for c in ("uri", "size_bytes", "etag", "mtime") if c in pf.schema_arrow.names]
        for batch in pf.iter_batches(batch_size=10_000, columns=cols, row_groups=list(row_groups) or None):
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


def _iter_manifest(uri: str, storage: Storage, row_groups: tuple[int, ...] = (), first_row: int = 0) -> Iterator[tuple[VideoRef, int]]:
    base = uri.rsplit("/", 1)[0] if is_s3(uri) else os.path.dirname(os.path.abspath(uri))
    for n, row in enumerate(_manifest_entries(uri, storage, row_groups), start=first_row):
        entry = strip_userinfo(str(row.get("uri") or "").strip())
        if not entry:
            continue
        if not is_s3(entry) and not os.path.isabs(os.path.expanduser(entry)):
            entry = f"{base}/{entry}" if is_s3(base) else os.path.normpath(os.path.join(base, entry))
        size, version = row.get("size_bytes"), row.get("etag") or row.get("mtime")
        if size not in (None, "") and version not in (None, ""):
            yield VideoRef(entry, int(size), str(version)), n
        elif is_s3(entry):
            yield _stat_s3(entry, storage), n
        else:
            yield _local_ref(os.path.expanduser(entry)), n


def _stat_s3(uri: str, storage: Storage) -> VideoRef:
    bucket, key = _s3_split(uri)
    try:
        head = storage.boto3_client().head_object(Bucket=bucket, Key=key)
        return VideoRef(uri, int(head["ContentLength"]), str(head.get("ETag", "")).strip('"'))
    except Exception as exc:
        return VideoRef(uri, None, None, f"cannot stat: {one_line(exc)}")


def _is_glob(src: str) -> bool:
    return _has_magic(src) and (is_s3(src) or not os.path.exists(os.path.expanduser(src)))


def iter_videos(sources: Iterable[str], storage: Storage) -> Iterator[VideoRef]:
    """Stream VideoRefs for every SOURCE (its shards one after another). Raises UserError for a SOURCE that
    does not exist or cannot be listed, and for a glob that matched no videos."""
    for i, src in enumerate(sources):
        src = strip_userinfo(str(src))
        found = False
        for shard in source_shards(i, src, storage):
            for page in list_shard(shard, storage):
                found = found or bool(page)
                yield from (ref for ref, _ in page)
        if not found and _is_glob(src):
            raise UserError(f"{redact(src)} matched no videos" if is_s3(src) else f"{src!r} matched no videos")


def first_video(src: str, storage: Storage) -> VideoRef | None:
    """The first video of one SOURCE (None: it has none); raises UserError like `iter_videos`. The driver
    calls it for every SOURCE before a job starts, so a bad SOURCE fails before anything runs."""
    return next(iter(iter_videos([src], storage)), None)


def scope(src: str) -> str:
    """What a SOURCE can list, as a path (symbolic links resolved) or URI prefix (the part before any glob
    character)."""
    src = strip_userinfo(str(src))
    if is_s3(src):
        key = src.split("://", 1)[1]
        return "s3://" + (key[: min(key.index(c) for c in "*?[" if c in key)] if _has_magic(key) else key)
    path = os.path.expanduser(src)
    if _has_magic(path) and not os.path.exists(path):
        path = path[: min(path.index(c) for c in "*?[" if c in path)]
        return os.path.realpath(os.path.dirname(os.path.abspath(path + "x")))
    return os.path.realpath(path)


def may_repeat(sources: list[str]) -> bool:
    """Whether one video can be listed twice: a manifest (a URI may repeat) or two SOURCEs whose scopes overlap.
    Otherwise every listed URI is unique and de-duplication needs no state at all."""
    if any(strip_userinfo(str(s)).lower().endswith(MANIFEST_EXTENSIONS) and not _has_magic(str(s)) and (is_s3(str(s)) or os.path.isfile(os.path.expanduser(str(s))))
           for s in sources):
        return True
    scopes = [scope(s) for s in sources]
    for a_i, a in enumerate(scopes):
        for b in scopes[a_i + 1 :]:
            if a.startswith("s3://") or b.startswith("s3://"):
                if a.startswith(b) or b.startswith(a):
                    return True
            elif a == b or a.startswith(b.rstrip(os.sep) + os.sep) or b.startswith(a.rstrip(os.sep) + os.sep):
                return True
    return False


def refs_table(refs: Iterable[VideoRef]) -> pa.Table:
    """A listing block: one row per ref with its video_id (the face stage's input)."""
    return pa.Table.from_pylist([asdict(r) | {"video_id": r.video_id} for r in refs], schema=LISTING_SCHEMA)
