"""Label ingestion (DFDC, FaceForensics++, Celeb-DF, flat CSV) and leak-free splits, on miniature trees."""

from __future__ import annotations

import json
import os
import socket
import uuid

import pandas as pd
import pytest

from dfbatch.training import labels as ds
from dfbatch.errors import UserError


def touch(root, rel, data=b""):
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def by_name(df):
    return {os.path.basename(u): r for u, r in zip(df["uri"], df.to_dict("records"))}


# ----------------------------------------------------------------------------------------------------------- DFDC
def make_dfdc(root):
    part0 = {"aaa.mp4": {"label": "REAL", "original": None, "split": "train"},
             "bbb.mp4": {"label": "FAKE", "original": "aaa.mp4", "split": "train"},
             "ccc.mp4": {"label": "FAKE", "original": "aaa.mp4", "split": "train"},
             "ddd.mp4": {"label": "REAL", "original": None, "split": "train"}}
    part1 = {"eee.mp4": {"label": "REAL", "original": None, "split": "train"},
             "fff.mp4": {"label": "FAKE", "original": "eee.mp4", "split": "train"}}
    for part, meta in (("dfdc_train_part_0", part0), ("dfdc_train_part_1", part1)):
        touch(root, f"{part}/metadata.json", json.dumps(meta).encode())
        for name in meta:
            touch(root, f"{part}/{name}")
    touch(root, "test/labels.csv", b"filename,label\nt1.mp4,1\nt2.mp4,0\n")
    touch(root, "test/t1.mp4")
    touch(root, "test/t2.mp4")


def test_dfdc_metadata_and_test_labels(tmp_path):
    make_dfdc(tmp_path)
    assert ds.detect_layout(str(tmp_path)) == "dfdc"
    df = ds.load_labels(tmp_path)
    assert list(df.columns) == ds.COLUMNS
    rows = by_name(df)
    assert len(rows) == 8
    assert rows["aaa.mp4"]["label"] == "REAL" and rows["bbb.mp4"]["label"] == "FAKE"
    assert rows["bbb.mp4"]["group"] == rows["ccc.mp4"]["group"] == rows["aaa.mp4"]["group"] == "dfdc:aaa"
    assert rows["bbb.mp4"]["original"] == str(tmp_path / "dfdc_train_part_0" / "aaa.mp4")
    assert rows["aaa.mp4"]["original"] is None
    assert rows["aaa.mp4"]["split"] is None  # DFDC's "train" everywhere is no official split
    # test release: 1 = FAKE
    assert rows["t1.mp4"]["label"] == "FAKE" and rows["t2.mp4"]["label"] == "REAL"
    assert rows["t1.mp4"]["split"] == "test"
    assert all(os.path.isabs(u) for u in df["uri"])
    out = ds.assign_splits(df, {"train": 0.7, "val": 0.3})
    ds.check_splits(out)
    r = by_name(out)
    assert r["t1.mp4"]["split"] == "test" and r["t1.mp4"]["split_source"] == "official"
    assert len({r[n]["split"] for n in ("aaa.mp4", "bbb.mp4", "ccc.mp4")}) == 1
    assert set(out.loc[out["split_source"] == "hash", "split"]) <= {"train", "val"}


def test_dfdc_group_by_folder(tmp_path):
    make_dfdc(tmp_path)
    df = ds.load_labels(tmp_path, layout="dfdc", dfdc_group="folder")
    r = by_name(df)
    assert r["aaa.mp4"]["group"] == r["ddd.mp4"]["group"] == "dfdc:dfdc_train_part_0"


# ---------------------------------------------------------------------------------------------------------- FF++
FF_PAIRS = [("000", "003"), ("001", "002"), ("004", "005"), ("006", "007")]


def make_ffpp(root, splits=True, comps=("c23",)):
    for comp in comps:
        for a, b in FF_PAIRS:
            for t, s in ((a, b), (b, a)):
                touch(root, f"original_sequences/youtube/{comp}/videos/{t}.mp4")
                for method in ("Deepfakes", "FaceSwap"):
                    touch(root, f"manipulated_sequences/{method}/{comp}/videos/{t}_{s}.mp4")
                touch(root, f"manipulated_sequences/Deepfakes/masks/videos/{t}_{s}.mp4")
        touch(root, f"original_sequences/actors/{comp}/videos/01__walking.mp4")
        touch(root, f"manipulated_sequences/DeepFakeDetection/{comp}/videos/01_02__walking__ABCD1234.mp4")
    if splits:
        touch(root, "splits/train.json", json.dumps([list(FF_PAIRS[0]), list(FF_PAIRS[3])]).encode())
        touch(root, "splits/val.json", json.dumps([list(FF_PAIRS[1])]).encode())
        touch(root, "splits/test.json", json.dumps([list(FF_PAIRS[2])]).encode())


def test_ffpp_labels_groups_official_splits(tmp_path):
    make_ffpp(tmp_path)
    assert ds.detect_layout(str(tmp_path)) == "ffpp"
    df = ds.load_labels(tmp_path)
    r = by_name(df)
    assert "masks" not in " ".join(df["uri"])
    assert len(df) == 8 + 16 + 2
    assert r["000.mp4"]["label"] == "REAL" and r["000_003.mp4"]["label"] == "FAKE"
    assert r["000_003.mp4"]["group"] == "ffpp:000" and r["000_003.mp4"]["source_group"] == "ffpp:003"
    assert r["000_003.mp4"]["original"].endswith("original_sequences/youtube/c23/videos/000.mp4")
    assert r["01_02__walking__ABCD1234.mp4"]["group"] == "ffpp:actor01"
    assert r["01_02__walking__ABCD1234.mp4"]["original"].endswith("actors/c23/videos/01__walking.mp4")
    assert r["004.mp4"]["split"] == "test" and r["005_004.mp4"]["split"] == "test"
    assert r["002_001.mp4"]["split"] == "val"
    out = ds.assign_splits(df, seed=3)
    ds.check_splits(out, link_sources=True)
    r = by_name(out)
    # official splits win, for reals and fakes of both pair members
    for a, b in FF_PAIRS:
        want = {"000": "train", "006": "train", "001": "val", "004": "test"}[a]
        for n in (f"{a}.mp4", f"{b}.mp4", f"{a}_{b}.mp4", f"{b}_{a}.mp4"):
            assert r[n]["split"] == want, n
    assert r["01__walking.mp4"]["split"] == r["01_02__walking__ABCD1234.mp4"]["split"]
    assert r["01__walking.mp4"]["split_source"] == "hash"


def test_ffpp_without_splits_keeps_pairs_together(tmp_path):
    make_ffpp(tmp_path, splits=False, comps=("c23", "c40"))
    df = ds.load_labels(tmp_path, compression="c40")
    assert all("/c40/" in u for u in df["uri"])
    df = ds.load_labels(tmp_path)
    assert df["split"].isna().all()
    out = ds.assign_splits(df, (0.5, 0.25, 0.25), seed=1)
    ds.check_splits(out, link_sources=True)
    pair_split = out.groupby("split_group")["split"].nunique()
    assert (pair_split == 1).all()
    # donor linking: 000_003 and 003_000 and both reals are one component
    r = by_name(out)
    assert r["000_003.mp4"]["split_group"] == r["003.mp4"]["split_group"] == r["003_000.mp4"]["split_group"]
    assert set(out["split"]) == {"train", "val", "test"}  # 5 components -> every split non-empty


# ------------------------------------------------------------------------------------------------------ Celeb-DF
def make_celebdf(root):
    for n in ("id0_0000", "id0_0001", "id1_0000", "id2_0000", "id3_0000"):
        touch(root, f"celeb-real/{n}.mp4")  # lower-case folder on purpose
    for n in ("00000", "00001", "00002"):
        touch(root, f"YouTube-real/{n}.mp4")
    for n in ("id0_id1_0000", "id0_id2_0001", "id1_id0_0000", "id2_id3_0000", "id3_id0_0000"):
        touch(root, f"Celeb-synthesis/{n}.mp4")
    touch(root, "List_of_testing_videos.txt",
          b"1 YouTube-real/00000.mp4\n1 Celeb-real/id3_0000.mp4\n0 Celeb-synthesis/id3_id0_0000.mp4\n"
          b"1 Celeb-real/id9_0000.mp4\n")


def test_celebdf(tmp_path):
    make_celebdf(tmp_path)
    assert ds.detect_layout(str(tmp_path)) == "celebdf"
    df = ds.load_labels(tmp_path)
    r = by_name(df)
    assert len(df) == 13
    assert r["id0_id1_0000.mp4"]["label"] == "FAKE" and r["00001.mp4"]["label"] == "REAL"
    assert r["id0_id1_0000.mp4"]["group"] == "celebdf:id0" and r["id0_id1_0000.mp4"]["source_group"] == "celebdf:id1"
    assert r["id0_id2_0001.mp4"]["original"] == str(tmp_path / "celeb-real" / "id0_0001.mp4")
    assert r["00001.mp4"]["group"] == "celebdf:yt00001"
    assert r["id3_0000.mp4"]["split"] == "test" and r["00000.mp4"]["split"] == "test"
    assert r["id0_0000.mp4"]["split"] is None
    out = ds.assign_splits(df, seed=0)
    ds.check_splits(out)
    r = by_name(out)
    # the test list is kept; the rest is drawn between train and val only
    assert r["id3_id0_0000.mp4"]["split"] == "test"
    rest = out[out["split_source"] == "hash"]
    assert set(rest["split"]) <= {"train", "val"} and len(rest)
    # donor links would glue id0..id3 into one component bigger than half the data: dropped (target identity only)
    assert r["id0_0000.mp4"]["split_group"] != r["id1_0000.mp4"]["split_group"]


def test_celebdf_testing_list_disagreeing_label_keeps_folder(tmp_path):
    import logging

    make_celebdf(tmp_path)
    (tmp_path / "List_of_testing_videos.txt").write_text("0 Celeb-real/id1_0000.mp4\n")
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    ds.log.addHandler(handler)
    try:
        df = ds.read_celebdf(str(tmp_path))
    finally:
        ds.log.removeHandler(handler)
    assert by_name(df)["id1_0000.mp4"]["label"] == "REAL"
    assert any("disagree" in m for m in seen)


# ----------------------------------------------------------------------------------------------------------- CSV
def test_flat_csv(tmp_path):
    touch(tmp_path, "arch/real_1.mp4")
    touch(tmp_path, "arch/sub/fake_1.mp4")
    touch(tmp_path, "arch/fake_2.mp4")
    (tmp_path / "arch" / "labels.csv").write_text(
        "file,label,original\nreal_1.mp4,real,\nsub/fake_1.mp4,FAKE,real_1.mp4\nfake_2.mp4,1,\n")
    assert ds.detect_layout(str(tmp_path / "arch")) == "csv"
    for root in (tmp_path / "arch", tmp_path / "arch" / "labels.csv"):
        df = ds.load_labels(root)
        r = by_name(df)
        assert r["fake_1.mp4"]["uri"] == str(tmp_path / "arch" / "sub" / "fake_1.mp4")
        assert r["fake_1.mp4"]["original"] == str(tmp_path / "arch" / "real_1.mp4")
        assert [r[n]["label"] for n in ("real_1.mp4", "fake_1.mp4", "fake_2.mp4")] == ["REAL", "FAKE", "FAKE"]
    out = ds.assign_splits(df, (0.5, 0.5, 0))
    ds.check_splits(out)
    assert by_name(out)["fake_1.mp4"]["split"] == by_name(out)["real_1.mp4"]["split"]


def test_bad_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="cannot tell"):
        ds.detect_layout(str(tmp_path / "empty"))
    (tmp_path / "x.csv").write_text("path,y\na.mp4,1\n")
    with pytest.raises(UserError, match="file,label"):
        ds.load_labels(tmp_path / "x.csv")
    (tmp_path / "y.csv").write_text("file,label\na.mp4,maybe\n")
    with pytest.raises(UserError, match="unknown label"):
        ds.load_labels(tmp_path / "y.csv")
    with pytest.raises(UserError, match="fractions"):
        ds.assign_splits(pd.DataFrame(columns=ds.COLUMNS), {"train": -1})


# ------------------------------------------------------------------------------------------------ splits, saving
def test_hash_splits_are_stable_deterministic_and_leak_free():
    rows = []
    for i in range(300):
        rows.append(dict(uri=f"/d/{i}.mp4", label="REAL", group=f"csv:g{i}", source_group=None, original=None,
                         split=None, dataset="csv", method=None))
        for j in range(2):
            rows.append(dict(uri=f"/d/{i}_f{j}.mp4", label="FAKE", group=f"csv:g{i}", source_group=None,
                             original=f"/d/{i}.mp4", split=None, dataset="csv", method=None))
    df = pd.DataFrame(rows, columns=ds.COLUMNS)
    a = ds.assign_splits(df, seed=7)
    b = ds.assign_splits(df.sample(frac=1, random_state=0), seed=7).loc[a.index]
    assert (a["split"] == b["split"]).all()
    ds.check_splits(a)
    frac = a["split"].value_counts(normalize=True)
    assert 0.7 < frac["train"] < 0.9 and 0.04 < frac["val"] < 0.17 and 0.04 < frac["test"] < 0.17
    # adding data never moves an existing group
    c = ds.assign_splits(pd.concat([df, df.assign(uri=df["uri"] + "x", group=df["group"] + "x")]), seed=7)
    assert (c.set_index("uri").loc[a["uri"], "split"].values == a["split"].values).all()
    assert (ds.assign_splits(df, seed=8)["split"] != a["split"]).any()
    bad = a.copy()
    bad.loc[bad.index[1], "split"] = "test" if bad.loc[bad.index[0], "split"] != "test" else "train"
    with pytest.raises(ds.SplitLeak):
        ds.check_splits(bad)


@pytest.mark.parametrize("name", ["split.parquet", "split.csv"])
def test_save_and_load_split(tmp_path, name):
    make_celebdf(tmp_path / "cdf")
    df = ds.assign_splits(ds.load_labels(tmp_path / "cdf"))
    path = ds.save_split(df, str(tmp_path / "out" / name))
    back = ds.load_split(path)
    assert list(back["uri"]) == list(df["uri"]) and list(back["split"]) == list(df["split"])
    assert back["original"].iloc[0] is None or isinstance(back["original"].iloc[0], str)
    assert back.loc[back["label"] == "REAL", "source_group"].isna().all()


def test_fsspec_url_root():
    """Any fsspec URL works (memory:// here; s3:// in the slow test): uris keep their protocol."""
    import fsspec

    fs = fsspec.filesystem("memory")
    base = f"/dfbatch-{uuid.uuid4().hex}"
    for rel in ("Celeb-real/id0_0000.mp4", "Celeb-synthesis/id0_id1_0000.mp4", "YouTube-real/00001.mp4"):
        fs.pipe(f"{base}/cdf/{rel}", b"")
    fs.pipe(f"{base}/cdf/List_of_testing_videos.txt", b"1 YouTube-real/00001.mp4\n")
    df = ds.load_labels(f"memory://{base}/cdf")
    assert all(u.startswith("memory://") for u in df["uri"])
    r = by_name(df)
    assert r["id0_id1_0000.mp4"]["original"] == f"memory://{base}/cdf/Celeb-real/id0_0000.mp4"
    out = ds.assign_splits(df)
    ds.save_split(out, f"memory://{base}/out/split.parquet")
    assert list(ds.load_split(f"memory://{base}/out/split.parquet")["split"]) == list(out["split"])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_s3_root_with_moto(monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        opts = {"client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"}}
        fs = s3fs.S3FileSystem(**opts)
        fs.mkdir("labels")
        meta = {"a.mp4": {"label": "REAL"}, "b.mp4": {"label": "FAKE", "original": "a.mp4"}}
        fs.pipe("labels/dfdc/part0/metadata.json", json.dumps(meta).encode())
        fs.pipe("labels/dfdc/part0/a.mp4", b"")
        fs.pipe("labels/dfdc/part0/b.mp4", b"")
        df = ds.load_labels("s3://labels/dfdc", storage_options=opts)
        r = by_name(df)
        assert r["b.mp4"]["uri"] == "s3://labels/dfdc/part0/b.mp4"
        assert r["b.mp4"]["original"] == "s3://labels/dfdc/part0/a.mp4"
        out = ds.assign_splits(df)
        ds.save_split(out, "s3://labels/out/split.parquet", storage_options=opts)
        back = ds.load_split("s3://labels/out/split.parquet", storage_options=opts)
        assert list(back["uri"]) == list(out["uri"])
    finally:
        server.stop()


def test_pinned_groups_keep_their_split():
    rows = [dict(uri=f"/d/{i}.mp4", label="REAL", group=f"csv:g{i}", source_group=None, original=None, split=None,
                 dataset="csv", method=None) for i in range(40)]
    df = pd.DataFrame(rows, columns=ds.COLUMNS)
    first = ds.assign_splits(df, seed=3)
    flipped = {g: ("test" if s != "test" else "train") for g, s in zip(first["group"], first["split"])}
    pinned = ds.assign_splits(df, seed=3, pin={g: flipped[g] for g in list(flipped)[:10]})
    assert (pinned["split"].iloc[:10].values == [flipped[g] for g in first["group"].iloc[:10]]).all()
    assert (pinned["split_source"].iloc[:10] == "pinned").all()
    assert (pinned["split"].iloc[10:].values == first["split"].iloc[10:].values).all()  # the rest: same hash
