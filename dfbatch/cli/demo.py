"""`dfbatch demo`: the README's main command (see dfbatch.demo)."""

from __future__ import annotations

import argparse

from dfbatch.cli.options import add_job_arguments, config_from_args
from dfbatch.config import DemoConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="build a demo archive, train + register a demo model (champion), score held-out clips, print AUC",
        description="Build a labelled demo archive from tests/data (REAL clips and FAKE clips made by dfbatch.synth), "
                    "prepare face-sequence shards, train a MobileNetV2 (ImageNet) detector with Ray Train (identity-disjoint archives, one recipe left out), "
                    "register it as models:/dfbatch-detector@champion, score a held-out archive made with another "
                    "seed with the scoring job, and print the results and the video AUC. A rerun with the same "
                    "--root reuses its archives and shards and resumes training (use a new --root for other "
                    "--clips/--size/--seconds).")
    add_job_arguments(p, DemoConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dfbatch.demo import run_demo

    run_demo(config_from_args(args))
    return 0
