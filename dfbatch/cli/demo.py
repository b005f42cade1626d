"""`dfbatch demo`: the README's main command (see dfbatch.demo)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="build a demo archive, train + register a demo model, score held-out clips, print AUC")
    p.add_argument("--root", default="demo", help="folder for the archive, shards, checkpoints and results (default ./demo)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dfbatch.demo import DemoConfig, run_demo

    cfg = DemoConfig(root=args.root, tracking_uri=args.tracking_uri)
    if args.epochs:
        cfg.epochs = args.epochs
    run_demo(cfg)
    return 0
