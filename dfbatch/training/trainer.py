"""Train a detector on prepared face-sequence shards with Ray Train (TorchTrainer, DDP), log it to MLflow and
register the best checkpoint as `challenger`.

    from dfbatch.training.trainer import TrainConfig, train
    result = train(TrainConfig(data="prepared/", output="checkpoints/", epochs=10, num_workers=2))
    result.model_uri   # models:/dfbatch-detector/7  (alias challenger)

Data: `dfbatch prepare` shards (one row per face track: JPEG frames + video label/group/split). Each Ray Train
worker reads its share of `shards/train` through `ray.train.get_dataset_shard("train")` (split equally, so
every worker runs the same number of steps — DDP needs that) and the whole of `shards/val`.

Sampling (per worker, `BalancedSampler`): every incoming track emits exactly one training item, so step counts
stay equal across workers. With ``balance="sampler"`` the item's class is REAL or FAKE with probability 1/2,
drawn from bounded per-class pools fed by the stream (minority tracks are repeated, majority tracks thinned).
Self-blended fakes (`dfbatch.training.sbi`, parameters once per sequence) are made from REAL tracks: ``sbi="mix"``
makes a FAKE item self-blended with probability ``sbi_fraction`` (always when no labelled fake is at hand),
``sbi="only"`` ignores labelled fakes. Each item: ``seq_len`` frames (a random phase of an even stride over
the track; padded with `lengths` when shorter), then `dfbatch.training.augment` (drawn once per sequence).

Validation each epoch: every worker scores the val tracks of its hash partition exactly like the scoring job
(whole track subsampled to ``seq_len``; frame probabilities averaged per track — ``val_frame_aggregation`` —,
then the max over a video's tracks — ``val_track_aggregation``), the predictions are all-gathered, and every
rank computes the same video-level metrics (ROC AUC, log loss, average precision, accuracy at 0.5, balanced
accuracy at the chosen threshold) with scikit-learn — so early-stopping decisions agree across ranks. When the
val split has no FAKE video (``val_sbi="auto"``), self-blended versions of its reals serve as val fakes.

Threshold: the validation video score threshold maximising Youden's J = TPR - FPR (equivalently balanced
accuracy), at one of the observed scores, so "FAKE if P >= threshold" reproduces it.

Checkpoints: each epoch rank 0 writes ``model.pt`` (a dfbatch checkpoint: spec + state dict + meta, read with
``weights_only=True``) and ``train_state.pt`` (optimizer, scaler, early-stopping state, history) and every rank
calls ``ray.train.report``. Rerunning with the same ``output`` + ``name`` resumes from the latest checkpoint
(Ray Train V2 restores its checkpoint-manager snapshot; `ray.train.get_checkpoint()`); ``epochs`` is the total
(rerun with more epochs to continue). MLflow: one run per (output, name), created by the driver (tag
``dfbatch.train_key``) and found again on resume; rank 0 logs every epoch's metrics into it directly.
After training the driver registers the best checkpoint via `registry.register` into that run, with alias
``challenger``, its threshold and the training data description.
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
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np

from dfbatch.config import MONITORS, TrainConfig
from dfbatch.training.augment import AugmentConfig, SequenceAugment
from dfbatch.errors import UserError, one_line, redact
from dfbatch.training.sbi import SBIConfig, SelfBlender
from dfbatch.io.storage import Storage, is_s3

log = logging.getLogger(__name__)

SHARD_COLUMNS = ["video_id", "label", "track", "frames"]


@dataclass
class TrainResult:
    run_id: str
    experiment_id: str
    storage_path: str  # OUTPUT/NAME: Ray Train's run folder (checkpoints)
    start_epoch: int  # first epoch this call trained (1-based; > last_epoch when nothing was left to do)
    last_epoch: int
    best_epoch: int | None
    best_metrics: dict
    history: list[dict]
    stopped_early: bool
    threshold: float
    best_checkpoint: str | None  # the Ray checkpoint folder (local path or URI)
    model_file: str | None  # OUTPUT/NAME/best_model.pt (a dfbatch checkpoint file)
    model_name: str | None = None
    model_version: str | None = None
    model_uri: str | None = None  # models:/NAME/VERSION
    spec: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    elapsed_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


# -------------------------------------------------------------------------------------------------- sampling
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
        from dfbatch.training.prepare import decode_jpeg

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


# --------------------------------------------------------------------------------------------------- metrics
def youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The score threshold maximising TPR - FPR (balanced accuracy); 0.5 when only one class is present."""
    from sklearn.metrics import roc_curve

    y, p = np.asarray(y, int), np.asarray(p, float)
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    j = tpr - fpr
    # thr[0] is +inf (nothing flagged); thresholds descend, so ties go to the higher one (fewer false alarms)
    best = int(np.argmax(j[1:]) + 1) if len(j) > 1 else 0
    return float(np.clip(thr[best], 0.0, 1.0))


def video_metrics(y: np.ndarray, p: np.ndarray, threshold: float | None = None) -> dict[str, float]:
    """Video-level metrics from labels (1 = FAKE) and P(FAKE)."""
    from sklearn.metrics import average_precision_score, balanced_accuracy_score, log_loss, roc_auc_score

    y, p = np.asarray(y, int), np.clip(np.asarray(p, float), 1e-7, 1 - 1e-7)
    out = {"val_videos": float(len(y)), "val_fake_videos": float(y.sum())}
    if len(y) == 0:
        return out | {k: float("nan") for k in ("val_auc", "val_log_loss", "val_ap", "val_accuracy",
                                                 "val_balanced_accuracy", "val_threshold")}
    two = len(np.unique(y)) == 2
    thr = youden_threshold(y, p) if threshold is None else float(threshold)
    out.update(
        val_auc=float(roc_auc_score(y, p)) if two else float("nan"),
        val_log_loss=float(log_loss(y, p, labels=[0, 1])),
        val_ap=float(average_precision_score(y, p)) if two else float("nan"),
        val_accuracy=float(np.mean((p >= 0.5) == y)),
        val_balanced_accuracy=float(balanced_accuracy_score(y, (p >= thr).astype(int))) if two else float("nan"),
        val_threshold=thr,
    )
    return out


def aggregate_videos(preds: list[tuple], frame_agg: str = "mean", track_agg: str = "max") -> tuple[list[str], np.ndarray, np.ndarray]:
    """[(video_id, label, track, frame_probs, seq_prob)] -> (video ids, y (1 = FAKE), P(FAKE)) like `score_rows`."""
    agg = {"max": np.max, "mean": np.mean, "median": np.median}
    tracks: dict[str, list[float]] = {}
    labels: dict[str, int] = {}
    for vid, label, _track, frame_p, seq_p in preds:
        s = float(seq_p) if frame_agg == "model" else float(agg[frame_agg](np.asarray(frame_p, float)))
        tracks.setdefault(vid, []).append(s)
        labels[vid] = 1 if label == "FAKE" else 0
    ids = sorted(tracks)
    return ids, np.array([labels[v] for v in ids], int), np.array([float(agg[track_agg](tracks[v])) for v in ids])


def _sanitize(metrics: dict) -> dict:
    return {k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else v) for k, v in metrics.items()}


# -------------------------------------------------------------------------------------------- worker loop
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


def _iter_rows(it, batch_size: int = 16, columns: list[str] | None = None, shuffle_buffer: int = 0,
               seed: int | None = None) -> Iterator[dict]:
    shuffle = dict(local_shuffle_buffer_size=shuffle_buffer, local_shuffle_seed=seed) if shuffle_buffer else {}
    for batch in it.iter_batches(batch_size=batch_size, batch_format="pyarrow", prefetch_batches=2, **shuffle):
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


def _validate(model, spec, rows: Iterable[dict], cfg: TrainConfig, builder: SequenceBuilder, device, amp_dtype,
              rank: int, world: int, val_sbi: bool) -> dict:
    """Score this rank's partition of the val tracks, gather everything, compute video metrics (all ranks)."""
    import torch

    from dfbatch.models.detector import preprocess

    net = getattr(model, "module", model)
    net.eval()
    preds, pending = [], []

    def flush():
        by_len: dict[int, list] = {}
        for meta, seq in pending:
            by_len.setdefault(len(seq), []).append((meta, seq))
        for group in by_len.values():
            for i in range(0, len(group), cfg.batch_size):
                chunk = group[i: i + cfg.batch_size]
                x = preprocess(np.stack([s for _, s in chunk]), spec, device=device)
                with torch.no_grad(), torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    frame_p, seq_p = net.predict(x)
                frame_p, seq_p = frame_p.float().cpu().numpy(), seq_p.float().cpu().numpy()
                for (meta, _), fp, sp in zip(chunk, frame_p, seq_p):
                    preds.append((*meta, fp.tolist(), float(sp)))
        pending.clear()

    for row in rows:
        if int(hashlib.sha1(row["video_id"].encode()).hexdigest(), 16) % world != rank:
            continue
        pending.append(((row["video_id"], row["label"], row["track"]), builder(Item(row, row["label"]), None)))
        if val_sbi and row["label"] == "REAL":
            pending.append(((row["video_id"] + "#sbi", "FAKE", row["track"]),
                            builder(Item(row, "FAKE", sbi=True), None)))
        if len(pending) >= 8 * cfg.batch_size:
            flush()
    flush()
    everything = [p for part in _gather(preds, world) for p in part]
    ids, y, p = aggregate_videos(everything, cfg.val_frame_aggregation, cfg.val_track_aggregation)
    return video_metrics(y, p)


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


def train_loop_per_worker(config: dict) -> None:
    """The Ray Train worker function (see module doc)."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.nn.functional as F

    from dfbatch.models.detector import ModelSpec, build_model, load_weights, preprocess, read_checkpoint, save_checkpoint

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
        with checkpoint.as_directory() as d:
            _, sd, _ = read_checkpoint(os.path.join(d, "model.pt"))
            load_weights(model, sd, source="training checkpoint")
            saved = torch.load(os.path.join(d, "train_state.pt"), map_location="cpu", weights_only=True)
        state = json.loads(saved["state_json"])
        opt_state, scaler_state = saved["optimizer"], saved.get("scaler")
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
    train_builder = SequenceBuilder(cfg.seq_len, augment=aug, sbi=sbi_cfg)
    val_builder = SequenceBuilder(cfg.seq_len, augment=None, sbi=sbi_cfg)
    val_sbi = cfg.val_sbi == "on" or (cfg.val_sbi == "auto" and not config.get("val_has_fakes", True))
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=cfg.loader_threads or max(1, int(cfg.cpus_per_worker)))
    train_it = ray.train.get_dataset_shard("train")
    val_it = ray.train.get_dataset_shard("val")
    fake_index = spec.fake_index
    mlflow_client = None
    if rank == 0 and config.get("run_id"):
        from mlflow import MlflowClient

        mlflow_client = MlflowClient(tracking_uri=config["tracking_uri"])

    state.setdefault("sessions", []).append({"id": config.get("session"), "start_epoch": int(state["epoch"]) + 1})
    for epoch in range(int(state["epoch"]), cfg.epochs):
        t0 = time.time()
        lr = _lr_at(cfg, epoch)
        for g in optimizer.param_groups:
            g["lr"] = lr
        model.train()
        rng = np.random.default_rng([cfg.seed, epoch, rank])
        sampler = BalancedSampler(rng, balance=cfg.balance == "sampler", sbi=cfg.sbi, sbi_fraction=cfg.sbi_fraction,
                                  pool_size=cfg.pool_size)
        loss_sum, steps, seen = 0.0, 0, 0

        def step(batch: list[tuple[np.ndarray, int]]) -> float:
            x, lengths = collate([s for s, _ in batch], cfg.seq_len)
            x = preprocess(x, spec, device=device)
            y = torch.tensor([fake_index if lab else 1 - fake_index for _, lab in batch], device=device)
            lengths_t = torch.as_tensor(lengths, device=device)
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(x, lengths_t)
            logits = logits.float()
            T = logits.shape[1]
            valid = torch.arange(T, device=device).unsqueeze(0) < lengths_t.unsqueeze(1)
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.repeat_interleave(T),
                                 reduction="none", label_smoothing=cfg.label_smoothing).reshape(-1, T)
            loss = (ce * valid).sum() / valid.sum()
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            return float(loss.detach())

        def build(items: list[Item]) -> list[tuple[np.ndarray, int]]:
            # JPEG decoding, blending and augmentation release the GIL: build a batch on threads, each
            # sequence with its own generator seeded from the epoch's (reproducible whatever the scheduling)
            seeds = rng.integers(0, 2**63 - 1, size=len(items))
            seqs = list(pool.map(lambda a: train_builder(a[0], np.random.default_rng(int(a[1]))), zip(items, seeds)))
            return [(seq, 1 if it.label == "FAKE" else 0) for seq, it in zip(seqs, items)]

        pending: list[Item] = []
        # the sampler's pools fill from this stream: shuffled, an epoch does not start with one label only
        for row in _iter_rows(train_it, columns=SHARD_COLUMNS, shuffle_buffer=cfg.shuffle_buffer,
                              seed=int(rng.integers(2**31))):
            pending.append(sampler.feed(row))
            seen += 1
            if len(pending) == cfg.batch_size:
                loss_sum += step(build(pending))
                steps += 1
                pending = []
        if pending:
            loss_sum += step(build(pending))
            steps += 1
        train_time = time.time() - t0

        val_rows = _iter_rows(val_it, columns=SHARD_COLUMNS)
        metrics = _validate(model, spec, val_rows, cfg, val_builder, device, amp_dtype, rank, world, val_sbi)
        losses = _gather((loss_sum, steps, seen, dict(sampler.emitted)), world)
        tot_steps = sum(s for _, s, _, _ in losses)
        emitted: Counter = Counter()
        for *_, e in losses:
            emitted.update(e)
        n_items = max(1, sum(emitted.values()))
        metrics.update(
            epoch=epoch + 1, lr=lr, train_loss=sum(l for l, *_ in losses) / max(1, tot_steps),
            train_sequences=float(sum(n for _, _, n, _ in losses)), train_steps=float(tot_steps),
            train_fake_fraction=(emitted["FAKE"] + emitted["FAKE/sbi"]) / n_items,
            train_sbi_fraction=emitted["FAKE/sbi"] / n_items,
            train_time_s=train_time, epoch_time_s=time.time() - t0,
            sequences_per_s=sum(n for _, _, n, _ in losses) / max(1e-9, train_time))
        direction = MONITORS[cfg.monitor]
        value = metrics.get(cfg.monitor, float("nan"))
        if value is None or not math.isfinite(value):
            score = -1e9  # unusable epoch (e.g. one class in val): the worst score
        else:
            score = value if direction == "max" else -value
        metrics["score"] = float(score)
        improved = state["best_score"] is None or score > state["best_score"] + cfg.min_delta
        if improved:
            state.update(best_score=score, best_epoch=epoch + 1, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        stop = cfg.patience > 0 and state["bad_epochs"] >= cfg.patience and epoch + 1 < cfg.epochs
        metrics["stopped_early"] = float(stop)
        metrics = _sanitize(metrics)
        state["epoch"] = epoch + 1
        state["history"].append(metrics)
        if cfg.progress and rank == 0:  # stdout itself: Ray Train's print patch would print it twice
            sys.stdout.write(f"epoch {epoch + 1}/{cfg.epochs}  train loss {metrics['train_loss']:.3f}  "
                             f"val AUC {metrics.get('val_auc', float('nan')):.3f}  val log loss "
                             f"{metrics.get('val_log_loss', float('nan')):.3f}  ({metrics['epoch_time_s']:.0f} s)"
                             + ("  early stop" if stop else "") + "\n")
            sys.stdout.flush()

        with tempfile.TemporaryDirectory(prefix="dfbatch-ckpt-") as d:
            ckpt = None
            if rank == 0:
                net = getattr(model, "module", model)
                meta = {"epoch": epoch + 1, "metrics": {k: v for k, v in metrics.items() if isinstance(v, float)},
                        "threshold": metrics.get("val_threshold") if math.isfinite(metrics.get("val_threshold", float("nan"))) else 0.5,
                        "run_id": config.get("run_id"), "lineage": config.get("lineage", {})}
                save_checkpoint(os.path.join(d, "model.pt"), net, spec, meta)
                torch.save({"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                            "state_json": json.dumps(state)}, os.path.join(d, "train_state.pt"))
                ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=ckpt)
        if mlflow_client is not None:
            from mlflow.entities import Metric

            ts = int(time.time() * 1000)
            batch = [Metric(k, float(v), ts, epoch + 1) for k, v in metrics.items()
                     if isinstance(v, float) and k != "epoch"]
            try:
                mlflow_client.log_batch(config["run_id"], metrics=batch)
            except Exception as exc:  # tracking trouble must not kill training
                log.warning("MLflow logging failed: %s", redact(str(exc))[:200])
        if stop:
            if rank == 0:
                log.info("early stopping after epoch %d (best epoch %s)", epoch + 1, state["best_epoch"])
            break


# --------------------------------------------------------------------------------------------------- driver
def _data_description(cfg: TrainConfig, store) -> tuple[dict, dict]:
    """(prepare params, description of the training data) — raises UserError when unusable."""
    params = store.read_params()
    if params is None:
        raise UserError(f"{redact(cfg.data)} has no prepared shards (run `dfbatch prepare ... --output {cfg.data}` first)")
    videos = store.videos()
    ok = videos[videos["status"] == "ok"]
    desc: dict[str, Any] = {"data": redact(cfg.data), "prepare_frames": params.get("frames"),
                            "crop_size": params.get("crop_size"), "margin": params.get("margin"),
                            "split_seed": params.get("split_seed"), "fractions": params.get("fractions"),
                            "sources": params.get("sources")}
    for split in ("train", "val", "test"):
        part = ok[ok["split"] == split]
        desc[f"{split}_videos"] = int(len(part))
        desc[f"{split}_fake_videos"] = int((part["label"] == "FAKE").sum())
        desc[f"{split}_tracks"] = int(part["n_tracks"].fillna(0).sum())
    desc["datasets"] = ",".join(sorted(str(d) for d in ok["dataset"].dropna().unique()))
    if desc["train_tracks"] < cfg.num_workers:
        raise UserError(f"the train split has {desc['train_tracks']} face tracks; need at least one per worker "
                        f"({cfg.num_workers})")
    train_real = desc["train_videos"] - desc["train_fake_videos"]
    if cfg.sbi == "off" and (desc["train_fake_videos"] == 0 or train_real == 0):
        raise UserError("the train split needs REAL and FAKE videos (or self-blended fakes: --sbi mix|only)")
    if cfg.sbi != "off" and train_real == 0:
        raise UserError("self-blended fakes need REAL videos in the train split")
    if desc["val_videos"] == 0:
        log.warning("the val split is empty: no validation metrics, early stopping follows nothing")
    return params, desc


def _mlflow_run(cfg: TrainConfig, tracking_uri: str, key: str, params: dict) -> tuple[str, str, bool]:
    """Find the run of this (output, name) or create it. Returns (run_id, experiment_id, resumed)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(cfg.experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(cfg.experiment)
    found = client.search_runs([exp_id], filter_string=f"tags.`dfbatch.train_key` = '{key}'", max_results=1,
                               order_by=["attributes.start_time DESC"])
    if found and cfg.resume:
        run = found[0]
        client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id, exp_id, True
    run = client.create_run(exp_id, run_name=cfg.name, tags={"dfbatch.train_key": key, "dfbatch.kind": "train"})
    flat = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in params.items()}
    items = list(flat.items())
    from mlflow.entities import Param

    for i in range(0, len(items), 90):
        client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in items[i: i + 90]])
    return run.info.run_id, exp_id, False


def _storage_fs(cfg: TrainConfig):
    """(storage_path, pyarrow filesystem or None) for Ray Train's RunConfig."""
    if is_s3(cfg.output):
        if cfg.endpoint_url:
            import pyarrow.fs as pafs

            fs = pafs.PyFileSystem(pafs.FSSpecHandler(Storage(cfg.endpoint_url).fs(cfg.output)))
            return cfg.output.split("://", 1)[1].rstrip("/"), fs
        return cfg.output.rstrip("/"), None
    return os.path.abspath(os.path.expanduser(cfg.output)), None


def _read_shards_ds(files: list[str], storage: Storage):
    """A Ray dataset over shard parts. The legacy (v1) Parquet read is used so no Ray Data step needs a whole
    CPU: the training workers may hold all of them."""
    import ray
    from ray.data import DataContext

    fs, paths = None, files
    if files and is_s3(files[0]):
        import pyarrow.fs as pafs

        fs = pafs.PyFileSystem(pafs.FSSpecHandler(storage.fs(files[0])))
        paths = [storage.path(p) for p in files]
    ctx = DataContext.get_current()
    old = getattr(ctx, "use_datasource_v2", None)
    try:
        if old is not None:
            ctx.use_datasource_v2 = False
        if not paths:
            from dfbatch.training.prepare import SHARD_SCHEMA

            return ray.data.from_arrow(SHARD_SCHEMA.empty_table().select(SHARD_COLUMNS))
        return ray.data.read_parquet(paths, filesystem=fs, columns=SHARD_COLUMNS, num_cpus=0)
    finally:
        if old is not None:
            ctx.use_datasource_v2 = old


def _copy_best(src_dir: str, cfg: TrainConfig) -> str:
    """Copy the best checkpoint's model.pt to OUTPUT/NAME/best_model.pt; returns its path / URI."""
    if not is_s3(cfg.output):
        import shutil

        dst = os.path.join(os.path.abspath(os.path.expanduser(cfg.output)), cfg.name, "best_model.pt")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(os.path.join(src_dir, "model.pt"), dst)
        return dst
    storage = Storage(cfg.endpoint_url)
    uri = f"{cfg.output.rstrip('/')}/{cfg.name}/best_model.pt"
    storage.fs(uri).put_file(os.path.join(src_dir, "model.pt"), storage.path(uri))
    return uri


def _best_checkpoint(result):
    """The kept checkpoint with the highest score; ties go to the earlier epoch (what early stopping calls best)."""
    kept = [(c, m) for c, m in (getattr(result, "best_checkpoints", None) or []) if m and "score" in m]
    if not kept:
        return result.checkpoint
    return max(kept, key=lambda cm: (float(cm[1]["score"]), -float(cm[1].get("epoch", 0))))[0]


def train(cfg: TrainConfig) -> TrainResult:
    """Train (or resume) on Ray Train, log to MLflow, register the best checkpoint. See the module doc."""
    import ray
    from mlflow import MlflowClient
    from ray.data import DataContext
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from dfbatch.models import registry
    from dfbatch.models.detector import read_checkpoint
    from dfbatch.pipeline import init_ray
    from dfbatch.training.prepare import ShardStore

    started = time.time()
    spec = cfg.spec()
    storage = Storage(cfg.endpoint_url)
    store = ShardStore(cfg.data, storage)
    prep, desc = _data_description(cfg, store)
    tracking_uri = registry.resolve_tracking_uri(cfg.tracking_uri)
    storage_path, pa_fs = _storage_fs(cfg)
    run_dir = f"{storage_path.rstrip('/')}/{cfg.name}"
    key = f"{redact(cfg.output).rstrip('/')}/{cfg.name}"
    snapshot_exists = (os.path.isdir(run_dir) and any(n.startswith("checkpoint") for n in os.listdir(run_dir))) \
        if pa_fs is None and not is_s3(cfg.output) else None
    if snapshot_exists and not cfg.resume:
        raise UserError(f"{run_dir} already holds checkpoints of a run named {cfg.name!r}; resume it (the default) "
                        f"or choose another --name / --output")
    params = {**{k: v for k, v in cfg.to_dict().items() if k not in ("tracking_uri", "s3_endpoint_url")},
              **{f"data.{k}": v for k, v in desc.items()}, "model.spec": spec.describe()}
    params["data"], params["output"] = redact(cfg.data), redact(cfg.output)
    run_id, exp_id, resumed = _mlflow_run(cfg, tracking_uri, key, params)
    client = MlflowClient(tracking_uri=tracking_uri)
    if resumed:
        client.set_tag(run_id, "dfbatch.resumed_with_epochs", str(cfg.epochs))
    else:
        try:
            client.log_dict(run_id, {"data": desc, "prepare": prep, "train_config": params}, "training_data.json")
        except Exception as exc:  # an unreachable artifact store must not stop training
            log.warning("could not log training_data.json: %s", redact(str(exc))[:200])

    init_ray(quiet=True)  # Ray's own processes log errors only (the controller polls a dashboard we do not start)
    data_ctx = DataContext.get_current()
    saved_bars = data_ctx.enable_progress_bars
    data_ctx.enable_progress_bars = False  # the datasets carry it to the workers: epoch lines instead of bars
    n_gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = bool(n_gpus) if cfg.use_gpu is None else cfg.use_gpu
    if use_gpu and n_gpus == 0:
        raise UserError("--gpu: the Ray cluster has no GPUs")
    datasets = {"train": _read_shards_ds(store.shard_files("train"), storage).randomize_block_order(),
                "val": _read_shards_ds(store.shard_files("val"), storage)}
    lineage = {"data": redact(cfg.data), "split_file": redact(store.uri("split.parquet")),
               "train_videos": desc["train_videos"], "train_fake_videos": desc["train_fake_videos"],
               "val_videos": desc["val_videos"], "sbi": cfg.sbi, "training_run": run_id}
    session = uuid.uuid4().hex
    config = {"session": session, "cfg": cfg.to_dict(), "spec": spec.to_dict(), "margin": float(prep.get("margin") or 0.25),
              "val_has_fakes": desc["val_fake_videos"] > 0, "run_id": run_id, "tracking_uri": tracking_uri,
              "lineage": lineage}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        run_config=RunConfig(name=cfg.name, storage_path=storage_path, storage_filesystem=pa_fs,
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints,
                                                                checkpoint_score_attribute="score",
                                                                checkpoint_score_order="max"),
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             logging_config=LoggingConfig(log_level=str(cfg.worker_log_level).upper())),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    try:
        result = trainer.fit()
    except Exception as exc:
        client.set_terminated(run_id, status="FAILED")
        raise UserError(f"training failed: {one_line(exc, limit=500, last=True)}") from exc
    finally:
        data_ctx.enable_progress_bars = saved_bars
    if getattr(result, "error", None):
        client.set_terminated(run_id, status="FAILED")
        raise UserError(f"training failed: {result.error}")

    best = _best_checkpoint(result)
    if best is None:
        client.set_terminated(run_id, status="FAILED")
        raise UserError("training produced no checkpoint")
    with best.as_directory() as d:
        best_spec, sd, meta = read_checkpoint(os.path.join(d, "model.pt"))
        model_file = _copy_best(d, cfg)
    with (result.checkpoint or best).as_directory() as d:
        import torch

        state = json.loads(torch.load(os.path.join(d, "train_state.pt"), map_location="cpu", weights_only=True)["state_json"])
    history = state["history"]
    best_metrics = dict(meta.get("metrics") or {})
    threshold = float(meta.get("threshold") if meta.get("threshold") is not None else 0.5)
    last = state.get("sessions", [{}])[-1]
    start_epoch = int(last.get("start_epoch", 1)) if last.get("id") == session else int(state["epoch"]) + 1
    res = TrainResult(run_id=run_id, experiment_id=exp_id,
                      storage_path=redact(run_dir if not is_s3(cfg.output) else f"{cfg.output.rstrip('/')}/{cfg.name}"),
                      start_epoch=start_epoch, last_epoch=int(state["epoch"]),
                      best_epoch=meta.get("epoch"), best_metrics=best_metrics, history=history,
                      stopped_early=bool(history and history[-1].get("stopped_early")), threshold=threshold,
                      best_checkpoint=redact(str(best.path)), model_file=redact(model_file), spec=best_spec.to_dict(),
                      data=desc)
    if is_s3(cfg.output) and "://" not in res.best_checkpoint:
        res.best_checkpoint = f"s3://{res.best_checkpoint.lstrip('/')}"
    ckpt_key = f"dfbatch.registered.{os.path.basename(str(best.path).rstrip('/'))}"
    run = client.get_run(run_id)
    if cfg.register:
        version = run.data.tags.get(ckpt_key)
        if version is None:
            description = (f"trained by dfbatch on {desc['train_videos']} videos ({desc['train_fake_videos']} FAKE; "
                           f"self-blended fakes: {cfg.sbi}) from {redact(cfg.data)}; best epoch {meta.get('epoch')} "
                           f"val AUC {best_metrics.get('val_auc', float('nan')):.4f}; threshold {threshold:.4f} "
                           f"(Youden on val)")
            reg_metrics = {f"best_{k}": v for k, v in best_metrics.items() if isinstance(v, float) and math.isfinite(v)}
            version = registry.register(sd, best_spec, cfg.model_name, alias=cfg.alias, threshold=threshold,
                                        metrics=reg_metrics, description=description, run_id=run_id,
                                        lineage={**lineage, "best_epoch": meta.get("epoch"),
                                                 "checkpoint": redact(str(best.path))},
                                        tags={"dfbatch.training_data": redact(cfg.data)}, tracking_uri=tracking_uri)
            client.set_tag(run_id, ckpt_key, str(version))
        res.model_name, res.model_version = cfg.model_name, str(version)
        res.model_uri = f"models:/{cfg.model_name}/{version}"
    client.set_tag(run_id, "dfbatch.best_epoch", str(meta.get("epoch")))
    client.set_terminated(run_id, status="FINISHED")
    res.elapsed_s = time.time() - started
    log.info("training done: %s", json.dumps({k: v for k, v in res.to_dict().items() if k != "history"}, default=str))
    return res


__all__ = ["TrainConfig", "TrainResult", "train", "train_loop_per_worker", "BalancedSampler", "SequenceBuilder",
           "frame_positions", "collate", "youden_threshold", "video_metrics", "aggregate_videos"]
