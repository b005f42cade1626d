"""Decode N evenly spaced frames of one video (decord; PyAV probes metadata and rotation).

Only the sampled frames are ever held, each downscaled to at most `max_side`, so a 4K or very long file costs
no more memory than N small frames. Failures raise DecodeError with a one-line reason (the row's `error`).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from dfbatch.config import LimitsConfig, SamplingConfig
from dfbatch.errors import one_line
from dfbatch.io.storage import Storage, is_s3
from dfbatch.stages.failures import classify


class DecodeError(Exception):
    """The video cannot be decoded or is over a limit; str(exc) is the row's one-line error, `error_class` its
    class (`stages.failures.ERROR_CLASSES`: says whether a retry can help)."""

    def __init__(self, message: str, error_class: str = "corrupt"):
        super().__init__(message)
        self.error_class = error_class

    def __reduce__(self):
        return type(self), (str(self), self.error_class)


def _class_of(exc: BaseException, default: str) -> str:
    """The failure class of an unexpected exception (an I/O error says storage, not found, access denied)."""
    found = classify(exc)
    return default if found == "other" else found


@dataclass
class VideoInfo:
    n_frames: int
    fps: float
    duration_s: float
    width: int  # as displayed (after rotation)
    height: int
    rotation: int  # degrees counterclockwise applied to decoded frames
    codec: str


@dataclass
class DecodedVideo:
    info: VideoInfo
    indices: np.ndarray  # sampled frame indices (int)
    frames: np.ndarray  # (K, h, w, 3) uint8 RGB, rotated, downscaled by `scale`
    scale: float  # frames pixels per original (displayed) pixel


def sample_indices(n_frames: int, k: int) -> np.ndarray:
    """k evenly spaced indices over [0, n_frames), all frames when the video is shorter."""
    if n_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    if n_frames <= k:
        return np.arange(n_frames, dtype=np.int64)
    return np.unique(np.round(np.linspace(0, n_frames - 1, k)).astype(np.int64))


def probe(path: str) -> VideoInfo:
    """Read container metadata and the first frame's display rotation with PyAV."""
    import av

    try:
        with av.open(path, metadata_errors="ignore") as container:
            if not container.streams.video:
                kinds = sorted({s.type for s in container.streams}) or ["no streams"]
                raise DecodeError(f"no video stream (found: {', '.join(kinds)})", "unsupported")
            stream = container.streams.video[0]
            if container.format.name.endswith("_pipe") or container.format.name.startswith("image2"):
                raise DecodeError(f"not a video: a still image ({stream.codec_context.name})", "unsupported")
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            duration = 0.0
            if stream.duration and stream.time_base:
                duration = float(stream.duration * stream.time_base)
            elif container.duration:
                duration = container.duration / 1_000_000
            n_frames = int(stream.frames or 0) or int(round(duration * fps))
            width, height = stream.codec_context.width, stream.codec_context.height
            rotation = 0
            for frame in container.decode(stream):
                rotation = int(round((frame.rotation or 0) / 90.0)) * 90 % 360
                width, height = frame.width, frame.height
                break
            else:
                raise DecodeError("no decodable video frame")
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"cannot open video: {one_line(exc)}", _class_of(exc, "corrupt")) from None
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(n_frames, fps, duration, width, height, rotation, stream.codec_context.name)


def _check_limits(info: VideoInfo, limits: LimitsConfig) -> None:
    if info.duration_s > limits.max_duration_s:
        raise DecodeError(f"over limit max_duration_s: video is {info.duration_s:.1f} s long (limit {limits.max_duration_s:g} s)", "over_limit")
    if info.width * info.height > limits.max_pixels:
        raise DecodeError(f"over limit max_pixels: {info.width}x{info.height} (limit {limits.max_pixels} pixels)", "over_limit")
    if info.width < 8 or info.height < 8:
        raise DecodeError(f"frame size {info.width}x{info.height} is too small to hold a face", "unsupported")


def _fit(frame: np.ndarray, rotation: int, max_side: int) -> tuple[np.ndarray, float]:
    import cv2

    if rotation:
        frame = np.rot90(frame, k=rotation // 90)
    h, w = frame.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        frame = cv2.resize(np.ascontiguousarray(frame), (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(frame), scale


def _decode_decord(path: str, want: int, threads: int, rotation: int, max_side: int, deadline: float) -> tuple[np.ndarray, list[np.ndarray], float]:
    import decord

    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=max(1, min(threads, 2)))
    try:
        indices = sample_indices(len(vr), want)
        frames: list[np.ndarray] = []
        kept: list[int] = []
        scale = 1.0
        for start in range(0, len(indices), 8):  # chunks bound peak memory for 4K input
            chunk = indices[start : start + 8]
            try:
                batch = vr.get_batch(chunk.tolist()).asnumpy()
                pairs = list(zip(chunk.tolist(), batch))
            except Exception:  # a damaged region: keep the frames that do decode
                pairs = []
                for idx in chunk.tolist():
                    try:
                        pairs.append((idx, vr[idx].asnumpy()))
                    except Exception:
                        continue
            for idx, frame in pairs:
                if frame.ndim != 3 or frame.shape[2] != 3:  # decord bug at some widths (16, 24, 48): garbage channels
                    raise ValueError(f"decord returned a frame of shape {frame.shape}")
                small, scale = _fit(frame, rotation, max_side)
                frames.append(small)
                kept.append(idx)
            if time.monotonic() > deadline:
                raise DecodeError("over limit time_budget_s while decoding", "time_budget")
        return np.asarray(kept, dtype=np.int64), frames, scale
    finally:
        del vr  # decord keeps native buffers until the reader is released (dmlc/decord#157)


def _packet_index(path: str, deadline: float) -> tuple[list[int], list[bool]] | None:
    """pts and keyframe flag of every video packet in decode order (demux only, no decoding); None when a
    packet has no pts or two share one (the caller then decodes sequentially)."""
    import av

    pts: list[int] = []
    keys: list[bool] = []
    with av.open(path, metadata_errors="ignore") as container:
        for n, packet in enumerate(container.demux(container.streams.video[0])):
            if packet.size == 0:  # the demuxer's final flush packet
                continue
            if packet.pts is None:
                return None
            pts.append(int(packet.pts))
            keys.append(bool(packet.is_keyframe))
            if n % 4096 == 0 and time.monotonic() > deadline:
                raise DecodeError("over limit time_budget_s while decoding", "time_budget")
    return (pts, keys) if pts and len(set(pts)) == len(pts) else None


def _decode_pyav_sparse(path: str, want: int, threads: int, rotation: int, max_side: int, deadline: float) -> tuple[np.ndarray, list[np.ndarray], float] | None:
    """Decode only what the sampled frames need. Frame i = the packet with the i-th smallest pts (decord's
    indexing). Whole GOPs without a wanted frame are skipped by seeking to the keyframe a wanted frame needs;
    inside a GOP, packets of unwanted frames are sent with `skip_frame=NONREF` (frames nothing references are
    not decoded); decoding stops after the last wanted frame. Frames are bit-identical to a full decode.
    None: packets cannot be mapped to frames (no/duplicate pts) or a wanted frame did not come out (damaged
    file); the caller then decodes sequentially."""
    import av

    index = _packet_index(path, deadline)
    if index is None:
        return None
    pts, keys = index
    order = sorted(pts)
    decode_pos = {p: i for i, p in enumerate(pts)}
    wanted = {order[i]: int(i) for i in sample_indices(len(order), want).tolist()}
    key_positions = [i for i, k in enumerate(keys) if k]

    def start_of(p: int) -> int:
        """Decode position of the keyframe to start from for the frame with pts p: the last keyframe before it
        in decode order that is not displayed after it (open-GOP leading frames need the GOP before)."""
        pos = decode_pos[p]
        for k in reversed(key_positions):
            if k <= pos and pts[k] <= p:
                return k
        return 0

    got: dict[int, np.ndarray] = {}
    scale = 1.0
    fed = -1  # decode position of the last packet sent to the decoder
    tried_seeks: set[int] = set()
    with av.open(path, metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        ctx.thread_count = max(1, threads)
        ctx.thread_type = "AUTO" if threads > 1 else "SLICE"
        seek_to = None
        while True:
            if seek_to is not None:
                container.seek(pts[seek_to], stream=stream, backward=True, any_frame=False)
                ctx.flush_buffers()
                seek_to = None
            for packet in container.demux(stream):
                if packet.size:
                    fed = decode_pos.get(packet.pts, fed)
                    ctx.skip_frame = "DEFAULT" if packet.pts in wanted else "NONREF"
                try:
                    decoded = ctx.decode(packet if packet.size else None)
                except av.error.EOFError:
                    break
                except av.error.FFmpegError:  # a damaged packet: the frames that depend on it may still come out
                    continue
                for frame in decoded:
                    idx = wanted.get(frame.pts)
                    if idx is not None and idx not in got:
                        got[idx], scale = _fit(frame.to_ndarray(format="rgb24"), rotation, max_side)
                if len(got) == len(wanted) or time.monotonic() > deadline or not packet.size:
                    break
                pending = [p for p, i in wanted.items() if i not in got]
                if all(decode_pos[p] > fed for p in pending):  # nothing in the decoder's delay: a seek loses nothing
                    nxt = min(start_of(p) for p in pending)
                    if nxt > fed + 1 and nxt not in tried_seeks:
                        seek_to = nxt
                        tried_seeks.add(nxt)
                        break
            if seek_to is None:
                break
        if time.monotonic() > deadline:
            raise DecodeError("over limit time_budget_s while decoding", "time_budget")
    if len(got) < len(wanted):
        return None
    kept = sorted(got)
    return np.asarray(kept, dtype=np.int64), [got[i] for i in kept], scale


def _decode_pyav(path: str, want: int, n_frames: int, rotation: int, max_side: int, deadline: float, threads: int = 1) -> tuple[np.ndarray, list[np.ndarray], float]:
    """PyAV: the sparse decode above, else a sequential decode keeping only the sampled frames."""
    import av

    sparse = _decode_pyav_sparse(path, want, threads, rotation, max_side, deadline)
    if sparse is not None:
        return sparse
    targets = set(sample_indices(n_frames, want).tolist()) if n_frames > 0 else None
    frames: list[np.ndarray] = []
    kept: list[int] = []
    scale = 1.0
    with av.open(path, metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for idx, frame in enumerate(container.decode(stream)):
            if targets is not None and idx > max(targets):
                break
            if targets is None or idx in targets:
                small, scale = _fit(frame.to_ndarray(format="rgb24"), rotation, max_side)
                frames.append(small)
                kept.append(idx)
                if targets is None and len(frames) >= want:
                    break
            if time.monotonic() > deadline:
                raise DecodeError("over limit time_budget_s while decoding", "time_budget")
    return np.asarray(kept, dtype=np.int64), frames, scale


def read_frames(path: str, sampling: SamplingConfig, limits: LimitsConfig, *, frames: int, max_side: int = 1920, deadline: float | None = None) -> DecodedVideo:
    """Decode `frames` evenly spaced frames of a local video file."""
    deadline = deadline or (time.monotonic() + limits.time_budget_s)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DecodeError(f"cannot read file: {exc.strerror or exc}", _class_of(exc, "other")) from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
        raise DecodeError("not a regular file", "unsupported")
    size = st.st_size
    if size == 0:
        raise DecodeError("empty file (0 bytes)")
    if size > limits.max_bytes:
        raise DecodeError(f"over limit max_bytes: {size} bytes (limit {limits.max_bytes})", "over_limit")
    info = probe(path)
    _check_limits(info, limits)
    errors = []
    backends = [sampling.backend] + [b for b in ("decord", "pyav") if b != sampling.backend]
    for backend in backends:
        try:
            if backend == "decord":
                # decord applies the display rotation itself (rotating again turned phone videos sideways)
                indices, decoded, scale = _decode_decord(path, frames, sampling.decode_threads, 0, max_side, deadline)
            else:
                indices, decoded, scale = _decode_pyav(path, frames, info.n_frames, info.rotation, max_side, deadline, sampling.decode_threads)
        except DecodeError:
            raise
        except Exception as exc:
            errors.append(f"{backend}: {one_line(exc)}")
            continue
        if decoded:
            if not info.n_frames:
                info.n_frames = int(indices.max()) + 1
            return DecodedVideo(info, indices, np.stack(decoded), scale)
        errors.append(f"{backend}: no frame decoded")
    raise DecodeError("cannot decode video: " + "; ".join(errors))


@contextlib.contextmanager
def local_copy(uri: str, storage: Storage, max_bytes: int) -> Iterator[str]:
    """A local path for `uri`: the file itself, or a temporary download of an S3 object."""
    if not is_s3(uri):
        yield uri
        return
    fs = storage.fs(uri)
    suffix = os.path.splitext(uri)[1][:10]
    fd, tmp = tempfile.mkstemp(prefix="dfbatch-", suffix=suffix)
    try:
        try:
            with os.fdopen(fd, "wb") as out, fs.open(storage.path(uri), "rb", block_size=8 * 1024 * 1024) as src:
                copied = 0
                while chunk := src.read(8 * 1024 * 1024):
                    copied += len(chunk)
                    if copied > max_bytes:
                        raise DecodeError(f"over limit max_bytes: more than {max_bytes} bytes", "over_limit")
                    out.write(chunk)
        except DecodeError:
            raise
        except FileNotFoundError:
            raise DecodeError("object not found (deleted after listing?)", "not_found") from None
        except PermissionError:
            raise DecodeError("access denied reading object", "access_denied") from None
        except Exception as exc:
            raise DecodeError(f"cannot read object: {one_line(exc)}", _class_of(exc, "storage")) from None
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


__all__ = ["DecodeError", "DecodedVideo", "VideoInfo", "local_copy", "probe", "read_frames", "sample_indices"]
