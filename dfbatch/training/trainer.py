"""Train a detector on prepared face-sequence shards with Ray Train (TorchTrainer, DDP), log it to MLflow and
register the best checkpoint as `challenger`.

    from dfbatch.training.trainer import TrainConfig, train
    result = train(TrainConfig(data="prepared/", output="checkpoints/", epochs=10, num_workers=2))
    result.model_uri   # models:/dfbatch-detector/7  (alias challenger)

Data: `dfbatch prepare` shards (one row per face track: JPEG frames + video label/group/split). Each Ray Train
worker reads its share of `shards/train` through `ray.train.get_dataset_shard("train")` (split equally, so
every worker runs the same number of steps — DDP needs that) and the whole of `shards/val`.

Per worker (`dfbatch.training.loop`): sampling and sequences (`dfbatch.training.sampler`), one pass over its
train share per epoch, validation scored like the scoring job (`dfbatch.stages.aggregate`) with video-level
metrics and the threshold to register (`training.loop.val_threshold`), early stopping on ``monitor``;
``exclude_methods`` leaves the fakes of some manipulation methods out of both splits (leave-one-manipulation-out).

Checkpoints: each epoch rank 0 writes ``model.pt`` + ``train_state.pt`` (see `dfbatch.training.loop`). Rerunning
with the same ``output`` + ``name`` resumes from the latest checkpoint (Ray Train V2 restores its
checkpoint-manager snapshot; `ray.train.get_checkpoint()`); ``epochs`` is the total (rerun with more epochs to
continue). MLflow: one run per (output, name), created by the driver (tag
``dfbatch.train_key``) and found again on resume; rank 0 logs every epoch's metrics into it directly.
After training the driver registers the best checkpoint via `registry.register` into that run, with alias
``challenger``, its threshold and the training data description.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from dfbatch.config import MONITORS, TrainConfig
from dfbatch.errors import UserError, one_line, redact
from dfbatch.io.storage import Storage, is_s3

log = logging.getLogger(__name__)


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


# --------------------------------------------------------------------------------------------------- driver
def excluded_videos(cfg: TrainConfig, store) -> set[str]:
    """Video ids of the fakes of ``cfg.exclude_methods`` (from the shards' split table); UserError for a method the
    labels do not have."""
    if not cfg.exclude_methods:
        return set()
    table = store.split_table()
    methods = set() if table is None or "method" not in table else set(table["method"].dropna().astype(str))
    unknown = sorted(set(cfg.exclude_methods) - methods)
    if unknown:
        raise UserError(f"--exclude-methods: {', '.join(unknown)} not among the labels' methods "
                        f"({', '.join(sorted(methods)) or 'none: the labels have no method column'})")
    out = table[table["method"].isin(cfg.exclude_methods) & (table["label"] == "FAKE")]
    return set(out["video_id"].dropna().astype(str))


def _val_too_small(cfg: TrainConfig, desc: dict) -> bool:
    """Whether the val split is too small to choose an epoch and a threshold (a warning says what is done instead)."""
    real = desc["val_videos"] - desc["val_fake_videos"]
    fake = desc["val_fake_videos"] or (real if cfg.val_sbi != "off" else 0)  # self-blended val fakes when none
    if real >= cfg.min_val_videos and fake >= cfg.min_val_videos:
        return False
    log.warning("the val split has %d REAL and %d FAKE videos (fewer than min_val_videos=%d of each): too few to "
                "choose an epoch or a threshold; the last epoch is registered with the threshold 0.5 (give the val "
                "split more videos: `dfbatch prepare --split`)", real, desc["val_fake_videos"], cfg.min_val_videos)
    return True


def _data_description(cfg: TrainConfig, store, excluded: set[str] = frozenset()) -> tuple[dict, dict]:
    """(prepare params, description of the training data) — raises UserError when unusable."""
    params = store.read_params()
    if params is None:
        raise UserError(f"{redact(cfg.data)} has no prepared shards (run `dfbatch prepare ... --output {cfg.data}` first)")
    videos = store.videos()
    ok = videos[(videos["status"] == "ok") & ~videos["video_id"].isin(excluded)]
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
    if cfg.exclude_methods:
        desc["excluded_methods"] = ",".join(cfg.exclude_methods)
        desc["excluded_videos"] = len(excluded)
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


def _read_shards_ds(files: list[str], storage: Storage, excluded: set[str] = frozenset()):
    """A Ray dataset over shard parts (without the rows of `excluded` videos). The legacy (v1) Parquet read is used
    so no Ray Data step needs a whole CPU: the training workers may hold all of them."""
    import ray
    from ray.data import DataContext

    from dfbatch.training.prepare import SHARD_COLUMNS, SHARD_SCHEMA

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
            return ray.data.from_arrow(SHARD_SCHEMA.empty_table().select(SHARD_COLUMNS))
        ds = ray.data.read_parquet(paths, filesystem=fs, columns=SHARD_COLUMNS, num_cpus=0)
        if excluded:
            from ray.data.expressions import col

            ds = ds.filter(expr=col("video_id").not_in(sorted(excluded)), num_cpus=0)
        return ds
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


def _check_resumable(cfg: TrainConfig, run_dir: str, pa_fs) -> None:
    """Refuse to start over a local run folder that holds checkpoints when resuming is off."""
    snapshot_exists = (os.path.isdir(run_dir) and any(n.startswith("checkpoint") for n in os.listdir(run_dir))) \
        if pa_fs is None and not is_s3(cfg.output) else None
    if snapshot_exists and not cfg.resume:
        raise UserError(f"{run_dir} already holds checkpoints of a run named {cfg.name!r}; resume it (the default) "
                        f"or choose another --name / --output")


def _open_run(cfg: TrainConfig, spec, tracking_uri: str, prep: dict, desc: dict):
    """The MLflow run of this (output, name), created with its params and training_data.json, or found again.
    Returns (run_id, experiment_id, client)."""
    from mlflow import MlflowClient

    key = f"{redact(cfg.output).rstrip('/')}/{cfg.name}"
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
    return run_id, exp_id, client


def _use_gpu(cfg: TrainConfig) -> bool:
    import ray

    n_gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = bool(n_gpus) if cfg.use_gpu is None else cfg.use_gpu
    if use_gpu and n_gpus == 0:
        raise UserError("--gpu: the Ray cluster has no GPUs")
    return use_gpu


def _ingest_options(data_config_cls):
    """Ray Train's ingest options with the block order preserved: with the seeded block shuffle, every run on the
    same shard parts reads its rows in the same order; the worker's shuffle windows (`sampler.shuffle_window`) make
    a window's order independent of the parts too, so a training set within one window gives one model per seed
    on any preparation (the sampler, augmentation and initialisation are seeded; float reductions in threads may
    still differ)."""
    import warnings

    with warnings.catch_warnings():  # Ray's own defaults set a field it deprecates (exclude_resources)
        warnings.simplefilter("ignore", DeprecationWarning)
        opts = data_config_cls.default_ingest_options()
    opts.preserve_order = True
    return opts


def _started_here() -> bool:
    """Whether this process started the Ray it is connected to (a local Ray that ends with it)."""
    from ray._private import worker

    return bool(getattr(worker._global_node, "head", False))


def _trainer_class():
    """TorchTrainer; on a local Ray this process started, one without Ray Train's placement group cleaner. That
    detached actor frees the workers' placement group if the controller dies; it watches the controller through
    Ray's state API, which does not answer on such a Ray (it times out), so each training ended with a 12 s wait
    and a traceback on the terminal, and the placement group ends with the local Ray anyway. On a cluster the
    driver joined, the cleaner stays."""
    from ray.train.torch import TorchTrainer

    try:
        from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    except ImportError:  # another Ray version: its own defaults
        return TorchTrainer
    if not _started_here():
        return TorchTrainer

    class LocalTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            return [c for c in super()._create_default_callbacks() if not isinstance(c, PlacementGroupCleanerCallback)]

    return LocalTorchTrainer


def _torch_trainer(cfg: TrainConfig, loop_config: dict, datasets: dict, storage_path: str, pa_fs, use_gpu: bool):
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig

    from dfbatch.training.loop import train_loop_per_worker

    return _trainer_class()(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        run_config=RunConfig(name=cfg.name, storage_path=storage_path, storage_filesystem=pa_fs,
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints,
                                                                checkpoint_score_attribute="score",
                                                                checkpoint_score_order="max"),
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             logging_config=LoggingConfig(log_level=str(cfg.worker_log_level).upper())),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"], execution_options=_ingest_options(DataConfig)),
    )


def _finished_run(cfg: TrainConfig, run_dir: str, pa_fs):
    """(Ray Train result, its train state) kept in run_dir when its latest checkpoint already has ``epochs`` epochs
    (a rerun of a finished training), else None. Such a rerun registers what is there without starting Ray Train."""
    if not cfg.resume:
        return None
    from ray.train import Result

    quiet = logging.getLogger("ray.train")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # its "a run snapshot was found" notice
    try:
        result = Result.from_path(run_dir, storage_filesystem=pa_fs)
    except Exception:  # no snapshot: a new run (or one that never reported); Ray Train starts it
        return None
    finally:
        quiet.setLevel(level)
    if result.checkpoint is None:
        return None
    state = _final_state(result, None)
    return (result, state) if int(state["epoch"]) >= cfg.epochs else None


def _fit(trainer, client, run_id: str):
    """`trainer.fit()`; a failure marks the MLflow run FAILED and becomes a one-line UserError."""
    try:
        result = trainer.fit()
    except Exception as exc:
        client.set_terminated(run_id, status="FAILED")
        raise UserError(f"training failed: {one_line(exc, limit=500, last=True)}") from exc
    if getattr(result, "error", None):
        client.set_terminated(run_id, status="FAILED")
        raise UserError(f"training failed: {result.error}")
    return result


def _final_state(result, best) -> dict:
    """The train state (history, sessions) of the run's latest checkpoint."""
    import torch

    with (result.checkpoint or best).as_directory() as d:
        return json.loads(torch.load(os.path.join(d, "train_state.pt"), map_location="cpu", weights_only=True)["state_json"])


def _register_best(cfg: TrainConfig, client, res: TrainResult, best, best_spec, state_dict, meta: dict,
                   lineage: dict, tracking_uri: str) -> None:
    """Register the best checkpoint (once per checkpoint: a tag on the run remembers the version) into `res`."""
    from dfbatch.models import registry

    ckpt_key = f"dfbatch.registered.{os.path.basename(str(best.path).rstrip('/'))}"
    version = client.get_run(res.run_id).data.tags.get(ckpt_key)
    if version is None:
        desc, best_metrics = res.data, res.best_metrics
        description = (f"trained by dfbatch on {desc['train_videos']} videos ({desc['train_fake_videos']} FAKE; "
                       f"self-blended fakes: {cfg.sbi}) from {redact(cfg.data)}; best epoch {meta.get('epoch')} "
                       f"val AUC {best_metrics.get('val_auc', float('nan')):.4f}; threshold {res.threshold:.4f} "
                       f"({threshold_source(cfg, res.data)})")
        reg_metrics = {f"best_{k}": v for k, v in best_metrics.items() if isinstance(v, float) and math.isfinite(v)}
        version = registry.register(state_dict, best_spec, cfg.model_name, alias=cfg.alias, threshold=res.threshold,
                                    metrics=reg_metrics, description=description, run_id=res.run_id,
                                    lineage={**lineage, "best_epoch": meta.get("epoch"),
                                             "checkpoint": redact(str(best.path))},
                                    tags={"dfbatch.training_data": redact(cfg.data)}, tracking_uri=tracking_uri)
        from dfbatch.evaluation.thresholds import training_record
        from dfbatch.stages.aggregate import describe

        aggregation = describe(frame_aggregation=cfg.val_frame_aggregation, track_aggregation=cfg.val_track_aggregation)
        registry.set_calibration(cfg.model_name, version, training_record(
            res.threshold, aggregation, redact(cfg.data), res.run_id, cfg.threshold_method, cfg.target_fpr),
            tracking_uri=tracking_uri)
        client.set_tag(res.run_id, ckpt_key, str(version))
    res.model_name, res.model_version = cfg.model_name, str(version)
    res.model_uri = f"models:/{cfg.model_name}/{version}"


def threshold_source(cfg: TrainConfig, data: dict) -> str:
    """How the registered threshold was chosen, in words."""
    if data.get("val_too_small"):
        return "0.5: the val split is too small to choose one"
    if cfg.threshold_method == "real_fpr":
        return f"flags <= {cfg.target_fpr:g} of the REAL val videos"
    return "equal error rate on val" if cfg.threshold_method == "eer" else "Youden's J on val"


def train(cfg: TrainConfig) -> TrainResult:
    """Train (or resume) on Ray Train, log to MLflow, register the best checkpoint. See the module doc."""
    cfg = cfg.with_absolute_paths()
    from ray.data import DataContext, RandomSeedConfig

    from dfbatch.models import registry
    from dfbatch.models.checkpoints import read_checkpoint
    from dfbatch.pipeline import init_ray
    from dfbatch.training.prepare import ShardStore, model_input

    started = time.time()
    spec = cfg.spec()  # a bad backbone or head name fails first
    storage = Storage(cfg.endpoint_url)
    store = ShardStore(cfg.data, storage)
    excluded = excluded_videos(cfg, store)
    prep, desc = _data_description(cfg, store, excluded)
    desc["val_too_small"] = _val_too_small(cfg, desc)
    spec = spec.replace(**model_input(prep))  # the shards' crops and detection: the model's input contract
    tracking_uri = registry.resolve_tracking_uri(cfg.tracking_uri)
    storage_path, pa_fs = _storage_fs(cfg)
    run_dir = f"{storage_path.rstrip('/')}/{cfg.name}"
    _check_resumable(cfg, run_dir, pa_fs)
    run_id, exp_id, client = _open_run(cfg, spec, tracking_uri, prep, desc)

    lineage = {"data": redact(cfg.data), "split_file": redact(store.uri("split.parquet")),
               "train_videos": desc["train_videos"], "train_fake_videos": desc["train_fake_videos"],
               "val_videos": desc["val_videos"], "sbi": cfg.sbi, "training_run": run_id}
    session = uuid.uuid4().hex
    finished = _finished_run(cfg, run_dir, pa_fs)
    result, state = finished or (None, None)
    if finished is None:
        init_ray(quiet=True)  # Ray's own processes log errors only (the controller polls a dashboard we do not start)
        use_gpu = _use_gpu(cfg)
        data_ctx = DataContext.get_current()
        saved_bars = data_ctx.enable_progress_bars
        data_ctx.enable_progress_bars = False  # the datasets carry it to the workers: epoch lines instead of bars
        datasets = {"train": _read_shards_ds(store.shard_files("train"), storage, excluded).randomize_block_order(
                        seed=RandomSeedConfig(seed=cfg.seed, reseed_after_execution=True)),  # another order each epoch
                    "val": _read_shards_ds(store.shard_files("val"), storage, excluded)}
        loop_config = {"session": session, "cfg": cfg.to_dict(), "spec": spec.to_dict(),
                       "margin": spec.crop_margin, "val_has_fakes": desc["val_fake_videos"] > 0,
                       "val_too_small": desc["val_too_small"],
                       "run_id": run_id, "tracking_uri": tracking_uri, "lineage": lineage}
        try:
            result = _fit(_torch_trainer(cfg, loop_config, datasets, storage_path, pa_fs, use_gpu), client, run_id)
        finally:
            data_ctx.enable_progress_bars = saved_bars

    best = _best_checkpoint(result)
    if best is None:
        client.set_terminated(run_id, status="FAILED")
        raise UserError("training produced no checkpoint")
    with best.as_directory() as d:
        best_spec, sd, meta = read_checkpoint(os.path.join(d, "model.pt"))
        model_file = _copy_best(d, cfg)
    if state is None:  # (a finished run's was read already)
        state = _final_state(result, best)
    history = state["history"]
    last = state.get("sessions", [{}])[-1]
    start_epoch = int(last.get("start_epoch", 1)) if last.get("id") == session else int(state["epoch"]) + 1
    res = TrainResult(run_id=run_id, experiment_id=exp_id,
                      storage_path=redact(run_dir if not is_s3(cfg.output) else f"{cfg.output.rstrip('/')}/{cfg.name}"),
                      start_epoch=start_epoch, last_epoch=int(state["epoch"]),
                      best_epoch=meta.get("epoch"), best_metrics=dict(meta.get("metrics") or {}), history=history,
                      stopped_early=bool(history and history[-1].get("stopped_early")),
                      threshold=float(meta.get("threshold") if meta.get("threshold") is not None else 0.5),
                      best_checkpoint=redact(str(best.path)), model_file=redact(model_file), spec=best_spec.to_dict(),
                      data=desc)
    if is_s3(cfg.output) and "://" not in res.best_checkpoint:
        res.best_checkpoint = f"s3://{res.best_checkpoint.lstrip('/')}"
    if cfg.register:
        _register_best(cfg, client, res, best, best_spec, sd, meta, lineage, tracking_uri)
    client.set_tag(run_id, "dfbatch.best_epoch", str(meta.get("epoch")))
    client.set_terminated(run_id, status="FINISHED")
    res.elapsed_s = time.time() - started
    log.info("training done: %s", json.dumps({k: v for k, v in res.to_dict().items() if k != "history"}, default=str))
    return res


__all__ = ["MONITORS", "TrainConfig", "TrainResult", "excluded_videos", "threshold_source", "train"]
