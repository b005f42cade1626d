"""A corpus of hostile inputs for reliability tests: broken files, odd codecs/sizes/names, special files.

`hostile_corpus(dir)` builds every case from the real carphone clip (tests/data) and returns the relative paths it
made. It only makes files: what a user should get for each case (status, the words of the error) is stated in
tests/test_hostile.py. Large cases stay small in bytes (static content, ultrafast presets). Cases that need
Debian's ffmpeg (rotation metadata) are left out when it is missing; `skipped(dir)` says why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np

from dfbatch.corpora.assets import source_frames
from dfbatch.corpora.video import encoded_bytes, write_video

FFMPEG = shutil.which("ffmpeg")
_SKIPPED = ".skipped.json"  # a hidden file: never listed as a video


def _carphone() -> np.ndarray:
    """(120, 144, 176, 3) uint8 RGB frames of the real carphone clip (a man talking, face ~60 px)."""
    return source_frames("pristine")


def _resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    w, h = size
    return np.stack([cv2.resize(np.ascontiguousarray(f), (w, h), interpolation=cv2.INTER_AREA if w < f.shape[1] else cv2.INTER_LINEAR) for f in frames])


def _letterbox(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`frame` scaled to fit `size` (w, h), centred on black: a large frame with the face preserved."""
    import cv2

    w, h = size
    fh, fw = frame.shape[:2]
    s = min(w / fw, h / fh)
    nw, nh = int(fw * s) // 2 * 2, int(fh * s) // 2 * 2
    out = np.zeros((h, w, 3), np.uint8)
    x, y = (w - nw) // 2, (h - nh) // 2
    out[y : y + nh, x : x + nw] = cv2.resize(np.ascontiguousarray(frame), (nw, nh), interpolation=cv2.INTER_LINEAR)
    return out


def encode(path: Path, frames, fps: float, *, codec: str = "libx264", fmt: str | None = None, pix_fmt: str = "yuv420p",
           pts: list[int] | None = None, time_base: Fraction | None = None, container_options: dict | None = None,
           **options) -> Path:
    """`corpora.video.write_video` on one thread with x264/x265's fastest preset (small files, quick to make).
    `pts` (in `time_base`) makes variable frame rate."""
    return write_video(path, frames, fps, codec, pix_fmt, container=fmt, preset="ultrafast", pts=pts,
                       time_base=time_base, container_options=container_options, threads=1, **options)


def _audio_only(path: Path, seconds: float = 2.0) -> Path:
    import av

    with av.open(str(path), "w", format="mp4") as c:
        st = c.add_stream("aac", rate=16000)
        st.layout = "mono"
        t = np.arange(int(16000 * seconds)) / 16000
        wave = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, len(wave), 1024):
            fr = av.AudioFrame.from_ndarray(wave[None, start : start + 1024], format="fltp", layout="mono")
            fr.sample_rate, fr.pts = 16000, start
            for pkt in st.encode(fr):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    return path


def _mdat_span(data: bytes) -> tuple[int, int]:
    """(start, end) of the payload of the top-level mdat box of an MP4."""
    pos = 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        head = 8
        if size == 1:
            size, head = int.from_bytes(data[pos + 8 : pos + 16], "big"), 16
        elif size == 0:
            size = len(data) - pos
        if kind == b"mdat":
            return pos + head, pos + size
        pos += size
    raise ValueError("no mdat box")


def _moov_pos(data: bytes) -> int:
    pos = 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        if data[pos + 4 : pos + 8] == b"moov":
            return pos
        pos += size if size >= 8 else len(data)
    raise ValueError("no moov box")


def _named_copies(root: Path, sub: np.ndarray) -> tuple[bytes, list[str]]:
    """A valid base clip (moov at the end, PyAV's default) and copies of it under hostile names; (its bytes, cases)."""
    data = encode(root / "base.mp4", sub, 15, crf=23).read_bytes()
    names = ["UPPER CASE.MP4", "Mixed.Mov", "name with spaces.mp4", "quote ' and \" double.mp4", "accénts café naïve.mkv",
             "emoji 🎭😀.mp4", "nested/deeper/clip.mp4"]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return data, ["base.mp4", *names]


def _not_videos(root: Path, cp: np.ndarray) -> list[str]:
    from PIL import Image

    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is not a video, just some text pretending to be one\n" * 8)
    (root / "line\nbreak.mp4").write_text("a name with a newline; the row's error must stay one line\n")
    Image.fromarray(np.ascontiguousarray(cp[0])).save(root / "png_named.mp4", format="PNG")  # has a face
    _audio_only(root / "audio_only.mp4")
    return ["empty.mp4", "text.mp4", "line\nbreak.mp4", "png_named.mp4", "audio_only.mp4"]


def _damaged(root: Path, data: bytes, sub: np.ndarray, rng: np.random.Generator) -> list[str]:
    """MP4s cut before or after their index, and one with bits flipped in the middle of its payload."""
    cut = _mdat_span(data)
    (root / "truncated_before_moov.mp4").write_bytes(data[: (cut[0] + cut[1]) // 2])  # moov is at the end: lost
    fdata = encoded_bytes(lambda p: encode(p, sub, 15, crf=23, container_options={"movflags": "faststart"}),
                          root / ".faststart_src.mp4")
    assert _moov_pos(fdata) < _mdat_span(fdata)[0]
    fm = _mdat_span(fdata)
    (root / "truncated_after_moov.mp4").write_bytes(fdata[: fm[0] + (fm[1] - fm[0]) * 6 // 10])  # index intact, last 40% of frames gone
    flipped = bytearray(data)
    lo, hi = cut[0] + (cut[1] - cut[0]) // 4, cut[0] + (cut[1] - cut[0]) * 3 // 4
    for pos in rng.integers(lo, hi, size=64):
        flipped[int(pos)] ^= 1 << int(rng.integers(0, 8))
    (root / "bitflips.mp4").write_bytes(bytes(flipped))
    return ["truncated_before_moov.mp4", "truncated_after_moov.mp4", "bitflips.mp4"]


def _sizes(root: Path, cp: np.ndarray) -> list[str]:
    """Frame counts and sizes."""
    encode(root / "one_frame.mp4", cp[:1], 15)
    encode(root / "three_frames.mp4", cp[:3], 15)
    encode(root / "tiny_16x16.mp4", _resize(cp[:10], (16, 16)), 15)
    encode(root / "tiny_10x10.mp4", _resize(cp[:10], (10, 10)), 15)
    return ["one_frame.mp4", "three_frames.mp4", "tiny_16x16.mp4", "tiny_10x10.mp4"]


def _codecs(root: Path, sub: np.ndarray, rng: np.random.Generator) -> list[str]:
    """Codecs, containers, pixel formats, timing."""
    encode(root / "vp9.webm", sub[:20], 15, codec="libvpx-vp9", fmt="webm")
    encode(root / "mjpeg.avi", sub[:20], 15, codec="mjpeg", fmt="avi", pix_fmt="yuvj420p")
    encode(root / "hevc.mkv", sub[:20], 15, codec="libx265", fmt="matroska")
    encode(root / "h264_10bit.mp4", sub[:20], 15, pix_fmt="yuv420p10le")
    gaps = np.cumsum(np.r_[0, rng.choice([20, 33, 50, 100], size=len(sub) - 1)]).tolist()  # 10 to 50 fps, ~2 s
    encode(root / "vfr.mp4", sub, 30, pts=gaps, time_base=Fraction(1, 1000))
    return ["vp9.webm", "mjpeg.avi", "hevc.mkv", "h264_10bit.mp4", "vfr.mp4"]


def _rotated(root: Path, sub: np.ndarray, skipped: dict[str, str]) -> list[str]:
    """Rotation metadata (phone videos): frames stored turned, displayed upright; needs Debian's ffmpeg to tag."""
    made = []
    for deg in (90, 270):
        name = f"rotated_{deg}.mp4"
        if not FFMPEG:
            skipped[name] = "ffmpeg not installed (needed to write rotation metadata)"
            continue
        side = encode(root / f".sideways_{deg}.mp4", np.stack([np.rot90(f, -deg // 90) for f in sub[:20]]), 15)
        subprocess.run([FFMPEG, "-v", "error", "-y", "-i", str(side), "-c", "copy", "-metadata:s:v:0", f"rotate={deg}", str(root / name)], check=True)
        side.unlink()
        made.append(name)
    return made


def _filesystem(root: Path, data: bytes, sub: np.ndarray) -> list[str]:
    """Filesystem oddities: directories and links named like videos, a FIFO, an unreadable file (mode 000), hidden
    files."""
    (root / "dir_named.mp4").mkdir()
    encode(root / "dir_named.mp4" / "inside.mp4", sub[:10], 15)
    os.symlink("base.mp4", root / "symlink.mp4")
    os.symlink("does-not-exist.mp4", root / "broken_symlink.mp4")
    os.symlink("loop.mp4", root / "loop.mp4")
    os.mkfifo(root / "fifo.mp4")
    unreadable = root / "unreadable.mp4"
    unreadable.write_bytes(data)
    unreadable.chmod(0)
    (root / ".hidden.mp4").write_bytes(data)  # dot files are not listed
    (root / "notes.txt").write_text("not a video")
    return ["dir_named.mp4", "dir_named.mp4/inside.mp4", "symlink.mp4", "broken_symlink.mp4", "loop.mp4", "fifo.mp4",
            "unreadable.mp4", ".hidden.mp4", "notes.txt"]


def hostile_corpus(dir, *, include_slow: bool = False) -> list[str]:
    """Build the corpus under `dir`; returns the relative paths of every entry made (files, links, the directory).

    include_slow adds the 3840x2160 and the 2-minute files (a few seconds more to encode; decoding them
    must still hold only the sampled frames).
    """
    root = Path(dir)
    root.mkdir(parents=True, exist_ok=True)
    cp = _carphone()
    sub = cp[::2][:40]  # 40 frames ~2.7 s at 15 fps: enough for the sampled frames, cheap to encode
    rng = np.random.default_rng(5)  # bit flips, then frame gaps
    skipped: dict[str, str] = {}
    data, made = _named_copies(root, sub)
    made += _not_videos(root, cp)
    made += _damaged(root, data, sub, rng)
    made += _sizes(root, cp)
    made += _codecs(root, sub, rng)
    made += _rotated(root, sub, skipped)
    made += _filesystem(root, data, sub)
    if include_slow:
        made += _large_cases(root)
    (root / _SKIPPED).write_text(json.dumps(skipped))
    return made


def _large_cases(root: Path) -> list[str]:
    """3840x2160 (60 frames) and a 2-minute 1280x720 file: each would be >1 GB decoded whole, ~100 KB on disk."""
    cp = _carphone()
    uhd = _letterbox(cp[0], (3840, 2160))
    encode(root / "uhd_3840x2160.mp4", [uhd] * 60, 30, crf=30, g=60)
    hd = _letterbox(cp[0], (1280, 720))
    encode(root / "long_2min.mp4", [hd] * 600, 5, crf=30, g=50)  # 120 s at 5 fps
    return ["uhd_3840x2160.mp4", "long_2min.mp4"]


def skipped(dir) -> dict[str, str]:
    """Cases `hostile_corpus(dir)` left out, with the reason (e.g. ffmpeg missing)."""
    p = Path(dir) / _SKIPPED
    return json.loads(p.read_text()) if p.exists() else {}


def restore_permissions(dir) -> None:
    """Make the corpus removable again (the unreadable case has mode 000)."""
    p = Path(dir) / "unreadable.mp4"
    if p.exists() and not p.is_symlink():
        p.chmod(0o644)


__all__ = ["encode", "hostile_corpus", "restore_permissions", "skipped"]
