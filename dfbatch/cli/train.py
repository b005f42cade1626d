"""`dfbatch prepare` (labelled videos -> face-sequence shards) and `dfbatch train` (Ray Train -> MLflow model)."""

from __future__ import annotations

import argparse
import json

from dfbatch.cli.options import add_job_arguments, config_from_args
from dfbatch.config import PrepareConfig, TrainConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="turn labelled videos (DFDC, FaceForensics++, Celeb-DF, file,label CSV) into face-sequence shards",
        description="Read labels, split by source group (a fake and its original never land on different sides), "
        "run the scoring job's decode + face stages over every labelled video and write one Parquet row per face "
        "track (JPEG frames) under OUT/shards/{train,val,test}. Rerunning resumes (videos already prepared are "
        "skipped).",
    )
    add_job_arguments(p, PrepareConfig)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_prepare)

    t = sub.add_parser(
        "train",
        help="train a detector on prepared shards (Ray Train), log to MLflow, register it as `challenger`",
        description="Train with Ray Train (DDP over --workers), validate every epoch (video AUC, log loss), "
        "checkpoint to OUTPUT/NAME, stop early, and register the best checkpoint with its validation threshold. "
        "Rerunning with the same --output and --name resumes from the latest checkpoint; --epochs is the total.",
    )
    add_job_arguments(t, TrainConfig)
    t.add_argument("--json", action="store_true", help="print the result as JSON")
    t.set_defaults(func=run_train)


def run_prepare(args: argparse.Namespace) -> int:
    from dfbatch.training.prepare import run_prepare as run

    s = run(config_from_args(args))
    if args.json:
        print(json.dumps(s.to_dict(), indent=2))
        return 0
    c = s.counts
    print(f"\ndfbatch prepare — {s.labelled} labelled videos -> {s.output}")
    print(f"  already prepared (skipped) {s.skipped}   processed {s.processed}   ok {c.get('ok', 0)}   "
          f"no_face {c.get('no_face', 0)}   failed {c.get('failed', 0)}")
    print(f"  face tracks written: " + "   ".join(f"{k} {v}" for k, v in s.tracks.items()))
    for split, row in s.split_counts.items():
        print(f"  {split:<5} {row.get('REAL', 0):>6} REAL {row.get('FAKE', 0):>6} FAKE   {row.get('groups', 0)} groups")
    print(f"  time {s.elapsed_s:.1f} s")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from dfbatch.training.trainer import threshold_source, train

    cfg = config_from_args(args, defaults={"progress": not args.json})  # the CLI prints one line per epoch
    r = train(cfg)
    if args.json:
        print(json.dumps(r.to_dict(), indent=2, default=str))
        return 0
    m = r.best_metrics
    done = (f"nothing left to do: all {r.last_epoch} epochs were trained (raise --epochs to continue)"
            if r.start_epoch > r.last_epoch else f"epochs {r.start_epoch}..{r.last_epoch}")
    print(f"\ndfbatch train — MLflow run {r.run_id} — {done}" + (" (stopped early)" if r.stopped_early else ""))
    print(f"  best epoch {r.best_epoch}: val AUC {m.get('val_auc', float('nan')):.4f}   log loss "
          f"{m.get('val_log_loss', float('nan')):.4f}   threshold {r.threshold:.4f} ({threshold_source(cfg, r.data)})")
    print(f"  checkpoint {r.model_file}")
    if r.model_uri:
        alias = f" (alias {cfg.alias})" if cfg.alias else ""
        print(f"  registered {r.model_uri}{alias} — score with: dfbatch score SOURCE --model {r.model_uri} -o OUT")
    print(f"  time {r.elapsed_s:.1f} s")
    return 0


__all__ = ["add_parser"]
