"""Resume: an anti-join of each listing block against the videos that already have a row (no Ray import).

`scored_index` reads the ids once, when a job starts, into a sorted fixed-width array (20 bytes a video, no
Python objects; the job keeps it in the object store, so no process holds a set of every id); `anti_join`
drops a block's rows whose id is in it. Which rows count as done is the index's filter: today every row of
the model version (`failed` too); retrying failures is a different `statuses` filter.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dfbatch.io.results import ResultStore

ID_DTYPE = "S20"  # video_id: 20 hex characters (listing.video_id)


def scored_index(store: ResultStore, model_name: str, model_version: str, *, statuses: tuple[str, ...] | None = None) -> np.ndarray:
    """Sorted unique video_ids with a row for this model version (only rows whose status is in `statuses`, if
    given), read column-wise in batches."""
    ds = store.dataset("videos")
    if ds is None:
        return np.empty(0, ID_DTYPE)
    flt = (pc.field("model_name") == model_name) & (pc.field("model_version") == str(model_version))
    if statuses is not None:
        flt = flt & pc.field("status").isin(list(statuses))
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
