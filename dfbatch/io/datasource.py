"""Ray Data adapter of the listing: a `Datasource` whose read tasks each list one shard (io/listing.py).

A read task lists its shard page by page (1,000 refs: one S3 LIST call) and, per page: drops repeats of a
video listed elsewhere (only when the SOURCEs can repeat one: `IdClaims`), drops videos that already have a
row (the resume anti-join, io/resume.py), reports the page's counts to the job's `ListingLedger`, and yields
the rest as a block. Decoding starts with the first page while listing goes on. The ledger also bounds how far
listing runs ahead of the results (`lead` videos listed but not yet committed): the small listing blocks
queued on the driver stay a bounded number whatever the archive's size. Counts and claims are keyed so that a
retried read task (same shard, same pages) or write task changes nothing.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter

import numpy as np
import pyarrow as pa
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from dfbatch.io.listing import LISTING_SCHEMA, Shard, list_shard, refs_table
from dfbatch.io.resume import anti_join
from dfbatch.io.storage import Storage

LISTING_CPUS = 0.05  # a read task waits on the network: it holds a sliver of a CPU (pool actors leave it room)
N_CLAIMS = 4  # IdClaims actors (hash partitions of the video ids)


class ListingLedger:
    """The job's listing counts and progress (a Ray actor on the driver's node). Pages are counted once per
    (shard, page) and committed parts once per key, so retried tasks count nothing twice."""

    def __init__(self):
        self.pages: dict[tuple[int, int], dict] = {}
        self.parts: dict[str, int] = {}
        self.to_score = self.committed_rows = 0
        self.first_page = self.last_page = self.first_commit = None

    def page(self, key: tuple[int, int], counts: dict, at: float) -> int:
        """Record one listed page; returns the backlog (videos listed to score, not yet committed)."""
        key = tuple(key)
        self.to_score += counts["to_score"] - self.pages.get(key, {}).get("to_score", 0)
        self.pages[key] = counts
        self.first_page = min(at, self.first_page or at)
        self.last_page = max(at, self.last_page or at)
        return self.backlog()

    def committed(self, key: str, rows: int, at: float) -> None:
        self.committed_rows += rows - self.parts.get(key, 0)
        self.parts[key] = rows
        self.first_commit = min(at, self.first_commit or at)

    def backlog(self) -> int:
        return self.to_score - self.committed_rows

    def totals(self) -> dict:
        total = Counter()
        for counts in self.pages.values():
            total.update(counts)
        return {"counts": dict(total), "pages": len(self.pages), "parts": len(self.parts), "first_page": self.first_page,
                "last_page": self.last_page, "first_commit": self.first_commit}


class IdClaims:
    """One hash partition of the ids listed so far (a Ray actor): the first occurrence of an id claims it; a
    claim by the same occurrence again (a retried read task) is granted again, any other one is a duplicate."""

    def __init__(self):
        self.owner: dict[str, int] = {}

    def claim(self, ids: list[str], owners: list[int]) -> list[bool]:
        return [self.owner.setdefault(i, o) == o for i, o in zip(ids, owners)]


def occurrence(shard: Shard, uri: str, ordinal: int) -> int:
    """A stable number for one listed occurrence of a video: SOURCE, URI and manifest row."""
    return int.from_bytes(hashlib.blake2b(f"{shard.source}\0{uri}\0{ordinal}".encode(), digest_size=8).digest(), "little")


def claim_new(claims: list, table: pa.Table, owners: list[int]) -> np.ndarray:
    """Mask of the rows whose id this occurrence claims (False: listed before by another occurrence)."""
    import ray

    ids = table.column("video_id").to_pylist()
    parts: dict[int, list[int]] = {}
    for row, vid in enumerate(ids):
        parts.setdefault(int(vid[:8], 16) % len(claims), []).append(row)
    keep = np.ones(len(ids), bool)
    futures = {p: claims[p].claim.remote([ids[r] for r in rows], [owners[r] for r in rows]) for p, rows in parts.items()}
    for p, granted in zip(futures, ray.get(list(futures.values()))):
        keep[parts[p]] = granted
    return keep


def read_shard(n: int, shard: Shard, storage: Storage, ledger, resume: list, claims: list, lead: int):
    """The read task of shard n: pages of refs -> dedup -> resume anti-join -> counts -> block (Ray Data cuts it
    into blocks of the driver's target size); waits while more than `lead` listed videos have no committed row yet."""
    import ray

    index = ray.get(resume[0]) if resume else None
    for page_no, page in enumerate(list_shard(shard, storage)):
        table = refs_table(ref for ref, _ in page)
        counts = {"listed": table.num_rows, "duplicates": 0, "skipped": 0}
        if claims:
            keep = claim_new(claims, table, [occurrence(shard, ref.video_uri, o) for ref, o in page])
            counts["duplicates"] = int((~keep).sum())
            table = table.filter(pa.array(keep))
        if index is not None:
            table, counts["skipped"] = anti_join(table, index)
        counts["to_score"] = table.num_rows
        backlog = ray.get(ledger.page.remote((n, page_no), counts, time.time()))
        if table.num_rows:
            yield table
        while backlog > lead:
            time.sleep(0.2)
            backlog = ray.get(ledger.backlog.remote())


class VideoDatasource(Datasource):
    """`ray.data.read_datasource(VideoDatasource(shards, ...))`: one read task per shard."""

    def __init__(self, shards: list[Shard], storage: Storage, *, ledger, resume=None, claims: list | None = None, lead: int = 4096,
                 row_bytes: int | None = None):
        super().__init__()
        self.shards, self.storage, self.ledger, self.lead = shards, storage, ledger, lead
        self.row_bytes = row_bytes  # a listing row's size (the driver shapes blocks by bytes with it), None: unknown
        self.resume = [resume] if resume is not None else []  # in a list: the read task fetches it itself
        self.claims = claims or []

    def estimate_inmemory_data_size(self) -> None:
        return None  # unknown until listed

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list[ReadTask]:
        storage, ledger, resume, claims, lead = self.storage, self.ledger, self.resume, self.claims, self.lead

        def task(n: int, shard: Shard):  # captures one shard, not the datasource
            return lambda: read_shard(n, shard, storage, ledger, resume, claims, lead)

        meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
        return [ReadTask(task(n, s), meta, schema=LISTING_SCHEMA, per_task_row_limit=per_task_row_limit) for n, s in enumerate(self.shards)]
