"""Training: sampling, sequences, metrics (fast), and Ray Train end to end on tiny shards (slow): 1 and 2 workers,
MLflow run per training, checkpoints, resume from the last checkpoint, registration as `challenger`."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from dfbatch.corpora.assets import source_frames
from dfbatch.errors import UserError
from dfbatch.training.prepare import ShardStore, decode_jpeg, encode_jpeg, read_shards
from dfbatch.evaluation.metrics import youden_threshold
from dfbatch.training.loop import aggregate_videos, val_metrics
from dfbatch.training.sampler import BalancedSampler, Item, SequenceBuilder, collate, frame_positions, shuffle_window
from dfbatch.training.trainer import TrainConfig

DATA = Path(__file__).parent / "data"


def _face_frames(rng, T, S, fake):
    """Astronaut face crops drifting a pixel a frame; FAKE: the inner face colour-shifted and blurred."""
    img = source_frames("astronaut")[0]  # PIL, not cv2.imread: its libpng breaks once decord is loaded
    d0 = int(rng.integers(0, 10))
    out = []
    for t in range(T):
        d = d0 + t
        c = cv2.resize(img[37 + d:187 + d, 155 + d:305 + d], (S, S), interpolation=cv2.INTER_AREA)
        if fake:
            m = np.zeros((S, S), np.float32)
            cv2.ellipse(m, (S // 2, S // 2), (S // 4, S // 3), 0, 0, 360, 1, -1)
            m = cv2.GaussianBlur(m, (0, 0), 2)[..., None]
            alt = cv2.GaussianBlur(np.clip(c.astype(np.float32) * [1.15, 0.9, 0.9], 0, 255), (0, 0), 1.5)
            c = (m * alt + (1 - m) * c).astype(np.uint8)
        out.append(encode_jpeg(c, 90))
    return out


DETECTION = {"detect_max_side": 640, "detect_every": 1, "min_face_px": None, "min_face_prob": 0.9}


def make_shards(out, n_train=8, n_val=4, T=8, S=48, seed=0) -> ShardStore:
    """A prepared-data folder as `dfbatch prepare` writes it, without decoding videos."""
    rng = np.random.default_rng(seed)
    store = ShardStore(str(out))
    store.check_writable()
    store.write_params({"format": "dfbatch-shards/1", "frames": T, "crop_size": S, "margin": 0.4, "jpeg_quality": 90,
                        "detection": DETECTION, "fractions": [0.7, 0.3, 0.0], "split_seed": 0, "official": True})
    rows = []
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            fake = i % 2 == 1
            vid = f"{split}{i:03d}"
            rows.append({"video_uri": f"/v/{vid}.mp4", "video_id": vid, "label": "FAKE" if fake else "REAL",
                         "group": f"csv:{vid}", "split": split, "dataset": "csv", "original": None, "status": "ok",
                         "error": None, "n_frames": T, "n_faces": T, "n_tracks": 1, "crop_size": S, "fps": 15.0,
                         "duration_s": 1.0, "track_frame_indices": [list(range(T))],
                         "track_frames": [_face_frames(rng, T, S, fake)]})
    for i in range(0, len(rows), 5):
        store.write_part(rows[i:i + 5], "job")
    return store


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    make_shards(root)
    return str(root)


# ------------------------------------------------------------------------------------------------ fast
def _rows(n_real, n_fake):
    return [{"video_id": f"r{i}", "label": "REAL", "track": 0, "frames": []} for i in range(n_real)] + \
           [{"video_id": f"f{i}", "label": "FAKE", "track": 0, "frames": []} for i in range(n_fake)]


def test_balanced_sampler_emits_one_item_per_row_and_balances_classes():
    rng = np.random.default_rng(0)
    rows = _rows(900, 100)
    rng.shuffle(rows)
    s = BalancedSampler(rng, balance=True, sbi="off", pool_size=64)
    items = [s.feed(r) for r in rows]
    assert len(items) == len(rows)
    frac = np.mean([it.label == "FAKE" for it in items])
    assert 0.42 < frac < 0.58  # 10% fakes in, about half out
    assert all(it.row["label"] == it.label for it in items) and not any(it.sbi for it in items)


def test_sampler_self_blended_modes():
    rng = np.random.default_rng(1)
    only = BalancedSampler(rng, balance=True, sbi="only")
    items = [only.feed(r) for r in _rows(300, 300)]
    fakes = [it for it in items if it.label == "FAKE"]
    assert fakes and all(it.sbi and it.row["label"] == "REAL" for it in fakes)  # labelled fakes never used
    mix = BalancedSampler(rng, balance=True, sbi="mix", sbi_fraction=0.5)
    items = [mix.feed(r) for r in _rows(500, 500)]
    kinds = Counter((it.label, it.sbi) for it in items)
    assert kinds[("FAKE", True)] > 50 and kinds[("FAKE", False)] > 50 and kinds[("REAL", False)] > 300
    # reals only, no labelled fakes at all: SBI provides the FAKE class
    reals_only = BalancedSampler(rng, balance=True, sbi="mix")
    items = [reals_only.feed(r) for r in _rows(200, 0)]
    assert 0.35 < np.mean([it.label == "FAKE" for it in items]) < 0.65
    # sbi=only and a FAKE row first (nothing pooled yet): the row itself, no crash
    first = BalancedSampler(np.random.default_rng(2), balance=True, sbi="only").feed(_rows(0, 1)[0])
    assert first.row["video_id"] == "f0"
    plain = BalancedSampler(rng, balance=False, sbi="off")
    rows = _rows(5, 5)
    assert [plain.feed(r).row for r in rows] == rows


def test_shuffle_window_order_depends_on_the_rows_and_the_seed_not_on_their_arrival():
    """A fresh `dfbatch prepare` writes the same rows into other parts: within a window the epoch's order (and so
    the model) must not change; another seed or epoch gives another order."""
    rows = [{"video_id": f"id-of-path-{i}", "label": "REAL" if i % 3 else "FAKE", "track": i % 2,
             "frames": [bytes([i, j]) for j in range(3)]} for i in range(40)]
    arrival = [rows[i] for i in np.random.default_rng(7).permutation(len(rows))]
    renamed = [dict(r, video_id=f"other-path-{n}") for n, r in enumerate(arrival)]  # another path, another mtime
    order = lambda rs, seed, window=64: [r["frames"][0] for r in shuffle_window(rs, window, np.random.default_rng(seed))]  # noqa: E731
    assert order(rows, 1) == order(arrival, 1) == order(renamed, 1)
    assert sorted(order(rows, 1)) == sorted(r["frames"][0] for r in rows)  # every row once
    assert order(rows, 1) != order(rows, 2)
    # windows of 16: each window is permuted in itself, nothing crosses a window
    win = order(arrival, 1, window=16)
    assert [sorted(win[k:k + 16]) for k in range(0, 40, 16)] == [sorted(r["frames"][0] for r in arrival[k:k + 16]) for k in range(0, 40, 16)]
    assert order(arrival, 1, window=0) == [r["frames"][0] for r in arrival]


def test_frame_positions_and_collate():
    assert list(frame_positions(5, 8, None)) == [0, 1, 2, 3, 4]
    assert list(frame_positions(32, 8, None)) == list(np.round(np.linspace(0, 31, 8)).astype(int))
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = frame_positions(32, 8, rng)
        assert len(p) == 8 and p[0] >= 0 and p[-1] <= 31 and set(np.diff(p)) == {4}
    seqs = [np.full((3, 4, 4, 3), 7, np.uint8), np.zeros((5, 4, 4, 3), np.uint8)]
    x, lengths = collate(seqs, 5)
    assert x.shape == (2, 5, 4, 4, 3) and list(lengths) == [3, 5] and (x[0, 3:] == 7).all()


def test_sequence_builder_decodes_blends_and_augments(shards):
    row = read_shards(shards, "train").iloc[0].to_dict()
    b = SequenceBuilder(4, augment=None)
    plain = b(Item(row, row["label"]), None)
    assert plain.shape == (4, 48, 48, 3) and plain.dtype == np.uint8
    assert np.array_equal(plain[0], decode_jpeg(row["frames"][0]))
    fake = b(Item(row, "FAKE", sbi=True), None)
    assert fake.shape == plain.shape and not np.array_equal(fake, plain)
    assert np.array_equal(fake, b(Item(row, "FAKE", sbi=True), None))  # val fakes are reproducible
    from dfbatch.training.augment import AugmentConfig

    aug = SequenceBuilder(4, augment=AugmentConfig(p_flip=1, p_color=0, p_blur=0, p_downscale=0, p_jpeg=0))
    flipped = aug(Item(row, row["label"]), np.random.default_rng(0))
    assert flipped.shape == plain.shape


def test_threshold_and_val_metrics():
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.45, 0.4, 0.8, 0.9])
    thr = youden_threshold(y, p)
    assert thr == pytest.approx(0.4)  # TPR 1, FPR 1/4 (J .75) beats 0.8 (TPR 2/3, FPR 0)
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.6, 0.5, 0.9]) == pytest.approx(0.9)  # tie: the higher one
    m = val_metrics(y, p)
    from sklearn.metrics import log_loss, roc_auc_score

    assert m["val_auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["val_log_loss"] == pytest.approx(log_loss(y, p))
    assert m["val_threshold"] == pytest.approx(thr) and m["val_balanced_accuracy"] == pytest.approx((1 + 3 / 4) / 2)
    one = val_metrics(np.zeros(3), np.array([0.1, 0.2, 0.3]))
    assert np.isnan(one["val_auc"]) and one["val_threshold"] == 0.5
    ids, yy, pp = aggregate_videos([("a", "FAKE", 0, [0.2, 0.4], 0.9), ("a", "FAKE", 1, [0.8, 0.8], 0.1),
                                    ("b", "REAL", 0, [0.1, 0.3], 0.5)], "mean", "max")
    assert ids == ["a", "b"] and list(yy) == [1, 0] and pp == pytest.approx([0.8, 0.2])
    _, _, pm = aggregate_videos([("a", "FAKE", 0, [0.2], 0.9)], "model", "max")
    assert pm == pytest.approx([0.9])


def test_config_validation_and_unusable_data(tmp_path, shards):
    with pytest.raises(UserError, match="--sbi"):
        TrainConfig(data="x", output="y", sbi="sometimes")
    from dfbatch.training.trainer import _data_description

    with pytest.raises(UserError, match="dfbatch prepare"):
        _data_description(TrainConfig(data=str(tmp_path), output="y"), ShardStore(str(tmp_path)))
    _, desc = _data_description(TrainConfig(data=shards, output="y"), ShardStore(shards))
    assert desc["train_videos"] == 8 and desc["train_fake_videos"] == 4 and desc["val_videos"] == 4
    reals = tmp_path / "reals"
    store = make_shards(reals, n_train=2, n_val=0)
    vids = store.videos()
    assert set(vids["label"]) == {"REAL", "FAKE"}
    with pytest.raises(UserError, match="one per worker"):
        _data_description(TrainConfig(data=str(reals), output="y", num_workers=3), store)


def test_cli_config_yaml_and_flags(tmp_path):
    from dfbatch.cli import build_parser
    from dfbatch.cli.options import config_from_args

    (tmp_path / "t.yaml").write_text("epochs: 7\nbackbone: tiny\nsbi: only\n")
    args = build_parser().parse_args(["train", "S", "-o", "C", "--config", str(tmp_path / "t.yaml"), "--epochs", "2",
                                      "--workers", "2", "--cpu", "--no-augment"])
    cfg = config_from_args(args)
    assert (cfg.epochs, cfg.backbone, cfg.sbi, cfg.num_workers, cfg.use_gpu, cfg.augment) == (2, "tiny", "only", 2, False, False)
    (tmp_path / "bad.yaml").write_text("epochz: 1\n")
    with pytest.raises(UserError, match="unknown fields"):
        config_from_args(build_parser().parse_args(["train", "S", "-o", "C", "--config", str(tmp_path / "bad.yaml")]))


# ---------------------------------------------------------------------------------------------- slow
TINY = dict(backbone="tiny", hidden_dim=16, input_size=32, seq_len=4, batch_size=4, lr=1e-3, patience=0)


def _history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


@pytest.mark.slow
def test_train_one_worker_registers_challenger_then_resumes(ray_local, shards, tmp_path):
    from mlflow import MlflowClient

    from dfbatch.models import registry
    from dfbatch.models.checkpoints import read_checkpoint
    from dfbatch.training.trainer import train

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = TrainConfig(data=shards, output=str(tmp_path / "ckpt"), name="one", epochs=1, num_workers=1,
                      tracking_uri=uri, **TINY)
    r1 = train(cfg)
    assert (r1.start_epoch, r1.last_epoch, r1.best_epoch) == (1, 1, 1)
    assert os.path.isfile(r1.model_file) and os.path.isdir(r1.best_checkpoint)
    spec, sd, meta = read_checkpoint(r1.model_file)
    assert spec.backbone == "tiny" and meta["epoch"] == 1 and 0.0 <= meta["threshold"] <= 1.0
    # the shards' crops and detection are the model's input contract (scoring reproduces them)
    assert (spec.crop_margin, spec.crop_size, spec.crop_jpeg_quality, spec.detection) == (0.4, 48, 90, DETECTION)
    client = MlflowClient(uri)
    run = client.get_run(r1.run_id)
    assert run.info.status == "FINISHED" and run.data.params["data.train_videos"] == "8"
    assert {"val_auc", "val_log_loss", "train_loss", "val_threshold"} <= set(run.data.metrics)
    bundle = registry.fetch("models:/dfbatch-detector@challenger", tracking_uri=uri)
    assert bundle.version == r1.model_version and bundle.run_id == r1.run_id
    assert bundle.threshold == pytest.approx(r1.threshold, abs=1e-5)
    assert bundle.tags["dfbatch.lineage.train_videos"] == "8"
    rec = bundle.calibration  # recorded as chosen on the validation crops, not under a scoring job's settings
    assert rec["method"] == "eer" and rec["settings"] is None and list(rec["aggregations"]) == ["tracks=max,frames=mean"]
    assert rec["aggregations"]["tracks=max,frames=mean"]["threshold"] == pytest.approx(r1.threshold, abs=1e-5)
    assert bundle.spec == spec and registry.show("dfbatch-detector@challenger", tracking_uri=uri)["not_recorded"] == []

    # a stopped training continues from its checkpoint: same run, epoch 2 only, a new version
    r2 = train(TrainConfig(**{**cfg.to_dict(), "epochs": 2}))
    assert (r2.start_epoch, r2.last_epoch) == (2, 2) and r2.run_id == r1.run_id
    assert [s for s, _ in _history(client, r1.run_id, "epoch_time_s")] == [1, 2]
    assert [h["epoch"] for h in r2.history] == [1.0, 2.0]
    assert int(r2.model_version) >= int(r1.model_version)
    # nothing left to do: no new epoch, no duplicate registration, and no Ray Train started (when it starts, it
    # validates the run folder by writing its `.validate_storage_marker` there)
    marker = tmp_path / "ckpt" / "one" / ".validate_storage_marker"
    before = marker.stat().st_mtime_ns
    r3 = train(TrainConfig(**{**cfg.to_dict(), "epochs": 2}))
    assert r3.start_epoch == 3 and r3.last_epoch == 2 and r3.model_version == r2.model_version
    assert marker.stat().st_mtime_ns == before


@pytest.mark.slow
def test_train_two_workers_read_shards_from_s3_and_checkpoint_to_s3(ray_local, s3_endpoint, tmp_path):
    """Two Ray Train workers share the epoch (each its half of the tracks), read the shards from S3 and write the
    checkpoints there."""
    from mlflow import MlflowClient

    from dfbatch.models.checkpoints import read_checkpoint
    from dfbatch.io.storage import Storage
    from dfbatch.training.trainer import train

    fs = Storage(s3_endpoint).fs("s3://dfbatch-train/")
    fs.mkdir("dfbatch-train")
    make_shards("s3://dfbatch-train/shards")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    r = train(TrainConfig(data="s3://dfbatch-train/shards", output="s3://dfbatch-train/ckpt", name="s3", epochs=1,
                          num_workers=2, sbi="only", tracking_uri=uri, register=False, **TINY))
    assert r.last_epoch == 1 and r.model_version is None
    h = r.history[0]
    assert h["train_sequences"] == 8 and h["train_steps"] == 2  # 4 tracks per worker, batch 4
    assert h["train_sbi_fraction"] > 0 and h["val_videos"] == 4
    assert MlflowClient(uri).get_run(r.run_id).data.metrics["train_sequences"] == 8
    assert r.model_file == "s3://dfbatch-train/ckpt/s3/best_model.pt" and r.best_checkpoint.startswith("s3://dfbatch-train/ckpt/s3/")
    local = tmp_path / "best.pt"
    fs.get_file("dfbatch-train/ckpt/s3/best_model.pt", str(local))
    spec, _, meta = read_checkpoint(local)
    assert spec.backbone == "tiny" and meta["epoch"] == 1
    assert fs.exists("dfbatch-train/ckpt/s3/checkpoint_manager_snapshot.json")  # what a rerun resumes from
