"""One glob semantics for S3 keys and local paths (`*`, `?`, `[...]` stay within a folder, `**` crosses folders;
wildcards skip hidden names), and one video id per stored file: a symlinked folder, a symlink to a listed file and
`s3a://` name the same video as its real path or `s3://` URI."""

from __future__ import annotations

import os

import boto3
import pytest

from dfbatch.errors import UserError
from dfbatch.io.listing import canonical_uri, glob_regex, iter_videos
from dfbatch.io.storage import Storage

FILES = ["a.mp4", "b.MOV", "notes.txt", "sub/b.mp4", "sub/deep/c.mp4", "sub/deep/deeper/d.mp4", ".hidden/d.mp4",
         "sub/.e.mp4", "x1.mp4", "sp ace/f.mp4", "s1b/g.mp4", "sub/deep/.h/i.mp4", "[x].mp4"]
# pattern -> the videos it lists, stated from the semantics (the same as Python's glob with recursive=True)
PATTERNS = {
    "*.mp4": ["[x].mp4", "a.mp4", "x1.mp4"],
    "*": ["[x].mp4", "a.mp4", "b.MOV", "x1.mp4"],
    "*/*.mp4": ["s1b/g.mp4", "sp ace/f.mp4", "sub/b.mp4"],
    "**/*.mp4": ["[x].mp4", "a.mp4", "s1b/g.mp4", "sp ace/f.mp4", "sub/b.mp4", "sub/deep/c.mp4", "sub/deep/deeper/d.mp4", "x1.mp4"],
    "sub/**": ["sub/b.mp4", "sub/deep/c.mp4", "sub/deep/deeper/d.mp4"],
    "sub/**/*.mp4": ["sub/b.mp4", "sub/deep/c.mp4", "sub/deep/deeper/d.mp4"],
    "sub/*/*.mp4": ["sub/deep/c.mp4"],
    "s?b/*.mp4": ["s1b/g.mp4", "sub/b.mp4"],
    "[st]ub/*.mp4": ["sub/b.mp4"],
    "**/c.mp4": ["sub/deep/c.mp4"],
    "x[0-9].mp4": ["x1.mp4"],
    "x[!0-9].mp4": [],
    "[[]x].mp4": ["[x].mp4"],
    ".hidden/*.mp4": [".hidden/d.mp4"],  # a hidden folder named literally is searched; `*` never picks one
    "sub*/*.mp4": ["sub/b.mp4"],
}


def _tree(root):
    for rel in FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"data-" + rel.encode())
    return root


def _list(source: str, storage: Storage) -> list[str]:
    try:
        return sorted(r.video_uri for r in iter_videos([source], storage))
    except UserError as exc:
        assert "matched no videos" in str(exc)
        return []


def test_globs_mean_the_same_on_s3_and_on_disk(tmp_path, s3_endpoint):
    root = _tree(tmp_path / "tree")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="globs")
    for rel in FILES:
        s3.put_object(Bucket="globs", Key=f"in/{rel}", Body=b"x")
    storage = Storage(s3_endpoint)
    local = {p: [os.path.relpath(u, root) for u in _list(str(root / p), storage)] for p in PATTERNS}
    remote = {p: [u.removeprefix("s3://globs/in/") for u in _list(f"s3://globs/in/{p}", storage)] for p in PATTERNS}
    assert local == PATTERNS
    assert remote == PATTERNS


def test_glob_regex_keeps_wildcards_inside_a_folder():
    assert glob_regex("a/*.mp4").match("a/x.mp4") and not glob_regex("a/*.mp4").match("a/b/x.mp4")
    assert glob_regex("a/**/x.mp4").match("a/x.mp4") and glob_regex("a/**/x.mp4").match("a/b/c/x.mp4")
    assert not glob_regex("a?b").match("a/b") and not glob_regex("a[!x]b").match("a/b")


def test_a_file_has_one_id_however_it_is_reached(tmp_path):
    real = _tree(tmp_path / "real")
    os.symlink(real, tmp_path / "link")  # a symlinked folder
    ids = {os.path.relpath(r.video_uri, real): r.video_id for r in iter_videos([str(real)], Storage())}
    via_link = {os.path.relpath(r.video_uri, tmp_path / "link"): r.video_id for r in iter_videos([str(tmp_path / "link")], Storage())}
    assert via_link == ids and len(ids) == 9
    # a symlink to a file the same folder lists is that file: listed once; a link to a file outside is followed
    os.symlink(real / "a.mp4", real / "sub" / "again.mp4")
    (tmp_path / "elsewhere.mp4").write_bytes(b"outside")
    os.symlink(tmp_path / "elsewhere.mp4", real / "outside.mp4")
    refs = {os.path.relpath(r.video_uri, real): r for r in iter_videos([str(real)], Storage())}
    assert "sub/again.mp4" not in refs and refs["outside.mp4"].size_bytes == len(b"outside")
    assert len({r.video_id for r in refs.values()}) == len(refs) == 10
    assert canonical_uri(str(tmp_path / "link" / "sub" / ".." / "a.mp4")) == str((real / "a.mp4").resolve())


def test_s3a_names_the_same_object_as_s3(s3_endpoint):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="schemes")
    s3.put_object(Bucket="schemes", Key="v/a.mp4", Body=b"x")
    storage = Storage(s3_endpoint)
    (a,) = iter_videos(["s3://schemes/v/a.mp4"], storage)
    (b,) = iter_videos(["s3a://schemes/v/a.mp4"], storage)
    (c,) = iter_videos(["s3n://schemes/v/"], storage)
    assert a.video_uri == b.video_uri == c.video_uri == "s3://schemes/v/a.mp4"
    assert a.video_id == b.video_id == c.video_id
