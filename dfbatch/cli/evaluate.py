"""`dfbatch evaluate --model URI LABELS... [-o OUT] [--calibrate eer]` (and `dfbatch evaluate OUT --labels LABELS`):
one model version against labelled videos, logged to MLflow."""

from __future__ import annotations

import argparse
import json

from dfbatch.cli.options import add_job_arguments, add_preset, config_from_args
from dfbatch.config import REFERENCE_PRESET, EvaluateConfig

EPILOG = """examples:
  dfbatch evaluate --model models:/dfbatch-detector/3 /data/heldout/labels.csv
  dfbatch evaluate --model models:/dfbatch-detector/3 /data/train/labels.csv --split val --calibrate eer
  dfbatch evaluate --model models:/dfbatch-detector/3 /data/val/ --calibrate fpr --target-fpr 0.01 --temperature
  dfbatch evaluate OUT --labels /data/Celeb-DF-v2 --model-version 3     # the rows a scoring job wrote to OUT"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="one model version against labelled videos: metrics, plots, thresholds, MLflow",
                       description="Score the labelled videos with --model through the scoring job (rows OUT already "
                       "holds for that version are reused) and report video- and frame-level metrics, every frame "
                       "aggregation, per-method numbers and the unscored videos; log them to one MLflow run per "
                       "(version, dataset), linked to the version. --calibrate chooses and stores its thresholds.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_job_arguments(p, EvaluateConfig)
    add_preset(p, "--reference", REFERENCE_PRESET, help="score with the reference settings (as `dfbatch score "
               "--reference`)")
    p.add_argument("--labels", dest="legacy_labels", nargs="+", metavar="LABELS",
                   help="the older form `dfbatch evaluate OUT --labels LABELS`: evaluate the rows OUT holds")
    p.add_argument("--log-mlflow", dest="legacy_log_mlflow", action="store_true", help=argparse.SUPPRESS)  # the default now
    p.add_argument("--table", action="store_true", help="print the per-video table")
    p.add_argument("--json", action="store_true", help="print the metrics and where they were logged as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dfbatch.errors import UserError
    from dfbatch.evaluation.evaluate import format_report, run_evaluate
    from dfbatch.evaluation.metrics import format_table

    if args.legacy_labels:  # `evaluate OUT --labels LABELS`: the positional is OUT
        given = getattr(args, "labels", [])
        if len(given) != 1 or hasattr(args, "output"):
            raise UserError("with --labels give exactly one OUT: dfbatch evaluate OUT --labels LABELS (or "
                            "dfbatch evaluate --model URI LABELS -o OUT)")
        args.output, args.labels = given[0], args.legacy_labels
    ev = run_evaluate(config_from_args(args))
    if args.table:
        print(format_table(ev.videos))
        print()
    print(json.dumps(ev.to_dict(), indent=2, default=str) if args.json else format_report(ev))
    return 0
