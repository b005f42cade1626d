"""Failed rows: what kind of failure each one is, and the crash markers that give a video which keeps killing its
worker a `failed` row instead of an endless retry.

Every `failed` row carries `error_class` (one of `ERROR_CLASSES`) and `error_kind`: `transient` (it may pass on
a rerun: `dfbatch score --retry-failed` scores such rows again) or `permanent` (the file itself is the problem:
it fails the same way every time). `classify` maps an exception to its class; `fail` writes the three columns.

`InflightMarkers` keeps one small file per video in flight under the job's output (`OUT/_inflight/<job>/<stage>/`,
removed when the job ends): a worker that dies while processing a video leaves its marker behind, Ray restarts
the actor and retries the task, and `run_guarded` then sees which videos were in flight at a death. Those run one
at a time from then on, so the death is charged to the video that causes it, not to its batch neighbours; a video
that killed the worker `limit` times on its own gets a `worker_died` row instead of another attempt.
"""

from __future__ import annotations

import errno
import hashlib
import time
from collections.abc import Callable, Sequence

from dfbatch.io.storage import Storage, is_s3

# class -> kind. Transient: the same file may pass on a rerun; permanent: it fails the same way again.
ERROR_CLASSES = {
    "storage": "transient",  # S3/network error, throttling or timeout that outlasted botocore's retries
    "time_budget": "transient",  # over time_budget_s (decode + detection; a loaded node is slower)
    "worker_died": "transient",  # the worker process died while on this video (crash, OOM kill, hang), `limit` times
    "out_of_memory": "transient",  # MemoryError in the worker
    "model": "transient",  # the model raised on this video's crops (e.g. CUDA out of memory)
    "not_found": "permanent",  # deleted after listing, broken symbolic link
    "access_denied": "permanent",  # fix the permissions, then --retry-errors access_denied
    "over_limit": "permanent",  # max_duration_s, max_pixels, max_bytes (raise the limit, then --retry-errors over_limit)
    "unsupported": "permanent",  # not a video: a still image, no video stream, not a regular file, under 8 px
    "corrupt": "permanent",  # empty, truncated or undecodable
    "other": "permanent",  # anything else (the `error` text says what)
}
ERROR_KINDS = ("transient", "permanent")

_TRANSIENT_ERRNOS = {errno.EIO, errno.EBUSY, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED,
                     errno.ECONNABORTED, errno.EPIPE, errno.ENETUNREACH, errno.EHOSTUNREACH,
                     getattr(errno, "EREMOTEIO", errno.EIO)}


def kind_of(error_class: str) -> str:
    return ERROR_CLASSES.get(error_class, "permanent")


def fail(row: dict, message: str, error_class: str) -> dict:
    """Mark `row` failed with a one-line `message` of class `error_class` (its kind follows)."""
    row.update(status="failed", error=message, error_class=error_class, error_kind=kind_of(error_class))
    return row


def classify(exc: BaseException) -> str:
    """The `ERROR_CLASSES` class of an exception raised while reading or decoding a video (its causes are looked
    at too: s3fs raises OSErrors whose cause is botocore's error)."""
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 5:
        found = _classify_one(e)
        if found:
            return found
        e, seen = e.__cause__ or e.__context__, seen + 1
    return "other"


def _classify_one(e: BaseException) -> str | None:
    if getattr(e, "error_class", None) in ERROR_CLASSES:  # DecodeError and friends say it themselves
        return e.error_class
    if isinstance(e, MemoryError):
        return "out_of_memory"
    if isinstance(e, FileNotFoundError):
        return "not_found"
    if isinstance(e, PermissionError):
        return "access_denied"
    if isinstance(e, (TimeoutError, ConnectionError)):
        return "storage"
    if isinstance(e, OSError) and e.errno is not None:
        if e.errno == errno.ELOOP:
            return "not_found"
        if e.errno in _TRANSIENT_ERRNOS:
            return "storage"
    response = getattr(e, "response", None)  # botocore ClientError
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in ("NoSuchKey", "NoSuchBucket", "NotFound", "404"):
            return "not_found"
        if code in ("AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
            return "access_denied"
        if status >= 500 or status == 429 or code in ("SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                                                       "RequestTimeTooSkewed", "ExpiredToken", "InternalError"):
            return "storage"
        return None
    module, name = type(e).__module__ or "", type(e).__name__
    if module.split(".")[0] in ("botocore", "aiobotocore", "aiohttp", "urllib3", "http", "socket", "ssl") and any(
            w in name for w in ("Timeout", "Connection", "Endpoint", "Proxy", "Disconnected", "Incomplete", "SSL")):
        return "storage"
    return None


# ------------------------------------------------------------------------------------------------ crash markers
class InflightMarkers:
    """Per-job, per-stage in-flight markers under `OUT/_inflight/<job_id>/<stage>/` (picklable: holds the output
    URI, the Storage and names only). Each marker is one small file holding how many times a worker died while
    the video was in flight; `clear()` (the driver, when the job ends) removes the job's markers."""

    limit = 2  # deaths on one video before it gets a `worker_died` row

    def __init__(self, output: str, storage: Storage, job_id: str, stage: str, limit: int | None = None):
        self.output, self.storage, self.job_id, self.stage = output, storage, job_id, stage
        if limit is not None:
            self.limit = limit

    @staticmethod
    def job_root(output: str, storage: Storage, job_id: str | None = None) -> str:
        root = storage.path(output).rstrip("/") + "/_inflight"
        return f"{root}/{job_id}" if job_id else root

    def _dir(self) -> str:
        return f"{self.job_root(self.output, self.storage, self.job_id)}/{self.stage}"

    def _path(self, video_id: str) -> str:
        return f"{self._dir()}/{hashlib.sha1(str(video_id).encode()).hexdigest()[:24]}"

    def deaths(self, video_ids: Sequence[str]) -> dict[str, int]:
        """Per video: None if no attempt at it was cut short, else the deaths charged to it (0 when it only shared a
        batch with whatever killed the worker)."""
        fs = self.storage.fs(self.output)
        paths = {fs._strip_protocol(self._path(v)): v for v in video_ids}
        found = fs.cat(list(paths), on_error="omit") if paths else {}
        out: dict = {v: None for v in video_ids}
        for path, data in found.items():
            vid = paths.get(fs._strip_protocol(path))
            if vid is not None:
                try:
                    out[vid] = max(0, int(data.decode().strip()))
                except ValueError:
                    out[vid] = 0  # a marker torn by the death itself
        return out

    def enter(self, counts: dict[str, int]) -> None:
        """Write each video's marker: the deaths to charge it with if the worker dies now."""
        fs = self.storage.fs(self.output)
        if not is_s3(self.output):
            fs.makedirs(self._dir(), exist_ok=True)
        fs.pipe({self._path(v): str(n).encode() for v, n in counts.items()})

    def leave(self, video_ids: Sequence[str]) -> None:
        """The videos finished (with whatever status): their markers go."""
        fs = self.storage.fs(self.output)
        paths = [self._path(v) for v in video_ids]
        try:
            fs.rm(paths)
        except FileNotFoundError:
            pass

    def clear(self) -> None:
        clear_markers(self.output, self.storage, self.job_id)


def clear_markers(output: str, storage: Storage, job_id: str | None = None, *, older_than_s: float | None = None) -> int:
    """Remove the markers of job `job_id` (all of them), or, without a job, every marker older than `older_than_s`
    (those of jobs killed before they could clean up). Returns the files removed."""
    fs = storage.fs(output)
    root = InflightMarkers.job_root(output, storage, job_id)
    try:
        files = fs.find(root, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    now = time.time()
    doomed = []
    for path, info in files.items():
        if older_than_s is not None and job_id is None:
            modified = info.get("mtime") or info.get("LastModified") or info.get("created")
            stamp = modified.timestamp() if hasattr(modified, "timestamp") else float(modified or now)
            if now - stamp < older_than_s:
                continue
        doomed.append(path)
    if doomed:
        try:
            fs.rm(doomed)
        except FileNotFoundError:
            pass
    if job_id is not None:
        try:
            fs.rm(root, recursive=True)
        except (FileNotFoundError, OSError):
            pass
    return len(doomed)


def run_guarded(markers: InflightMarkers | None, ids: Sequence[str], work: Callable[[list[int]], list[dict]],
                dead: Callable[[int, int], dict]) -> list[dict]:
    """`work(indices) -> rows` over items `ids` (video ids), under crash markers. If any item was in flight at a
    worker death, the items run one at a time (the poison one is found, the others pass); a death while one item
    runs alone is charged to it, a death while a batch runs to none; an item charged `limit` deaths gets
    `dead(index, deaths)` instead of running again."""
    if markers is None or not ids:
        return work(list(range(len(ids))))
    prior = markers.deaths(ids)
    out: list[dict | None] = [None] * len(ids)
    todo = []
    for i, vid in enumerate(ids):
        if (prior.get(vid) or 0) >= markers.limit:
            out[i] = dead(i, prior[vid])
        else:
            todo.append(i)
    suspects = any(prior.get(ids[i]) is not None for i in todo)
    groups = [[i] for i in todo] if suspects or len(todo) == 1 else ([todo] if todo else [])
    for group in groups:
        alone = len(group) == 1
        markers.enter({ids[i]: (prior.get(ids[i]) or 0) + alone for i in group})
        try:
            rows = work(group)
        finally:  # an exception is not a death: only a process that dies leaves its markers behind
            markers.leave([ids[i] for i in group])
        for i, row in zip(group, rows):
            out[i] = row
    return out  # type: ignore[return-value]


def worker_died_message(deaths: int) -> str:
    return (f"worker process died {deaths} times while processing this video (decoder or model crash, hang or out "
            f"of memory)")


__all__ = ["ERROR_CLASSES", "ERROR_KINDS", "InflightMarkers", "classify", "clear_markers", "fail", "kind_of",
           "run_guarded", "worker_died_message"]
