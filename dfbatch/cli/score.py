"""`dfbatch score SOURCE... --output OUT`: score an archive and print a summary."""

from __future__ import annotations

import argparse
import json
import os
import shlex

from dfbatch.config import DEFAULT_MODEL_URI, FRAME_AGGREGATIONS, REFERENCE_FACES, TRACK_AGGREGATIONS, FaceConfig, LimitsConfig, SamplingConfig, ScoreConfig
from dfbatch.cli import require_positive


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score videos (dir, glob, file, s3:// prefix, manifest) into Parquet + an MLflow run",
        description="Score every video under SOURCE... into OUT/videos and OUT/faces (Parquet). Rerunning the "
        "same command skips videos already scored by the same model version (resume).",
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="file, directory (recursive), glob, s3://bucket/prefix, or manifest (.txt/.csv/.parquet with a uri column)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="result location (local path or s3://)")
    p.add_argument("--model", default=DEFAULT_MODEL_URI, help=f"models:/NAME@ALIAS, models:/NAME/VERSION, runs:/..., or a checkpoint file (default {DEFAULT_MODEL_URI})")
    p.add_argument("--frames", type=int, default=None, help="frames sampled per video (default: the model's sequence length)")
    p.add_argument("--threshold", type=float, default=None, help="FAKE if P(fake) >= threshold (default: the model's)")
    p.add_argument("--track-aggregation", choices=TRACK_AGGREGATIONS, default="max", help="video score from track scores")
    p.add_argument("--frame-aggregation", choices=FRAME_AGGREGATIONS, default="mean", help="track score from frame scores ('model': the model's own temporal head)")
    p.add_argument("--rescore", action="store_true", help="score again videos that already have a row for this model version (the old rows are replaced)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else MLflow's default)")
    p.add_argument("--experiment", default="dfbatch-score", help="MLflow experiment name")
    p.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint (default: AWS_ENDPOINT_URL)")
    p.add_argument("--ray-address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else start a local Ray)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default=ScoreConfig.precision, help="model precision (default auto: bf16 where the GPU/CPU has it natively, else fp32; fp16 needs a GPU)")
    p.add_argument("--batch-size", type=int, default=16, help="face sequences per forward pass")
    p.add_argument("--face-workers", type=int, default=None, help="CPU actors decoding + detecting (default: one per free CPU)")
    p.add_argument("--score-workers", type=int, default=None, help="model actors (default: one per GPU, else 1)")
    p.add_argument("--decode-backend", choices=("decord", "pyav"), default=SamplingConfig.backend, help=f"frame decoder (default {SamplingConfig.backend}; the other one is the fallback)")
    p.add_argument("--detect-max-side", type=int, default=FaceConfig.detect_max_side, help=f"downscale frames to this longest side for MTCNN, unless --min-face-px needs more (default {FaceConfig.detect_max_side})")
    p.add_argument("--detect-every", type=int, default=FaceConfig.detect_every, help=f"run MTCNN on every k-th sampled frame (and the last), interpolate boxes in between (default {FaceConfig.detect_every})")
    p.add_argument("--min-face-px", type=int, default=FaceConfig.min_face_px, help="smallest face searched, in full-resolution pixels; MTCNN's input grows as needed (default: 24 px, or 12 px at the detection size if larger: 48 px in 720p)")
    p.add_argument("--reference", action="store_true", help="the slow reference settings: MTCNN on every sampled frame at 640 px, fp32 (overrides the three flags above and --precision)")
    p.add_argument("--max-duration", type=float, default=LimitsConfig.max_duration_s, help="seconds; longer videos get a failed row")
    p.add_argument("--time-budget", type=float, default=LimitsConfig.time_budget_s, help="seconds of decode + detection per video")
    p.add_argument("--save-crops", action="store_true", help="keep each face track's crops as a JPEG under OUT/crops/ (faces column crops_file; dfbatch report shows them)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> ScoreConfig:
    require_positive(args, "frames", "batch_size", "face_workers", "score_workers", "detect_max_side", "detect_every", "min_face_px")
    return ScoreConfig(
        sources=args.sources,
        output=args.output,
        model_uri=args.model,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
        s3_endpoint_url=args.endpoint_url,
        rescore=args.rescore,
        track_aggregation=args.track_aggregation,
        frame_aggregation=args.frame_aggregation,
        threshold=args.threshold,
        device=args.device,
        ray_address=args.ray_address,
        save_crops=args.save_crops,
        precision="fp32" if args.reference else args.precision,
        score_batch_size=args.batch_size,
        face_workers=args.face_workers,
        score_workers=args.score_workers,
        sampling=SamplingConfig(frames=args.frames, backend=args.decode_backend),
        faces=FaceConfig(**REFERENCE_FACES) if args.reference else FaceConfig(detect_max_side=args.detect_max_side, detect_every=args.detect_every, min_face_px=args.min_face_px),
        limits=LimitsConfig(max_duration_s=args.max_duration, time_budget_s=args.time_budget),
    )


def format_summary(s) -> str:
    c = s.counts
    videos = os.path.join(s.output, "videos") if "://" not in s.output else s.output.rstrip("/") + "/videos"
    lines = [
        "",
        f"dfbatch score — model {s.model_name} version {s.model_version} — MLflow run {s.mlflow_run_id}",
        f"  listed {s.listed:>8}   already scored (skipped) {s.skipped}   duplicates {s.duplicates}",
        f"  scored {s.scored:>8}   ok {c.get('ok', 0)}   no_face {c.get('no_face', 0)}   failed {c.get('failed', 0)}   FAKE {c.get('fake', 0)}",
        f"  time   {s.elapsed_s:>8.1f} s   {s.videos_per_min:.1f} videos/min",
        f"  results: {videos}/*.parquet (faces: {videos[:-6]}faces/)",
        f"  query:   dfbatch query {shlex.quote(s.output)} \"SELECT video_uri, status, label, fake_probability FROM videos "
        "ORDER BY fake_probability DESC NULLS LAST LIMIT 20\"",
        f"  report:  dfbatch report {shlex.quote(s.output)} --html report.html",
        f"  pandas:  dfbatch.read_results({s.output!r})",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from dfbatch.pipeline import run_score

    summary = run_score(config_from_args(args))
    print(json.dumps(summary.to_dict(), indent=2) if args.json else format_summary(summary))
    return 0
