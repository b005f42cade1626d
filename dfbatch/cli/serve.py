"""`dfbatch serve`: a local web page to check one video with the batch job's pipeline and model."""

from __future__ import annotations

import argparse

from dfbatch.cli.options import add_job_arguments, add_preset, config_from_args
from dfbatch.config import REFERENCE_PRESET, ServeConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="a local web page: upload one video, see the verdict, frames, face crops and Grad-CAM",
        description="Serve a page where a person uploads one video (or gives a path / s3:// URI) and sees the verdict, "
        "P(fake), threshold and model version, the sampled frames with face boxes, the crops with Grad-CAM heatmaps and "
        "the per-frame scores. Same pipeline code, settings and model as dfbatch score, so both give the same P(fake). "
        "JSON: POST /api/analyze (form field video=@FILE or uri=...).",
    )
    add_job_arguments(p, ServeConfig)
    add_preset(p, "--reference", REFERENCE_PRESET, help="the reference detection settings and fp32 (to match a job "
               "scored with --reference)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dfbatch.errors import UserError, one_line, redact
    from dfbatch.io.storage import Storage
    from dfbatch.views.explain import VideoAnalyzer
    from dfbatch.views.serve import is_loopback, serve

    cfg: ServeConfig = config_from_args(args)
    try:
        analyzer = VideoAnalyzer(cfg)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot load model {redact(cfg.model_uri)}: {one_line(exc)}") from None
    analyzer.warm_up()
    allow = cfg.allow_paths if cfg.allow_paths is not None else is_loopback(cfg.host)
    m = analyzer.model_info
    print(f"dfbatch serve — model {m['model_name']} version {m['model_version']}, threshold {analyzer.threshold:g}, "
          f"{analyzer.device}/{analyzer.scorer.precision}", flush=True)
    for line in analyzer.warnings:
        print(f"  warning: {line}", flush=True)
    print(f"  open http://{cfg.host}:{cfg.port}/   (uploads up to {cfg.max_upload_mb:g} MB"
          f"{'; paths and s3:// URIs too' if allow else ''}; Ctrl-C stops)", flush=True)
    serve(analyzer, host=cfg.host, port=cfg.port, max_upload_mb=cfg.max_upload_mb, allow_paths=allow,
          storage=Storage.from_env(cfg.endpoint_url))
    return 0
