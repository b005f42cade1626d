"""Faces: MTCNN on downscaled frames, IoU tracks across frames, square crops with a margin.

`process_video` is the CPU stage's core (decode + detect + track + crop for one video, errors become the
row's status); `FaceStage` is its thin Ray Data adapter (one MTCNN per actor). Only small crops leave the
stage, never full frames.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from dfbatch.config import FaceConfig, LimitsConfig, SamplingConfig
from dfbatch.stages.crops import jpeg_round_trip
from dfbatch.stages.decode import DecodeError, local_copy, read_frames
from dfbatch.errors import one_line, redact
from dfbatch.io.results import VIDEOS_SCHEMA  # the columns the results share
from dfbatch.io.storage import Storage, is_s3
from dfbatch.stages.failures import InflightMarkers, classify, fail, run_guarded, worker_died_message


MTCNN_MIN_PX = 12  # facenet's P-Net window: smaller faces are never found (and min_face_size < 12 raises)

# one row per video between the face stage and the score stage (crops: uint8 (sum of track lengths, S, S, 3))
FACE_ROWS_SCHEMA = pa.schema(
    [VIDEOS_SCHEMA.field(n) for n in ("video_uri", "video_id", "size_bytes", "status", "error", "error_class", "error_kind",
                                      "duration_s", "fps", "width", "height", "n_frames", "frame_indices", "n_faces",
                                      "n_tracks")]
    + [pa.field("tracks", pa.string()), pa.field("crops", pa.binary()), pa.field("crop_size", pa.int32()),
       pa.field("crop_jpegs", pa.list_(pa.binary()))]  # --save-crops: one JPEG strip per track (else null)
)


@dataclass
class Track:
    """One face followed across sampled frames. Boxes are x1,y1,x2,y2 in full-resolution pixels."""

    frame_pos: list[int] = field(default_factory=list)  # positions into the sampled frames
    boxes: list[list[float]] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)  # NaN where the box was interpolated

    @property
    def area(self) -> float:
        return float(np.mean([(b[2] - b[0]) * (b[3] - b[1]) for b in self.boxes])) if self.boxes else 0.0


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a (N,4) and b (M,4)."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def link_tracks(detections: list[tuple[int, np.ndarray, np.ndarray]], iou_threshold: float, max_gap: int = 2) -> list[Track]:
    """Greedy IoU linking of per-frame detections [(frame_pos, boxes (n,4), probs (n,))] into tracks."""
    tracks: list[Track] = []
    active: list[tuple[Track, int]] = []  # (track, detection step of its last hit)
    for step, (pos, boxes, probs) in enumerate(detections):
        active = [(t, s) for t, s in active if step - s <= max_gap]
        free = list(range(len(boxes)))
        if active and len(boxes):
            scores = iou(np.array([t.boxes[-1] for t, _ in active]), boxes)
            pairs = sorted(((scores[i, j], i, j) for i in range(len(active)) for j in range(len(boxes))), reverse=True)
            used_t: set[int] = set()
            for score, i, j in pairs:
                if score < iou_threshold or i in used_t or j not in free:
                    continue
                track = active[i][0]
                track.frame_pos.append(pos)
                track.boxes.append(boxes[j].tolist())
                track.probs.append(float(probs[j]))
                active[i] = (track, step)
                used_t.add(i)
                free.remove(j)
        for j in free:
            track = Track([pos], [boxes[j].tolist()], [float(probs[j])])
            tracks.append(track)
            active.append((track, step))
    return tracks


def fill_track(track: Track, n_positions: int) -> Track:
    """Interpolate boxes linearly for sampled frames between a track's first and last detection."""
    if len(track.frame_pos) < 2:
        return track
    pos = np.array(track.frame_pos)
    boxes = np.array(track.boxes)
    probs = dict(zip(track.frame_pos, track.probs))
    full = np.arange(pos[0], min(pos[-1], n_positions - 1) + 1)
    interp = np.stack([np.interp(full, pos, boxes[:, k]) for k in range(4)], axis=1)
    return Track(full.tolist(), interp.tolist(), [probs.get(int(p), float("nan")) for p in full])


def square_crop(frame: np.ndarray, box: list[float], margin: float, size: int) -> np.ndarray:
    """A square crop centred on box, grown by `margin` of the box size per side, zero-padded, resized."""
    import cv2

    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    l, t = int(round(cx - side / 2)), int(round(cy - side / 2))
    s = max(2, int(round(side)))
    h, w = frame.shape[:2]
    pad = max(0, -l, -t, l + s - w, t + s - h)
    if pad:
        frame = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        l, t = l + pad, t + pad
    crop = frame[t : t + s, l : l + s]
    interp = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=interp)


def _channels_last(mtcnn):
    """MTCNN's nets in channels_last: its max-pools and convolutions vectorise (about 1.4x faster on CPU);
    max-pool is exact, convolutions differ in float rounding only (same boxes to 0.01 px in the tests)."""
    import torch

    for net in (mtcnn.pnet, mtcnn.rnet, mtcnn.onet):
        net.to(memory_format=torch.channels_last)
    return mtcnn


def detection_scale(h: int, w: int, scale: float, cfg: FaceConfig) -> float:
    """Factor from decoded frames (h x w, `scale` x full resolution) to MTCNN's input: the longest side goes
    down to `detect_max_side`, but never so far that a face of an explicit `min_face_px` falls below 12 px."""
    fit = cfg.detect_max_side / max(h, w)
    if cfg.min_face_px:
        fit = max(fit, MTCNN_MIN_PX / (cfg.min_face_px * scale))
    return min(1.0, fit)


class FaceDetector:
    """facenet-pytorch MTCNN with its shipped weights, batched over a video's frames."""

    def __init__(self, cfg: FaceConfig, device: str = "cpu"):
        from facenet_pytorch import MTCNN

        self.cfg = cfg
        self.device = device
        self._mtcnn: dict[int, object] = {}
        self._factory = lambda min_size: _channels_last(MTCNN(keep_all=True, device=device, min_face_size=min_size, post_process=False, select_largest=False))

    def detect(self, frames: np.ndarray, scale: float) -> list[tuple[np.ndarray, np.ndarray]]:
        """Boxes (in `frames` pixels / scale) and probabilities per frame, filtered by prob and size."""
        import cv2

        h, w = frames.shape[1:3]
        det_scale = detection_scale(h, w, scale, self.cfg)
        small = frames
        if det_scale < 1.0:
            size = (max(1, round(w * det_scale)), max(1, round(h * det_scale)))
            small = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])
        to_full = 1.0 / (det_scale * scale)
        min_size = int(max(MTCNN_MIN_PX, min(self.cfg.min_face / to_full, min(small.shape[1:3]) - 1)))
        mtcnn = self._mtcnn.get(min_size) or self._mtcnn.setdefault(min_size, self._factory(min_size))
        if str(self.device).startswith("cuda"):  # one pinned, non-blocking upload; MTCNN then runs on the GPU
            import torch

            small = torch.from_numpy(np.ascontiguousarray(small)).pin_memory().to(self.device, non_blocking=True)
        boxes, probs = mtcnn.detect(small)
        out = []
        for b, p in zip(boxes, probs):
            if b is None:
                out.append((np.zeros((0, 4)), np.zeros(0)))
                continue
            b = np.asarray(b, dtype=float) * to_full
            p = np.asarray(p, dtype=float)
            keep = (p >= self.cfg.min_face_prob) & (np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) >= self.cfg.min_face)
            out.append((b[keep], p[keep]))
        return out


def select_tracks(tracks: list[Track], cfg: FaceConfig) -> list[Track]:
    """Drop flickers (tracks seen in too few frames, unless nothing else exists); keep the largest tracks."""
    solid = [t for t in tracks if len(t.frame_pos) >= cfg.min_track_frames] or tracks
    solid.sort(key=lambda t: (len(t.frame_pos), t.area), reverse=True)
    return solid[: cfg.max_tracks]


def detection_positions(n_frames: int, every: int) -> list[int]:
    """Sampled frames MTCNN runs on: every `every`-th one, and the last (boxes are interpolated in between)."""
    positions = list(range(0, n_frames, max(1, every)))
    if positions and positions[-1] != n_frames - 1:
        positions.append(n_frames - 1)
    return positions


def faces_in_frames(frames: np.ndarray, scale: float, detector: FaceDetector, cfg: FaceConfig, crop_size: int, timings: dict | None = None) -> tuple[list[Track], np.ndarray, int]:
    """Detect (every `detect_every`-th frame), track, fill gaps and crop. Returns tracks, crops, n_faces.
    `timings` (optional) gets wall/CPU seconds `detect_s`, `detect_cpu_s`, `crop_s`, `crop_cpu_s` added (track +
    fill + crop count as crop; the benchmark's split)."""
    step = max(1, cfg.detect_every)
    positions = detection_positions(len(frames), step)
    t0, c0 = time.perf_counter(), time.process_time()
    found = detector.detect(frames[positions], scale)
    t1, c1 = time.perf_counter(), time.process_time()
    n_faces = int(sum(len(p) for _, p in found))
    tracks = link_tracks([(pos, b, p) for pos, (b, p) in zip(positions, found)], cfg.iou_threshold, max_gap=max(2, 2 // step + 1))
    tracks = [fill_track(t, len(frames)) for t in select_tracks(tracks, cfg)]
    crops = [square_crop(frames[pos], [c * scale for c in box], cfg.crop_margin, crop_size) for t in tracks for pos, box in zip(t.frame_pos, t.boxes)]
    arr = np.stack(crops) if crops else np.zeros((0, crop_size, crop_size, 3), np.uint8)
    if timings is not None:
        for key, value in (("detect_s", t1 - t0), ("detect_cpu_s", c1 - c0), ("crop_s", time.perf_counter() - t1), ("crop_cpu_s", time.process_time() - c1)):
            timings[key] = timings.get(key, 0.0) + value
    return tracks, arr, n_faces


def empty_result(ref: dict) -> dict:
    """A face-stage row with nothing measured yet (the listing columns carried through)."""
    return {
        "video_uri": ref["video_uri"],
        "video_id": ref["video_id"],
        "size_bytes": ref.get("size_bytes"),
        "status": "failed",
        "error": None,
        "error_class": None,
        "error_kind": None,
        "duration_s": None,
        "fps": None,
        "width": None,
        "height": None,
        "n_frames": 0,
        "frame_indices": [],
        "n_faces": 0,
        "n_tracks": 0,
        "tracks": "[]",
        "crops": b"",
        "crop_size": 0,
        "crop_jpegs": None,
    }


def process_video(ref: dict, detector: FaceDetector, storage: Storage, sampling: SamplingConfig, limits: LimitsConfig, *, frames: int, crop_size: int, crop_jpeg_quality: int | None = None, keep: dict | None = None) -> dict:
    """Decode, detect, track and crop one video; every failure becomes status `failed` + a one-line error.
    Crops are cut at `crop_size` and, with `crop_jpeg_quality`, go through the training shards' JPEG round trip
    (the model's spec says both: `ModelSpec.crop_side`, `crop_jpeg_quality`). `keep` (optional) receives the
    decoded video as `keep["video"]` (the single-video page shows its frames).

    In a Ray actor a watchdog exits the process when one video takes 2 x time_budget_s (a native call that never
    returns); `FaceStage`'s crash markers (stages/failures.py) then give the video a `failed` row on a retry."""
    timer = None
    try:
        timer = _watchdog(2 * limits.time_budget_s, ref["video_uri"])
        return _process_video(ref, detector, storage, sampling, limits, frames=frames, crop_size=crop_size,
                              crop_jpeg_quality=crop_jpeg_quality, keep=keep)
    finally:
        if timer is not None:
            timer.cancel()


def _watchdog(seconds: float, uri: str) -> threading.Timer | None:
    """In a Ray actor only (never in a driver or test process): exit the process after `seconds`."""
    try:
        import ray

        if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
            return None
    except Exception:
        return None

    def expire() -> None:
        print(f"dfbatch: {redact(uri)} took over {seconds:g} s (2 x time_budget_s); exiting the worker", file=sys.stderr, flush=True)
        os._exit(70)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer


def _process_video(ref: dict, detector: FaceDetector, storage: Storage, sampling: SamplingConfig, limits: LimitsConfig, *, frames: int, crop_size: int, crop_jpeg_quality: int | None, keep: dict | None = None) -> dict:
    row = empty_result(ref)
    if ref.get("list_error"):
        return fail(row, ref["list_error"], _list_error_class(ref["video_uri"], storage))
    deadline = time.monotonic() + limits.time_budget_s
    try:
        with local_copy(ref["video_uri"], storage, limits.max_bytes) as path:
            video = read_frames(path, sampling, limits, frames=frames, max_side=1920, deadline=deadline)
        if keep is not None:
            keep["video"] = video
        info = video.info
        row.update(duration_s=info.duration_s, fps=info.fps, width=info.width, height=info.height, n_frames=len(video.indices), frame_indices=video.indices.tolist())
        if min(video.frames.shape[1:3]) < max(MTCNN_MIN_PX, detector.cfg.min_face * video.scale):  # no face fits (MTCNN raises below 12 px)
            tracks, crops, n_faces = [], np.zeros((0, crop_size, crop_size, 3), np.uint8), 0
        else:
            tracks, crops, n_faces = faces_in_frames(video.frames, video.scale, detector, detector.cfg, crop_size)
            crops = jpeg_round_trip(crops, crop_jpeg_quality)
        if time.monotonic() > deadline:
            raise DecodeError(f"over limit time_budget_s ({limits.time_budget_s:.0f} s)", "time_budget")
    except DecodeError as exc:
        return fail(row, str(exc), exc.error_class)
    except MemoryError:
        return fail(row, "out of memory while decoding", "out_of_memory")
    except Exception as exc:  # never let one video take the job down
        return fail(row, one_line(exc), classify(exc))
    row["n_faces"] = n_faces
    row["n_tracks"] = len(tracks)
    row["tracks"] = json.dumps(
        [
            {
                "frame_indices": [int(video.indices[p]) for p in t.frame_pos],
                "boxes": [[round(v, 1) for v in b] for b in t.boxes],
                "probs": [None if np.isnan(p) else round(p, 5) for p in t.probs],
            }
            for t in tracks
        ]
    )
    row["crops"] = crops.tobytes()
    row["crop_size"] = crop_size
    if tracks:
        row["status"] = "ok"
    else:
        row["status"] = "no_face"
        row["error"] = None
    return row


def _list_error_class(uri: str, storage: Storage) -> str:
    """The class of a listing error (`cannot stat: ...`): the stat is tried again here to see what it was (a
    missing file or a denied one stays so; a storage error may be gone by a retry)."""
    try:
        if is_s3(uri):
            storage.fs(uri).info(storage.path(uri))
        else:
            os.stat(uri)
    except Exception as exc:
        return classify(exc)
    return "storage"  # it can be read now: what failed at listing time was passing


def track_crops(row: dict) -> list[np.ndarray]:
    """A face row's crops (all tracks, one after another) as one uint8 (T, S, S, 3) array per track."""
    from dfbatch.stages.score import split_by_lengths

    lengths = [len(t["frame_indices"]) for t in json.loads(row["tracks"] or "[]")]
    size = int(row["crop_size"] or 0)
    crops = np.frombuffer(row["crops"], dtype=np.uint8).reshape(-1, size, size, 3) if size else np.zeros((0, 1, 1, 3), np.uint8)
    if sum(lengths) != len(crops):
        raise ValueError(f"crops ({len(crops)}) do not match tracks ({sum(lengths)} frames)")
    return split_by_lengths(crops, lengths)


def crop_strips(row: dict, quality: int = 90) -> list[bytes] | None:
    """One JPEG per track of an `ok` face row, its crops side by side (what `--save-crops` keeps); else None."""
    if row["status"] != "ok":
        return None
    from dfbatch.io.images import encode_strip

    return [encode_strip(c, quality) for c in track_crops(row)]


def dead_row(ref: dict, deaths: int) -> dict:
    """The face-stage row of a video during which the worker died `deaths` times (crash markers)."""
    return fail(empty_result(ref), worker_died_message(deaths), "worker_died")


class FaceStage:
    """Ray Data adapter: `ds.map_batches(FaceStage, fn_constructor_kwargs=..., batch_size=1)` on CPU actors.
    `save_crops`: each row also carries its tracks' JPEG strips (`crop_jpegs`), encoded here on the CPU actors.
    `markers` (`failures.InflightMarkers`, the job's): a video that killed the worker `markers.limit` times gets
    a `worker_died` row on the next retry (Ray restarts a dead actor and retries its task without limit)."""

    def __init__(self, *, storage: Storage, sampling: SamplingConfig, faces: FaceConfig, limits: LimitsConfig, frames: int, crop_size: int, crop_jpeg_quality: int | None = None, threads: int = 1, device: str = "cpu", save_crops: bool = False, markers: InflightMarkers | None = None):
        import cv2
        import torch

        torch.set_num_threads(max(1, threads))
        cv2.setNumThreads(max(1, threads))  # OpenCV's own pool would oversubscribe the actor's CPUs
        self.detector = FaceDetector(faces, device=device)  # device "cuda": MTCNN on the GPU (fractional GPU per actor)
        self.kw = dict(storage=storage, sampling=sampling, limits=limits, frames=frames, crop_size=crop_size,
                       crop_jpeg_quality=crop_jpeg_quality)
        self.save_crops = save_crops
        self.markers = markers

    def rows(self, refs: list[dict]) -> list[dict]:
        """Face rows for listing rows, without crash markers (`FaceScoreStage` guards faces and model together)."""
        rows = [process_video(ref, self.detector, **self.kw) for ref in refs]
        if self.save_crops:
            for row in rows:
                row["crop_jpegs"] = crop_strips(row)
        return rows

    def __call__(self, batch: pa.Table) -> pa.Table:
        refs = batch.to_pylist()
        rows = run_guarded(self.markers, [str(r["video_id"]) for r in refs], lambda idx: self.rows([refs[i] for i in idx]),
                           lambda i, deaths: dead_row(refs[i], deaths))
        return pa.Table.from_pylist(rows, schema=FACE_ROWS_SCHEMA)
