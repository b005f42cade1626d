"""Training items: which shard rows a worker trains on (`BalancedSampler`) and the uint8 sequences made of them
(`SequenceBuilder`, `collate`).

Sampling (per worker, `BalancedSampler`): every incoming track emits exactly one training item, so step counts
stay equal across workers. With ``balance="sampler"`` the item's class is REAL or FAKE with probability 1/2,
drawn from bounded per-class pools fed by the stream (minority tracks are repeated, majority tracks thinned).
Self-blended fakes (`dfbatch.training.sbi`, parameters once per sequence) are made from REAL tracks: ``sbi="mix"``
makes a FAKE item self-blended with probability ``sbi_fraction`` (always when no labelled fake is at hand),
``sbi="only"`` ignores labelled fakes. Each item: ``seq_len`` frames (a random phase of an even stride over
the track; padded with `lengths` when shorter), then `dfbatch.training.augment` (drawn once per sequence).
Validation builds its sequences with ``rng=None``: the whole track evenly subsampled, like scoring.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from dfbatch.training.augment import AugmentConfig, SequenceAugment
from dfbatch.training.sbi import SBIConfig, SelfBlender


@dataclass
class Item:
    row: dict  # a shard row (frames = JPEG bytes)
    label: str  # REAL | FAKE (what the model is taught)
    sbi: bool = False  # make a self-blended fake from this (REAL) row


class BalancedSampler:
    """Consumes shard rows and emits exactly one training `Item` per row (see module doc)."""

    def __init__(self, rng: np.random.Generator, *, balance: bool = True, sbi: str = "off", sbi_fraction: float = 0.5,
                 pool_size: int = 256):
        self.rng, self.balance, self.sbi, self.sbi_fraction = rng, balance, sbi, sbi_fraction
        self.pool_size = max(1, pool_size)
        self.pools: dict[str, list[dict]] = {"REAL": [], "FAKE": []}
        self.emitted: Counter = Counter()

    def _add(self, row: dict) -> None:
        pool = self.pools[row["label"]]
        if len(pool) < self.pool_size:
            pool.append(row)
        else:
            pool[int(self.rng.integers(len(pool)))] = row

    def _pick(self, label: str) -> dict:
        pool = self.pools[label]
        return pool[int(self.rng.integers(len(pool)))]

    def _fake(self) -> Item | None:
        reals, fakes = self.pools["REAL"], self.pools["FAKE"]
        use_sbi = self.sbi != "off" and reals and (self.sbi == "only" or not fakes or self.rng.random() < self.sbi_fraction)
        if use_sbi:
            return Item(self._pick("REAL"), "FAKE", sbi=True)
        if fakes:
            return Item(self._pick("FAKE"), "FAKE")
        return None

    def _real_or(self, row: dict) -> Item:
        """A pooled REAL; the row itself when no REAL arrived yet (sbi=only before the first real)."""
        return Item(self._pick("REAL"), "REAL") if self.pools["REAL"] else Item(row, row["label"])

    def feed(self, row: dict) -> Item:
        label = row["label"]
        if not (label == "FAKE" and self.sbi == "only"):
            self._add(row)
        if self.balance:
            want = "FAKE" if self.rng.random() < 0.5 else "REAL"
            item = self._fake() if want == "FAKE" else (Item(self._pick("REAL"), "REAL") if self.pools["REAL"] else None)
            item = item or self._fake() or self._real_or(row)
        elif label == "FAKE":
            item = Item(row, "FAKE") if self.sbi != "only" else (self._fake() or self._real_or(row))
        elif self.sbi != "off" and self.rng.random() < (self.sbi_fraction if self.sbi == "mix" else 0.5):
            item = Item(row, "FAKE", sbi=True)
        else:
            item = Item(row, "REAL")
        self.emitted[item.label + ("/sbi" if item.sbi else "")] += 1
        return item


def row_key(row: dict) -> bytes:
    """A shard row's content (label, track, crops), not its name: the same for every preparation of an archive
    (a video's id holds its path and mtime; which part file a row lands in depends on Ray's scheduling)."""
    h = hashlib.sha1(f"{row['label']}\0{row.get('track')}".encode())
    for frame in row["frames"]:
        h.update(frame)
    return h.digest()


def shuffle_window(rows: Iterable[dict], window: int, rng: np.random.Generator) -> Iterator[dict]:
    """Shuffle a row stream in windows of ``window`` rows: each window is put in content order (`row_key`) and then
    permuted by ``rng``. Within a window the order depends on the rows and the seed alone, so a training set that
    fits in one window (the demo's) is read in one order however its parts were written; ``window=0``: as they come."""
    if window <= 0:
        yield from rows
        return
    buf: list[dict] = []
    for row in rows:
        buf.append(row)
        if len(buf) == window:
            yield from _permuted(buf, rng)
            buf = []
    yield from _permuted(buf, rng)


def _permuted(buf: list[dict], rng: np.random.Generator) -> list[dict]:
    buf = sorted(buf, key=row_key)
    return [buf[i] for i in rng.permutation(len(buf))]


def frame_positions(n: int, seq_len: int, rng: np.random.Generator | None) -> np.ndarray:
    """Which of a track's n frames form one sequence: all when n <= seq_len; else an even stride over the track
    (``n // seq_len``) with a random phase (training) or evenly spread (``rng=None``, like scoring)."""
    if n <= seq_len:
        return np.arange(n)
    if rng is None:
        return np.unique(np.round(np.linspace(0, n - 1, seq_len)).astype(int))
    stride = max(1, n // seq_len)
    span = stride * (seq_len - 1) + 1
    start = int(rng.integers(0, n - span + 1))
    return start + stride * np.arange(seq_len)


class SequenceBuilder:
    """Item -> uint8 (T, S, S, 3) RGB: decode the chosen JPEG frames, self-blend if asked, augment."""

    def __init__(self, seq_len: int, *, augment: AugmentConfig | None = None, sbi: SBIConfig | None = None):
        self.seq_len = seq_len
        self.augment = SequenceAugment(augment) if augment is not None else None
        self.blender = SelfBlender(sbi or SBIConfig())

    def decode(self, frames: list[bytes], positions: Iterable[int]) -> np.ndarray:
        from dfbatch.stages.crops import decode_jpeg

        return np.stack([decode_jpeg(frames[int(i)]) for i in positions])

    def __call__(self, item: Item, rng: np.random.Generator | None) -> np.ndarray:
        frames = item.row["frames"]
        seq = self.decode(frames, frame_positions(len(frames), self.seq_len, rng))
        if item.sbi:
            seq = self.blender(seq, rng if rng is not None else _stable_rng(item.row["video_id"], item.row.get("track"))).fake
        if self.augment is not None and rng is not None:
            seq = self.augment(seq, rng)
        return seq


def _stable_rng(*keys) -> np.random.Generator:
    h = hashlib.sha256("/".join(map(str, keys)).encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "big"))


def collate(seqs: list[np.ndarray], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad sequences to seq_len (repeating the last frame) -> (uint8 (B,T,S,S,3), lengths (B,))."""
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    out = np.empty((len(seqs), seq_len) + seqs[0].shape[1:], np.uint8)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
        out[i, len(s):] = s[-1]
    return out, lengths


__all__ = ["BalancedSampler", "Item", "SequenceBuilder", "collate", "frame_positions", "row_key", "shuffle_window"]
