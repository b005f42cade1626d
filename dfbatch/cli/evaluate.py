"""`dfbatch evaluate OUT --labels DATASET`: video AUC / log loss / accuracy of scored results, logged to MLflow."""

from __future__ import annotations

import argparse
import json

from dfbatch.cli.options import add_job_arguments, config_from_args
from dfbatch.config import EvaluateConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics of scored results against labels (DFDC, FF++, Celeb-DF or a file,label CSV)")
    add_job_arguments(p, EvaluateConfig)
    p.add_argument("--table", action="store_true", help="print the per-video table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dfbatch.evaluation.evaluate import run_evaluate
    from dfbatch.evaluation.metrics import format_table

    result = run_evaluate(config_from_args(args))
    if args.table:
        print(format_table(result.joined))
    print(json.dumps(result.metrics, indent=2))
    return 0
