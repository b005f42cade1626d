"""Listing: local dirs, globs, files, manifests (txt/csv/parquet), S3 prefixes over a real moto server."""

from __future__ import annotations

import os

import boto3
import pandas as pd
import pytest

from dfbatch.errors import UserError
from dfbatch.io.listing import is_video_name, iter_videos, video_id
from dfbatch.io.storage import Storage


def _tree(root):
    (root / "a" / "b").mkdir(parents=True)
    (root / ".cache").mkdir()
    for rel in ["x.mp4", "a/Y.MOV", "a/b/z.webm", "a/b/clip one é😀.mkv", "notes.txt", ".hidden.mp4", ".cache/c.mp4", "a/readme.md"]:
        (root / rel).write_bytes(b"data-" + rel.encode())
    (root / "dir.mp4").mkdir()
    os.symlink(root / "x.mp4", root / "a" / "link.avi")
    return root


def test_directory_listing_is_recursive_and_filters(tmp_path):
    root = _tree(tmp_path)
    uris = sorted(os.path.relpath(r.video_uri, root) for r in iter_videos([str(root)], Storage()))
    assert uris == ["a/Y.MOV", "a/b/clip one é😀.mkv", "a/b/z.webm", "x.mp4"]  # a/link.avi: x.mp4 again, listed once


def test_extension_match_is_case_insensitive():
    assert is_video_name("A.MP4") and is_video_name("b.Mov") and is_video_name("c.webm")
    assert not is_video_name(".x.mp4") and not is_video_name("y.txt") and not is_video_name("dir/")


def test_glob_and_explicit_file(tmp_path):
    root = _tree(tmp_path)
    hits = [os.path.basename(r.video_uri) for r in iter_videos([str(root / "**" / "*.webm")], Storage())]
    assert hits == ["z.webm"]
    odd = root / "odd.bin"
    odd.write_bytes(b"?")
    assert [r.video_uri for r in iter_videos([str(odd)], Storage())] == [str(odd)]


def test_missing_source_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        list(iter_videos([str(tmp_path / "nope")], Storage()))
    with pytest.raises(UserError, match="matched no videos"):
        list(iter_videos([str(tmp_path / "*.mp4")], Storage()))


def test_video_id_is_stable_and_changes_with_content(tmp_path):
    f = tmp_path / "v.mp4"
    f.write_bytes(b"one")
    (a,) = iter_videos([str(f)], Storage())
    (b,) = iter_videos([str(f)], Storage())
    assert a.video_id == b.video_id
    f.write_bytes(b"three")
    (c,) = iter_videos([str(f)], Storage())
    assert c.video_id != a.video_id
    assert video_id("u", 1, "m") == video_id("u", 1, "m") != video_id("u", 2, "m")


def test_manifests_txt_csv_parquet(tmp_path):
    root = _tree(tmp_path)
    (root / "m.txt").write_text("# comment\nx.mp4\n\na/Y.MOV\nmissing.mp4\n")
    refs = list(iter_videos([str(root / "m.txt")], Storage()))
    assert [os.path.basename(r.video_uri) for r in refs] == ["x.mp4", "Y.MOV", "missing.mp4"]
    assert refs[2].list_error and "cannot stat" in refs[2].list_error  # becomes a failed row, not a crash
    pd.DataFrame({"uri": [str(root / "x.mp4")], "other": [1]}).to_csv(root / "m.csv", index=False)
    assert len(list(iter_videos([str(root / "m.csv")], Storage()))) == 1
    pd.DataFrame({"uri": ["a/b/z.webm"]}).to_parquet(root / "m.parquet")
    (ref,) = iter_videos([str(root / "m.parquet")], Storage())
    assert ref.video_uri == str(root / "a" / "b" / "z.webm") and ref.size_bytes > 0
    pd.DataFrame({"path": ["x"]}).to_csv(root / "bad.csv", index=False)
    with pytest.raises(UserError, match="no 'uri' column"):
        list(iter_videos([str(root / "bad.csv")], Storage()))


def test_s3_prefix_listing_over_http(s3_endpoint):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="archive")
    for key in ["day1/a.mp4", "day1/sub/B.MKV", "day1/.tmp.mp4", "day1/notes.txt", "day1/dir/", "day2/c.mp4"]:
        s3.put_object(Bucket="archive", Key=key, Body=b"x" * 10)
    storage = Storage(s3_endpoint)
    uris = sorted(r.video_uri for r in iter_videos(["s3://archive/day1"], storage))
    assert uris == ["s3://archive/day1/a.mp4", "s3://archive/day1/sub/B.MKV"]
    refs = list(iter_videos(["s3://archive/day*/*.mp4"], storage))
    assert sorted(r.video_uri for r in refs) == ["s3://archive/day1/a.mp4", "s3://archive/day2/c.mp4"]
    assert all(r.size_bytes == 10 and r.mtime for r in refs)  # ETag is the version
    (one,) = iter_videos(["s3://archive/day2/c.mp4"], storage)
    assert one.size_bytes == 10
    with pytest.raises(UserError):
        list(iter_videos(["s3://archive/nothing-here/"], storage))
    with pytest.raises(UserError, match="cannot list"):
        list(iter_videos(["s3://no-such-bucket/x/"], storage))


# ------------------------------------------------------------------------------------------------ shards
def test_s3_key_ranges_partition_the_prefix(s3_endpoint):
    """Flat keys (first-character ranges) and folders (one range per group of folders): every key in exactly one
    shard, the same refs as one sequential listing, and shards with nothing to list end at once."""
    from dfbatch.io.listing import list_shard, source_shards

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="ranges")
    keys = [f"flat/{c}{i}.mp4" for c in "0a9zAZ_-" for i in range(3)] + ["flat/m", "flat/m.mp4"]
    keys += [f"dated/2026-11-{d:02d}/{i}.mp4" for d in range(1, 8) for i in range(2)] + ["dated/top.mp4", "dated/2026-11-03/"]
    for k in keys:
        s3.put_object(Bucket="ranges", Key=k, Body=b"v")
    storage = Storage(s3_endpoint)
    for prefix, expect_shards in (("flat/", 4), ("dated/", 4)):
        shards = source_shards(0, f"s3://ranges/{prefix}", storage, max_shards=4, page=0)  # page=0: split even so few
        assert len(shards) == expect_shards and shards[0].start is None and shards[-1].stop is None
        assert all(a.stop == b.start for a, b in zip(shards, shards[1:]))
        per_shard = [[r.video_uri for page in list_shard(sh, storage) for r, _ in page] for sh in shards]
        flat = [u for uris in per_shard for u in uris]
        assert len(flat) == len(set(flat)) and sorted(flat) == sorted(r.video_uri for r in iter_videos([f"s3://ranges/{prefix}"], storage))
        assert sum(1 for uris in per_shard if uris) >= 2, per_shard  # the listing is really split
    # a prefix whose first LIST page holds every key and no folder is one shard (one read task, not 16)
    one = source_shards(0, "s3://ranges/flat/", storage)
    assert len(one) == 1 and (one[0].start, one[0].stop) == (None, None)
    assert sorted(r.video_uri for page in list_shard(one[0], storage) for r, _ in page) == sorted(
        r.video_uri for r in iter_videos(["s3://ranges/flat/"], storage))
    # its videos are counted while planning (they size the job's actor pools); a split listing is not counted
    assert one[0].videos == len(list(iter_videos(["s3://ranges/flat/"], storage))) == 25
    assert all(sh.videos is None for sh in shards)
    assert len(source_shards(0, "s3://ranges/flat/", storage, page=len(keys) // 10)) > 1  # more keys than a page
    glob_shards = source_shards(0, "s3://ranges/dated/2026-11-0*/*.mp4", storage, max_shards=3, page=0)
    assert sorted(r.video_uri for sh in glob_shards for page in list_shard(sh, storage) for r, _ in page) == sorted(
        f"s3://ranges/dated/2026-11-{d:02d}/{i}.mp4" for d in range(1, 8) for i in range(2))


def test_directory_and_manifest_shards(tmp_path):
    from dfbatch.io.listing import list_shard, may_repeat, source_shards

    root = _tree(tmp_path / "src")
    shards = source_shards(0, str(root), Storage(), max_shards=3, page=0)  # page=0: split even so few
    # the root's own files, then its subdirectories in groups (the hidden .cache is not one; dir.mp4 is a directory)
    assert [(s.kind, s.paths) for s in shards] == [("dirfiles", (str(root),)), ("tree", (str(root / "a"),)), ("tree", (str(root / "dir.mp4"),))]
    listed = [r.video_uri for sh in shards for page in list_shard(sh, Storage()) for r, _ in page]
    assert listed == [r.video_uri for r in iter_videos([str(root)], Storage())]
    # a tree of at most a page of entries is one shard, listing the same (a larger one is split as above)
    one = source_shards(0, str(root), Storage(), max_shards=3)
    assert [(s.kind, s.paths) for s in one] == [("tree", (str(root),))]
    assert [r.video_uri for page in list_shard(one[0], Storage()) for r, _ in page] == listed
    assert all(s.videos is None for s in shards) and one[0].videos >= len(listed) > 0  # an upper bound
    flat = source_shards(0, str(root / "a" / "b"), Storage())
    assert [s.kind for s in flat] == ["dirfiles"] and flat[0].videos == len(list(iter_videos([str(root / "a" / "b")], Storage()))) == 2
    assert [s.videos for s in source_shards(0, listed[0], Storage())] == [1]
    assert len(source_shards(0, str(root), Storage(), max_shards=3, page=3)) == 3
    pd.DataFrame({"uri": [f"v{i}.mp4" for i in range(10)] + ["v0.mp4"]}).to_parquet(tmp_path / "m.parquet", row_group_size=3)
    mshards = source_shards(0, str(tmp_path / "m.parquet"), Storage(), max_shards=2)
    assert [s.row_groups for s in mshards] == [(0, 1), (2, 3)] and [s.first_row for s in mshards] == [0, 6]
    assert [s.videos for s in mshards] == [6, 5]
    rows = [(os.path.basename(r.video_uri), n) for sh in mshards for page in list_shard(sh, Storage()) for r, n in page]
    assert rows == [(f"v{i}.mp4", i) for i in range(10)] + [("v0.mp4", 10)]  # a repeated URI keeps its own row number
    assert may_repeat([str(tmp_path / "m.parquet")]) and may_repeat([str(root), str(root / "a")]) and may_repeat([str(root), str(root / "*.mp4")])
    assert not may_repeat([str(root / "a"), str(root / "x.mp4")]) and not may_repeat(["s3://b/x/", "s3://b/y/", str(root)])


def test_resume_anti_join(tmp_path):
    import numpy as np

    from dfbatch.io.listing import refs_table
    from dfbatch.io.results import ResultStore
    from dfbatch.io.resume import anti_join, scored_index

    root = _tree(tmp_path / "src")
    refs = list(iter_videos([str(root)], Storage()))
    store = ResultStore(str(tmp_path / "out"), Storage())
    store.check_writable()
    assert len(scored_index(store, "m", "1")) == 0
    store.write_part([{"video_id": refs[0].video_id, "video_uri": "a", "status": "ok", "model_name": "m", "model_version": "1"},
                      {"video_id": refs[1].video_id, "video_uri": "b", "status": "failed", "model_name": "m", "model_version": "1"},
                      {"video_id": refs[2].video_id, "video_uri": "c", "status": "ok", "model_name": "m", "model_version": "2"}], job_id="j")
    index = scored_index(store, "m", "1")
    assert index.dtype == np.dtype("S20") and list(index) == sorted(r.video_id.encode() for r in refs[:2])
    kept, skipped = anti_join(refs_table(refs), index)
    assert skipped == 2 and kept.column("video_id").to_pylist() == [r.video_id for r in refs[2:]]
    retrying = scored_index(store, "m", "1", retry=("all",))  # --retry-failed --retry-errors all: failed rows are not done
    assert anti_join(refs_table(refs), retrying)[1] == 1


def test_datasource_dedups_resumes_and_counts_once_per_page(ray_local, tmp_path):
    """Read tasks in Ray: overlapping SOURCEs and a manifest that repeats a URI give each video once; a shard read
    again (a retried task) yields the same rows and changes no count; already-scored ids are dropped."""
    import ray

    from dfbatch.io.datasource import IdClaims, ListingLedger, VideoDatasource, read_shard
    from dfbatch.io.listing import may_repeat, source_shards

    root = _tree(tmp_path / "src")
    (tmp_path / "m.txt").write_text(f"{root / 'x.mp4'}\n{root / 'x.mp4'}\n{root / 'a' / 'Y.MOV'}\n")
    sources = [str(root), str(root / "a"), str(tmp_path / "m.txt")]
    assert may_repeat(sources)
    storage = Storage()
    shards = [sh for i, s in enumerate(sources) for sh in source_shards(i, s, storage, max_shards=2, page=0)]
    ledger = ray.remote(ListingLedger).options(num_cpus=0).remote()
    claims = [ray.remote(IdClaims).options(num_cpus=0).remote() for _ in range(2)]
    done = next(iter_videos([str(root / "x.mp4")], storage)).video_id
    resume = ray.put(__import__("numpy").array([done], dtype="S20"))
    assert shards[1].source == 0 and shards[1].paths == (str(root / "a"), str(root / "dir.mp4"))
    # shard 1 listed before the others (which claim first is otherwise up to the scheduler): it claims root/a's videos
    # (not a/link.avi: the walk of root lists x.mp4, the file it links to, itself)
    assert sum(t.num_rows for t in read_shard(1, shards[1], storage, ledger, [resume], claims, lead=10**6)) == 3
    ds = ray.data.read_datasource(VideoDatasource(shards, storage, ledger=ledger, resume=resume, claims=claims), override_num_blocks=len(shards))
    uris = sorted(r["video_uri"] for r in ds.take_all())
    everything = sorted({r.video_uri for r in iter_videos([str(root)], storage)})
    assert uris == [u for u in everything if not u.endswith("/x.mp4")]
    first = ray.get(ledger.totals.remote())["counts"]
    # root/a lists a/link.avi (its target is outside root/a): the same video as root's x.mp4, so a duplicate
    assert first["listed"] == 4 + 4 + 3 and first["skipped"] == 1 and first["duplicates"] == 4 + 3 and first["to_score"] == 3
    again = list(read_shard(1, shards[1], storage, ledger, [resume], claims, lead=10**6))  # shard 1 (root/a, root/dir.mp4) again
    assert sum(t.num_rows for t in again) == 3 and ray.get(ledger.totals.remote())["counts"] == first
    for actor in [ledger, *claims]:
        ray.kill(actor)
