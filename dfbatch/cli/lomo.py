"""`dfbatch lomo`: the leave-one-manipulation-out protocol (see dfbatch.evaluation.lomo)."""

from __future__ import annotations

import argparse

from dfbatch.cli.options import add_job_arguments, config_from_args
from dfbatch.config.lomo import LomoConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lomo",
        help="leave-one-manipulation-out: train without each fake recipe in turn, report AUC and accuracy on it",
        description="Build an identity-disjoint archive from tests/data (REAL clips of the carphone man, the astronaut "
        "and 100 LFW portraits; FAKE clips of every recipe), prepare its shards, and for each (variant, head, seed, "
        "recipe) train a detector that never sees that recipe, then report its video AUC and its accuracy at the "
        "registered threshold on that recipe's test fakes against the test reals. Results: ROOT/summary.md, "
        "ROOT/results.csv and one MLflow run (experiment dfbatch-lomo) with the fold runs nested under it. A rerun "
        "with the same --root resumes.")
    add_job_arguments(p, LomoConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dfbatch.evaluation.lomo import run_lomo

    cfg = config_from_args(args)
    res = run_lomo(cfg)
    print()
    print((open(f"{res.root}/summary.md").read()).rstrip())
    print(f"\nresults: {res.root}/results.csv, {res.root}/summary.md   (MLflow run {res.run_id}, experiment "
          f"{cfg.experiment})   time {res.timings['total_s']:.0f} s")
    return 0
