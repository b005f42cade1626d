"""`dfbatch prepare`: face-stage rows -> JPEG track shards, the commit protocol, resume, and the Ray job on real
clips (slow)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dfbatch.errors import UserError
from dfbatch.training.prepare import (
    PrepareConfig,
    ShardStore,
    decode_jpeg,
    prepared_row,
    read_shards,
    run_prepare,
)


def _face_row(n_tracks=2, lengths=(3, 2), S=16):
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, size=(sum(lengths), S, S, 3), dtype=np.uint8)
    crops[:] = crops.mean(axis=(1, 2), keepdims=True).astype(np.uint8)  # flat colours survive JPEG
    tracks = [{"frame_indices": list(range(10 * t, 10 * t + n)), "boxes": [], "probs": []} for t, n in enumerate(lengths)]
    return {"video_uri": "/v/a.mp4", "video_id": "abc", "status": "ok", "error": None, "n_frames": 5, "n_faces": 5,
            "n_tracks": n_tracks, "crop_size": S, "fps": 25.0, "duration_s": 1.0, "tracks": json.dumps(tracks),
            "crops": crops.tobytes()}, crops


def test_prepared_row_splits_crops_into_tracks_as_jpeg():
    face, crops = _face_row()
    ref = {"label": "FAKE", "group": "csv:a", "split": "val", "dataset": "csv", "original": "/v/b.mp4"}
    row = prepared_row(ref, face, jpeg_quality=95)
    assert row["label"] == "FAKE" and row["split"] == "val" and row["original"] == "/v/b.mp4"
    assert row["track_frame_indices"] == [[0, 1, 2], [10, 11]]
    assert [len(t) for t in row["track_frames"]] == [3, 2]
    back = decode_jpeg(row["track_frames"][1][0])
    assert back.shape == (16, 16, 3) and np.abs(back.astype(int) - crops[3].astype(int)).max() <= 3
    bad = dict(face, tracks=json.dumps([{"frame_indices": [0, 1, 2, 3, 4, 5]}]))
    assert prepared_row(ref, bad, 90)["status"] == "failed"
    none = dict(face, status="no_face", tracks="[]", crops=b"", n_tracks=0)
    assert prepared_row(ref, none, 90)["track_frames"] == []


def test_store_commit_protocol_resume_set_and_retry(tmp_path):
    store = ShardStore(str(tmp_path / "out"))
    store.check_writable()
    face, _ = _face_row()
    ref = {"label": "REAL", "group": "csv:a", "split": "train", "dataset": "csv", "original": None}
    ok = prepared_row(ref, face, 90)
    failed = dict(prepared_row(ref, dict(face, video_id="zzz", status="failed", tracks="[]", crops=b""), 90),
                  error="cannot decode")
    counts = store.write_part([ok, failed], "job1")
    assert counts["ok"] == 1 and counts["failed"] == 1 and counts["tracks_train"] == 2
    shards = read_shards(str(tmp_path / "out"), "train")
    assert list(shards["track"]) == [0, 1] and list(shards["n_frames"]) == [3, 2] and set(shards["label"]) == {"REAL"}
    assert store.prepared_ids() == {"abc", "zzz"} and store.prepared_ids(include_failed=False) == {"abc"}
    # an uncommitted shard part (no videos part of the same name) is removed by recover()
    orphan = tmp_path / "out" / "shards" / "val" / "part-deadbeef.parquet"
    orphan.write_bytes((tmp_path / "out" / "shards" / "train").glob("*.parquet").__next__().read_bytes())
    assert store.recover() == 1 and not orphan.exists()
    # a retried video: the latest row wins
    store.write_part([dict(failed, status="ok", error=None)], "job2")
    v = store.videos()
    assert len(v) == 2 and v.set_index("video_id").loc["zzz", "status"] == "ok"


def test_changed_parameters_are_refused(tmp_path):
    store = ShardStore(str(tmp_path / "out"))
    store.check_writable()
    store.write_params({"frames": 16, "crop_size": 112, "margin": 0.25, "fractions": [0.8, 0.1, 0.1],
                        "split_seed": 0, "official": True})
    (tmp_path / "labels.csv").write_text("file,label\na.mp4,REAL\n")
    cfg = PrepareConfig(sources=[str(tmp_path / "labels.csv")], output=str(tmp_path / "out"), frames=32, crop_size=112)
    with pytest.raises(UserError, match="frames: 16 -> 32"):
        run_prepare(cfg)


def test_crop_and_detection_settings_are_pinned():
    """The crops' JPEG quality and the detection become the trained model's input contract: shards made with
    other ones are refused; shards whose parameters predate pinning them resume when they match."""
    from dataclasses import asdict

    from dfbatch.training.prepare import check_params

    cfg = PrepareConfig(sources=["labels.csv"], output="out")
    before = {"frames": 32, "crop_size": 128, "margin": 0.25, "jpeg_quality": 92, "fractions": [0.8, 0.1, 0.1],
              "split_seed": 0, "official": True, "faces": asdict(cfg.faces)}  # a _prepare.json of before
    check_params(before, cfg)
    check_params(json.loads(json.dumps({**before, **cfg.pinned()})), cfg)
    with pytest.raises(UserError, match="jpeg_quality: 92 -> 80"):
        check_params(before, cfg.replace(jpeg_quality=80))
    with pytest.raises(UserError, match="detection: .*'detect_every': 4.* -> .*'detect_every': 1"):
        check_params(before, cfg.replace(faces={"detect_every": 1, "detect_max_side": 640}))
    with pytest.raises(UserError, match="margin: 0.25 -> 0.4"):
        check_params(before, cfg.replace(faces={"margin": 0.4}))


@pytest.mark.slow
def test_prepare_real_clips_then_resume(ray_local, tmp_path):
    from dfbatch.corpora import synth

    arch = tmp_path / "arch"
    synth.demo_archive(arch, n_real=2, n_fake=2, size=(320, 180), seconds=1.0, fps=15, faceless=True, broken=True)
    cfg = PrepareConfig(sources=[str(arch / "labels.csv")], output=str(tmp_path / "shards"), frames=6, crop_size=48,
                        fractions=(0.5, 0.5, 0.0))
    s = run_prepare(cfg)
    assert s.labelled == 6 and s.processed == 6 and s.skipped == 0
    assert s.actors == 1  # 6 videos on 2 CPUs: one actor (at most one per 8 videos), not one per core
    assert s.counts == {"ok": 4, "no_face": 1, "failed": 1}
    store = ShardStore(cfg.output)
    videos = store.videos()
    shards = read_shards(cfg.output)
    assert set(shards["video_id"]) == set(videos.loc[videos["status"] == "ok", "video_id"])
    assert (shards["crop_size"] == 48).all() and shards["n_frames"].between(2, 6).all()
    assert decode_jpeg(shards["frames"].iloc[0][0]).shape == (48, 48, 3)
    split = pd.read_parquet(f"{cfg.output}/split.parquet")
    assert split["video_id"].notna().all() and set(split["split"]) <= {"train", "val"}
    merged = shards.merge(split[["video_id", "split", "label"]], on="video_id", suffixes=("", "_table"))
    assert (merged["split"] == merged["split_table"]).all() and (merged["label"] == merged["label_table"]).all()
    from dfbatch.io.listing import video_id

    import os

    st = os.stat(arch / "real_000.mp4")
    assert video_id(str(arch / "real_000.mp4"), st.st_size, str(st.st_mtime_ns)) in set(videos["video_id"])
    # rerun: everything is skipped, nothing is written twice; --retry-failed retries the broken file only
    again = run_prepare(cfg)
    assert again.skipped == 6 and again.processed == 0
    retry = run_prepare(PrepareConfig(**{**cfg.__dict__, "retry_failed": True, "face_workers": 2}))
    assert retry.processed == 1 and retry.counts["failed"] == 1 and retry.actors == 2  # a given count is kept
    assert len(read_shards(cfg.output)) == len(shards)
