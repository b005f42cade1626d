"""`dfbatch bench`: what the product is for, measured in one run on the same videos and the same model.

* **pipeline** (first): videos/min through the Ray Data job (`pipeline.run_score`, fast settings), wall clock
  (start-up included) and steady state (from the per-call `scored_at` stamps), with peak RSS per process
  role, CPU used by our processes vs the machine, and the object store's high-water mark sampled meanwhile;
* **stages** in isolation, one core each (CPU seconds per video): decode, detect, crop (track + fill + crop),
  model, for the *reference* settings (decord, MTCNN on every sampled frame at 640 px, fp32) and the *fast*
  ones (PyAV sparse decode, MTCNN on every 4th sampled frame at 320 px with boxes interpolated, bf16);
* **agreement** of the fast path with the reference on those videos (tracks, box IoU, probabilities);
* **baseline**: the straightforward way, one video at a time: OpenCV reads the first N frames one by one,
  MTCNN (facenet-pytorch defaults) on every full-resolution frame, the most confident face cropped, the same
  model in fp32 per video;
* ratios (pipeline / baseline, pipeline overhead over the sum of the stage costs) and the issue's targets.

The default archive: 10 s 1280x720 H.264 clips with a real face (`synth.bench_archive`), a few distinct clips
repeated by hard link up to `videos` (each name is its own video to the job). Timings depend on the machine's
load: the JSON records the load average and the share of the CPUs other processes used during the run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dfbatch.config import FAST, REFERENCE, BenchSettings, FaceConfig, Profile, SamplingConfig  # noqa: F401 (re-exported)
from dfbatch.monitor import ResourceMonitor, load, machine_info, versions
from dfbatch.stages.aggregate import aggregate

log = logging.getLogger(__name__)

BENCH_FORMAT = "dfbatch-bench/1"
TARGETS = {"pipeline_videos_per_min": 60.0, "speedup_vs_baseline": 6.0, "pipeline_overhead": 0.20}


# --------------------------------------------------------------------------------------------- inputs
def prepare_archive(s: BenchSettings) -> tuple[Path, list[Path]]:
    """(folder the pipeline scores, its videos). Generated clips are cached under OUT/archive."""
    from dfbatch.config import VIDEO_EXTENSIONS

    out = Path(s.output)
    if s.archive:
        root = Path(s.archive)
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith("."))
        if not files:
            from dfbatch.errors import UserError

            raise UserError(f"no video files under {root}")
        return root, files
    from dfbatch.corpora import synth

    w, h = s.size
    key = f"{w}x{h}-{s.seconds:g}s-{s.fps:g}fps"
    clips_dir = out / "archive" / f"clips-{key}"
    clips = sorted(clips_dir.glob("bench_*.mp4"))[: s.unique]
    if len(clips) < s.unique:
        log.warning("generating %d bench clips (%s) in %s", s.unique, key, clips_dir)
        clips = synth.bench_archive(clips_dir, n=s.unique, size=s.size, seconds=s.seconds, fps=s.fps)
    videos_dir = out / "archive" / f"videos-{key}-{s.unique}x{s.videos}"
    videos_dir.mkdir(parents=True, exist_ok=True)
    videos = []
    for i in range(s.videos):
        # hard links (a copy across file systems): a symbolic link is the file it points to, one video id and one
        # row for all its names (listing.canonical_uri), where the bench wants one row per name
        link = videos_dir / f"v{i:05d}.mp4"
        target = clips[i % len(clips)].resolve()
        if link.is_symlink() or (link.exists() and not os.path.samefile(link, target)):
            link.unlink()
        if not link.exists():
            try:
                os.link(target, link)
            except OSError:
                shutil.copyfile(target, link)
        videos.append(link)
    for extra in videos_dir.glob("v*.mp4"):
        if extra not in videos:
            extra.unlink()
    return videos_dir, videos


def prepare_model(s: BenchSettings) -> str:
    """The model URI for the job. Default: a seeded random-weight model saved as a checkpoint file."""
    if s.model:
        return s.model
    import torch

    from dfbatch.models.checkpoints import save_checkpoint
    from dfbatch.models.detector import build_model
    from dfbatch.models.spec import ModelSpec

    if s.quick:
        spec = ModelSpec(backbone="tiny", hidden_dim=32, input_size=64, seq_len=s.frames, head="mean")
    else:
        spec = ModelSpec(seq_len=s.frames)  # resnext50_32x4d -> LSTM(2048) at 112 px
    path = Path(s.output) / "model" / f"bench-{spec.backbone}-{spec.temporal}{spec.hidden_dim}-{spec.input_size}px-T{spec.seq_len}.pt"
    if not path.is_file():
        torch.manual_seed(0)
        save_checkpoint(path, build_model(spec), spec, meta={"name": "bench-random", "threshold": 0.5, "note": "random weights (benchmark)"})
    return str(path)


# --------------------------------------------------------------------------------------------- stages
class _Clock:
    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        out = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return out


def _set_threads(n: int) -> None:
    import cv2
    import torch

    torch.set_num_threads(n)
    cv2.setNumThreads(n)


@dataclass
class _StageTools:
    """Decode settings, MTCNN and the model of one profile."""

    sampling: SamplingConfig
    faces: FaceConfig
    detector: object  # stages.faces.FaceDetector
    scorer: object  # stages.score.Scorer
    crop_size: int

    @classmethod
    def build(cls, profile: Profile, bundle, frames: int, device: str, threads: int) -> "_StageTools":
        from dfbatch.stages.faces import FaceDetector
        from dfbatch.stages.score import Scorer

        _set_threads(threads)
        faces = profile.faces()
        return cls(SamplingConfig(frames=frames, backend=profile.backend, decode_threads=threads), faces,
                   FaceDetector(faces, device=device),
                   Scorer(bundle.spec, bundle.state_dict, device=device, precision=profile.precision, threads=threads),
                   int(bundle.spec.input_size))


def _time_video(path: Path, tools: _StageTools, frames: int, device: str) -> dict:
    """One video through decode, detect + crop, model: its results and wall/CPU seconds per stage."""
    import torch

    from dfbatch.config import LimitsConfig
    from dfbatch.stages.decode import read_frames
    from dfbatch.stages.faces import detection_positions, faces_in_frames
    from dfbatch.stages.score import split_by_lengths

    clock = _Clock()
    video = read_frames(str(path), tools.sampling, LimitsConfig(), frames=frames, max_side=1920)
    dec_wall, dec_cpu = clock.lap()
    timings: dict = {}
    tracks, crops, n_faces = faces_in_frames(video.frames, video.scale, tools.detector, tools.faces, tools.crop_size,
                                             timings=timings)
    clock.lap()
    results = tools.scorer.score(split_by_lengths(crops, [len(t.frame_pos) for t in tracks])) if len(tracks) else []
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    mod_wall, mod_cpu = clock.lap()
    track_scores, probability = aggregate(results)  # the job's default strategies
    return {
        "video": path.name,
        "frames": len(video.indices),
        "frame_indices": video.indices.tolist(),
        "detections_run": len(detection_positions(len(video.frames), tools.faces.detect_every)),
        "n_faces": n_faces,
        "tracks": [{"frame_pos": t.frame_pos, "boxes": t.boxes} for t in tracks],
        "crops": int(len(crops)),
        "probability": probability,
        "track_probabilities": track_scores,
        "frame_probabilities": [f.tolist() for f, _ in results],
        "wall_s": {"decode": dec_wall, "detect": timings.get("detect_s", 0.0), "crop": timings.get("crop_s", 0.0), "model": mod_wall},
        "cpu_s": {"decode": dec_cpu, "detect": timings.get("detect_cpu_s", 0.0), "crop": timings.get("crop_cpu_s", 0.0), "model": mod_cpu},
    }


def measure_stages(paths: list[Path], profile: Profile, bundle, frames: int, device: str = "cpu", threads: int = 1) -> dict:
    """Each stage of the face + score path timed per video on `threads` threads (the first video is a warm-up)."""
    tools = _StageTools.build(profile, bundle, frames, device, threads)
    per_video = [_time_video(path, tools, frames, device) for path in [paths[0], *paths]][1:]  # warm-up: first calls, page cache
    stages = ("decode", "detect", "crop", "model")
    mean_cpu = {k: float(np.mean([v["cpu_s"][k] for v in per_video])) for k in stages}
    mean_wall = {k: float(np.mean([v["wall_s"][k] for v in per_video])) for k in stages}
    return {
        "profile": dataclasses.asdict(profile),
        "threads": threads,
        "device": device,
        "videos": len(per_video),
        "cpu_s_per_video": mean_cpu,
        "wall_s_per_video": mean_wall,
        "sum_cpu_s_per_video": sum(mean_cpu.values()),
        "frames_per_s": {
            "decode": float(np.mean([v["frames"] for v in per_video])) / mean_wall["decode"],
            "detect": float(np.mean([v["detections_run"] for v in per_video])) / max(mean_wall["detect"], 1e-9),
        },
        "per_video": per_video,
    }


def _frame_ious(a: dict, b: dict) -> list[float]:
    """Per sampled frame IoU of two tracks' boxes over the frames both cover."""
    from dfbatch.stages.faces import iou

    boxes_b = dict(zip(b["frame_pos"], b["boxes"]))
    return [float(iou(np.array(box), np.array(boxes_b[p]))[0, 0]) for p, box in zip(a["frame_pos"], a["boxes"]) if p in boxes_b]


def agreement(reference: dict, fast: dict, min_track_frames: int) -> dict:
    """How far the fast path's results are from the reference's, video by video. Every reference track seen in
    at least `min_track_frames` sampled frames must have a fast twin (best mean IoU >= 0.3); shorter ones
    (flickers, mostly false positives) may be missed by a detector that runs on every k-th frame only."""
    rows = []
    for r, f in zip(reference["per_video"], fast["per_video"]):
        ious, track_dp, missed = [], [], 0
        long_tracks = [(i, t) for i, t in enumerate(r["tracks"]) if len(t["frame_pos"]) >= min_track_frames]
        for i, t in long_tracks:
            scored = [(float(np.mean(fi)) if (fi := _frame_ious(t, u)) else 0.0, j, fi) for j, u in enumerate(f["tracks"])]
            best = max(scored, default=(0.0, None, []))
            if best[1] is None or best[0] < 0.3:
                missed += 1
                continue
            ious.extend(best[2])
            track_dp.append(abs(r["track_probabilities"][i] - f["track_probabilities"][best[1]]))
        dp = abs(r["probability"] - f["probability"]) if r["probability"] is not None and f["probability"] is not None else None
        rows.append({
            "video": r["video"],
            "same_frames": r["frame_indices"] == f["frame_indices"],
            "tracks": [len(r["tracks"]), len(f["tracks"])],
            "long_tracks": len(long_tracks),
            "long_tracks_missed": missed,
            "min_frame_iou": min(ious) if ious else None,
            "mean_frame_iou": float(np.mean(ious)) if ious else None,
            "max_abs_dprob_track": max(track_dp) if track_dp else None,
            "abs_dprob_video": dp,
        })
    pick = lambda key, fn: fn(v) if (v := [x[key] for x in rows if x[key] is not None]) else None  # noqa: E731
    return {
        "videos": len(rows),
        "min_track_frames": min_track_frames,
        "same_frames": all(x["same_frames"] for x in rows),
        "long_tracks_missed": sum(x["long_tracks_missed"] for x in rows),
        "same_track_count": all(x["tracks"][0] == x["tracks"][1] for x in rows),
        "min_frame_iou": pick("min_frame_iou", min),
        "mean_frame_iou": pick("mean_frame_iou", lambda v: float(np.mean(v))),
        "max_abs_dprob_track": pick("max_abs_dprob_track", max),
        "max_abs_dprob_video": pick("abs_dprob_video", max),
        "per_video": rows,
    }


# -------------------------------------------------------------------------------------------- baseline
BASELINE_METHOD = ("OpenCV reads the first N frames one by one; facenet-pytorch MTCNN (defaults) on every full frame; "
                   "most confident face cropped; the same model in fp32 per video; one video at a time")


def _baseline_video(path: Path, mtcnn, net, size: int, frames: int, device: str) -> dict:
    """The straightforward way on one video: every frame read, MTCNN on it, the best face cropped, one forward."""
    import cv2

    from dfbatch.models.inference import predict_crops
    from dfbatch.stages.faces import square_crop

    clock = _Clock()
    cap = cv2.VideoCapture(str(path))
    crops, n_read = [], 0
    while n_read < frames:
        ok, bgr = cap.read()
        if not ok:
            break
        n_read += 1
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        boxes, probs = mtcnn.detect(rgb)
        if boxes is not None and len(boxes):
            crops.append(square_crop(rgb, [float(v) for v in boxes[int(np.argmax(probs))]], 0.25, size))
    cap.release()
    prob = None
    if crops:
        frame_p, seq_p = predict_crops(net, np.stack(crops)[None], device=device)
        prob = aggregate([(frame_p[0], seq_p[0])])[1]
    wall, cpu = clock.lap()
    return {"video": path.name, "frames": n_read, "faces": len(crops), "probability": prob, "wall_s": wall, "cpu_s": cpu}


def _baseline_warm_up(path: Path, mtcnn, net, size: int, device: str) -> None:
    """First MTCNN and model calls, outside the timings."""
    import cv2

    from dfbatch.models.inference import predict_crops

    cap = cv2.VideoCapture(str(path))
    ok, bgr = cap.read()
    cap.release()
    if ok:
        mtcnn.detect(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    predict_crops(net, np.zeros((1, 2, size, size, 3), np.uint8), device=device)


def run_baseline(paths: list[Path], bundle, frames: int, device: str = "cpu") -> dict:
    """The straightforward way (see the module docstring), one video at a time. Thread count: torch's default
    (all cores) or 1, whichever is faster on the first video (on a busy machine OpenMP with all cores can be
    10x slower than 1 thread): the baseline gets its best case."""
    import torch
    from facenet_pytorch import MTCNN

    from dfbatch.models.checkpoints import load_weights
    from dfbatch.models.detector import build_model

    mtcnn = MTCNN(keep_all=True, device=device)  # facenet-pytorch defaults (min_face_size=20)
    net = load_weights(build_model(bundle.spec), bundle.state_dict).eval().to(device)
    size = int(bundle.spec.input_size)
    saved = torch.get_num_threads()
    tried: dict[int, float] = {}
    try:
        for threads in dict.fromkeys([os.cpu_count() or 1, 1]):
            _set_threads(threads)
            if not tried:
                _baseline_warm_up(paths[0], mtcnn, net, size, device)
            tried[threads] = _baseline_video(paths[0], mtcnn, net, size, frames, device)["wall_s"]
        best = min(tried, key=tried.get)
        _set_threads(best)
        per_video = [_baseline_video(p, mtcnn, net, size, frames, device) for p in paths]
    finally:
        torch.set_num_threads(saved)
    wall = float(np.mean([v["wall_s"] for v in per_video]))
    return {
        "method": BASELINE_METHOD,
        "threads": best,
        "threads_tried_s_per_video": {str(k): v for k, v in tried.items()},
        "videos": len(per_video),
        "wall_s_per_video": wall,
        "cpu_s_per_video": float(np.mean([v["cpu_s"] for v in per_video])),
        "videos_per_min": 60.0 / wall,
        "per_video": per_video,
    }


# -------------------------------------------------------------------------------------------- pipeline
def _steady_window(scored_at: list) -> tuple[float, float, int] | None:
    """(t0, t1, videos): from the first to the last score call's stamp, and the videos scored by the calls
    started in between (start-up and the last call excluded); None with fewer than 3 calls."""
    from collections import Counter

    stamps = Counter(scored_at)
    times = sorted(stamps)
    if len(times) < 3:
        return None
    return times[0].timestamp(), times[-1].timestamp(), sum(stamps[t] for t in times[:-1])


def _start_ray(s: BenchSettings) -> bool:
    """A local Ray with `s.cpus` CPUs, or the cluster the settings/environment name; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if s.cpus and not (s.ray_address or os.environ.get("RAY_ADDRESS")):
        ray.init(address="local", num_cpus=s.cpus, include_dashboard=False, logging_level=logging.WARNING)
    else:
        from dfbatch.pipeline import init_ray

        init_ray(s.ray_address)
    return True


def _score_config(videos_dir: Path, results: Path, model_uri: str, tracking: str, s: BenchSettings, profile: Profile,
                  cpu_only: bool):
    from dfbatch.config import ScoreConfig

    return ScoreConfig(
        sources=[str(videos_dir)],
        output=str(results),
        model_uri=model_uri,
        tracking_uri=tracking,
        experiment="dfbatch-bench",
        device=s.device,
        precision=profile.precision,
        rows_per_block=s.rows_per_block,
        score_workers=s.score_workers,
        videos_per_score_batch=s.videos_per_score_batch or (2 if cpu_only else 8),
        sampling=SamplingConfig(frames=s.frames, backend=profile.backend),
        faces=profile.faces(),
    )


def _steady_state(scored_at: list, mon: ResourceMonitor, cluster_cpus: float | None) -> tuple[float | None, dict | None]:
    """(steady videos/min, CPU used per video by all our processes in that window) from the score calls' stamps."""
    window = _steady_window(scored_at)
    if not window or window[1] <= window[0]:
        return None, None
    steady = 60.0 * window[2] / (window[1] - window[0])
    cpu_window = mon.window(window[0], window[1])
    if cpu_window:
        capacity = (cluster_cpus or os.cpu_count() or 1) * cpu_window["seconds"]
        cpu_window.update(
            videos=window[2],
            ours_cpu_s_per_video=cpu_window["ours_cpu_s"] / window[2],
            others_share=max(0.0, cpu_window["machine_busy_cpu_s"] - cpu_window["ours_cpu_s"]) / capacity,
        )
    return steady, cpu_window


def run_pipeline(videos_dir: Path, n_videos: int, model_uri: str, s: BenchSettings, profile: Profile) -> dict:
    """The Ray Data job on the whole archive with `profile`'s settings; wall clock, steady state, resources."""
    import mlflow
    import ray
    import ray.data

    from dfbatch.io.results import read_results
    from dfbatch.pipeline import run_score

    out = Path(s.output).resolve()
    results = out / "runs" / time.strftime("%Y%m%dT%H%M%S")
    tracking = f"sqlite:///{out / 'mlflow.db'}"
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking)
    started_ray = False
    try:
        mlflow.set_experiment("dfbatch-bench")  # creates the store before the clock starts
        ray.data.DataContext.get_current().enable_progress_bars = False
        started_ray = _start_ray(s)
        cluster = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory", "object_store_memory")}
        cpu_only = not (s.device == "cuda" or (s.device == "auto" and cluster.get("GPU")))
        cfg = _score_config(videos_dir, results, model_uri, tracking, s, profile, cpu_only)
        load_before = load()
        with ResourceMonitor() as mon:
            t0, started_at = time.perf_counter(), time.time()
            summary = run_score(cfg)
            wall = time.perf_counter() - t0
    finally:
        mlflow.set_tracking_uri(previous_uri)
    if started_ray:
        ray.shutdown()  # idle workers would otherwise share the cores with the stage timings
    df = read_results(str(results))
    n = int(summary.scored)
    steady, cpu_window = _steady_state(list(df["scored_at"]), mon, cluster.get("CPU"))
    return {
        "profile": dataclasses.asdict(profile),
        "videos": n,
        "counts": summary.counts,
        "plan": summary.resources,
        "cluster": cluster,
        "rows_per_block": cfg.rows_per_block,
        "videos_per_score_batch": cfg.videos_per_score_batch,
        "wall_s": wall,
        "videos_per_min": 60.0 * n / wall if wall else None,
        "steady_videos_per_min": steady,
        "startup_s": (wall - 60.0 * n / steady) if steady else None,
        "first_result_s": (min(df["scored_at"]).timestamp() - started_at) if len(df) else None,  # job start to first video scored
        "steady_window": cpu_window,  # CPU used per video in steady state by all our processes (actors, driver, Ray)
        "load_before": load_before,
        "load_after": load(),
        "resources": mon.report(),
        "results": str(results),
        "mean_fake_probability": float(df["fake_probability"].dropna().mean()) if df["fake_probability"].notna().any() else None,
    }


# --------------------------------------------------------------------------------------------- start-up
STARTUP_MODEL = "dfbatch-bench"  # the bench model registered in OUT/mlflow.db for the start-up runs


def _registered_model(model_uri: str, tracking: str) -> str:
    """A models:/ URI for the start-up runs: `model_uri` itself, or the checkpoint registered once in `tracking`
    (a job's usual path: MLflow registry lookup, artifact read, sha256 check)."""
    if model_uri.startswith(("models:/", "runs:/")):
        return model_uri
    from dfbatch.models import registry

    note = f"bench model {Path(model_uri).name}"
    for row in registry.list_models(tracking, STARTUP_MODEL):
        if row["description"] == note:
            return f"models:/{STARTUP_MODEL}/{row['version']}"
    return f"models:/{STARTUP_MODEL}/{registry.register_uri(model_uri, STARTUP_MODEL, description=note, tracking_uri=tracking)}"


def _startup_run(video: Path, out: Path, model_uri: str, tracking: str, s: BenchSettings, profile: Profile) -> dict:
    """One `dfbatch score VIDEO` in a fresh process (its own local Ray unless RAY_ADDRESS names a cluster): the
    job's start-up steps (its summary) and its first result (the row's `scored_at`), from the process start."""
    import subprocess
    import sys

    from dfbatch.io.results import read_results

    cmd = [sys.executable, "-m", "dfbatch", "score", str(video), "-o", str(out), "--model", model_uri, "--tracking-uri", tracking,
           "--experiment", "dfbatch-bench-startup", "--frames", str(s.frames), "--device", s.device, "--precision", profile.precision,
           "--decode-backend", profile.backend, "--detect-max-side", str(profile.detect_max_side), "--detect-every", str(profile.detect_every),
           "--json", *(["--ray-address", s.ray_address] if s.ray_address else [])]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"start-up run failed: {done.stderr.strip()[-2000:]}")
    from dfbatch.pipeline import Summary

    summary = Summary.from_printed(done.stdout)
    origin, steps = summary["startup"]["process_started_at"], summary["startup"]["steps"]
    first = read_results(str(out))["scored_at"].min().timestamp() - origin
    run = steps.get("run", {"at_s": first, "s": 0.0})
    return {"first_result_s": first, "written_s": run["at_s"] + run["s"], "steps": steps,
            "actors_and_first_video_s": first - run["at_s"], "write_s": run["at_s"] + run["s"] - first}


def actor_construction(model_uri: str, profile: Profile, threads: int = 1) -> dict:
    """What a fresh face + model actor spends before its first video: the process start and imports (Python,
    torch, torchvision, MTCNN, OpenCV, PyAV, the stages), MTCNN (built, one blank frame), the model (built and
    prepared from its weights).
    Times this process: run it in a fresh one (`python -m dfbatch.bench actor MODEL_URI PROFILE_JSON`)."""
    from dfbatch.monitor import process_started_at

    import av  # noqa: F401
    import cv2  # noqa: F401
    import facenet_pytorch  # noqa: F401  (imports torchvision)
    import torch  # noqa: F401

    import dfbatch.models.detector  # noqa: F401
    import dfbatch.models.inference  # noqa: F401
    from dfbatch.stages.faces import FaceDetector
    from dfbatch.stages.score import Scorer

    imports = (time.time() - process_started_at(), time.process_time())
    clock = _Clock()
    from dfbatch.models import registry

    bundle = registry.fetch(model_uri)  # the actor gets this through the object store: not timed
    _set_threads(threads)
    clock.lap()
    FaceDetector(profile.faces()).detect(np.zeros((1, 180, 320, 3), np.uint8), 1.0)  # MTCNN is built on the first frames
    detector = clock.lap()
    Scorer(bundle.spec, bundle.state_dict, precision=profile.precision, threads=threads)
    model = clock.lap()
    return {name: {"wall_s": w, "cpu_s": c} for name, (w, c) in (("imports", imports), ("mtcnn", detector), ("model", model))}


def run_startup(video: Path, model_uri: str, s: BenchSettings, profile: Profile) -> dict:
    """The fixed cost of a job: `s.startup_runs` fresh `dfbatch score` processes on one video (median of each
    step), and a face + model actor's construction timed alone in a fresh process."""
    import subprocess
    import sys

    out = Path(s.output).resolve()
    tracking = f"sqlite:///{out / 'mlflow.db'}"
    uri = _registered_model(model_uri, tracking)
    load_before = load()
    runs = [_startup_run(video, out / "startup" / f"{time.strftime('%Y%m%dT%H%M%S')}-{i}", uri, tracking, s, profile)
            for i in range(s.startup_runs)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking}
    child = subprocess.run([sys.executable, "-m", "dfbatch.bench", "actor", uri, json.dumps(dataclasses.asdict(profile))],
                           capture_output=True, text=True, timeout=600, env=env)
    actor = json.loads(child.stdout.strip().splitlines()[-1]) if child.returncode == 0 else {"error": child.stderr.strip()[-500:]}
    med = lambda xs: float(np.median(xs))  # noqa: E731
    names = sorted({k for r in runs for k in r["steps"]}, key=lambda k: med([r["steps"][k]["at_s"] for r in runs if k in r["steps"]]))
    return {
        "video": str(video),
        "model_uri": uri,
        "runs": runs,
        "first_result_s": med([r["first_result_s"] for r in runs]),
        "written_s": med([r["written_s"] for r in runs]),
        "actors_and_first_video_s": med([r["actors_and_first_video_s"] for r in runs]),
        "write_s": med([r["write_s"] for r in runs]),
        "steps": {k: {"at_s": med([r["steps"][k]["at_s"] for r in runs if k in r["steps"]]),
                      "s": med([r["steps"][k]["s"] for r in runs if k in r["steps"]])} for k in names},
        "actor_construction": actor,
        "load_before": load_before,
        "load_after": load(),
    }


# --------------------------------------------------------------------------------------------- report
def _ratio(a, b):
    return a / b if a and b else None


def _resolve(s: BenchSettings) -> tuple[str, Profile]:
    """(device, fast profile) with `auto` resolved: CUDA when there is one; bf16 where the device has it natively."""
    import torch

    from dfbatch.models.inference import resolve_precision

    device = s.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, dataclasses.replace(s.fast, precision=resolve_precision(s.fast.precision, device))


def _distinct(videos: list[Path]) -> list[Path]:
    """The first link to each distinct file."""
    first: dict[tuple[int, int], Path] = {}
    for path in videos:
        st = os.stat(path)
        first.setdefault((st.st_dev, st.st_ino), path)
    return list(first.values())


def _run_stages(report: dict, paths: list[Path], fast: Profile, bundle, s: BenchSettings, device: str) -> None:
    """The isolated stage timings (fast, and reference + agreement unless skipped) into `report`."""
    threads = 1
    stages = {}
    log.warning("bench: stages (%d videos, 1 thread)", len(paths))
    stages["fast"] = measure_stages(paths, fast, bundle, s.frames, device=device, threads=threads)
    if s.run_reference:
        stages["reference"] = measure_stages(paths, REFERENCE, bundle, s.frames, device=device, threads=threads)
        report["agreement"] = agreement(stages["reference"], stages["fast"], min_track_frames=2 * max(1, fast.detect_every))
    report["stages"] = stages
    report["load_after_stages"] = load()


def _write(report: dict, out: Path) -> None:
    """OUT/bench.json and a timestamped copy."""
    text = json.dumps(report, indent=2, default=str)
    (out / "bench.json").write_text(text)
    (out / f"bench-{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(text)


def run_bench(s: BenchSettings) -> dict:
    """Run everything `s` asks for; returns the report (also written to OUT/bench.json)."""
    from dfbatch.models import registry

    out = Path(s.output)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    report: dict = {"format": BENCH_FORMAT, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": s.quick,
                    "machine": machine_info(), "versions": versions(), "load_start": load()}
    device, fast = _resolve(s)
    videos_dir, videos = prepare_archive(s)
    model_uri = prepare_model(s)
    report["settings"] = dataclasses.asdict(s) | {"device_resolved": device, "fast": dataclasses.asdict(fast),
                                                  "reference": dataclasses.asdict(REFERENCE)}
    report["archive"] = {"folder": str(videos_dir), "videos": len(videos), "distinct_files": len({p.resolve() for p in videos}),
                         "bytes_per_video": float(np.mean([p.stat().st_size for p in videos]))}
    distinct = _distinct(videos)
    if s.run_pipeline:  # first: the driver's memory is then the job's own, and Ray is gone for the timings below
        log.warning("bench: pipeline (%d videos)", len(videos))
        report["pipeline"] = run_pipeline(videos_dir, len(videos), model_uri, s, fast)
    if s.startup_runs:  # after the pipeline: its Ray is gone, each run starts its own
        log.warning("bench: start-up (%d fresh processes, 1 video)", s.startup_runs)
        report["startup"] = run_startup(distinct[0], model_uri, s, fast)
    bundle = registry.fetch(model_uri)
    report["model"] = {"uri": model_uri, "spec": bundle.spec.to_dict(), "describe": bundle.spec.describe()}
    _run_stages(report, distinct[: max(1, s.stage_videos)], fast, bundle, s, device)
    if s.run_baseline:
        log.warning("bench: baseline (%d videos)", s.baseline_videos)
        report["baseline"] = run_baseline(distinct[: max(1, s.baseline_videos)], bundle, s.frames, device=device)
        report["load_after_baseline"] = load()
    report["summary"] = summarize(report)
    report["elapsed_s"] = time.time() - started
    report["load_end"] = load()
    _write(report, out)
    return report


def summarize(r: dict) -> dict:
    """The headline numbers, the ratios and the targets."""
    pipe, base, stages = r.get("pipeline") or {}, r.get("baseline") or {}, r.get("stages") or {}
    fast = stages.get("fast") or {}
    cpus = (pipe.get("plan") or {}).get("cluster_cpus") or r["machine"]["usable_cpus"]
    ideal = 60.0 * cpus / fast["sum_cpu_s_per_video"] if fast.get("sum_cpu_s_per_video") else None
    steady = pipe.get("steady_videos_per_min")
    wall_rate = pipe.get("videos_per_min")
    window = pipe.get("steady_window")
    s = {
        "cpus": cpus,
        "stage_sum_cpu_s_per_video": fast.get("sum_cpu_s_per_video"),
        "ideal_videos_per_min": ideal,  # all cores busy with the isolated stage costs, no overhead
        "pipeline_videos_per_min": wall_rate,
        "pipeline_steady_videos_per_min": steady,
        "baseline_videos_per_min": base.get("videos_per_min"),
        "speedup_vs_baseline": _ratio(wall_rate, base.get("videos_per_min")),
        "steady_speedup_vs_baseline": _ratio(steady, base.get("videos_per_min")),
        # CPU seconds all our processes (actors, driver, Ray) spent per video in steady state over the sum of the
        # isolated stage costs, minus 1 (CPU time: what other users of the machine take does not count)
        "pipeline_overhead": (_ratio(window["ours_cpu_s_per_video"], fast.get("sum_cpu_s_per_video")) - 1.0) if window and fast else None,
        # the same from throughput: ideal / steady videos/min - 1, raw and with the CPU share others took removed
        "pipeline_overhead_throughput": (_ratio(ideal, steady) - 1.0) if ideal and steady else None,
        "pipeline_overhead_throughput_load_adjusted": (_ratio(ideal * (1.0 - window["others_share"]), steady) - 1.0) if ideal and steady and window else None,
        "others_cpu_share_steady": window["others_share"] if window else None,
        # what an otherwise idle machine would give in steady state: all cores / CPU seconds per video in the run
        "pipeline_steady_videos_per_min_idle_estimate": 60.0 * cpus / window["ours_cpu_s_per_video"] if window else None,
        "reference_stage_sum_cpu_s_per_video": (stages.get("reference") or {}).get("sum_cpu_s_per_video"),
        "startup_first_result_s": (r.get("startup") or {}).get("first_result_s"),  # fresh process to first video scored
    }
    s["targets"] = {
        "pipeline_videos_per_min >= 60": None if wall_rate is None else wall_rate >= TARGETS["pipeline_videos_per_min"],
        "speedup_vs_baseline >= 6 (wall, pipeline start-up included)": None if s["speedup_vs_baseline"] is None else s["speedup_vs_baseline"] >= TARGETS["speedup_vs_baseline"],
        # like for like: the baseline's s/video is measured warm (after its MTCNN and model are loaded)
        "speedup_vs_baseline >= 6 (steady state, both warm)": None if s["steady_speedup_vs_baseline"] is None else s["steady_speedup_vs_baseline"] >= TARGETS["speedup_vs_baseline"],
        "pipeline_overhead <= 20% (CPU per video, steady state)": None if s["pipeline_overhead"] is None else s["pipeline_overhead"] <= TARGETS["pipeline_overhead"],
    }
    return s


def _f(v, fmt="{:.2f}", none="–") -> str:
    return none if v is None else fmt.format(v)


def format_report(r: dict) -> str:
    """A plain-text table of the report."""
    st, m, sm = r["settings"], r["machine"], r["summary"]
    lines = [
        f"dfbatch bench — {r['archive']['videos']} videos ({r['archive']['distinct_files']} distinct) {st['size'][0]}x{st['size'][1]} "
        f"{st['seconds']:g} s, {st['frames']} frames — model {r['model']['describe']}",
        f"machine: {m['cpu_model']}, {m['usable_cpus']} CPUs, {m['memory_gb']} GB, GPUs: {', '.join(m['gpus']) or 'none'} — "
        f"torch {r['versions']['torch']}, ray {r['versions']['ray']} — load {r['load_start']} at start",
        "",
        "stages, isolated, 1 thread (CPU s per video)      reference        fast",
    ]
    stages = r["stages"]
    ref, fast = stages.get("reference"), stages["fast"]
    for k in ("decode", "detect", "crop", "model"):
        lines.append(f"  {k:46s} {_f(ref and ref['cpu_s_per_video'][k], '{:8.3f}', '       –')}   {fast['cpu_s_per_video'][k]:8.3f}")
    lines.append(f"  {'sum':46s} {_f(ref and ref['sum_cpu_s_per_video'], '{:8.3f}', '       –')}   {fast['sum_cpu_s_per_video']:8.3f}")
    lines.append(f"  settings: reference = {Profile(**r['settings']['reference']).describe()}; fast = {Profile(**r['settings']['fast']).describe()}")
    lines.append(f"  decode {fast['frames_per_s']['decode']:.0f} sampled frames/s (fast); detect {fast['frames_per_s']['detect']:.1f} frames/s (fast)"
                 + (f", {ref['frames_per_s']['detect']:.1f} (reference)" if ref else ""))
    if ag := r.get("agreement"):
        lines.append(f"  fast vs reference: same frames {ag['same_frames']}; tracks >= {ag['min_track_frames']} frames missed: {ag['long_tracks_missed']} "
                     f"(same track count: {ag['same_track_count']}); box IoU min {_f(ag['min_frame_iou'], '{:.2f}')} mean {_f(ag['mean_frame_iou'], '{:.2f}')}; "
                     f"max |dP| track {_f(ag['max_abs_dprob_track'], '{:.4f}')}, video {_f(ag['max_abs_dprob_video'], '{:.4f}')} (bench model: random weights)")
    lines.append("")
    if b := r.get("baseline"):
        tried = ", ".join(f"{k} thread(s) {v:.1f} s" for k, v in b["threads_tried_s_per_video"].items())
        lines.append(f"baseline (sequential, best of {tried}): {b['wall_s_per_video']:.2f} s/video -> {b['videos_per_min']:.1f} videos/min "
                     f"({b['videos']} videos, {b['cpu_s_per_video']:.2f} CPU s/video)")
    if p := r.get("pipeline"):
        plan = p["plan"]
        lines.append(f"pipeline (Ray, fast): {p['videos']} videos in {p['wall_s']:.1f} s -> {p['videos_per_min']:.1f} videos/min wall "
                     f"(steady {_f(p['steady_videos_per_min'], '{:.1f}')}/min, start-up {_f(p['startup_s'], '{:.1f}')} s, first video scored after {_f(p['first_result_s'], '{:.1f}')} s); counts {p['counts']}")
        layout = (f"{plan['face_workers']} actors x {plan['face_cpus']} CPU, each decode + faces + model" if plan.get("fused") else
                  f"{plan['face_workers']} face actors x {plan['face_cpus']} CPU (MTCNN on {plan.get('face_device', 'cpu')}), "
                  f"{plan['score_workers']} model actor(s) x {plan['score_cpus']} CPU / {plan['score_gpus']} GPU on {plan['device']}")
        lines.append(f"  plan: {layout}; "
                     f"load {p['load_before']} -> {p['load_after']}, other processes used {_f(p['resources']['cpu']['others_share'], '{:.0%}')} of the CPUs")
        mem = p["resources"]
        roles = ", ".join(f"{k} {v['peak_rss_mb']:.0f} MB ({v['peak_private_mb']:.0f} private)" for k, v in sorted(mem["per_role"].items()) if k in ("face_score_worker", "face_worker", "score_worker", "driver", "raylet"))
        lines.append(f"  peak RSS: {roles}; object store peak {_f(mem['object_store_peak_mb'], '{:.1f}')} MB")
    if su := r.get("startup"):
        lines += _startup_lines(su)
    lines.append("")
    lines.append(f"ideal (stage sum on {sm['cpus']} CPUs): {_f(sm['ideal_videos_per_min'], '{:.1f}')} videos/min; "
                 f"pipeline overhead {_f(sm['pipeline_overhead'], '{:.0%}')} (CPU s/video, steady; from throughput "
                 f"{_f(sm['pipeline_overhead_throughput'], '{:.0%}')}, {_f(sm['pipeline_overhead_throughput_load_adjusted'], '{:.0%}')} "
                 f"without the {_f(sm['others_cpu_share_steady'], '{:.0%}')} of the CPUs other processes took); "
                 f"speed-up vs baseline {_f(sm['speedup_vs_baseline'], '{:.1f}x')} wall ({_f(sm['steady_speedup_vs_baseline'], '{:.1f}x')} steady)")
    if sm.get("pipeline_steady_videos_per_min_idle_estimate"):
        lines.append(f"idle-machine estimate (cores / pipeline CPU s per video): {sm['pipeline_steady_videos_per_min_idle_estimate']:.1f} videos/min steady")
    lines.append("targets: " + "; ".join(f"{k}: {'n/a' if v is None else ('PASS' if v else 'MISS')}" for k, v in sm["targets"].items()))
    if r.get("quick"):
        lines.append("(--quick: tiny model and clips; the numbers prove the bench runs, they measure nothing)")
    return "\n".join(lines)


def _startup_parts(st: dict) -> str:
    """The start-up in the order the main thread meets it; Ray's start runs on a thread meanwhile."""
    steps = st["steps"]
    s = lambda k: steps.get(k, {}).get("s", 0.0)  # noqa: E731
    parts = [f"python + CLI {s('python_and_cli'):.1f}",
             f"job set-up {s('job_setup'):.1f} (imports {s('imports'):.1f}, model {s('model'):.1f})"]
    if "ray_start" in steps:
        parts.append(f"Ray start {s('ray_start'):.1f} on a thread from {steps['ray_start']['at_s']:.1f} s, waited for {s('ray_wait'):.1f}")
    return "; ".join(parts + [f"graph {s('graph'):.1f}", f"actors + first video {st['actors_and_first_video_s']:.1f}",
                              f"write {st['write_s']:.1f}"])


def _startup_lines(st: dict) -> list[str]:
    lines = [f"start-up (fresh `dfbatch score` process, 1 video, registered model, median of {len(st['runs'])}): first result "
             f"{st['first_result_s']:.1f} s after the process started, results written at {st['written_s']:.1f} s "
             f"(load {st['load_before']} -> {st['load_after']})",
             f"  steps (s): {_startup_parts(st)}"]
    actor = st.get("actor_construction") or {}
    if "imports" in actor:
        lines.append("  a face + model actor alone in a fresh process (wall / CPU s): " + ", ".join(
            f"{k} {v['wall_s']:.2f} / {v['cpu_s']:.2f}" for k, v in actor.items()))
    return lines


def format_markdown(r: dict) -> str:
    """The headline numbers as a Markdown table (for the README / docs/performance.md)."""
    st, m, sm, stages = r["settings"], r["machine"], r["summary"], r["stages"]
    ref, fast = stages.get("reference"), stages["fast"]
    p, b, ag = r.get("pipeline") or {}, r.get("baseline") or {}, r.get("agreement") or {}
    rows = [
        f"Machine: {m['cpu_model']}, {m['usable_cpus']} CPUs, {m['memory_gb']} GB, GPU: {', '.join(m['gpus']) or 'none'}; torch {r['versions']['torch']}, "
        f"ray {r['versions']['ray']}; bench started {r['started']}, load average {r['load_start']} at start, {r['load_end']} at the end. "
        f"{r['archive']['videos']} videos ({r['archive']['distinct_files']} distinct) {st['size'][0]}x{st['size'][1]} {st['seconds']:g} s H.264, "
        f"{st['frames']} frames, {r['model']['describe']}.",
        "",
        "| stage, 1 thread, CPU s per video | reference | fast |",
        "|---|---|---|",
    ]
    for k in ("decode", "detect", "crop", "model"):
        rows.append(f"| {k} | {_f(ref and ref['cpu_s_per_video'][k], '{:.3f}')} | {fast['cpu_s_per_video'][k]:.3f} |")
    rows.append(f"| **sum** | {_f(ref and ref['sum_cpu_s_per_video'], '{:.3f}')} | **{fast['sum_cpu_s_per_video']:.3f}** |")
    rows += ["", "| | value |", "|---|---|"]
    if p:
        w = p.get("steady_window") or {}
        rows += [
            f"| pipeline, wall clock ({p['videos']} videos, start-up included) | **{p['videos_per_min']:.1f} videos/min** ({p['wall_s']:.1f} s) |",
            f"| pipeline, steady state | {_f(p['steady_videos_per_min'], '{:.1f}')} videos/min (start-up {_f(p['startup_s'], '{:.1f}')} s) |",
            f"| CPU share other processes took during the steady state | {_f(w.get('others_share'), '{:.0%}')} |",
            f"| pipeline CPU s per video (all our processes, steady) | {_f(w.get('ours_cpu_s_per_video'), '{:.3f}')} |",
            f"| idle-machine estimate (cores / CPU s per video) | {_f(sm.get('pipeline_steady_videos_per_min_idle_estimate'), '{:.1f}')} videos/min |",
        ]
    if su := r.get("startup"):
        rows.append(f"| job start-up: process start to first result, 1 video (median of {len(su['runs'])} fresh processes) | "
                     f"**{su['first_result_s']:.1f} s** ({_startup_parts(su)}) |")
    if b:
        rows.append(f"| baseline (sequential, {b['threads']} thread(s)) | {b['videos_per_min']:.1f} videos/min ({b['wall_s_per_video']:.2f} s/video) |")
    rows += [
        f"| speed-up vs baseline | **{_f(sm['speedup_vs_baseline'], '{:.1f}x')}** wall, {_f(sm['steady_speedup_vs_baseline'], '{:.1f}x')} steady |",
        f"| ideal (stage sum on {sm['cpus']} CPUs) | {_f(sm['ideal_videos_per_min'], '{:.1f}')} videos/min |",
        f"| pipeline overhead (CPU s per video / stage sum - 1) | **{_f(sm['pipeline_overhead'], '{:.0%}')}** |",
    ]
    if p:
        mem = p["resources"]
        for role, v in sorted(mem["per_role"].items()):
            if role in ("face_score_worker", "face_worker", "score_worker", "driver"):
                rows.append(f"| peak RSS {role} ({v['processes']}) | {v['peak_rss_mb']:.0f} MB ({v['peak_private_mb']:.0f} MB private) |")
        rows.append(f"| object store high-water mark | {_f(mem['object_store_peak_mb'], '{:.0f}')} MB |")
    if ag:
        rows.append(f"| fast vs reference | same frames: {ag['same_frames']}; long tracks missed: {ag['long_tracks_missed']}; box IoU min {_f(ag['min_frame_iou'], '{:.2f}')}, "
                    f"mean {_f(ag['mean_frame_iou'], '{:.2f}')}; max dP video {_f(ag['max_abs_dprob_video'], '{:.4f}')} |")
    rows += ["", "Targets: " + "; ".join(f"{k}: {'n/a' if v is None else ('met' if v else 'missed')}" for k, v in sm["targets"].items()) + "."]
    return "\n".join(rows)


__all__ = ["BenchSettings", "FAST", "REFERENCE", "Profile", "actor_construction", "agreement", "format_report", "machine_info",
           "measure_stages", "run_baseline", "run_bench", "run_pipeline", "run_startup", "summarize", "format_markdown"]


if __name__ == "__main__":  # `python -m dfbatch.bench actor MODEL_URI PROFILE_JSON`: run_startup's fresh process
    import sys

    if sys.argv[1:2] == ["actor"]:
        print(json.dumps(actor_construction(sys.argv[2], Profile(**json.loads(sys.argv[3])))))
