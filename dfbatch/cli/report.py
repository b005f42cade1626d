"""`dfbatch report OUT --html report.html`: a self-contained HTML report of a scoring job's results."""

from __future__ import annotations

import argparse
import os

from dfbatch.cli.options import add_job_arguments, config_from_args
from dfbatch.config import ReportConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="one self-contained HTML report: counts, histogram, top suspicious videos with crops and Grad-CAM",
        description="Write one HTML file (images inlined, nothing fetched when opened) about the results under OUT for one "
        "model version: counts per status, a P(fake) histogram, the top-K most suspicious videos with their face crops, "
        "per-frame scores and Grad-CAM heatmaps, the failed videos with their errors. Crops come from OUT/crops/ "
        "(dfbatch score --save-crops) or are extracted again for the top-K. Also logged to the scoring run in MLflow.",
    )
    add_job_arguments(p, ReportConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dfbatch.views.report import build_report

    res = build_report(config_from_args(args))
    print(f"dfbatch report — model {res.model_name} version {res.model_version}: {res.videos} videos, top {res.top} with crops")
    print(f"  wrote {res.path}")
    if res.logged_run_id:
        print(f"  logged to MLflow run {res.logged_run_id} (artifact report/{os.path.basename(res.path)})")
    for note in res.notes:
        print(f"  note: {note}")
    return 0
