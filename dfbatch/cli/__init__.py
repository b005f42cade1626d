"""`dfbatch` command line: each command group lives in its own small module (parse, call, print)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from dfbatch.errors import UserError

# Each module exposes add_parser(subparsers) and sets `func` on its parser(s).
COMMAND_MODULES = ["score", "models", "evaluate", "demo", "train", "bench", "query", "report", "serve"]


def size_arg(text: str) -> tuple[int, int]:
    """argparse type for WIDTHxHEIGHT."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 1280x720, got {text!r}") from None
    return w, h


def require_positive(args: argparse.Namespace, *flags: str) -> None:
    """One-line user error for a numeric flag below 1 (unset flags are skipped)."""
    for flag in flags:
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dfbatch", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"dfbatch.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"dfbatch: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("dfbatch: interrupted (run the same command again to resume)", file=sys.stderr)
        return 130
