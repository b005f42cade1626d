"""`dfbatch score SOURCE... --output OUT`: score an archive and print a summary."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys

from dfbatch.cli.options import add_job_arguments, add_preset, config_from_args
from dfbatch.config import REFERENCE_PRESET, ScoreConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score videos (dir, glob, file, s3:// prefix, manifest) into Parquet + an MLflow run",
        description="Score every video under SOURCE... into OUT/videos and OUT/faces (Parquet). Rerunning the "
        "same command skips videos already scored by the same model version (resume).",
    )
    add_job_arguments(p, ScoreConfig)
    add_preset(p, "--reference", REFERENCE_PRESET, help="the slow reference settings: MTCNN on every sampled frame at "
               "640 px, fp32 (overrides --detect-max-side, --detect-every, --min-face-px and --precision)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def format_summary(s) -> str:
    c = s.counts
    videos = os.path.join(s.output, "videos") if "://" not in s.output else s.output.rstrip("/") + "/videos"
    lines = [
        "",
        f"dfbatch score — model {s.model_name} version {s.model_version} — MLflow run {s.mlflow_run_id}",
        f"  listed {s.listed:>8}   already scored (skipped) {s.skipped}   duplicates {s.duplicates}",
        f"  scored {s.scored:>8}   ok {c.get('ok', 0)}   no_face {c.get('no_face', 0)}   failed {c.get('failed', 0)}   FAKE {c.get('fake', 0)}",
        *([f"  replaced {s.replaced:>6}   older rows of re-scored videos removed"] if s.replaced else []),
        *failed_lines(s.failed_rows),
        f"  time   {s.elapsed_s:>8.1f} s   {s.videos_per_min:.1f} videos/min",
        f"  threshold {s.threshold:g}" + (f" (temperature {s.temperature:g})" if s.temperature else "") + f": {s.threshold_source}",
        *(f"  note: {n}" for n in s.calibration_notes),
        *([f"  input:   {s.model_input}"] if s.model_input else []),
        *(f"  warning: {w}" for w in s.warnings),
        f"  results: {videos}/*.parquet (faces: {videos[:-6]}faces/)",
        f"  query:   dfbatch query {shlex.quote(s.output)} \"SELECT video_uri, status, label, fake_probability FROM videos "
        "ORDER BY fake_probability DESC NULLS LAST LIMIT 20\"",
        f"  report:  dfbatch report {shlex.quote(s.output)} --html report.html",
        f"  pandas:  dfbatch.read_results({s.output!r})",
    ]
    return "\n".join(lines)


def failed_lines(failed: dict) -> list[str]:
    """The summary's lines on OUT's failed rows for the version: counts by kind and error class, how to retry."""
    if not failed:
        return []
    total = sum(n for classes in failed.values() for n in classes.values())
    parts = [f"{kind} {sum(c.values())} (" + ", ".join(f"{k} {n}" for k, n in sorted(c.items(), key=lambda kv: -kv[1])) + ")"
             for kind, c in sorted(failed.items())]
    lines = [f"  failed rows of this version in OUT: {total} — {'; '.join(parts)}"]
    if failed.get("transient"):
        lines.append("  retry:   rerun the same command with --retry-failed (the transient ones; --retry-errors all: every "
                     "failed row)")
    return lines


def run(args: argparse.Namespace) -> int:
    from dfbatch.pipeline import run_score

    if not args.json:
        print(format_summary(run_score(config_from_args(args))))
        return 0
    # --json: stdout holds the JSON alone (`dfbatch score ... --json | jq` reads it whole). Ray prints its workers'
    # output and its own notices ("(raylet) A worker died ...") on this process's stdout: on stderr while the job
    # runs, and Ray is stopped before the JSON is printed.
    with contextlib.redirect_stdout(sys.stderr):
        summary = run_score(config_from_args(args))
        if "ray" in sys.modules:
            sys.modules["ray"].shutdown()
    print(json.dumps(summary.to_dict(), indent=2))
    return 0
