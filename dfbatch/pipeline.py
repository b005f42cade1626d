"""Assemble and run the scoring job: listing → faces (CPU actors) → score (GPU/CPU actors) → Parquet, in MLflow.

This is the only module that knows the whole flow; each stage's logic lives in its own module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field

from dfbatch import __version__
from dfbatch.config import ScoreConfig
from dfbatch.errors import UserError, one_line, redact
from dfbatch.io.storage import Storage, is_s3
from dfbatch.stages.aggregate import describe

log = logging.getLogger(__name__)


@dataclass
class Summary:
    output: str
    model_name: str
    model_version: str
    model_uri: str
    mlflow_run_id: str | None
    job_id: str
    listed: int = 0
    skipped: int = 0  # already had a row for this model version (resume)
    replaced: int = 0  # older rows of re-scored videos removed (--rescore, --retry-failed, leftovers of a killed one)
    duplicates: int = 0
    scored: int = 0
    counts: dict = field(default_factory=dict)  # per status, plus "fake"
    elapsed_s: float = 0.0
    first_result_s: float | None = None  # job start to the first part committed
    listing_started_s: float | None = None  # job start to the first listing page
    listing_s: float | None = None  # job start to the last listing page
    videos_per_min: float = 0.0
    resources: dict = field(default_factory=dict)
    threshold: float | None = None
    temperature: float | None = None  # temperature scaling applied to the video scores (calibration), if any
    threshold_source: str = ""  # where the threshold came from (calibration record, tag, --threshold)
    calibration_notes: list = field(default_factory=list)  # how this job's settings differ from the calibration's
    model_input: str = ""  # how crops reach the model (its spec's crop path and sequence length)
    warnings: list = field(default_factory=list)  # settings that differ from the model's training
    startup: dict = field(default_factory=dict)  # where the fixed cost went: steps from the process start (monitor.StartupClock)
    failed_rows: dict = field(default_factory=dict)  # OUT's failed rows for this version: {kind: {error class: n}}

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_printed(stdout: str) -> dict:
        """The summary `dfbatch score --json` printed: its whole stdout (Ray's output goes to stderr)."""
        return json.loads(stdout)


def model_identity(bundle) -> tuple[str, str]:
    """(name, version) of a bundle; a checkpoint file or a run gets its file/run name and a content hash."""
    import hashlib

    if bundle.name and bundle.version:
        return bundle.name, str(bundle.version)
    from dfbatch.models.registry import tensors_of

    digest = hashlib.sha256()
    for key, tensor in tensors_of(bundle.state_dict).items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    name = bundle.name or (f"run-{bundle.run_id}" if bundle.pinned_uri.startswith("runs:/") else os.path.basename(bundle.pinned_uri or bundle.uri))
    return name, "sha256-" + digest.hexdigest()[:12]


# for the processes of a job started with init_ray(quiet=True) (Ray Train controller and workers, Ray Data
# coordinators): no progress bars, Ray Data and Python deprecation chatter off. A variable the user set wins.
QUIET_WORKER_ENV = {"RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_DATA_LOG_LEVEL": "ERROR",
                    "PYTHONWARNINGS": "ignore::DeprecationWarning"}


# what ray.init logs that a scoring job's user need not read: SIGTERM set by RayStart.start, token auth on by default
_RAY_NOTICES = {"ray._private.worker": "not the main thread",
                "ray._private.authentication.authentication_token_setup": "Token authentication is enabled"}


class _DropNotice(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in str(record.msg)


class RayStart:
    """`init_ray` on a thread: Ray's processes (GCS, raylet, the first workers) come up while this one goes on
    importing MLflow, reading the model and opening the MLflow run. ray.init mostly waits on those processes
    (~0.5 CPU s of this process against seconds of wall time), so the wait overlaps work instead of adding to
    it. `start()` begins (idempotent), `wait()` waits for it and raises what ray.init raised (starting it first
    if needed), `settle()` waits for a start in flight, raising nothing: `run_score` settles before it returns or
    raises (a job that fails before it needs Ray, a wrong model URI say, leaves no half-started Ray behind in the
    caller's process); at exit Ray's own atexit handler stops it.

    Joining a running cluster (an address, RAY_ADDRESS: `ray job submit`) takes no thread: it is quick, and under
    `ray job submit` ray.init moves the driver into the job's working_dir, which would race with imports here.

    The thread stays (asleep) once it started a local Ray: Linux kills the processes a thread spawned when that
    thread ends (Ray starts GCS and raylet with PR_SET_PDEATHSIG), so it must live as long as the process."""

    def __init__(self, address: str | None = None, clock=None):
        self.address, self.clock = address, clock
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
        self._error: BaseException | None = None

    def _joins(self) -> bool:
        return bool(self.address or os.environ.get("RAY_ADDRESS"))

    def start(self) -> None:
        if self._thread is not None or self._joins():
            return
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            # what ray.init installs when called from the main thread: SIGTERM exits through atexit (Ray shut down)
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
        import atexit

        import ray  # noqa: F401  (here: Ray registers its atexit shutdown on import, so `settle` below runs before it)

        atexit.register(self.settle)  # at exit, a start in flight finishes before Ray's own atexit shutdown stops it
        self._thread = threading.Thread(target=self._run, name="dfbatch-ray-start", daemon=True)
        self._thread.start()

    def _init(self) -> None:
        started = time.time()
        quiet = [(logging.getLogger(name), _DropNotice(text)) for name, text in _RAY_NOTICES.items()]
        for logger, drop in quiet:
            logger.addFilter(drop)
        try:
            init_ray(self.address)
        finally:
            for logger, drop in quiet:
                logger.removeFilter(drop)
            if self.clock is not None:
                self.clock.record("ray_start", started)

    def _run(self) -> None:
        import ray

        ours = not ray.is_initialized()
        try:
            self._init()
        except BaseException as exc:  # re-raised by wait(), in the caller's thread
            self._error, ours = exc, False
        finally:
            self._done.set()
        if ours:
            threading.Event().wait()  # keep the processes this thread started alive (see the class doc)

    def wait(self) -> None:
        if self._thread is None and self._joins():
            self._init()  # a running cluster: joined here, in the caller's thread
            return
        self.start()
        self._done.wait()
        if self._error is not None:
            raise self._error

    def settle(self) -> None:
        """Wait for a start in flight, raising nothing (a job with nothing to score needs no Ray)."""
        if self._thread is not None:
            self._done.wait()


_RAY_INIT = threading.Lock()  # one ray.init at a time: a background start (RayStart) may be in flight


def init_ray(address: str | None = None, *, quiet: bool = False) -> None:
    """Join the cluster at `address` / RAY_ADDRESS (set under `ray job submit`), else start a local Ray.

    quiet: the job's Ray processes log errors only and get `QUIET_WORKER_ENV` (Ray Train's controller, for one,
    warns every second that it cannot ask the dashboard for placement group state); this process's own logging
    and Ray Data defaults stay as they were."""
    with _RAY_INIT:
        _init_ray(address, quiet=quiet)


def _init_ray(address: str | None, *, quiet: bool) -> None:
    import ray

    if ray.is_initialized():
        return
    kwargs = dict(address=address or os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False, logging_level=logging.WARNING)
    if not quiet:
        ray.init(**kwargs)
        return
    from ray.data import DataContext

    DataContext.get_current()  # the driver's defaults, fixed before the workers' environment changes
    for k, v in QUIET_WORKER_ENV.items():
        os.environ.setdefault(k, v)
    root = logging.getLogger()
    root_state = (root.level, list(root.handlers))
    notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    notice.setLevel(logging.ERROR)  # the one-time "token authentication is enabled" notice
    try:
        ray.init(**kwargs, logging_config=ray.LoggingConfig(log_level="ERROR"))  # reaches every process of the job
    finally:
        notice.setLevel(logging.NOTSET)
        root.setLevel(root_state[0])  # ray.init applied the job's config to this process too: undo it here
        root.handlers[:] = root_state[1]


# ------------------------------------------------------------------------------------------- the cluster
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` puts the autoscaling config on the head node


def _node_types_from_yaml(path: str) -> list[dict] | None:
    import yaml

    with open(os.path.expanduser(path)) as f:
        conf = yaml.safe_load(f) or {}
    types = conf.get("available_node_types") or {}
    head = conf.get("head_node_type")
    return [{"name": name, "resources": {k: float(v) for k, v in (t.get("resources") or {}).items()},
             "max": 1 if name == head else int(t.get("max_workers", conf.get("max_workers", 0)))}
            for name, t in types.items()] or None


def autoscaler_node_types() -> list[dict] | None:
    """The node types the cluster can grow by ({name, resources, max}; max -1: unbounded), or None when unknown.

    From DFBATCH_CLUSTER_CONFIG (a `ray up` YAML), else the autoscaling config `ray up` leaves on the head
    (~/ray_bootstrap_config.yaml; the driver of `ray job submit` runs there), else the cluster config in the
    GCS (autoscaler v2 / managed Ray)."""
    path = os.environ.get("DFBATCH_CLUSTER_CONFIG") or (BOOTSTRAP_CONFIG if os.path.exists(os.path.expanduser(BOOTSTRAP_CONFIG)) else None)
    if path:
        try:
            return _node_types_from_yaml(path)
        except Exception as exc:
            log.warning("cannot read the cluster config %s: %s", redact(path), one_line(exc))
    import ray

    if not ray.is_initialized():  # never connect here: a bare Ray call would join whatever Ray runs on the machine
        return None
    try:
        import ray._private.state

        conf = ray._private.state.state.get_cluster_config()
    except Exception:
        return None
    if conf is None or not conf.node_group_configs:
        return None
    return [{"name": g.name, "resources": {k: float(v) for k, v in g.resources.items()}, "max": int(g.max_count)} for g in conf.node_group_configs]


def autoscaler_running() -> bool:
    """Whether a Ray autoscaler serves this cluster: v1 publishes its report in the GCS, v2 its state version.
    False when this process has not joined a cluster (no call here may start or join one)."""
    import ray

    if not ray.is_initialized():
        return False
    try:
        from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

        status = _internal_kv_get("__autoscaling_status") if _internal_kv_initialized() else None
        if status and "autoscaler_report" in json.loads(status):
            return True
    except Exception:
        pass
    try:
        from ray._raylet import GcsClient
        from ray.core.generated.autoscaler_pb2 import GetClusterStatusReply

        reply = GetClusterStatusReply()
        reply.ParseFromString(GcsClient(address=ray.get_runtime_context().gcs_address).get_cluster_status(timeout_s=5))
        return reply.autoscaling_state.autoscaler_state_version > 0
    except Exception:
        return False


def cluster_view() -> dict:
    """What the cluster has now (`resources`) and can have (`node_types`, `autoscaler`)."""
    import ray

    return {"resources": dict(ray.cluster_resources()), "node_types": autoscaler_node_types(), "autoscaler": autoscaler_running()}


def possible(view: dict, resource: str) -> float | None:
    """How much of `resource` the cluster can have: its autoscaler's node types x their max counts (inf when
    one is unbounded), never less than it has now; None when the node types are unknown."""
    now = float(view["resources"].get(resource, 0))
    if not view.get("node_types"):
        return None
    total = 0.0
    for t in view["node_types"]:
        amount = float(t["resources"].get(resource, 0))
        if amount:
            total += math.inf if t["max"] < 0 else amount * t["max"]
    return max(now, total)


# ------------------------------------------------------------------------------------------------- the plan
def _pool_max(fixed: int | None, capacity: float | None, per_actor: float, initial: int) -> int | None:
    """An actor pool's max size: a fixed count, else what the cluster can hold (None: grows with the nodes
    that join, no autoscaler config to bound it)."""
    if fixed:
        return fixed
    if capacity is None or math.isinf(capacity) or per_actor <= 0:
        return None
    return max(initial, int(capacity // per_actor))


# a job whose size the listing counted while planning starts at most one actor per this many videos in a pool: on
# CPU an actor's start (torch, torchvision, facenet, the model) costs ~8.4 CPU s, what 8 videos cost on the fast
# path (1.07 CPU s each), and 8 videos fill one model call on a GPU (`videos_per_score_batch`)
VIDEOS_PER_ACTOR = 8


def small_job_cap(videos: int | None, fixed: int | None) -> int | None:
    """The most actors a pool needs for a job of `videos` (None: not counted, or the pool's size was given)."""
    return None if videos is None or fixed else max(1, math.ceil(videos / VIDEOS_PER_ACTOR))


def plan_resources(cfg: ScoreConfig, view: dict | None = None, videos: int | None = None) -> dict:
    """Actor pools (initial, min, max) and per-actor resources from what the cluster has and can have.

    GPU when the cluster has GPUs or its autoscaler has GPU node types (a pending model actor makes it add one);
    the model actors take one GPU each (and `model_resource`, a custom resource naming the node type that holds
    the model), the face actors and listing the CPUs. CPU only: one actor per core runs decode + faces + model.
    Pools start at what fits now, leaving LISTING_CPUS per actor free for the listing read tasks, and grow
    (Ray Data autoscaling) up to what the autoscaler's node types hold, or without bound when those are unknown.
    `videos`: the job's size when the listing counted it while planning; a pool then holds at most one actor per
    VIDEOS_PER_ACTOR videos (a few videos never start an actor per core of a large cluster)."""
    from dfbatch.io.datasource import LISTING_CPUS

    view = view or cluster_view()
    res = view["resources"]
    n_cpu, n_gpu = float(res.get("CPU", 0)), float(res.get("GPU", 0))
    gpu_cap = possible(view, "GPU")
    gpu_possible = n_gpu > 0 or bool(gpu_cap)
    use_gpu = cfg.device == "cuda" or (cfg.device == "auto" and gpu_possible)
    if cfg.device == "cuda" and not gpu_possible and not view.get("autoscaler"):
        raise UserError("--device cuda: the Ray cluster has no GPUs and no autoscaler that could add a GPU node")
    if cfg.precision == "fp16" and not use_gpu:
        raise UserError("--precision fp16 needs a GPU and the Ray cluster has none; use auto, bf16 or fp32")
    cpu_cap = possible(view, "CPU")
    model_res = cfg.model_resource
    free = max(0.0, n_cpu - LISTING_CPUS)  # logical CPUs the pools may take now (one listing task always fits)
    face_share = max(LISTING_CPUS, cfg.cpus_per_face_worker - LISTING_CPUS)
    face_threads = max(1, int(round(cfg.cpus_per_face_worker)))
    score_threads = cfg.torch_threads or max(1, int(cfg.cpus_per_score_worker))
    fused = not (use_gpu or model_res or cfg.score_workers)
    score_resources = {model_res: 1.0} if model_res else {}
    if fused:  # CPU only: one actor per core runs the whole path for its video, model included (score.FaceScoreStage)
        face_init = cfg.face_workers or max(1, int(free // face_share))
        if cfg.face_workers and n_cpu:
            face_share = min(face_share, free / cfg.face_workers)
        score_init, score_cpus, score_gpus, score_max = 0, 0.0, 0.0, 0
    else:
        score_gpus = 1.0 if use_gpu else 0.0
        if use_gpu or model_res:
            # placed by its GPU / the named resource, the model actor asks for no logical CPU: the CPU stages can
            # never crowd it out of its node. A node type given `CPU: 0` runs the model alone.
            score_cpus = 0.0
            if use_gpu:
                score_init = cfg.score_workers or max(1, int(n_gpu))
                score_max = _pool_max(cfg.score_workers, gpu_cap, 1.0, score_init)
            else:
                score_init = cfg.score_workers or max(1, int(res.get(model_res, 0)))
                score_max = _pool_max(cfg.score_workers, possible(view, model_res), 1.0, score_init)
            # at start the face actors leave a core of each GPU node to its model actor
            left = free - (min(free / 2, score_init * cfg.cpus_per_score_worker) if n_gpu else 0.0)
            face_init = cfg.face_workers or max(1, int(left // face_share))
            if cfg.face_workers and n_cpu:
                face_share = min(face_share, max(LISTING_CPUS, left) / cfg.face_workers)
        else:  # CPU only with model actors asked for: they share the cores with one face actor per core
            score_init = score_max = cfg.score_workers
            score_cpus = min(cfg.cpus_per_score_worker, max(LISTING_CPUS, n_cpu / 2 / score_init)) if n_cpu else cfg.cpus_per_score_worker
            face_init = cfg.face_workers or max(1, int(n_cpu) - score_init + 1)
            if n_cpu:
                face_share = min(face_share, max(LISTING_CPUS, free - score_init * score_cpus) / face_init)
    face_max = _pool_max(cfg.face_workers, cpu_cap, face_share, face_init)
    if (cap := small_job_cap(videos, cfg.face_workers)) is not None:
        face_init, face_max = min(face_init, cap), min(face_max or cap, cap)
    if score_init and (cap := small_job_cap(videos, cfg.score_workers)) is not None:
        score_init, score_max = min(score_init, cap), min(score_max or cap, cap)
    return {
        "cluster_cpus": n_cpu,
        "cluster_gpus": n_gpu,
        "possible_cpus": cpu_cap,
        "possible_gpus": gpu_cap,
        "node_types": [t["name"] for t in view.get("node_types") or []],
        "device": "cuda" if use_gpu else "cpu",
        "fused": fused,  # the model runs inside the face actors (CPU only, no --score-workers / --model-resource)
        "face_workers": face_init,  # at start; the pool grows to face_pool[1] (None: with the nodes that join)
        "face_pool": [cfg.face_workers or 1, face_max],
        "face_cpus": math.floor(face_share * 1e4) / 1e4,  # rounded down: the sum must not exceed the cluster's
        "face_threads": face_threads,
        "face_device": "cpu",  # MTCNN runs on the face actors' CPUs: the GPU is the model's
        "face_gpus": 0.0,
        "score_workers": score_init,
        "score_pool": [cfg.score_workers or min(1, score_init), score_max],
        "score_cpus": math.floor(score_cpus * 1e4) / 1e4,
        "score_threads": score_threads,
        "score_gpus": score_gpus,
        "score_resources": score_resources,
        "videos": videos,  # counted while planning (None: not counted): caps the pools for a small job
        "listing_cpus": LISTING_CPUS,
        "listing_tasks": 4,  # read tasks listing at once (each streams its shard; more buys nothing)
        "compile": os.environ.get("DFBATCH_TORCH_COMPILE", "") == "1",
    }


def listing_concurrency(plan: dict, shards: list) -> int:
    """Listing read tasks at once: one per shard, at most the plan's."""
    return max(1, min(plan["listing_tasks"], len(shards)))


def _pool(plan: dict, stage: str, **kwargs):
    """The Ray Data actor pool of a stage: fixed, or autoscaling from its initial size within (min, max)."""
    import ray

    lo, hi = plan[f"{stage}_pool"]
    init = plan[f"{stage}_workers"]
    return ray.data.ActorPoolStrategy(min_size=lo, max_size=hi, initial_size=max(lo, init if hi is None else min(init, hi)), **kwargs)


# listing blocks are shaped by bytes (Ray Data's target_max_block_size, which merges and splits what a read task
# yields): a listing row's size, measured on each SOURCE's first video, so that a block holds `rows_per_block` videos
# (the unit of work of one face actor call: a small job's few blocks still spread over the actors)
LISTING_ROW_BYTES = 160  # when nothing was measured


def build_dataset(cfg: ScoreConfig, source, storage: Storage, bundle, plan: dict, run_id: str | None, frames: int, threshold: float,
                  temperature: float | None = None, job_id: str | None = None):
    """The Ray Data graph up to (not including) the write: listing read tasks -> face actors -> model actors
    (or fused actors on a CPU-only cluster). `job_id`: the stages keep their crash markers under
    OUT/_inflight/<job_id>/ (none without one)."""
    import ray
    from ray.data import DataContext

    from dfbatch.stages.failures import InflightMarkers
    from dfbatch.stages.faces import FaceStage
    from dfbatch.stages.score import FaceScoreStage, ScoreStage, shareable_bundle

    def markers(stage: str):
        return InflightMarkers(cfg.output, storage, job_id, stage) if job_id else None

    ctx = DataContext.get_current()
    saved = ctx.target_max_block_size
    ctx.target_max_block_size = max(1, cfg.rows_per_block) * (source.row_bytes or LISTING_ROW_BYTES)  # read_datasource seals a copy
    try:
        ds = ray.data.read_datasource(source, concurrency=listing_concurrency(plan, source.shards),
                                      override_num_blocks=len(source.shards), num_cpus=plan["listing_cpus"])
    finally:
        ctx.target_max_block_size = saved
    face_kwargs = dict(
        storage=storage,
        sampling=cfg.sampling,
        faces=cfg.faces,
        limits=cfg.limits,
        frames=frames,
        crop_size=bundle.spec.crop_side,  # the model's crop path (ModelSpec): cut at this side, then
        crop_jpeg_quality=bundle.spec.crop_jpeg_quality,  # the shards' JPEG round trip; resized in preprocess
        threads=plan["face_threads"],
        device=plan["face_device"],
        save_crops=cfg.save_crops,
    )
    bundle_ref = ray.put(shareable_bundle(bundle))
    score_kwargs = dict(
        bundle_ref=[bundle_ref],
        device=plan["device"],
        precision=cfg.precision,
        batch_size=cfg.score_batch_size,
        threads=plan["score_threads"],
        threshold=threshold,
        track_aggregation=cfg.track_aggregation,
        frame_aggregation=cfg.frame_aggregation,
        run_id=run_id,
        compile=plan["compile"],
        temperature=temperature,
    )
    if plan["fused"]:  # CPU only: the model runs inside each face actor
        score_kwargs["threads"] = face_kwargs["threads"]
        return ds.map_batches(
            FaceScoreStage,
            fn_constructor_kwargs=dict(face_kwargs=face_kwargs, score_kwargs=score_kwargs, markers=markers("fused")),
            # 2 videos per call: their sequences share one forward pass, which halves the LSTM's weight reads
            # (measured on CPU: 0.43 -> 0.35 s per video in bf16; 4 is slower again, activations leave the cache)
            batch_size=min(2, max(1, cfg.videos_per_score_batch)),
            batch_format="pyarrow",
            compute=_pool(plan, "face"),
            num_cpus=plan["face_cpus"],
        )
    ds = ds.map_batches(
        FaceStage,
        fn_constructor_kwargs=face_kwargs | {"markers": markers("faces")},
        batch_size=1,
        batch_format="pyarrow",
        compute=_pool(plan, "face"),
        num_cpus=plan["face_cpus"],
    )
    ds = ds.map_batches(
        ScoreStage,
        fn_constructor_kwargs=score_kwargs | {"markers": markers("score")},
        batch_size=cfg.videos_per_score_batch,
        batch_format="pyarrow",
        # a GPU actor keeps a few batches queued so it never waits for the next one to arrive
        compute=_pool(plan, "score", **({"max_tasks_in_flight_per_actor": 4} if plan["score_gpus"] else {})),
        num_cpus=plan["score_cpus"],
        num_gpus=plan["score_gpus"] or None,
        resources=plan["score_resources"] or None,
    )
    return ds


def _here():
    """Scheduling on the driver's node (the job's bookkeeping actors live and die with the driver)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)


def _resume_index(output: str, storage: Storage, name: str, version: str, retry: tuple[str, ...] | None = None):
    from dfbatch.io.results import ResultStore
    from dfbatch.io.resume import scored_index

    return scored_index(ResultStore(output, storage), name, version, retry=retry)


def decide_threshold(cfg: ScoreConfig, bundle, frames: int):
    """The job's threshold and temperature (`evaluation.thresholds.resolve`): the version's calibration for the
    job's aggregation, or --threshold; with notes where the job's settings differ from the calibration's."""
    from dfbatch.evaluation.thresholds import job_settings, resolve

    settings = job_settings(frames=frames, detect_max_side=cfg.faces.detect_max_side, detect_every=cfg.faces.detect_every,
                            min_face_px=cfg.faces.min_face_px, precision=cfg.precision)
    return resolve(bundle.calibration, float(bundle.threshold), settings=settings, override=cfg.threshold,
                   aggregation=describe(frame_aggregation=cfg.frame_aggregation, track_aggregation=cfg.track_aggregation),
                   registered=(bundle.pinned_uri or "").startswith("models:/"))


def run_score(cfg: ScoreConfig) -> Summary:
    """Score every listed video that has no row yet for the model version (with `rescore`: every listed video;
    with `retry_failed`: also those whose row failed with an error of `retry_errors`), then remove the rows the new
    ones replace; returns the job summary."""
    cfg = cfg.with_absolute_paths()  # the caller's folder, also for Ray's workers when joining a running Ray
    from dfbatch.monitor import StartupClock

    clock = StartupClock()  # from the process start: interpreter, imports and config until here
    clock.record("python_and_cli", clock.origin, clock.created)
    from dfbatch.io.results import ResultStore

    started = time.time()
    storage = Storage(cfg.endpoint_url)
    store = ResultStore(cfg.output, storage)
    try:
        store.check_writable()
    except Exception as exc:
        raise UserError(f"cannot write to output {redact(cfg.output)}: {one_line(exc)}") from None
    from dfbatch.io.listing import first_video

    from dfbatch.models import registry

    # every SOURCE (its first video found) and what can be told of the model without MLflow are checked before Ray
    # starts: a bad SOURCE or a missing model file is a one-line error at once
    firsts = [first_video(src, storage) for src in cfg.sources]
    registry.precheck(cfg.model_uri, cfg.tracking_uri)
    ray_start = RayStart(cfg.ray_address, clock)
    ray_start.start()  # Ray's processes come up while this one imports MLflow, reads the model, opens the run
    try:
        # the job's MLflow store for its own calls only: the caller's MLflow (a notebook's, say) is left as it was
        with registry.using_tracking_uri(cfg.tracking_uri) if cfg.tracking_uri else contextlib.nullcontext():
            return _score(cfg, clock, ray_start, storage, store, started, firsts)
    finally:
        # returned or raised, no start is left in flight: Ray is up or was never started (a caller that goes on,
        # a notebook or a test calling ray.init, never meets a half-started Ray)
        ray_start.settle()


def _score(cfg: ScoreConfig, clock, ray_start: RayStart, storage: Storage, store, started: float, firsts: list) -> Summary:
    """`run_score` once the output is writable, every SOURCE's first video found (`firsts`) and Ray is starting."""
    import mlflow

    from dfbatch.io.listing import may_repeat, refs_table, source_shards
    from dfbatch.stages.failures import clear_markers

    from dfbatch.models import registry

    clock.record("imports", clock.created)  # the result store, MLflow, the registry
    try:
        with clock.step("model"):  # MLflow store, registry lookup, weights (not loaded: the actors load them)
            bundle = registry.fetch(cfg.model_uri, cfg.tracking_uri, tensors=False)
    except UserError:
        raise
    except Exception as exc:  # MLflow unreachable or refusing: one line, credentials removed
        raise UserError(f"cannot fetch model {redact(cfg.model_uri)}: {one_line(exc)}") from None
    name, version = model_identity(bundle)
    bundle = dataclasses.replace(bundle, name=name, version=version)
    cfg, drift = cfg.for_model(bundle.spec)  # what the config leaves to the model comes from its spec
    for line in drift:
        log.warning(line)
    frames = cfg.sampling.frames
    decision = decide_threshold(cfg, bundle, frames)
    threshold, temperature = decision.threshold, decision.temperature
    store.recover()
    clear_markers(cfg.output, storage, older_than_s=86400)  # crash markers of jobs killed a day ago or more
    replaced = store.drop_superseded(name, version)  # what a killed rescore or retry left: one row per video again
    shards = [sh for i, src in enumerate(cfg.sources) if firsts[i] is not None for sh in source_shards(i, src, storage, cfg.listing_shards)]
    row_bytes = max((refs_table([ref]).nbytes for ref in firsts if ref is not None), default=None)
    job_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
    summary = Summary(cfg.output, name, version, bundle.pinned_uri or bundle.uri, None, job_id, threshold=threshold,
                      temperature=temperature, threshold_source=decision.source, calibration_notes=decision.notes,
                      warnings=drift, model_input=f"crops {bundle.spec.crop_path()}; {frames} frames per video")
    client = mlflow.MlflowClient()  # no global set_experiment: the caller's MLflow state stays as it was
    experiment = client.get_experiment_by_name(cfg.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(cfg.experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"score-{job_id}") as run:
        clock.record("job_setup", clock.created)  # imports, output check, model, threshold, resume set, first listing block, MLflow run
        summary.mlflow_run_id = run.info.run_id
        mlflow.log_params(
            {
                "sources": redact(" ".join(cfg.sources))[:5000],
                "model_uri": bundle.uri,
                "model_name": name,
                "model_version": version,
                "frames": frames,
                "aggregation": describe(frame_aggregation=cfg.frame_aggregation, track_aggregation=cfg.track_aggregation,
                                        temperature=temperature),
                "threshold": threshold,
                "precision": cfg.precision,
                "rescore": cfg.rescore,
                "retry_failed": cfg.retry_errors if cfg.retry_failed else "no",
                "decode_backend": cfg.sampling.backend,
                "detect_max_side": cfg.faces.detect_max_side,
                "detect_every": cfg.faces.detect_every,
                "min_face_px": cfg.faces.min_face_px or "auto",
                "save_crops": cfg.save_crops,
                "margin": cfg.faces.margin,
                "crop_path": bundle.spec.crop_path(),
                "model_seq_len": bundle.spec.seq_len,
                "model_detection": json.dumps(bundle.spec.detection) if bundle.spec.detection else "not recorded",
            }
        )
        mlflow.set_tags({"output": redact(cfg.output), "dfbatch.version": __version__, "dfbatch.job_id": job_id,
                         "dfbatch.threshold_source": decision.source[:5000]}
                        | ({"dfbatch.calibration_mismatch": "; ".join(decision.notes)[:5000]} if decision.notes else {})
                        | ({"dfbatch.warnings": " | ".join(drift)[:5000]} if drift else {}))
        totals: dict = {}
        if shards:
            import ray

            from dfbatch.io.datasink import ResultsDatasink
            from dfbatch.io.datasource import N_CLAIMS, IdClaims, ListingLedger, VideoDatasource

            with clock.step("ray_wait"):
                ray_start.wait()
            counted = None if any(sh.videos is None for sh in shards) else sum(sh.videos for sh in shards)
            summary.resources = plan_resources(cfg, videos=counted)
            _log_plan(summary.resources)
            here = dict(num_cpus=0, scheduling_strategy=_here())
            ledger = ray.remote(ListingLedger).options(**here).remote()
            # id-claim partitions: one per listing task running at once (more only add actors), at most N_CLAIMS
            n_claims = min(N_CLAIMS, listing_concurrency(summary.resources, shards)) if may_repeat(cfg.sources) else 0
            claims = [ray.remote(IdClaims).options(**here).remote() for _ in range(n_claims)]
            resume = None if cfg.rescore else ray.remote(_resume_index).options(**here).remote(cfg.output, storage, name, version,
                                                                                               cfg.resume_retry())
            source = VideoDatasource(shards, storage, ledger=ledger, resume=resume, claims=claims, lead=max(cfg.listing_lead, 4 * cfg.rows_per_part),
                                     row_bytes=row_bytes)
            try:
                with clock.step("graph"):
                    ds = build_dataset(cfg, source, storage, bundle, summary.resources, run.info.run_id, frames, threshold, temperature, job_id)
                sink = ResultsDatasink(cfg.output, storage, job_id=job_id, ledger=ledger, min_rows=cfg.rows_per_part)
                with clock.step("run"):  # actors start, videos are listed, scored and written
                    ds.write_datasink(sink, ray_remote_args={"num_cpus": 0})
                totals = dict(sink.totals)
                progress = ray.get(ledger.totals.remote())
            finally:
                for actor in [ledger, *claims]:
                    ray.kill(actor)
                clear_markers(cfg.output, storage, job_id)
            replaced += store.drop_superseded(name, version)  # the rows this job's rows replace
            listed = progress["counts"]
            summary.listed, summary.skipped, summary.duplicates = (int(listed.get(k, 0)) for k in ("listed", "skipped", "duplicates"))
            summary.listing_started_s = progress["first_page"] - started if progress["first_page"] else None
            summary.listing_s = progress["last_page"] - started if progress["last_page"] else None
            summary.first_result_s = progress["first_commit"] - started if progress["first_commit"] else None
        summary.replaced = replaced
        summary.failed_rows = store.failures(name, version)
        summary.counts = {k: int(totals.get(k, 0)) for k in ("ok", "no_face", "failed", "fake")}
        summary.scored = sum(summary.counts[k] for k in ("ok", "no_face", "failed"))
        summary.elapsed_s = time.time() - started
        summary.startup = clock.report()
        summary.videos_per_min = 60.0 * summary.scored / summary.elapsed_s if summary.elapsed_s else 0.0
        mlflow.log_metrics(
            {
                "videos": summary.scored,
                **{k: summary.counts[k] for k in ("ok", "no_face", "failed", "fake")},
                "videos_per_min": summary.videos_per_min,
                "listed": summary.listed,
                "skipped_already_scored": summary.skipped,
                "replaced_rows": summary.replaced,
                **{f"failed_rows_{kind}": sum(c.values()) for kind, c in summary.failed_rows.items()},
                "duplicates": summary.duplicates,
                "elapsed_s": summary.elapsed_s,
                **({"first_result_s": summary.first_result_s} if summary.first_result_s is not None else {}),
                **({"listing_s": summary.listing_s} if summary.listing_s is not None else {}),
                **({"listing_started_s": summary.listing_started_s} if summary.listing_started_s is not None else {}),
            }
        )
        mlflow.log_dict(summary.to_dict(), "summary.json")
    log.info("job summary: %s", json.dumps(summary.to_dict()))
    return summary


def _log_plan(plan: dict) -> None:
    """One line on what the job asks of the cluster, and a note when nothing can run yet."""
    pools = (f"{plan['face_workers']} fused actor(s) (pool {plan['face_pool']}) x {plan['face_cpus']} CPU" if plan["fused"] else
             f"face actors {plan['face_workers']} (pool {plan['face_pool']}) x {plan['face_cpus']} CPU; model actors {plan['score_workers']} "
             f"(pool {plan['score_pool']}) x {plan['score_cpus']} CPU, {plan['score_gpus']} GPU{', ' + str(plan['score_resources']) if plan['score_resources'] else ''} on {plan['device']}")
    if plan.get("videos") is not None:
        pools += f" for {plan['videos']} video(s) (at most one actor per {VIDEOS_PER_ACTOR})"
    log.info("plan: %s; cluster now %s CPU / %s GPU, can grow to %s CPU / %s GPU", pools, plan["cluster_cpus"], plan["cluster_gpus"],
             plan["possible_cpus"] if plan["possible_cpus"] is not None else "?", plan["possible_gpus"] if plan["possible_gpus"] is not None else "?")
    if not plan["cluster_cpus"] or (plan["device"] == "cuda" and not plan["cluster_gpus"]):
        log.warning("the cluster has %s CPU / %s GPU now: the job waits for the autoscaler (or for nodes to join)",
                    plan["cluster_cpus"], plan["cluster_gpus"])
