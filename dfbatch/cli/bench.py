"""`dfbatch bench`: per-stage costs, end-to-end videos/min through the Ray pipeline, and a sequential baseline."""

from __future__ import annotations

import argparse
import json

from dfbatch.cli.options import add_job_arguments, config_from_args
from dfbatch.config import BenchSettings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark: stage costs, videos/min through the pipeline, and a sequential baseline (table + JSON)",
        description="Measure, on the same videos and model: each stage alone (decode, detect, crop, model; reference "
        "and fast settings, and how far their results differ), end-to-end videos/min through the Ray pipeline, and the "
        "straightforward sequential way (the baseline). Prints a table and writes OUT/bench.json. Default archive: "
        "10 s 1280x720 H.264 clips with a real face (generated once, cached in OUT/archive).",
    )
    add_job_arguments(p, BenchSettings)
    p.add_argument("--json", action="store_true", help="print the whole report as JSON instead of the table")
    p.add_argument("--markdown", action="store_true", help="also print the headline numbers as a Markdown table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dfbatch.bench import format_markdown, format_report, run_bench

    settings = config_from_args(args)
    report = run_bench(settings)
    print(json.dumps(report, indent=2, default=str) if args.json else format_report(report))
    if args.markdown:
        print("\n" + format_markdown(report))
    print(f"\nwritten: {settings.output}/bench.json")
    return 0
