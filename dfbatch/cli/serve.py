"""`dfbatch serve`: a local web page to check one video with the batch job's pipeline and model."""

from __future__ import annotations

import argparse

from dfbatch.config import DEFAULT_MODEL_URI, REFERENCE_FACES, FaceConfig, SamplingConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="a local web page: upload one video, see the verdict, frames, face crops and Grad-CAM",
        description="Serve a page where a person uploads one video (or gives a path / s3:// URI) and sees the verdict, "
        "P(fake), threshold and model version, the sampled frames with face boxes, the crops with Grad-CAM heatmaps and "
        "the per-frame scores. Same pipeline code, settings and model as dfbatch score, so both give the same P(fake). "
        "JSON: POST /api/analyze (form field video=@FILE or uri=...).",
    )
    p.add_argument("--model", default=DEFAULT_MODEL_URI, help=f"models:/NAME@ALIAS, models:/NAME/VERSION, runs:/..., or a checkpoint file (default {DEFAULT_MODEL_URI})")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-upload-mb", type=float, default=500, help="largest upload accepted (default 500 MB)")
    p.add_argument("--allow-paths", action=argparse.BooleanOptionalAction, default=None, help="accept a server-side path or s3:// URI as well as uploads (default: only when listening on a loopback address)")
    p.add_argument("--frames", type=int, default=None, help="frames sampled per video (default: the model's sequence length, as dfbatch score)")
    p.add_argument("--threshold", type=float, default=None, help="FAKE if P(fake) >= threshold (default: the model's)")
    p.add_argument("--reference", action="store_true", help="the reference detection settings and fp32 (to match a job scored with --reference)")
    p.add_argument("--no-gradcam", action="store_true", help="no Grad-CAM heatmaps: answers about three times faster with a ResNeXt50 on CPU")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto", help="model precision (default auto, as dfbatch score)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else MLflow's default)")
    p.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint (default: AWS_ENDPOINT_URL)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dfbatch.cli import require_positive
    from dfbatch.errors import UserError, one_line, redact
    from dfbatch.io.storage import Storage
    from dfbatch.views.explain import AnalysisConfig, VideoAnalyzer
    from dfbatch.views.serve import is_loopback, serve

    require_positive(args, "frames", "port")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UserError("--threshold must be within [0, 1]")
    if args.max_upload_mb <= 0:
        raise UserError("--max-upload-mb must be positive")
    cfg = AnalysisConfig(
        model_uri=args.model, tracking_uri=args.tracking_uri, threshold=args.threshold, device=args.device,
        precision="fp32" if args.reference else args.precision, gradcam=not args.no_gradcam, sampling=SamplingConfig(frames=args.frames),
        faces=FaceConfig(**REFERENCE_FACES) if args.reference else FaceConfig(),
    )
    if cfg.precision == "fp16" and args.device == "cpu":
        raise UserError("--precision fp16 needs a GPU; on CPU use auto, bf16 or fp32")
    try:
        analyzer = VideoAnalyzer(cfg)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot load model {redact(args.model)}: {one_line(exc)}") from None
    analyzer.warm_up()
    allow = args.allow_paths if args.allow_paths is not None else is_loopback(args.host)
    m = analyzer.model_info
    print(f"dfbatch serve — model {m['model_name']} version {m['model_version']}, threshold {analyzer.threshold:g}, {analyzer.device}/{analyzer.scorer.precision}", flush=True)
    print(f"  open http://{args.host}:{args.port}/   (uploads up to {args.max_upload_mb:g} MB{'; paths and s3:// URIs too' if allow else ''}; Ctrl-C stops)", flush=True)
    storage = Storage.from_env(args.endpoint_url)
    serve(analyzer, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb, allow_paths=allow, storage=storage)
    return 0
