"""`dfbatch query OUT "SQL"`: DuckDB SQL over the results (views `videos` and `faces`); no torch, no Ray."""

from __future__ import annotations

import argparse
import sys

from dfbatch.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "query",
        help="SQL (DuckDB) over the results: views videos and faces",
        description="Run DuckDB SQL over the result tables under OUT (local path or s3://), which appear as the "
        "views `videos` and `faces` (schemas in the README). Prints a table, CSV or JSON lines, or writes Parquet.",
    )
    p.add_argument("output", metavar="OUT", help="result location of dfbatch score (local path or s3://)")
    p.add_argument("sql", metavar="SQL", help="the query; '-' reads it from standard input")
    p.add_argument("--format", choices=("table", "csv", "json", "parquet"), default=None, help="output format (default: table; parquet when -o ends in .parquet)")
    p.add_argument("-o", "--out", default=None, metavar="FILE", help="write to this file (local or s3://) instead of standard output")
    p.add_argument("--max-rows", type=int, default=100, help="rows shown by --format table (default 100)")
    p.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint (default: AWS_ENDPOINT_URL)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dfbatch.io.storage import Storage
    from dfbatch.views.query import render, run_query, write_output

    sql = sys.stdin.read() if args.sql == "-" else args.sql
    fmt = args.format or ("parquet" if (args.out or "").endswith(".parquet") else "table")
    if fmt == "parquet" and args.out in (None, "-"):
        raise UserError("--format parquet needs -o FILE")
    storage = Storage.from_env(args.endpoint_url)
    table = run_query(args.output, sql, storage)
    write_output(render(table, fmt, max_rows=max(1, args.max_rows)), args.out, storage)
    return 0
