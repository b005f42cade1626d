"""Label ingestion for training/evaluation: one table for every supported dataset layout, and leak-free splits.

`load_labels(root)` reads a dataset tree (local path or any fsspec URL such as ``s3://bucket/prefix``) into a
pandas DataFrame with one row per video:

=============  ==============================================================================================
column         meaning
=============  ==============================================================================================
uri            the video: a local path (as given, made absolute) or a full URL (``s3://bucket/key``)
label          ``"REAL"`` or ``"FAKE"``
group          the leakage unit: videos that share a person/source video share a group key (prefixed by the
               dataset, e.g. ``ffpp:953``); fakes are grouped with their target/original video
source_group   nullable: the group of the *donor* identity of a face swap (FF++ ``TTT_SSS`` → ``ffpp:SSS``,
               Celeb-DF ``idX_idY_NNNN`` → ``celebdf:idY``); `assign_splits` links it to `group`
original       nullable: the uri of the real video a fake was made from, when known and present
split          nullable: the dataset's *official* split (``train``/``val``/``test``) until `assign_splits`
               fills every row
dataset        ``dfdc`` | ``ffpp`` | ``celebdf`` | ``csv``
method         nullable: the manipulation method / subset (FF++ ``Deepfakes``…, Celeb-DF ``Celeb-synthesis``…)
=============  ==============================================================================================

Layouts (`detect_layout` picks one; or name it with ``layout=``):

* **DFDC** (``dfdc``): a ``metadata.json`` per folder (root or ``dfdc_train_part_*/``) mapping
  ``"x.mp4" -> {"label": "FAKE"|"REAL", "original": "y.mp4"|null, "split": ...}``. DFDC's training metadata
  says ``"split": "train"`` for every video, which carries no held-out information, so ``train`` there is read
  as *no official split*; other values are kept. The test release's ``labels.csv`` (``filename,label``) uses
  **label 1 = FAKE, 0 = REAL** — the competition's convention (log loss over P(FAKE) with y = 1 for FAKE); its
  rows get ``split = "test"``. DFDC has no identity ids: a fake is grouped with its ``original``; use
  ``dfdc_group="folder"`` to group by part folder instead (coarser, safer against repeated actors).
* **FaceForensics++** (``ffpp``): ``original_sequences/<src>/<comp>/videos/NNN.mp4`` (REAL, group ``NNN``),
  ``manipulated_sequences/<method>/<comp>/videos/TTT_SSS.mp4`` (FAKE, group ``TTT``, donor ``SSS``, original
  ``…/youtube/<comp>/videos/TTT.mp4``). ``masks/`` folders are skipped. DeepFakeDetection
  (``actors``/``DeepFakeDetection``) files ``AA__scene.mp4`` / ``AA_BB__scene__HASH.mp4`` are grouped by actor.
  Official ``splits/{train,val,test}.json`` (lists of ``[TTT, SSS]`` pairs) — found at the root or in a
  ``splits/`` next to it — set ``split`` of every video whose target id is in a pair.
* **Celeb-DF v2** (``celebdf``): ``Celeb-real/idX_NNNN.mp4`` and ``YouTube-real/NNNNN.mp4`` (REAL),
  ``Celeb-synthesis/idX_idY_NNNN.mp4`` (FAKE, target ``idX``, donor ``idY``, original
  ``Celeb-real/idX_NNNN.mp4``); folder names match case-insensitively. ``List_of_testing_videos.txt`` lines
  ``<1|0> folder/file.mp4`` (**1 = REAL**, 0 = FAKE, the Celeb-DF convention — the opposite of DFDC) set
  ``split = "test"``; a label there that disagrees with the folder is reported and the folder wins.
* **flat CSV** (``csv``): a CSV with columns ``file,label`` (paths relative to the CSV's folder, or absolute /
  URLs); labels ``REAL``/``FAKE`` (any case) or ``0``/``1`` with 1 = FAKE; optional ``group``, ``original``
  (relative like ``file``), ``split`` columns are honoured. ``root`` may be the CSV itself or a folder holding
  ``labels.csv``.

Splits (`assign_splits`): videos are linked into components by union-find over ``group``, ``source_group``
and ``original``; a whole component lands on one side. Official splits win (a component with any official
row takes it; conflicting officials resolve test > val > train so nothing officially held out leaks into
training). Remaining components get a deterministic split from a hash of (seed, component key) against the
fractions; for a dataset that already has official splits only the splits it does not define officially are
drawn (Celeb-DF: the official test list, train/val drawn from the rest). Hashing is stable: adding videos never
moves an existing group. When donor links would glue most of a dataset into one component (Celeb-DF's
identities are all swapped with each other) those links are dropped for that dataset with a warning.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import fsspec
import pandas as pd

from dfbatch.errors import UserError

log = logging.getLogger(__name__)

COLUMNS = ["uri", "label", "group", "source_group", "original", "split", "dataset", "method"]
LABELS = ("REAL", "FAKE")
SPLITS = ("train", "val", "test")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
LAYOUTS = ("dfdc", "ffpp", "celebdf", "csv")
DEFAULT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                  "dev": "val", "test": "test", "testing": "test"}
_SPLIT_PRIORITY = {"test": 3, "val": 2, "train": 1}


class SplitLeak(UserError):
    """A group/original/source link crosses splits."""


# --------------------------------------------------------------------------------------------------- fs helpers
@dataclass
class _Tree:
    """A dataset root on some fsspec filesystem; builds the uris rows carry."""

    fs: fsspec.AbstractFileSystem
    root: str  # path on fs (no protocol), no trailing slash
    local: bool

    @classmethod
    def open(cls, root: str, storage_options: Mapping | None = None) -> "_Tree":
        fs, path = fsspec.core.url_to_fs(str(root), **dict(storage_options or {}))
        local = "file" in _protocols(fs)
        if local:
            path = os.path.abspath(path)
        return cls(fs, path.rstrip("/") or "/", local)

    def uri(self, path: str) -> str:
        return path if self.local else self.fs.unstrip_protocol(path)

    def join(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts) if not self.local else os.path.join(self.root, *parts)

    def rel(self, path: str) -> str:
        return path[len(self.root):].lstrip("/").lstrip(os.sep)

    def find(self, path: str | None = None) -> list[str]:
        path = path or self.root
        if not self.fs.exists(path):
            return []
        return sorted(self.fs.find(path, withdirs=False))

    def _entries(self, path: str | None, kind: str) -> dict[str, str]:
        """Immediate entries of one ``kind`` (``directory`` | ``file``): lower-case name -> path."""
        try:
            entries = self.fs.ls(path or self.root, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        out = {}
        for e in entries:
            if e.get("type") == kind:
                name = e["name"].rstrip("/")
                out[posixpath.basename(name).lower()] = name
        return out

    def dirs(self, path: str | None = None) -> dict[str, str]:
        """Immediate sub-folders: lower-case name -> path."""
        return self._entries(path, "directory")

    def files(self, path: str | None = None) -> dict[str, str]:
        """Immediate files: lower-case name -> path."""
        return self._entries(path, "file")

    def read_text(self, path: str) -> str:
        with self.fs.open(path, "rb") as fh:
            return fh.read().decode("utf-8-sig")


def _protocols(fs) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)


def _is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_EXTS)


def _stem(path: str) -> str:
    return posixpath.splitext(posixpath.basename(path.replace(os.sep, "/")))[0]


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=COLUMNS)
    for c in COLUMNS:
        df[c] = df[c].astype("object").where(df[c].notna(), None)
    return df


def _norm_label(value, *, one_means: str = "FAKE") -> str:
    s = str(value).strip().upper()
    if s in LABELS:
        return s
    if s in ("1", "1.0", "TRUE"):
        return one_means
    if s in ("0", "0.0", "FALSE"):
        return "REAL" if one_means == "FAKE" else "FAKE"
    raise UserError(f"unknown label {value!r} (expected REAL/FAKE or 0/1)")


def _norm_split(value) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    s = str(value).strip().lower()
    if not s or s in ("none", "nan", "null"):
        return None
    if s not in _SPLIT_ALIASES:
        raise UserError(f"unknown split {value!r} (expected train/val/test)")
    return _SPLIT_ALIASES[s]


# ---------------------------------------------------------------------------------------------------- detection
def detect_layout(root: str, storage_options: Mapping | None = None) -> str:
    """Which layout `root` holds: ``dfdc`` | ``ffpp`` | ``celebdf`` | ``csv``. Raises UserError if none fits."""
    tree = _Tree.open(root, storage_options)
    if tree.fs.isfile(tree.root):
        if tree.root.lower().endswith(".csv"):
            return "csv"
        raise UserError(f"{root}: a file that is not a CSV label list")
    if not tree.fs.exists(tree.root):
        raise UserError(f"{root}: no such dataset folder")
    dirs, files = tree.dirs(), tree.files()
    if "original_sequences" in dirs or "manipulated_sequences" in dirs:
        return "ffpp"
    if {"celeb-real", "celeb-synthesis", "youtube-real"} & set(dirs) or "list_of_testing_videos.txt" in files:
        return "celebdf"
    if "metadata.json" in files or any(tree.fs.exists(posixpath.join(d, "metadata.json")) for d in dirs.values()):
        return "dfdc"
    if "labels.csv" in files:
        header = _csv_header(tree, files["labels.csv"])
        if "filename" in header and "file" not in header:
            return "dfdc"
        return "csv"
    csvs = [p for n, p in files.items() if n.endswith(".csv") and "file" in _csv_header(tree, p)]
    if len(csvs) == 1:
        return "csv"
    raise UserError(
        f"{root}: cannot tell the dataset layout (expected DFDC metadata.json, FaceForensics++ original_sequences/"
        f"manipulated_sequences, Celeb-DF Celeb-real/Celeb-synthesis, or a file,label CSV); pass layout=")


def _csv_header(tree: _Tree, path: str) -> list[str]:
    with tree.fs.open(path, "rb") as fh:
        first = fh.readline().decode("utf-8-sig")
    return [c.strip().lower() for c in first.strip().split(",")]


# ------------------------------------------------------------------------------------------------------ readers
def _dfdc_entries(tree: _Tree, files: dict[str, str]) -> Iterable[tuple[str, str, str | None, str | None, bool]]:
    """(file name, label as written, original, split, from the test labels.csv) per video of one DFDC folder."""
    if "metadata.json" in files:
        for name, info in sorted(json.loads(tree.read_text(files["metadata.json"])).items()):
            info = info or {}
            split = _norm_split(info.get("split"))
            yield name, info.get("label"), info.get("original") or None, None if split == "train" else split, False  # train metadata: always "train"
    if "labels.csv" in files:
        table = pd.read_csv(io.StringIO(tree.read_text(files["labels.csv"])), dtype=str)
        table.columns = [c.strip().lower() for c in table.columns]
        if {"filename", "label"} <= set(table.columns):
            for name, lab in zip(table["filename"], table["label"]):
                yield name, lab, None, "test", True


def read_dfdc(root: str, storage_options: Mapping | None = None, *, dfdc_group: str = "original") -> pd.DataFrame:
    """DFDC: every ``metadata.json`` at the root or one folder down, plus a test-release ``labels.csv`` (whose
    videos already in a metadata.json are not read twice)."""
    if dfdc_group not in ("original", "folder"):
        raise UserError("dfdc_group must be 'original' or 'folder'")
    tree = _Tree.open(root, storage_options)
    rows: list[dict] = []
    seen: set[str] = set()
    for folder in [tree.root] + sorted(tree.dirs().values()):
        files = tree.files(folder)
        videos = {posixpath.basename(p): p for p in files.values() if _is_video(p)}
        folder_key = posixpath.basename(folder) if folder != tree.root else "."
        path_of = lambda name: videos.get(name) or posixpath.join(folder, name)  # noqa: E731
        for name, label, orig, split, from_test_csv in _dfdc_entries(tree, files):
            path = path_of(name)
            if from_test_csv and path in seen:
                continue
            label = _norm_label(label, one_means="FAKE")
            key = folder_key if dfdc_group == "folder" else _stem(orig if (label == "FAKE" and orig) else name)
            rows.append(dict(uri=tree.uri(path), label=label, group=f"dfdc:{key}", source_group=None,
                             original=tree.uri(path_of(orig)) if orig else None, split=split, dataset="dfdc", method=None))
            seen.add(path)
    if not rows:
        raise UserError(f"{root}: no DFDC metadata.json or labels.csv found")
    return _frame(rows)


_FF_REAL = re.compile(r"^(\d{3})$")
_FF_FAKE = re.compile(r"^(\d{3})_(\d{3})$")
_DFD_REAL = re.compile(r"^(\d{2})__.+$")
_DFD_FAKE = re.compile(r"^(\d{2})_(\d{2})__.+$")


def read_ffpp(root: str, storage_options: Mapping | None = None, *, compression: str | Sequence[str] | None = None,
              splits_dir: str | None = None) -> pd.DataFrame:
    """FaceForensics++ (and its DeepFakeDetection part). ``compression`` keeps only e.g. ``"c23"``."""
    tree = _Tree.open(root, storage_options)
    comps = {compression} if isinstance(compression, str) else (set(compression) if compression else None)
    rows: list[dict] = []
    real_by_key: dict[tuple[str, str], str] = {}  # (compression, id) -> uri of the real video
    entries = []
    for top, is_fake in (("original_sequences", False), ("manipulated_sequences", True)):
        top_dir = tree.dirs().get(top)
        if not top_dir:
            continue
        for path in tree.find(top_dir):
            parts = tree.rel(path).replace(os.sep, "/").split("/")
            # top/<method or source>/<comp>/videos/<file>
            if len(parts) != 5 or parts[3] != "videos" or not _is_video(path):
                continue
            method, comp = parts[1], parts[2]
            if comp.lower() == "masks" or (comps and comp not in comps):
                continue
            entries.append((is_fake, method, comp, path))
    for is_fake, method, comp, path in entries:
        stem = _stem(path)
        if not is_fake:
            m = _FF_REAL.match(stem) or _DFD_REAL.match(stem)
            if m:
                real_by_key[(comp, stem)] = tree.uri(path)
    for is_fake, method, comp, path in entries:
        stem = _stem(path)
        src_group = original = None
        if not is_fake:
            m = _FF_REAL.match(stem) or _DFD_REAL.match(stem)
            if not m:
                log.warning("ffpp: skipping unrecognised real video name %s", path)
                continue
            group = f"ffpp:{m.group(1)}" if _FF_REAL.match(stem) else f"ffpp:actor{m.group(1)}"
        else:
            m = _FF_FAKE.match(stem)
            if m:
                group, src_group = f"ffpp:{m.group(1)}", f"ffpp:{m.group(2)}"
                original = real_by_key.get((comp, m.group(1)))
            else:
                m = _DFD_FAKE.match(stem)
                if not m:
                    log.warning("ffpp: skipping unrecognised fake video name %s", path)
                    continue
                group, src_group = f"ffpp:actor{m.group(1)}", f"ffpp:actor{m.group(2)}"
                scene = stem.split("__")[1] if "__" in stem else ""
                original = real_by_key.get((comp, f"{m.group(1)}__{scene}"))
        rows.append(dict(uri=tree.uri(path), label="FAKE" if is_fake else "REAL", group=group, source_group=src_group,
                         original=original, split=None, dataset="ffpp", method=method))
    if not rows:
        raise UserError(f"{root}: no FaceForensics++ videos under original_sequences/ or manipulated_sequences/")
    df = _frame(rows)
    official = _ffpp_official_splits(tree, splits_dir)
    if official:
        df["split"] = [official.get(g) for g in df["group"]]
    return df


def _ffpp_official_splits(tree: _Tree, splits_dir: str | None) -> dict[str, str]:
    """group key (``ffpp:TTT``) -> split, from ``splits/{train,val,test}.json``."""
    candidates = [splits_dir] if splits_dir else [tree.join("splits"), posixpath.join(posixpath.dirname(tree.root), "splits")]
    for cand in candidates:
        if cand is None:
            continue
        if splits_dir:
            sfs, cand = fsspec.core.url_to_fs(cand)
        else:
            sfs = tree.fs
        if not sfs.exists(posixpath.join(cand, "test.json")) and not sfs.exists(posixpath.join(cand, "train.json")):
            continue
        out: dict[str, str] = {}
        for split in SPLITS:
            p = posixpath.join(cand, f"{split}.json")
            if not sfs.exists(p):
                continue
            with sfs.open(p, "rb") as fh:
                pairs = json.loads(fh.read().decode("utf-8"))
            for pair in pairs:
                for vid in pair:
                    key = f"ffpp:{int(vid):03d}" if str(vid).isdigit() else f"ffpp:{vid}"
                    prev = out.get(key)
                    if prev and prev != split:
                        log.warning("ffpp splits: %s listed in %s and %s", key, prev, split)
                    out[key] = max(prev or split, split, key=_SPLIT_PRIORITY.get)
        return out
    return {}


_CDF_REAL = re.compile(r"^(id\d+)_(\d+)$")
_CDF_FAKE = re.compile(r"^(id\d+)_(id\d+)_(\d+)$")
_CDF_FOLDERS = {"celeb-real": "REAL", "youtube-real": "REAL", "celeb-synthesis": "FAKE"}


def read_celebdf(root: str, storage_options: Mapping | None = None, *, test_list: str | None = None) -> pd.DataFrame:
    """Celeb-DF (v1/v2): Celeb-real/, YouTube-real/, Celeb-synthesis/ and List_of_testing_videos.txt."""
    tree = _Tree.open(root, storage_options)
    dirs = tree.dirs()
    rows: list[dict] = []
    by_rel: dict[str, int] = {}  # lower-case "folder/file" -> row index
    real_uri: dict[str, str] = {}
    listing = {}
    for folder, label in _CDF_FOLDERS.items():
        if folder in dirs:
            listing[folder] = [p for p in tree.find(dirs[folder]) if _is_video(p)]
    for p in listing.get("celeb-real", []):
        real_uri[_stem(p)] = tree.uri(p)
    for folder, paths in listing.items():
        label = _CDF_FOLDERS[folder]
        for path in paths:
            stem = _stem(path)
            src_group = original = None
            if folder == "youtube-real":
                group = f"celebdf:yt{stem}"
            elif folder == "celeb-real":
                m = _CDF_REAL.match(stem)
                group = f"celebdf:{m.group(1)}" if m else f"celebdf:{stem}"
            else:
                m = _CDF_FAKE.match(stem)
                if m:
                    group, src_group = f"celebdf:{m.group(1)}", f"celebdf:{m.group(2)}"
                    original = real_uri.get(f"{m.group(1)}_{m.group(3)}")
                else:
                    group = f"celebdf:{stem}"
            by_rel[f"{folder}/{posixpath.basename(path).lower()}"] = len(rows)
            rows.append(dict(uri=tree.uri(path), label=label, group=group, source_group=src_group,
                             original=original, split=None, dataset="celebdf", method=posixpath.basename(dirs[folder])))
    if not rows:
        raise UserError(f"{root}: no Celeb-DF videos under Celeb-real/, YouTube-real/ or Celeb-synthesis/")
    files = tree.files()
    tl = test_list or files.get("list_of_testing_videos.txt")
    if tl:
        missing = mismatched = 0
        for line in tree.read_text(tl).splitlines():
            parts = line.split()
            if len(parts) != 2:
                continue
            flag, rel = parts
            listed = "REAL" if flag.strip() == "1" else "FAKE"  # Celeb-DF: 1 = real
            folder, _, name = rel.replace("\\", "/").partition("/")
            i = by_rel.get(f"{folder.lower()}/{name.lower()}")
            if i is None:
                missing += 1
                continue
            rows[i]["split"] = "test"
            if rows[i]["label"] != listed:
                mismatched += 1
        if missing:
            log.warning("celebdf: %d videos of the testing list are not in %s", missing, root)
        if mismatched:
            log.warning("celebdf: %d testing-list labels disagree with their folder (folder wins)", mismatched)
    return _frame(rows)


def read_csv_labels(path: str, storage_options: Mapping | None = None) -> pd.DataFrame:
    """A ``file,label`` CSV; ``path`` is the CSV or a folder holding ``labels.csv`` (or exactly one file,label CSV)."""
    tree = _Tree.open(path, storage_options)
    if tree.fs.isdir(tree.root):
        files = tree.files()
        if "labels.csv" in files:
            csv_path = files["labels.csv"]
        else:
            cands = [p for n, p in files.items() if n.endswith(".csv") and "file" in _csv_header(tree, p)]
            if len(cands) != 1:
                raise UserError(f"{path}: expected labels.csv (file,label) in this folder")
            csv_path = cands[0]
    else:
        csv_path = tree.root
    base = posixpath.dirname(csv_path) if not tree.local else os.path.dirname(csv_path)
    table = pd.read_csv(io.StringIO(tree.read_text(csv_path)), dtype=str, keep_default_na=False)
    table.columns = [c.strip().lower() for c in table.columns]
    if not {"file", "label"} <= set(table.columns):
        raise UserError(f"{csv_path}: needs columns file,label (has {', '.join(table.columns)})")

    def resolve(p: str | None) -> str | None:
        if p is None or not str(p).strip():
            return None
        p = str(p).strip()
        if "://" in p:
            return p
        if tree.local:
            return p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p))
        return tree.uri(p if p.startswith("/") else posixpath.normpath(posixpath.join(base, p)))

    rows = []
    for rec in table.to_dict("records"):
        uri = resolve(rec["file"])
        if uri is None:
            continue
        group = str(rec.get("group") or "").strip()
        rows.append(dict(uri=uri, label=_norm_label(rec["label"]),
                         group=f"csv:{group}" if group else f"csv:{uri}",
                         source_group=None, original=resolve(rec.get("original")),
                         split=_norm_split(rec.get("split")), dataset="csv", method=(rec.get("method") or None)))
    if not rows:
        raise UserError(f"{csv_path}: no rows")
    return _frame(rows)


_READERS = {"dfdc": read_dfdc, "ffpp": read_ffpp, "celebdf": read_celebdf, "csv": read_csv_labels}


def load_labels(roots: str | os.PathLike | Iterable[str | os.PathLike], layout: str = "auto", *,
                storage_options: Mapping | None = None, **options) -> pd.DataFrame:
    """Read one or more dataset roots into the label table (columns `COLUMNS`); ``layout`` = auto|dfdc|ffpp|celebdf|csv.

    Extra ``options`` go to the reader (``compression=`` for FF++, ``dfdc_group=`` for DFDC, ``test_list=`` for
    Celeb-DF). Duplicate uris keep their first row.
    """
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    frames = []
    for root in roots:
        root = os.fspath(root)
        kind = detect_layout(root, storage_options) if layout == "auto" else layout
        if kind not in _READERS:
            raise UserError(f"unknown layout {kind!r} (expected one of: auto, {', '.join(LAYOUTS)})")
        reader = _READERS[kind]
        accepted = {"dfdc": {"dfdc_group"}, "ffpp": {"compression", "splits_dir"}, "celebdf": {"test_list"},
                    "csv": set()}[kind]
        df = reader(root, storage_options, **{k: v for k, v in options.items() if k in accepted})
        log.info("%s: %d videos (%s layout)", root, len(df), kind)
        frames.append(df)
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    dup = df["uri"].duplicated()
    if dup.any():
        log.warning("dropping %d duplicate video uris", int(dup.sum()))
        df = df[~dup].reset_index(drop=True)
    return df


# ------------------------------------------------------------------------------------------------------- splits
class _UnionFind:
    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # smallest key becomes the root, so component keys do not depend on row order
            lo, hi = sorted((ra, rb))
            self.parent[hi] = lo


def components(df: pd.DataFrame, *, link_sources: bool | str = "auto", max_component_frac: float = 0.5) -> pd.Series:
    """Component key per row: rows sharing a group, linked by ``original`` (a fake and its real) or by
    ``source_group`` (the donor identity) are one component.

    ``link_sources="auto"`` links donors except inside components that donor links would grow beyond
    ``max_component_frac`` of their dataset (and beyond 8 videos): Celeb-DF swaps every identity with several
    others, so linking would put the whole dataset in one group. There, only target identities (and
    fake→original) are linked, with a warning.
    """
    index = df.index
    df = df.reset_index(drop=True)
    uri_group = dict(zip(df["uri"], df["group"]))
    comp = pd.Series(index=df.index, dtype="object")
    for dataset, part in df.groupby(df["dataset"].fillna(""), sort=False):
        def build(with_sources: bool) -> pd.Series:
            uf = _UnionFind()
            for g, orig, src in zip(part["group"], part["original"], part["source_group"]):
                uf.find(g)
                if orig is not None and orig in uri_group:
                    uf.union(g, uri_group[orig])
                if with_sources and src is not None:
                    uf.union(g, src)
            return part["group"].map(uf.find)

        keys = build(link_sources is not False)
        if link_sources == "auto" and part["source_group"].notna().any():
            sizes = keys.map(keys.value_counts())
            big = sizes > max(max_component_frac * len(part), 8)
            if big.any():
                log.warning("%s: linking donor identities would put %d of %d videos in one split group; "
                            "those are split by target identity only (donor faces may appear on both sides)",
                            dataset or "dataset", int(big.sum()), len(part))
                keys = keys.where(~big, build(False))
        comp.loc[part.index] = keys
    comp.index = index
    return comp


def _unit_hash(seed: int, key: str) -> float:
    h = hashlib.sha256(f"dfbatch-split/{seed}/{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0 ** 64


def _fractions(fractions) -> dict[str, float]:
    if fractions is None:
        fractions = DEFAULT_FRACTIONS
    if not isinstance(fractions, Mapping):
        fractions = dict(zip(SPLITS, fractions))
    fr = {_SPLIT_ALIASES.get(str(k).lower(), k): float(v) for k, v in fractions.items()}
    bad = set(fr) - set(SPLITS)
    if bad or any(v < 0 for v in fr.values()) or sum(fr.values()) <= 0:
        raise UserError(f"bad split fractions {fractions!r} (non-negative train/val/test)")
    return {s: fr.get(s, 0.0) for s in SPLITS}


def assign_splits(df: pd.DataFrame, fractions: Mapping[str, float] | Sequence[float] | None = None, *, seed: int = 0,
                  official: bool = True, link_sources: bool | str = "auto",
                  pin: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Return a copy with every row's ``split`` set so that no component (see `components`) straddles splits.

    ``fractions``: ``{"train": .8, "val": .1, "test": .1}`` (default) or a (train, val, test) tuple; normalised.
    Official splits (the incoming ``split`` column) win when ``official``. ``pin`` maps group keys to the split
    an earlier run gave them (resume: a group already written to shards never moves); pins rank below official
    splits. Adds column ``split_group`` (the component key) and ``split_source`` (``official`` | ``pinned`` |
    ``hash``).
    """
    fr = _fractions(fractions)
    index = df.index
    out = df.reset_index(drop=True)
    comp = components(out, link_sources=link_sources)
    out["split_group"] = comp
    split = pd.Series(index=out.index, dtype="object")
    source = pd.Series("hash", index=out.index, dtype="object")
    for dataset, part in out.groupby(out["dataset"].fillna(""), sort=False):
        given = [_norm_split(v) if official else None for v in part["split"]]
        present = {s for s in given if s is not None}
        comp_official: dict[str, str] = {}
        for key, s in zip(part["split_group"], given):
            if s is None:
                continue
            prev = comp_official.get(key)
            if prev and prev != s:
                log.warning("%s: official splits disagree inside group %s (%s vs %s); using the more held-out one",
                            dataset, key, prev, s)
                s = max(prev, s, key=_SPLIT_PRIORITY.get)
            comp_official[key] = s
        comp_pinned: dict[str, str] = {}
        for key, g in zip(part["split_group"], part["group"]):
            s = _norm_split((pin or {}).get(g))
            if s is not None and key not in comp_official:
                comp_pinned[key] = max(comp_pinned.get(key, s), s, key=_SPLIT_PRIORITY.get)
        draw = {s: v for s, v in fr.items() if v > 0 and s not in present} or {s: v for s, v in fr.items() if v > 0}
        free = sorted(set(part["split_group"]) - set(comp_official) - set(comp_pinned))
        chosen = _draw(free, draw, seed, part) if not comp_pinned else _draw_hash(free, draw, seed)
        for idx, key in zip(part.index, part["split_group"]):
            if key in comp_official:
                split[idx], source[idx] = comp_official[key], "official"
            elif key in comp_pinned:
                split[idx], source[idx] = comp_pinned[key], "pinned"
            else:
                split[idx] = chosen[key]
    out["split"] = split
    out["split_source"] = source
    out.index = index
    return out


def _draw_hash(keys: list[str], fractions: dict[str, float], seed: int) -> dict[str, str]:
    names = list(fractions)
    total = sum(fractions.values())
    cum, acc = [], 0.0
    for s in names:
        acc += fractions[s] / total
        cum.append(acc)
    return {k: next((s for s, c in zip(names, cum) if _unit_hash(seed, k) < c), names[-1]) for k in keys}


def _draw(keys: list[str], fractions: dict[str, float], seed: int, part: pd.DataFrame) -> dict[str, str]:
    """Hash each component key into a split; if a wanted split comes out empty although there are enough
    components, fall back to allocating components in hash order by their video counts."""
    names = list(fractions)
    total = sum(fractions.values())
    chosen = _draw_hash(keys, fractions, seed)
    if len(keys) >= len(names) and set(chosen.values()) != set(names):
        sizes = part["split_group"].value_counts()
        order = sorted(keys, key=lambda k: _unit_hash(seed, k))
        n_total = float(sum(sizes[k] for k in keys))
        # give each split at least one component, then fill by cumulative video share
        targets = {s: fractions[s] / total * n_total for s in names}
        filled = {s: 0.0 for s in names}
        chosen = {}
        for s, k in zip(names, order[: len(names)]):
            chosen[k] = s
            filled[s] += sizes[k]
        for k in order[len(names):]:
            s = max(names, key=lambda s: (targets[s] - filled[s], -names.index(s)))
            chosen[k] = s
            filled[s] += sizes[k]
        log.info("split: hashing left a split empty; allocated %d groups by size instead", len(keys))
    return chosen


def check_splits(df: pd.DataFrame, *, link_sources: bool = False) -> None:
    """Raise `SplitLeak` if a group, or a fake and its original, sits on two sides; with ``link_sources`` donors
    too. Every row must have a split."""
    if df["split"].isna().any():
        raise SplitLeak(f"{int(df['split'].isna().sum())} rows have no split")
    keys = components(df, link_sources=link_sources).to_numpy()
    per = df["split"].groupby(keys).nunique()
    bad = per[per > 1]
    if len(bad):
        raise SplitLeak(f"{len(bad)} groups straddle splits, e.g. {', '.join(map(str, bad.index[:3]))}")


def split_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Videos per split x label (and group counts) — for logs and MLflow params."""
    t = df.groupby(["split", "label"]).size().unstack(fill_value=0)
    t["groups"] = df.groupby("split")["group"].nunique()
    return t


# --------------------------------------------------------------------------------------------------- save/load
def save_split(df: pd.DataFrame, path: str, storage_options: Mapping | None = None) -> str:
    """Write the table (Parquet if ``path`` ends with .parquet, else CSV) to a local path or URL; returns path."""
    fs, p = fsspec.core.url_to_fs(str(path), **dict(storage_options or {}))
    parent = posixpath.dirname(p) if "file" not in _protocols(fs) else os.path.dirname(os.path.abspath(p))
    if parent:
        fs.makedirs(parent, exist_ok=True)
    table = df.copy()
    for c in table.columns:
        if table[c].dtype == object:
            table[c] = table[c].astype("string")
    with fs.open(p, "wb") as fh:
        if str(path).lower().endswith((".parquet", ".pq")):
            table.to_parquet(fh, index=False)
        else:
            fh.write(table.to_csv(index=False).encode("utf-8"))
    return str(path)


def load_split(path: str, storage_options: Mapping | None = None) -> pd.DataFrame:
    """Read a table written by `save_split` (nulls come back as None)."""
    fs, p = fsspec.core.url_to_fs(str(path), **dict(storage_options or {}))
    with fs.open(p, "rb") as fh:
        if str(path).lower().endswith((".parquet", ".pq")):
            df = pd.read_parquet(fh)
        else:
            df = pd.read_csv(fh, dtype=str, keep_default_na=False, na_values=[""])
    for c in df.columns:
        if c in COLUMNS or c in ("split_group", "split_source"):
            df[c] = df[c].astype("object").where(df[c].notna(), None)
    return df
