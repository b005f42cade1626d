"""`dfbatch compare MODEL MODEL... --labels LABELS [--promote METRIC]`: model versions side by side on the same
labelled videos; optionally move `champion` to the best one."""

from __future__ import annotations

import argparse
import json

from dfbatch.cli.options import add_job_arguments, add_preset, config_from_args
from dfbatch.config import REFERENCE_PRESET, CompareConfig

EPILOG = """examples:
  dfbatch compare models:/dfbatch-detector@champion models:/dfbatch-detector/4 --labels /data/heldout/labels.csv
  dfbatch compare models:/dfbatch-detector/4 --labels /data/heldout/ --promote video/roc_auc   # against the champion"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="model versions side by side on the same labelled videos; --promote the best",
                       description="Evaluate every MODEL on the same labelled videos (as `dfbatch evaluate --model`: "
                       "scored through the scoring job, one MLflow evaluation run per version) and print the metrics "
                       "side by side (best marked), also logged as comparison.md / comparison.csv. --promote METRIC "
                       "moves the alias to the best version only when it beats the current holder on METRIC.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_job_arguments(p, CompareConfig)
    add_preset(p, "--reference", REFERENCE_PRESET, help="score with the reference settings (as `dfbatch score "
               "--reference`)")
    p.add_argument("--all-metrics", action="store_true", help="print every metric (default: the main ones)")
    p.add_argument("--json", action="store_true", help="print the table and the promotion as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dfbatch.evaluation.compare import format_comparison, run_compare

    cmp = run_compare(config_from_args(args))
    if args.json:
        print(json.dumps({"dataset": cmp.dataset, "columns": cmp.columns,
                          "table": {k: dict(r) for k, r in cmp.table.iterrows()}, "best": cmp.best,
                          "promotion": cmp.promotion, "mlflow_run_id": cmp.run_id,
                          "evaluation_runs": [e.run_id for e in cmp.evaluations], "notes": cmp.notes},
                         indent=2, default=str))
    else:
        print(format_comparison(cmp, everything=args.all_metrics))
    return 0
