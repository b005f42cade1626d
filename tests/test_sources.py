"""Listing: local dirs, globs, files, manifests (txt/csv/parquet), S3 prefixes over a real moto server."""

from __future__ import annotations

import os

import boto3
import pandas as pd
import pytest

from dfbatch.errors import UserError
from dfbatch.io.listing import Listing, is_video_name, iter_videos, video_id
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
    assert uris == ["a/Y.MOV", "a/b/clip one é😀.mkv", "a/b/z.webm", "a/link.avi", "x.mp4"]


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


def test_listing_streams_small_tables_dedups_and_skips(tmp_path):
    root = _tree(tmp_path / "src")
    refs = list(iter_videos([str(root)], Storage()))
    listing = Listing(iter_videos([str(root), str(root / "x.mp4")], Storage()), skip_ids={refs[0].video_id}, rows_per_table=3)
    tables = list(listing)
    assert listing.counts == {"listed": 6, "duplicates": 1, "skipped": 1, "to_score": 4}
    assert [t.num_rows for t in tables] == [3, 1]
    ids = [i for t in tables for i in t.column("video_id").to_pylist()]
    assert refs[0].video_id not in ids and len(set(ids)) == 4


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
