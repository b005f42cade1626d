"""`dfbatch report OUT --html report.html`: a self-contained HTML report of a scoring job's results."""

from __future__ import annotations

import argparse
import os


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="one self-contained HTML report: counts, histogram, top suspicious videos with crops and Grad-CAM",
        description="Write one HTML file (images inlined, nothing fetched when opened) about the results under OUT for one "
        "model version: counts per status, a P(fake) histogram, the top-K most suspicious videos with their face crops, "
        "per-frame scores and Grad-CAM heatmaps, the failed videos with their errors. Crops come from OUT/crops/ "
        "(dfbatch score --save-crops) or are extracted again for the top-K. Also logged to the scoring run in MLflow.",
    )
    p.add_argument("output", metavar="OUT", help="result location of dfbatch score (local path or s3://)")
    p.add_argument("--html", required=True, metavar="FILE", help="the report file to write (local path or s3://)")
    p.add_argument("--top", type=int, default=20, help="most suspicious videos shown with crops and heatmaps (default 20)")
    p.add_argument("--frames-per-track", type=int, default=8, help="crops shown per face track (evenly spaced, the highest-scoring included; default 8)")
    p.add_argument("--model-version", default=None, help="report on this model version (default: the one scored last in OUT)")
    p.add_argument("--model-name", default=None, help="report on this registered model name (with several in OUT)")
    p.add_argument("--no-gradcam", action="store_true", help="no heatmaps (no model needed)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report to the scoring run in MLflow")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="for face extraction and Grad-CAM")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else MLflow's default)")
    p.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint (default: AWS_ENDPOINT_URL)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dfbatch.cli import require_positive
    from dfbatch.io.storage import Storage
    from dfbatch.views.report import build_report

    require_positive(args, "top", "frames_per_track")
    storage = Storage.from_env(args.endpoint_url)
    res = build_report(args.output, args.html, top=args.top, model_name=args.model_name, model_version=args.model_version, storage=storage,
                       tracking_uri=args.tracking_uri, log_mlflow=not args.no_mlflow, frames_per_track=args.frames_per_track,
                       explain=not args.no_gradcam, device=args.device)
    print(f"dfbatch report — model {res.model_name} version {res.model_version}: {res.videos} videos, top {res.top} with crops")
    print(f"  wrote {res.path}")
    if res.logged_run_id:
        print(f"  logged to MLflow run {res.logged_run_id} (artifact report/{os.path.basename(res.path)})")
    for note in res.notes:
        print(f"  note: {note}")
    return 0
