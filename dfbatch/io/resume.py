"""Resume: an anti-join of each listing block against the videos that already have a row (no Ray import).

`scored_index` reads the ids once, when a job starts, into a sorted fixed-width array (20 bytes a video, no
Python objects; the job keeps it in the object store, so no process holds a set of every id); `anti_join`
drops a block's rows whose id is in it. Which rows count as done is the index's filter (`io.results.resume_filter`):
every row of the model version, minus the failed ones `--retry-failed` scores again.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from dfbatch.io.results import ResultStore, resume_filter

ID_DTYPE = "S20"  # video_id: 20 hex characters (listing.video_id)


def scored_index(store: ResultStore, model_name: str, model_version: str, *, retry: tuple[str, ...] | None = None) -> np.ndarray:
    """Sorted unique video_ids with a row for this model version (with `retry`, minus the failed rows whose error
    kind or class it names: `io.results.retry_filter`), read column-wise in batches."""
    ds = store.dataset("videos")
    if ds is None:
        return np.empty(0, ID_DTYPE)
    flt = resume_filter(model_name, model_version, retry)
    chunks = [batch.column(0).to_numpy(zero_copy_only=False).astype(ID_DTYPE)
              for batch in ds.to_batches(columns=["video_id"], filter=flt, batch_size=65536) if batch.num_rows]
    return np.unique(np.concatenate(chunks)) if chunks else np.empty(0, ID_DTYPE)


def anti_join(table: pa.Table, index: np.ndarray) -> tuple[pa.Table, int]:
    """(rows of `table` whose video_id is not in `index`, number of rows dropped)."""
    if not len(index) or not table.num_rows:
        return table, 0
    ids = table.column("video_id").to_numpy(zero_copy_only=False).astype(ID_DTYPE)
    pos = np.minimum(np.searchsorted(index, ids), len(index) - 1)
    done = index[pos] == ids
    return (table.filter(pa.array(~done)), int(done.sum())) if done.any() else (table, 0)
