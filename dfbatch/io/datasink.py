"""Ray Data adapter of the commit protocol: each write task commits one part through a store's `write_part`."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
from ray.data import Datasink

from dfbatch.io.results import ResultStore
from dfbatch.io.storage import Storage


class CommitDatasink(Datasink):
    """Ray Data adapter: each write task hands its rows to `store_cls(output, storage).write_part`, which commits
    one part and returns counts; the driver sums them in `totals`. Serves results (ResultStore) and shards.
    `ledger`: the scoring job's `ListingLedger` actor, told of each committed part (progress, listing lead)."""

    def __init__(self, output: str, storage: Storage, job_id: str, *, store_cls=None, min_rows: int = 128, ledger=None):
        self.output, self.storage, self.job_id = output, storage, job_id
        self.store_cls, self.min_rows, self.ledger = store_cls or ResultStore, min_rows, ledger
        self.totals: Counter = Counter()

    def write(self, blocks, ctx) -> dict:
        rows = []
        for block in blocks:
            rows.extend(block.to_pylist() if isinstance(block, pa.Table) else pa.Table.from_pandas(block).to_pylist())
        counts = self.store_cls(self.output, self.storage).write_part(rows, self.job_id)
        if self.ledger is not None and rows:
            import time

            import ray

            ray.get(self.ledger.committed.remote(min(r["video_id"] for r in rows), len(rows), time.time()))
        return counts

    def on_write_complete(self, write_result) -> None:
        for counts in write_result.write_returns:
            self.totals.update(counts or {})

    @property
    def min_rows_per_write(self) -> int:
        return self.min_rows


ResultsDatasink = CommitDatasink  # the scoring job's sink (store_cls defaults to ResultStore)
