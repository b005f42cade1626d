"""`dfbatch` command line: each command group lives in its own small module (parse, call, print)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from dfbatch.errors import UserError

# Each module exposes add_parser(subparsers) and sets `func` on its parser(s). A job command's flags come from its
# config class (dfbatch.cli.options.add_job_arguments); its run() builds the config with config_from_args(args).
COMMAND_MODULES = ["score", "models", "evaluate", "compare", "demo", "lomo", "train", "bench", "query", "report", "serve"]


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
        if getattr(args, "print_config", False):
            from dfbatch.cli.options import config_from_args

            print(config_from_args(args).to_yaml(), end="")
            return 0
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"dfbatch: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("dfbatch: interrupted (run the same command again to resume)", file=sys.stderr)
        return 130
