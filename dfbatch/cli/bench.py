"""`dfbatch bench`: per-stage costs, end-to-end videos/min through the Ray pipeline, and a sequential baseline."""

from __future__ import annotations

import argparse
import json

from dfbatch.cli import require_positive, size_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    from dfbatch.bench import FAST

    p = sub.add_parser(
        "bench",
        help="benchmark: stage costs, videos/min through the pipeline, and a sequential baseline (table + JSON)",
        description="Measure, on the same videos and model: each stage alone (decode, detect, crop, model; reference "
        "and fast settings, and how far their results differ), end-to-end videos/min through the Ray pipeline, and the "
        "straightforward sequential way (the baseline). Prints a table and writes OUT/bench.json. Default archive: "
        "10 s 1280x720 H.264 clips with a real face (generated once, cached in OUT/archive).",
    )
    p.add_argument("-o", "--output", default="bench-out", metavar="OUT", help="folder for the archive cache, model, results and bench.json (default bench-out)")
    p.add_argument("--quick", action="store_true", help="a few short small clips and a tiny model: proves the bench runs (numbers meaningless)")
    p.add_argument("--archive", default=None, metavar="DIR", help="score the videos in DIR instead of the generated archive")
    p.add_argument("--videos", type=int, default=None, help="videos through the pipeline (default 120; distinct clips repeat by symlink; ignored with --archive)")
    p.add_argument("--unique", type=int, default=None, help="distinct generated clips (default 8)")
    p.add_argument("--size", type=size_arg, default=None, metavar="WxH", help="generated clip size (default 1280x720)")
    p.add_argument("--seconds", type=float, default=None, help="generated clip length (default 10)")
    p.add_argument("--frames", type=int, default=None, help="frames sampled per video (default 32)")
    p.add_argument("--model", default=None, help="checkpoint file or models:/ URI (default: random-weight ResNeXt50-LSTM(2048) at 112 px)")
    p.add_argument("--stage-videos", type=int, default=None, help="videos timed stage by stage (default 4)")
    p.add_argument("--baseline-videos", type=int, default=None, help="videos through the sequential baseline (default 6)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--score-workers", type=int, default=None, help="separate model actors (default on CPU: the model runs inside each face actor)")
    p.add_argument("--ray-address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--decode-backend", choices=("decord", "pyav"), default=FAST.backend, help=f"fast path decode backend (default {FAST.backend})")
    p.add_argument("--detect-max-side", type=int, default=FAST.detect_max_side, help=f"fast path MTCNN frame size (default {FAST.detect_max_side})")
    p.add_argument("--detect-every", type=int, default=FAST.detect_every, help=f"fast path: MTCNN on every k-th sampled frame (default {FAST.detect_every})")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default=FAST.precision, help="fast path model precision (default auto: bf16 where the GPU/CPU has it natively, else fp32)")
    p.add_argument("--no-pipeline", action="store_true", help="skip the end-to-end Ray run")
    p.add_argument("--no-baseline", action="store_true", help="skip the sequential baseline")
    p.add_argument("--no-reference", action="store_true", help="skip the reference-settings stage timings (and the agreement check)")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON instead of the table")
    p.add_argument("--markdown", action="store_true", help="also print the headline numbers as a Markdown table")
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace):
    from dfbatch.bench import BenchSettings, Profile

    require_positive(args, "videos", "unique", "frames", "stage_videos", "baseline_videos", "cpus", "detect_max_side", "detect_every", "score_workers")
    fast = Profile("fast", args.decode_backend, args.detect_max_side, args.detect_every, args.precision)
    given = {k: getattr(args, k) for k in ("archive", "videos", "unique", "size", "seconds", "frames", "model", "stage_videos", "baseline_videos", "cpus", "ray_address", "score_workers") if getattr(args, k) is not None}
    common = dict(device=args.device, fast=fast, run_pipeline=not args.no_pipeline, run_baseline=not args.no_baseline, run_reference=not args.no_reference)
    if args.quick:
        return BenchSettings.quick_settings(args.output, **common, **given)
    return BenchSettings(output=args.output, **common, **given)


def run(args: argparse.Namespace) -> int:
    from dfbatch.bench import format_markdown, format_report, run_bench

    report = run_bench(settings_from_args(args))
    print(json.dumps(report, indent=2, default=str) if args.json else format_report(report))
    if args.markdown:
        print("\n" + format_markdown(report))
    print(f"\nwritten: {args.output}/bench.json")
    return 0
