"""`dfbatch query`: SQL (DuckDB) over the result tables under OUT, local or s3://, as views `videos` and `faces`.

The views are the store's own pyarrow datasets (io/results.py: the one schema, the same fsspec filesystem and
credentials as the job), so a query reads only the columns and row groups it needs, S3 included, and no
DuckDB extension is needed (none can be downloaded here). Imports neither torch nor Ray.
"""

from __future__ import annotations

import io
import sys

import pyarrow as pa

from dfbatch.errors import UserError, one_line, redact
from dfbatch.io.results import FACES_SCHEMA, VIDEOS_SCHEMA, ResultStore
from dfbatch.io.storage import Storage, is_s3

FORMATS = ("table", "csv", "json", "parquet")


def connect(output: str, storage: Storage | None = None):
    """An in-memory DuckDB connection with views `videos` and `faces` over OUT (empty views before any run).
    For an s3:// OUT the S3 filesystem is registered too, so a query may also read other s3:// files."""
    import duckdb

    storage = storage or Storage()
    store = ResultStore(output, storage)
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    try:
        datasets = {sub: store.dataset(sub) for sub in ("videos", "faces")}
        if all(d is None for d in datasets.values()) and not store.fs.exists(store.root):
            raise UserError(f"no results under {redact(output)}: no such directory or prefix")
        for sub, schema in (("videos", VIDEOS_SCHEMA), ("faces", FACES_SCHEMA)):
            con.register(sub, datasets[sub] if datasets[sub] is not None else schema.empty_table())
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot read results under {redact(output)}: {one_line(exc)}") from None
    if is_s3(output):
        con.register_filesystem(store.fs)
    return con


def run_query(output: str, sql: str, storage: Storage | None = None) -> pa.Table:
    """The query's result as an Arrow table; a bad query or unreadable OUT is a one-line UserError."""
    import duckdb

    if not sql.strip():
        raise UserError("empty SQL query")
    con = connect(output, storage)
    try:
        rel = con.sql(sql)
        return rel.to_arrow_table() if rel is not None else pa.table({})
    except duckdb.Error as exc:
        raise UserError(f"query failed: {one_line(exc)}") from None
    finally:
        con.close()


def render(table: pa.Table, fmt: str, *, max_rows: int = 100) -> bytes:
    """The table as text (table, csv, json lines) or a Parquet file's bytes."""
    buf = io.BytesIO()
    if table.num_columns == 0:  # a statement without a result (SET ..., a comment)
        if fmt == "parquet":
            raise UserError("the SQL returned no table to write")
        return b"(no result)\n" if fmt == "table" else b""
    if fmt == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, buf)
    elif fmt == "json":
        buf.write("".join(_json_line(row) for row in table.to_pylist()).encode())
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, buf)
    elif fmt == "table":
        import contextlib
        import shutil

        import duckdb

        con = duckdb.connect()
        con.register("result", table)
        text = io.StringIO()
        with contextlib.redirect_stdout(text):  # DuckDB's own box rendering (elides rows and wide columns)
            con.sql("SELECT * FROM result").show(max_rows=max_rows, max_width=shutil.get_terminal_size((160, 40)).columns, null_value="NULL")
        con.close()
        buf.write(text.getvalue().encode())
    else:
        raise UserError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    return buf.getvalue()


def _json_line(row: dict) -> str:
    import json

    return json.dumps(row, default=str) + "\n"


def write_output(data: bytes, path: str | None, storage: Storage | None = None) -> None:
    """To stdout, or to a local path / s3:// URI."""
    if path in (None, "-"):
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    try:
        (storage or Storage()).write_bytes(path, data)
    except Exception as exc:
        raise UserError(f"cannot write {redact(path)}: {one_line(exc)}") from None
