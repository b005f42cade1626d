"""The Ray Train worker: `train_loop_per_worker` (the driver, `training.trainer.train`, starts it on each worker).

One worker: `_setup` (model, optimizer, the latest checkpoint if any, sequence builders), then per epoch
`_train_epoch` (its share of `shards/train` through the `BalancedSampler`), `_validate`, `_epoch_metrics` (gathered
over ranks), `_early_stopping`, `_report` (checkpoint + `ray.train.report`) and `_log_epoch` (MLflow, rank 0).

Validation each epoch: every worker scores the val tracks of its hash partition exactly like the scoring job
(whole track subsampled to ``seq_len``; the track and video scores by `dfbatch.stages.aggregate` with
``val_frame_aggregation`` / ``val_track_aggregation``), the predictions are all-gathered, and every rank computes
the same video-level metrics (`dfbatch.evaluation.metrics.label_metrics`: ROC AUC, log loss, average precision,
accuracy at 0.5, balanced accuracy at the chosen threshold) — so early-stopping decisions agree across ranks.
When the val split has no FAKE video (``val_sbi="auto"``), self-blended versions of its reals serve as val fakes.

Threshold: chosen on the validation video scores by ``threshold_method`` (`evaluation.thresholds.training_threshold`):
``eer`` (default) where the false-positive and false-negative rates meet; ``real_fpr`` the lowest that flags at most
``target_fpr`` of the REAL val videos (it ignores the val fakes); ``youden`` maximises TPR - FPR on the val fakes.
Measured on fakes of a recipe the model never saw (docs/generalisation.md), ``eer`` kept the best balanced accuracy.
A val split with fewer than ``min_val_videos`` REAL (or FAKE) videos chooses neither an epoch nor a threshold: the
last epoch is kept (the cosine schedule ends there) and the threshold is 0.5 (the driver warns).

Checkpoints: each epoch rank 0 writes ``model.pt`` (a dfbatch checkpoint: spec + state dict + meta, read with
``weights_only=True``) and ``train_state.pt`` (optimizer, scaler, early-stopping state, history) and every rank
calls ``ray.train.report``; a restarted worker group resumes from `ray.train.get_checkpoint()`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np

from dfbatch.errors import redact
from dfbatch.evaluation.metrics import label_metrics
from dfbatch.stages.aggregate import FRAME_AGGREGATION, TRACK_AGGREGATION, track_score, video_score
from dfbatch.training.prepare import SHARD_COLUMNS
from dfbatch.training.sampler import BalancedSampler, Item, SequenceBuilder, collate, shuffle_window
from dfbatch.config import MONITORS, TrainConfig

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- helpers
def _amp(precision: str, device) -> tuple[str, Any]:
    import torch

    if device.type != "cuda":
        if precision in ("bf16", "fp16"):
            log.warning("precision %s needs a GPU; training in fp32", precision)
        return "fp32", None
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision, {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def _lr_at(cfg: TrainConfig, epoch: int) -> float:
    if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
        return cfg.lr * (epoch + 1) / (cfg.warmup_epochs + 1)
    if cfg.lr_schedule == "constant":
        return cfg.lr
    span = max(1, cfg.epochs - cfg.warmup_epochs)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / span))


def _iter_rows(it, batch_size: int = 16, columns: list[str] | None = None) -> Iterator[dict]:
    for batch in it.iter_batches(batch_size=batch_size, batch_format="pyarrow", prefetch_batches=2):
        if columns:
            batch = batch.select([c for c in columns if c in batch.column_names])
        yield from batch.to_pylist()


def _gather(obj, world: int) -> list:
    if world <= 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _sanitize(metrics: dict) -> dict:
    return {k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else v) for k, v in metrics.items()}


def freeze_backbone_blocks(model, n: int) -> int:
    """Stop gradients into the first ``n`` child blocks of the backbone body (their BatchNorm statistics still
    adapt); returns the number of frozen parameters."""
    if n <= 0:
        return 0
    body = model.backbone.body if hasattr(model, "backbone") else model.model  # native | seed-compatible
    frozen = 0
    for block in list(body.children())[:n]:
        for p in block.parameters():
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


# -------------------------------------------------------------------------------------------------- set-up
@dataclass
class _Worker:
    """What one worker holds across epochs."""

    config: dict  # the driver's train_loop_config (run_id, tracking_uri, lineage, margin, ...)
    cfg: TrainConfig
    spec: Any  # ModelSpec
    rank: int
    world: int
    device: Any
    amp_dtype: Any  # torch dtype for autocast, None: fp32
    model: Any  # DDP-wrapped by Ray Train
    optimizer: Any
    scaler: Any
    state: dict  # epoch, early-stopping state, history, sessions (saved in train_state.pt)
    train_builder: SequenceBuilder
    val_builder: SequenceBuilder
    val_sbi: bool  # self-blended val fakes
    pool: Any  # threads building training sequences
    mlflow_client: Any  # rank 0 with a run, else None


def _restore(model, checkpoint) -> tuple[dict, Any, Any]:
    """Load the checkpoint's weights into `model`; returns (train state, optimizer state, scaler state)."""
    import torch

    from dfbatch.models.checkpoints import load_weights, read_checkpoint

    with checkpoint.as_directory() as d:
        _, sd, _ = read_checkpoint(os.path.join(d, "model.pt"))
        load_weights(model, sd, source="training checkpoint")
        saved = torch.load(os.path.join(d, "train_state.pt"), map_location="cpu", weights_only=True)
    return json.loads(saved["state_json"]), saved["optimizer"], saved.get("scaler")


def _setup(config: dict) -> _Worker:
    """Model (resumed from the latest checkpoint if any), optimizer, scaler, sequence builders, MLflow client."""
    from concurrent.futures import ThreadPoolExecutor

    import ray.train
    import ray.train.torch
    import torch

    from dfbatch.models.detector import build_model
    from dfbatch.models.spec import ModelSpec
    from dfbatch.training.augment import AugmentConfig
    from dfbatch.training.sbi import SBIConfig

    cfg = TrainConfig.from_dict(config["cfg"])
    spec = ModelSpec.from_dict(config["spec"])
    logging.getLogger().setLevel(str(cfg.worker_log_level).upper())  # Ray Train sets the worker's root to INFO
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    precision, amp_dtype = _amp(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))

    model = build_model(spec, cfg.backbone_weights)
    state: dict[str, Any] = {"epoch": 0, "best_score": None, "best_epoch": None, "bad_epochs": 0, "history": []}
    opt_state = scaler_state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        state, opt_state, scaler_state = _restore(model, checkpoint)
        if rank == 0:
            log.info("resuming after epoch %d", state["epoch"])
    freeze_backbone_blocks(model, cfg.freeze_blocks)
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    if scaler_state:
        scaler.load_state_dict(scaler_state)

    aug = AugmentConfig(**cfg.augment_config) if cfg.augment else None
    sbi_cfg = SBIConfig(**{"margin": config.get("margin", 0.25), **cfg.sbi_config})
    mlflow_client = None
    if rank == 0 and config.get("run_id"):
        from mlflow import MlflowClient

        mlflow_client = MlflowClient(tracking_uri=config["tracking_uri"])
    return _Worker(
        config=config, cfg=cfg, spec=spec, rank=rank, world=world, device=device, amp_dtype=amp_dtype, model=model,
        optimizer=optimizer, scaler=scaler, state=state,
        train_builder=SequenceBuilder(cfg.seq_len, augment=aug, sbi=sbi_cfg),
        val_builder=SequenceBuilder(cfg.seq_len, augment=None, sbi=sbi_cfg),
        val_sbi=cfg.val_sbi == "on" or (cfg.val_sbi == "auto" and not config.get("val_has_fakes", True)),
        pool=ThreadPoolExecutor(max_workers=cfg.loader_threads or max(1, int(cfg.cpus_per_worker))),
        mlflow_client=mlflow_client)


# ------------------------------------------------------------------------------------------------ one epoch
def _step(w: _Worker, batch: list[tuple[np.ndarray, int]]) -> float:
    """One optimizer step on (uint8 sequence, 1 = FAKE) pairs: cross-entropy over every valid time step."""
    import torch
    import torch.nn.functional as F

    from dfbatch.models.detector import preprocess

    cfg, device, fake_index = w.cfg, w.device, w.spec.fake_index
    x, lengths = collate([s for s, _ in batch], cfg.seq_len)
    x = preprocess(x, w.spec, device=device)
    y = torch.tensor([fake_index if lab else 1 - fake_index for _, lab in batch], device=device)
    lengths_t = torch.as_tensor(lengths, device=device)
    with torch.autocast(device_type=device.type, dtype=w.amp_dtype, enabled=w.amp_dtype is not None):
        logits = w.model(x, lengths_t)
    logits = logits.float()
    T = logits.shape[1]
    valid = torch.arange(T, device=device).unsqueeze(0) < lengths_t.unsqueeze(1)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.repeat_interleave(T),
                         reduction="none", label_smoothing=cfg.label_smoothing).reshape(-1, T)
    loss = (ce * valid).sum() / valid.sum()
    w.optimizer.zero_grad(set_to_none=True)
    w.scaler.scale(loss).backward()
    if cfg.grad_clip:
        w.scaler.unscale_(w.optimizer)
        torch.nn.utils.clip_grad_norm_(w.model.parameters(), cfg.grad_clip)
    w.scaler.step(w.optimizer)
    w.scaler.update()
    return float(loss.detach())


def _build(w: _Worker, items: list[Item], rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """The items' sequences, built on threads (JPEG decoding, blending and augmentation release the GIL), each
    with its own generator seeded from the epoch's: reproducible whatever the scheduling."""
    seeds = rng.integers(0, 2**63 - 1, size=len(items))
    seqs = list(w.pool.map(lambda a: w.train_builder(a[0], np.random.default_rng(int(a[1]))), zip(items, seeds)))
    return [(seq, 1 if it.label == "FAKE" else 0) for seq, it in zip(seqs, items)]


def _train_epoch(w: _Worker, train_it, epoch: int) -> tuple[float, tuple[float, int, int, dict]]:
    """Train one epoch on this worker's shard; returns (lr, (loss sum, steps, sequences, items emitted by kind))."""
    cfg = w.cfg
    lr = _lr_at(cfg, epoch)
    for g in w.optimizer.param_groups:
        g["lr"] = lr
    w.model.train()
    rng = np.random.default_rng([cfg.seed, epoch, w.rank])
    sampler = BalancedSampler(rng, balance=cfg.balance == "sampler", sbi=cfg.sbi, sbi_fraction=cfg.sbi_fraction,
                              pool_size=cfg.pool_size)
    loss_sum, steps, seen = 0.0, 0, 0
    pending: list[Item] = []
    # the sampler's pools fill from this stream: shuffled, an epoch does not start with one label only; in windows of
    # shuffle_buffer rows whose order depends on their content and the seed, not on the shard parts' layout
    rows = shuffle_window(_iter_rows(train_it, columns=SHARD_COLUMNS), cfg.shuffle_buffer,
                          np.random.default_rng([cfg.seed, epoch, w.rank, 1]))
    for row in rows:
        pending.append(sampler.feed(row))
        seen += 1
        if len(pending) == cfg.batch_size:
            loss_sum += _step(w, _build(w, pending, rng))
            steps += 1
            pending = []
    if pending:
        loss_sum += _step(w, _build(w, pending, rng))
        steps += 1
    return lr, (loss_sum, steps, seen, dict(sampler.emitted))


# ----------------------------------------------------------------------------------------------- validation
def aggregate_videos(preds: list[tuple], frame_agg: str = FRAME_AGGREGATION, track_agg: str = TRACK_AGGREGATION) -> tuple[list[str], np.ndarray, np.ndarray]:
    """[(video_id, label, track, frame_probs, seq_prob)] -> (video ids, y (1 = FAKE), P(FAKE)), scored like the job."""
    tracks: dict[str, list[float]] = {}
    labels: dict[str, int] = {}
    for vid, label, _track, frame_p, seq_p in preds:
        tracks.setdefault(vid, []).append(track_score(frame_p, seq_p, frame_agg))
        labels[vid] = 1 if label == "FAKE" else 0
    ids = sorted(tracks)
    return ids, np.array([labels[v] for v in ids], int), np.array([video_score(tracks[v], track_agg) for v in ids])


def val_metrics(y, p, threshold: float | None = None) -> dict[str, float]:
    """`label_metrics` under the names training reports (``val_auc``, ``val_threshold`` ...)."""
    return {f"val_{k}": v for k, v in label_metrics(y, p, threshold).items()}


def val_threshold(cfg: TrainConfig, y, p, too_small: bool = False) -> float:
    """The threshold training registers (see the module doc)."""
    from dfbatch.evaluation.thresholds import training_threshold

    return 0.5 if too_small else training_threshold(y, p, cfg.threshold_method, cfg.target_fpr)


def _val_items(rows: Iterable[dict], rank: int, world: int, val_sbi: bool) -> Iterator[list[tuple[tuple, Item]]]:
    """Per val track of this rank's hash partition: [((video id, label, track), item)], its self-blend added."""
    for row in rows:
        if int(hashlib.sha1(row["video_id"].encode()).hexdigest(), 16) % world != rank:
            continue
        items = [((row["video_id"], row["label"], row["track"]), Item(row, row["label"]))]
        if val_sbi and row["label"] == "REAL":
            items.append(((row["video_id"] + "#sbi", "FAKE", row["track"]), Item(row, "FAKE", sbi=True)))
        yield items


def predict_sequences(net, spec, pending: list[tuple[tuple, np.ndarray]], *, batch_size: int, device=None,
                      amp_dtype=None) -> list[tuple]:
    """(meta, uint8 sequence) pairs -> [(*meta, frame probabilities, sequence probability)], equal lengths batched
    (training validation, and `evaluation.lomo` on test shards)."""
    import torch

    from dfbatch.models.detector import preprocess

    device = device or torch.device("cpu")
    by_len: dict[int, list] = {}
    for meta, seq in pending:
        by_len.setdefault(len(seq), []).append((meta, seq))
    preds = []
    for group in by_len.values():
        for i in range(0, len(group), batch_size):
            chunk = group[i: i + batch_size]
            x = preprocess(np.stack([s for _, s in chunk]), spec, device=device)
            with torch.no_grad(), torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                frame_p, seq_p = net.predict(x)
            frame_p, seq_p = frame_p.float().cpu().numpy(), seq_p.float().cpu().numpy()
            for (meta, _), fp, sp in zip(chunk, frame_p, seq_p):
                preds.append((*meta, fp.tolist(), float(sp)))
    return preds


def _validate(w: _Worker, rows: Iterable[dict]) -> dict:
    """Score this rank's partition of the val tracks, gather everything, compute video metrics (all ranks)."""
    net = getattr(w.model, "module", w.model)
    net.eval()
    preds, pending = [], []
    for items in _val_items(rows, w.rank, w.world, w.val_sbi):
        pending += [(meta, w.val_builder(item, None)) for meta, item in items]
        if len(pending) >= 8 * w.cfg.batch_size:
            preds += _predict(w, net, pending)
            pending = []
    preds += _predict(w, net, pending)
    everything = [p for part in _gather(preds, w.world) for p in part]
    _, y, p = aggregate_videos(everything, w.cfg.val_frame_aggregation, w.cfg.val_track_aggregation)
    return val_metrics(y, p, val_threshold(w.cfg, y, p, w.config.get("val_too_small", False)))


def _predict(w: _Worker, net, pending: list[tuple[tuple, np.ndarray]]) -> list[tuple]:
    return predict_sequences(net, w.spec, pending, batch_size=w.cfg.batch_size, device=w.device, amp_dtype=w.amp_dtype)


# ------------------------------------------------------------------------------------ metrics and reporting
def _epoch_metrics(metrics: dict, gathered: list[tuple], *, epoch: int, lr: float, t0: float, train_time: float) -> dict:
    """The validation metrics plus the training side, summed over ranks."""
    tot_steps = sum(s for _, s, _, _ in gathered)
    emitted: Counter = Counter()
    for *_, e in gathered:
        emitted.update(e)
    n_items = max(1, sum(emitted.values()))
    metrics.update(
        epoch=epoch + 1, lr=lr, train_loss=sum(l for l, *_ in gathered) / max(1, tot_steps),
        train_sequences=float(sum(n for _, _, n, _ in gathered)), train_steps=float(tot_steps),
        train_fake_fraction=(emitted["FAKE"] + emitted["FAKE/sbi"]) / n_items,
        train_sbi_fraction=emitted["FAKE/sbi"] / n_items,
        train_time_s=train_time, epoch_time_s=time.time() - t0,
        sequences_per_s=sum(n for _, _, n, _ in gathered) / max(1e-9, train_time))
    return metrics


def _early_stopping(state: dict, metrics: dict, cfg: TrainConfig, epoch: int, too_small: bool = False) -> bool:
    """Score the epoch by ``cfg.monitor`` (into `metrics`; by its number when the val split is too small to choose),
    update the best/bad-epoch state; True: stop now."""
    value = metrics.get(cfg.monitor, float("nan"))
    if too_small:
        score = float(epoch + 1)
    elif value is None or not math.isfinite(value):
        score = -1e9  # unusable epoch (e.g. one class in val): the worst score
    else:
        score = value if MONITORS[cfg.monitor] == "max" else -value
    metrics["score"] = float(score)
    if state["best_score"] is None or score > state["best_score"] + cfg.min_delta:
        state.update(best_score=score, best_epoch=epoch + 1, bad_epochs=0)
    else:
        state["bad_epochs"] += 1
    stop = cfg.patience > 0 and state["bad_epochs"] >= cfg.patience and epoch + 1 < cfg.epochs
    metrics["stopped_early"] = float(stop)
    return stop


def _progress(cfg: TrainConfig, epoch: int, metrics: dict, stop: bool) -> None:
    """One line per epoch on stdout itself: Ray Train's print patch would print it twice."""
    sys.stdout.write(f"epoch {epoch + 1}/{cfg.epochs}  train loss {metrics['train_loss']:.3f}  "
                     f"val AUC {metrics.get('val_auc', float('nan')):.3f}  val log loss "
                     f"{metrics.get('val_log_loss', float('nan')):.3f}  ({metrics['epoch_time_s']:.0f} s)"
                     + ("  early stop" if stop else "") + "\n")
    sys.stdout.flush()


def _report(w: _Worker, epoch: int, metrics: dict) -> None:
    """Rank 0 writes the checkpoint (model.pt + train_state.pt); every rank reports to Ray Train."""
    import ray.train
    import torch

    from dfbatch.models.checkpoints import save_checkpoint

    with tempfile.TemporaryDirectory(prefix="dfbatch-ckpt-") as d:
        ckpt = None
        if w.rank == 0:
            net = getattr(w.model, "module", w.model)
            meta = {"epoch": epoch + 1, "metrics": {k: v for k, v in metrics.items() if isinstance(v, float)},
                    "threshold": metrics.get("val_threshold") if math.isfinite(metrics.get("val_threshold", float("nan"))) else 0.5,
                    "run_id": w.config.get("run_id"), "lineage": w.config.get("lineage", {})}
            save_checkpoint(os.path.join(d, "model.pt"), net, w.spec, meta)
            torch.save({"optimizer": w.optimizer.state_dict(), "scaler": w.scaler.state_dict(),
                        "state_json": json.dumps(w.state)}, os.path.join(d, "train_state.pt"))
            ckpt = ray.train.Checkpoint.from_directory(d)
        ray.train.report(metrics, checkpoint=ckpt)


def _log_epoch(w: _Worker, epoch: int, metrics: dict) -> None:
    """Rank 0 logs the epoch's metrics into the driver's MLflow run; tracking trouble never stops training."""
    if w.mlflow_client is None:
        return
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    batch = [Metric(k, float(v), ts, epoch + 1) for k, v in metrics.items() if isinstance(v, float) and k != "epoch"]
    try:
        w.mlflow_client.log_batch(w.config["run_id"], metrics=batch)
    except Exception as exc:
        log.warning("MLflow logging failed: %s", redact(str(exc))[:200])


# ------------------------------------------------------------------------------------------------- the loop
def train_loop_per_worker(config: dict) -> None:
    """The Ray Train worker function (see the module doc)."""
    import ray.train

    w = _setup(config)
    train_it = ray.train.get_dataset_shard("train")
    val_it = ray.train.get_dataset_shard("val")
    w.state.setdefault("sessions", []).append({"id": config.get("session"), "start_epoch": int(w.state["epoch"]) + 1})
    for epoch in range(int(w.state["epoch"]), w.cfg.epochs):
        t0 = time.time()
        lr, losses = _train_epoch(w, train_it, epoch)
        train_time = time.time() - t0
        metrics = _validate(w, _iter_rows(val_it, columns=SHARD_COLUMNS))
        metrics = _epoch_metrics(metrics, _gather(losses, w.world), epoch=epoch, lr=lr, t0=t0, train_time=train_time)
        stop = _early_stopping(w.state, metrics, w.cfg, epoch, w.config.get("val_too_small", False))
        metrics = _sanitize(metrics)
        w.state["epoch"] = epoch + 1
        w.state["history"].append(metrics)
        if w.cfg.progress and w.rank == 0:
            _progress(w.cfg, epoch, metrics, stop)
        _report(w, epoch, metrics)
        _log_epoch(w, epoch, metrics)
        if stop:
            if w.rank == 0:
                log.info("early stopping after epoch %d (best epoch %s)", epoch + 1, w.state["best_epoch"])
            break


__all__ = ["aggregate_videos", "freeze_backbone_blocks", "predict_sequences", "train_loop_per_worker", "val_metrics",
           "val_threshold"]
