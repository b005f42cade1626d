"""`dfbatch prepare` (labelled videos -> face-sequence shards) and `dfbatch train` (Ray Train -> MLflow model)."""

from __future__ import annotations

import argparse
import dataclasses
import json

from dfbatch.cli import require_positive
from dfbatch.errors import UserError


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("expected three numbers: TRAIN,VAL,TEST (e.g. 0.8,0.1,0.1)") from None
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("expected three numbers: TRAIN,VAL,TEST (e.g. 0.8,0.1,0.1)")
    return tuple(parts)  # type: ignore[return-value]


def add_parser(sub: argparse._SubParsersAction) -> None:
    from dfbatch.config import REFERENCE_FACES, FaceConfig

    p = sub.add_parser(
        "prepare",
        help="turn labelled videos (DFDC, FaceForensics++, Celeb-DF, file,label CSV) into face-sequence shards",
        description="Read labels, split by source group (a fake and its original never land on different sides), "
        "run the scoring job's decode + face stages over every labelled video and write one Parquet row per face "
        "track (JPEG frames) under OUT/shards/{train,val,test}. Rerunning resumes (videos already prepared are "
        "skipped).",
    )
    p.add_argument("sources", nargs="+", metavar="DATASET", help="dataset root (local or s3://) or a file,label CSV")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="shard location (local path or s3://)")
    p.add_argument("--layout", default="auto", choices=("auto", "dfdc", "ffpp", "celebdf", "csv"))
    p.add_argument("--split", type=_fractions, default=(0.8, 0.1, 0.1), metavar="TRAIN,VAL,TEST",
                   help="fractions of source groups per split (default 0.8,0.1,0.1); official splits win")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--no-official-splits", action="store_true", help="ignore the datasets' official splits")
    p.add_argument("--frames", type=int, default=32, help="frames sampled per video (default 32)")
    p.add_argument("--crop-size", type=int, default=128, help="face crop side in pixels (default 128)")
    p.add_argument("--margin", type=float, default=FaceConfig.margin, help="crop margin per side, fraction of the face box")
    p.add_argument("--jpeg-quality", type=int, default=92)
    p.add_argument("--compression", default=None, help="FaceForensics++: only this compression level (c0, c23, c40)")
    p.add_argument("--retry-failed", action="store_true", help="process videos that failed last time again")
    p.add_argument("--limit", type=int, default=None, help="at most this many labelled videos (trials)")
    p.add_argument("--face-workers", type=int, default=None, help="CPU actors decoding + detecting (default: one per CPU)")
    p.add_argument("--detect-max-side", type=int, default=REFERENCE_FACES["detect_max_side"], help="MTCNN input size (default: the reference 640 px; training data is made once)")
    p.add_argument("--detect-every", type=int, default=REFERENCE_FACES["detect_every"], help="MTCNN on every k-th sampled frame (default 1)")
    p.add_argument("--min-face-px", type=int, default=REFERENCE_FACES["min_face_px"], help="smallest face searched (default: 24 px, or 12 px at the detection size)")
    p.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint (default: AWS_ENDPOINT_URL)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_prepare)

    t = sub.add_parser(
        "train",
        help="train a detector on prepared shards (Ray Train), log to MLflow, register it as `challenger`",
        description="Train with Ray Train (DDP over --workers), validate every epoch (video AUC, log loss), "
        "checkpoint to OUTPUT/NAME, stop early, and register the best checkpoint with its validation threshold. "
        "Rerunning with the same --output and --name resumes from the latest checkpoint; --epochs is the total.",
    )
    t.add_argument("data", metavar="SHARDS", help="output of `dfbatch prepare` (local or s3://)")
    t.add_argument("-o", "--output", required=True, metavar="CHECKPOINTS", help="checkpoint storage (local or s3://)")
    t.add_argument("--config", default=None, metavar="YAML", help="TrainConfig fields as YAML; flags override it")
    flags = [
        ("--name", str, "run name (same output + name resumes)"),
        ("--backbone", str, "resnext50_32x4d, efficientnet_b0, mobilenet_v2, tiny, ..."),
        ("--backbone-weights", str, "imagenet (offline file) or a torchvision .pth; default: random init"),
        ("--temporal", str, "lstm | gru | transformer"),
        ("--hidden-dim", int, None), ("--num-layers", int, None), ("--head", str, "last | mean"),
        ("--input-size", int, "model input side in pixels"), ("--seq-len", int, "frames per sequence"),
        ("--dropout", float, None), ("--epochs", int, "total epochs (a resumed run continues up to this)"),
        ("--batch-size", int, "sequences per worker per step"), ("--lr", float, None), ("--weight-decay", float, None),
        ("--lr-schedule", str, "cosine | constant"), ("--warmup-epochs", int, None),
        ("--precision", str, "auto | fp32 | bf16 | fp16 (mixed precision on GPU)"),
        ("--balance", str, "sampler (class-balanced) | none"),
        ("--sbi", str, "self-blended fakes from reals: off | mix | only"),
        ("--sbi-fraction", float, "share of FAKE samples that are self-blended (mix)"),
        ("--val-sbi", str, "auto | on | off: self-blended val fakes (auto: when val has no fake)"),
        ("--workers", int, "Ray Train workers (DDP)"), ("--cpus-per-worker", float, None),
        ("--max-failures", int, "worker-group restarts from the latest checkpoint"),
        ("--monitor", str, "val_auc | val_log_loss | val_ap | val_balanced_accuracy"),
        ("--patience", int, "epochs without improvement before stopping (0: never)"),
        ("--keep-checkpoints", int, None), ("--tracking-uri", str, "MLflow tracking URI"),
        ("--experiment", str, "MLflow experiment"), ("--model-name", str, "registered model name"),
        ("--alias", str, "alias of the new version (default challenger)"), ("--seed", int, None),
        ("--endpoint-url", str, "S3-compatible endpoint (default: AWS_ENDPOINT_URL)"),
    ]
    for flag, typ, help_ in flags:
        t.add_argument(flag, type=typ, default=None, help=help_)
    g = t.add_mutually_exclusive_group()
    g.add_argument("--gpu", dest="use_gpu", action="store_const", const=True, default=None, help="train on GPUs")
    g.add_argument("--cpu", dest="use_gpu", action="store_const", const=False, help="train on CPUs")
    t.add_argument("--no-augment", dest="augment", action="store_const", const=False, default=None)
    t.add_argument("--no-register", dest="register", action="store_const", const=False, default=None)
    t.add_argument("--restart", dest="resume", action="store_const", const=False, default=None,
                   help="refuse to resume: fail if OUTPUT/NAME already holds checkpoints")
    t.add_argument("--json", action="store_true", help="print the result as JSON")
    t.set_defaults(func=run_train)


def prepare_config(args: argparse.Namespace):
    from dfbatch.config import FaceConfig, SamplingConfig
    from dfbatch.training.prepare import PrepareConfig

    require_positive(args, "frames", "crop_size", "face_workers", "detect_max_side", "detect_every", "min_face_px", "limit")
    return PrepareConfig(
        sources=args.sources, output=args.output, layout=args.layout, fractions=args.split, split_seed=args.split_seed,
        official=not args.no_official_splits, frames=args.frames, crop_size=args.crop_size,
        jpeg_quality=args.jpeg_quality, retry_failed=args.retry_failed, limit=args.limit, face_workers=args.face_workers,
        s3_endpoint_url=args.endpoint_url, reader_options={"compression": args.compression} if args.compression else {},
        sampling=SamplingConfig(frames=args.frames), faces=FaceConfig(margin=args.margin, detect_max_side=args.detect_max_side,
                                                                           detect_every=args.detect_every, min_face_px=args.min_face_px),
    )


def run_prepare(args: argparse.Namespace) -> int:
    from dfbatch.training.prepare import run_prepare as run

    s = run(prepare_config(args))
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


_ARG_TO_FIELD = {"workers": "num_workers"}


def train_config(args: argparse.Namespace):
    from dfbatch.training.trainer import TrainConfig

    values: dict = {}
    if args.config:
        import yaml

        try:
            with open(args.config, encoding="utf-8") as fh:
                values = yaml.safe_load(fh) or {}
        except OSError as exc:
            raise UserError(f"cannot read {args.config}: {exc.strerror or exc}") from None
        if not isinstance(values, dict):
            raise UserError(f"{args.config}: expected a mapping of TrainConfig fields")
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(TrainConfig)})
        if unknown:
            raise UserError(f"{args.config}: unknown fields {', '.join(unknown)}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in vars(args).items():
        name = _ARG_TO_FIELD.get(key, key)
        if value is not None and name in fields and key not in ("data", "output", "config"):
            values[name] = value
    values["data"], values["output"] = args.data, args.output
    values.setdefault("progress", not args.json)  # the CLI prints one line per epoch
    if values.get("endpoint_url"):
        values["s3_endpoint_url"] = values.pop("endpoint_url")
    values.pop("endpoint_url", None)
    return TrainConfig(**values)


def run_train(args: argparse.Namespace) -> int:
    from dfbatch.training.trainer import train

    r = train(train_config(args))
    if args.json:
        print(json.dumps(r.to_dict(), indent=2, default=str))
        return 0
    m = r.best_metrics
    print(f"\ndfbatch train — MLflow run {r.run_id} — epochs {r.start_epoch}..{r.last_epoch}"
          + (" (stopped early)" if r.stopped_early else ""))
    print(f"  best epoch {r.best_epoch}: val AUC {m.get('val_auc', float('nan')):.4f}   log loss "
          f"{m.get('val_log_loss', float('nan')):.4f}   threshold {r.threshold:.4f} (Youden on val)")
    print(f"  checkpoint {r.model_file}")
    if r.model_uri:
        print(f"  registered {r.model_uri} (alias {args.alias or 'challenger'}) — score with: "
              f"dfbatch score SOURCE --model {r.model_uri} -o OUT")
    print(f"  time {r.elapsed_s:.1f} s")
    return 0


__all__ = ["add_parser", "prepare_config", "train_config"]
