"""Writing video files for the corpora: `write_video` (the one PyAV encoder of the generated clips and the hostile
corpus) and `truncated` (a file cut short, like an interrupted upload)."""

from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

_CONTAINERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}
_DEFAULT_CODEC = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264", ".avi": "libx264",
                  ".webm": "libvpx-vp9"}


def _rate(fps) -> Fraction:
    """fps as a Fraction; NTSC rates given as floats (29.97, 23.976, 59.94) become N*1000/1001."""
    if isinstance(fps, Fraction):
        return fps
    ntsc = round(float(fps) * 1.001)
    if ntsc > 1 and abs(float(fps) - ntsc * 1000 / 1001) < 5e-3:
        return Fraction(ntsc * 1000, 1001)
    return Fraction(float(fps)).limit_denominator(1001)


def _encoder_options(codec: str, preset: str, options: dict) -> dict[str, str]:
    """The encoder's options: ``options`` over the defaults (x264/x265: ``preset``, 2 threads, x264 mbtree=0;
    VP8/9: realtime, cpu-used 8)."""
    opts = {k: str(v) for k, v in options.items()}
    if codec in ("libx264", "libx265"):
        opts.setdefault("preset", preset)
        opts.setdefault("threads", "2")
        if codec == "libx264":  # x264's macroblock-tree is not repeatable here (measured); off = same bytes
            opts.setdefault("x264-params", "mbtree=0")
        if codec == "libx265":
            opts.setdefault("x265-params", "log-level=error")
    elif codec.startswith("libvpx"):
        opts.setdefault("deadline", "realtime")
        opts.setdefault("cpu-used", "8")
    return opts


def _first_frame(it) -> np.ndarray:
    try:
        first = np.asarray(next(it))
    except StopIteration:
        raise ValueError("write_video needs at least one frame") from None
    if first.ndim != 3 or first.shape[2] != 3 or first.dtype != np.uint8:
        raise ValueError(f"frames must be HxWx3 uint8 RGB, got {first.dtype} {first.shape}")
    return first


def _even_size(shape: tuple[int, ...], pix_fmt: str) -> tuple[int, int]:
    """(width, height), cropped to even where ``pix_fmt`` subsamples chroma."""
    h, w = shape[:2]
    if pix_fmt.startswith(("yuv420", "yuvj420", "nv12", "nv21")):
        w, h = w - w % 2, h - h % 2
    elif pix_fmt.startswith(("yuv422", "yuvj422")):
        w -= w % 2
    return w, h


def write_video(path, frames: Iterable[np.ndarray], fps: float, codec: str | None = None,
                pix_fmt: str = "yuv420p", *, container: str | None = None, preset: str = "veryfast",
                pts: list[int] | None = None, time_base: Fraction | None = None,
                container_options: dict | None = None, **options) -> Path:
    """Encode HxWx3 uint8 RGB ``frames`` with PyAV; container by extension (.mp4 .mov .mkv .webm .avi) unless
    ``container`` names one.

    ``codec`` defaults to libx264 (libvpx-vp9 for .webm); ``options`` go to the encoder (``crf=23``,
    ``threads=1`` ...). Odd sizes are cropped to even for chroma-subsampled ``pix_fmt``.
    x264 runs with 2 threads and mbtree=0 unless told otherwise: the bytes then depend only on the inputs
    (x264's macroblock-tree made repeated encodes of identical frames differ; slice count follows threads).
    ``pts`` (in ``time_base``) makes a variable frame rate; ``container_options`` go to the muxer
    (``{"movflags": "faststart"}``).
    """
    import av

    path = Path(path)
    ext = path.suffix.lower()
    if container is None and ext not in _CONTAINERS:
        raise ValueError(f"unsupported extension {ext!r}; use one of {sorted(_CONTAINERS)}")
    codec = codec or _DEFAULT_CODEC.get(ext, "libx264")
    it = iter(frames)
    first = _first_frame(it)
    w, h = _even_size(first.shape, pix_fmt)
    opts = _encoder_options(codec, preset, options)
    rate = _rate(fps)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=container or _CONTAINERS[ext], options=container_options or {}) as c:
        st = c.add_stream(codec, rate=rate)
        st.width, st.height, st.pix_fmt = w, h, pix_fmt
        if "threads" in opts:
            st.codec_context.thread_count = int(opts.pop("threads"))
        if time_base is not None:
            st.codec_context.time_base = time_base
            st.time_base = time_base
        st.options = opts
        for i, f in enumerate(itertools.chain([first], it)):
            f = np.asarray(f)
            if f.shape != first.shape or f.dtype != np.uint8:
                raise ValueError(f"frame {i} is {f.dtype} {f.shape}, expected uint8 {first.shape}")
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f[:h, :w]), format="rgb24")
            vf.pts, vf.time_base = (pts[i], time_base) if pts is not None else (i, 1 / rate)
            for pkt in st.encode(vf):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    return path


def encoded_bytes(write: Callable[[Path], Path], tmp: Path) -> bytes:
    """The bytes of the file ``write(tmp)`` makes; ``tmp`` is removed again."""
    data = write(tmp).read_bytes()
    tmp.unlink()
    return data


def truncated(path, write: Callable[[Path], Path], keep: float = 0.3) -> Path:
    """Write the first ``keep`` of the bytes of the clip ``write(tmp)`` makes to ``path`` (an MP4 that lost its
    index with its tail: it fails to open)."""
    path = Path(path)
    data = encoded_bytes(write, path.with_name(f".{path.stem}_src{path.suffix}"))
    path.write_bytes(data[: int(len(data) * keep)])
    return path


__all__ = ["encoded_bytes", "truncated", "write_video"]
