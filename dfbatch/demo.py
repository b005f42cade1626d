"""`make demo`: build a demo archive from the real clips in tests/data (real variants and fakes made by
dfbatch.synth), prepare face-sequence shards, train a small MobileNetV2-LSTM with Ray Train, register it as
`dfbatch-detector@champion`, score a held-out archive with the scoring job, and report the video AUC."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

# The demo's training set and held-out set are made with different seeds: no clip, framing or fake is shared.
TRAIN_SEED, HELDOUT_SEED = 11, 23


@dataclass
class DemoConfig:
    root: str = "demo"
    n_train: int = 16  # real and fake clips each, for training (+ validation split)
    n_heldout: int = 8  # real and fake clips each, never seen in training
    size: tuple[int, int] = (480, 270)
    seconds: float = 3.0
    fps: int = 15
    epochs: int = 8
    tracking_uri: str | None = None
    model_name: str = "dfbatch-detector"
    train_overrides: dict = field(default_factory=dict)


def build_archives(cfg: DemoConfig) -> tuple[str, str]:
    from dfbatch import synth

    train_dir, heldout_dir = os.path.join(cfg.root, "archive", "train"), os.path.join(cfg.root, "archive", "heldout")
    kw = dict(size=cfg.size, seconds=cfg.seconds, fps=cfg.fps)
    if not os.path.exists(os.path.join(train_dir, "labels.csv")):
        synth.demo_archive(train_dir, n_real=cfg.n_train, n_fake=cfg.n_train, seed=TRAIN_SEED, faceless=False, broken=False, **kw)
    if not os.path.exists(os.path.join(heldout_dir, "labels.csv")):
        synth.demo_archive(heldout_dir, n_real=cfg.n_heldout, n_fake=cfg.n_heldout, seed=HELDOUT_SEED, faceless=True, broken=True, **kw)
    return train_dir, heldout_dir


def run_demo(cfg: DemoConfig) -> dict:
    """Run every step; returns the evaluation metrics (plus paths and timings)."""
    from dfbatch.config import ScoreConfig
    from dfbatch.datasets import load_labels
    from dfbatch.evaluate import format_table, join_labels, video_metrics
    from dfbatch.pipeline import run_score
    from dfbatch.prepare import PrepareConfig, run_prepare
    from dfbatch.sink import read_results
    from dfbatch.train import TrainConfig, train

    t0 = time.time()
    timings = {}
    say = lambda msg: print(f"[demo {time.time() - t0:6.1f}s] {msg}", flush=True)  # noqa: E731
    say("building the demo archive from tests/data (real clips + fakes made by dfbatch.synth)")
    train_dir, heldout_dir = build_archives(cfg)
    timings["archive_s"] = time.time() - t0

    say("preparing face-sequence shards (decode + MTCNN + tracks, the scoring pipeline's own stages)")
    t = time.time()
    shards = os.path.join(cfg.root, "shards")
    run_prepare(PrepareConfig(sources=[os.path.join(train_dir, "labels.csv")], output=shards, fractions=(0.75, 0.25, 0.0), frames=16, crop_size=112))
    timings["prepare_s"] = time.time() - t

    say("training a MobileNetV2 (ImageNet) + LSTM detector with Ray Train")
    t = time.time()
    tcfg = TrainConfig(
        data=shards,
        output=os.path.abspath(os.path.join(cfg.root, "checkpoints")),
        name="demo",
        backbone="mobilenet_v2",
        backbone_weights="imagenet",
        hidden_dim=128,
        seq_len=8,
        head="mean",
        input_size=112,
        epochs=cfg.epochs,
        tracking_uri=cfg.tracking_uri,
        model_name=cfg.model_name,
        alias="champion",
        **cfg.train_overrides,
    )
    result = train(tcfg)
    timings["train_s"] = time.time() - t
    say(f"registered {result.model_uri} as {cfg.model_name}@champion (val threshold {result.threshold:.3f})")

    say("scoring the held-out archive with `dfbatch score`")
    t = time.time()
    out = os.path.join(cfg.root, "results")
    summary = run_score(ScoreConfig(sources=[heldout_dir], output=out, model_uri=f"models:/{cfg.model_name}@champion", tracking_uri=cfg.tracking_uri, rescore=True))
    timings["score_s"] = time.time() - t
    joined = join_labels(read_results(out), load_labels(os.path.join(heldout_dir, "labels.csv"), layout="csv"))
    metrics = video_metrics(joined)
    print()
    print(format_table(joined))
    print()
    auc = metrics.get("auc")
    print(f"held-out video AUC: {auc:.3f}" if auc is not None else "held-out video AUC: n/a (one class only)")
    print(f"accuracy at the model's threshold: {metrics.get('accuracy', float('nan')):.3f}   scored {metrics['scored_ok']}, no_face {metrics['no_face']}, failed {metrics['failed']}")
    print(f"results: {out}/videos/*.parquet   MLflow run: {summary.mlflow_run_id}   model: {result.model_uri}")
    timings["total_s"] = time.time() - t0
    return {"metrics": metrics, "timings": timings, "model_uri": result.model_uri, "results": out, "summary": summary.to_dict()}
