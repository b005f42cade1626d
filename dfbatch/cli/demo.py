"""`dfbatch demo`: the README's main command (see dfbatch.demo)."""

from __future__ import annotations

import argparse

from dfbatch.cli import size_arg
from dfbatch.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    from dfbatch.demo import DemoConfig

    d = DemoConfig()
    p = sub.add_parser(
        "demo",
        help="build a demo archive, train + register a demo model (champion), score held-out clips, print AUC",
        description="Build a labelled demo archive from tests/data (REAL clips and FAKE clips made by dfbatch.synth), "
                    "prepare face-sequence shards, train a MobileNetV2 (ImageNet) + LSTM detector with Ray Train, "
                    "register it as models:/dfbatch-detector@champion, score a held-out archive made with another "
                    "seed with the scoring job, and print the results and the video AUC. A rerun with the same "
                    "--root reuses its archives and shards and resumes training (use a new --root for other "
                    "--clips/--size/--seconds).")
    p.add_argument("--root", default=d.root, help="folder for the archives, shards, checkpoints and results (default ./demo)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else MLflow's default sqlite:///mlflow.db)")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"training epochs (default {d.epochs})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default {d.lr:g})")
    p.add_argument("--clips", type=int, default=d.n_train, help=f"training REAL and FAKE clips each (default {d.n_train})")
    p.add_argument("--heldout-clips", type=int, default=d.n_heldout,
                   help=f"held-out REAL and FAKE clips each (default {d.n_heldout})")
    p.add_argument("--size", type=size_arg, default=d.size, help=f"clip size WIDTHxHEIGHT (default {d.size[0]}x{d.size[1]})")
    p.add_argument("--seconds", type=float, default=d.seconds, help=f"clip length (default {d.seconds:g} s)")
    p.add_argument("--ray-logs", action="store_true", help="show Ray's progress bars and INFO logs while preparing and training")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dfbatch.demo import DemoConfig, run_demo

    if args.epochs < 1 or args.clips < 4 or args.heldout_clips < 1 or args.seconds <= 0:
        raise UserError("--epochs >= 1, --clips >= 4, --heldout-clips >= 1 and --seconds > 0")
    cfg = DemoConfig(root=args.root, tracking_uri=args.tracking_uri, epochs=args.epochs, lr=args.lr, n_train=args.clips,
                     n_heldout=args.heldout_clips, size=tuple(args.size), seconds=args.seconds, quiet=not args.ray_logs)
    run_demo(cfg)
    return 0
