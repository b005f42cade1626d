"""`dfbatch evaluate OUT --labels DATASET`: video AUC / log loss / accuracy of scored results, logged to MLflow."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics of scored results against labels (DFDC, FF++, Celeb-DF or a file,label CSV)")
    p.add_argument("output", metavar="OUT", help="a `dfbatch score` output (local or s3://)")
    p.add_argument("--labels", required=True, nargs="+", help="dataset root(s) or labels CSV")
    p.add_argument("--layout", default="auto", help="auto | dfdc | ffpp | celebdf | csv")
    p.add_argument("--model-version", default=None, help="only rows of this model version (default: all)")
    p.add_argument("--log-mlflow", action="store_true", help="log the metrics to an MLflow run tagged with the model version")
    p.add_argument("--table", action="store_true", help="print the per-video table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dfbatch.training.labels import load_labels
    from dfbatch.errors import UserError
    from dfbatch.evaluation.metrics import format_table, join_labels, video_metrics
    from dfbatch.io.results import read_results

    results = read_results(args.output)
    if args.model_version:
        results = results[results.model_version == args.model_version]
    if results.empty:
        raise UserError(f"no results under {args.output}")
    joined = join_labels(results, load_labels(args.labels, layout=args.layout))
    metrics = video_metrics(joined)
    if args.table:
        print(format_table(joined))
    print(json.dumps(metrics, indent=2))
    if args.log_mlflow:
        import mlflow

        mlflow.set_experiment("dfbatch-evaluate")
        with mlflow.start_run(run_name="evaluate"):
            mlflow.set_tags({"model_name": str(results.model_name.iloc[0]), "model_version": str(results.model_version.iloc[0]), "results": args.output})
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    return 0
