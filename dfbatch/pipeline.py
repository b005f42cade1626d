"""Assemble and run the scoring job: listing → faces (CPU actors) → score (GPU/CPU actors) → Parquet, in MLflow.

This is the only module that knows the whole flow; each stage's logic lives in its own module.
"""

from __future__ import annotations

import dataclasses
import itertools
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
    duplicates: int = 0
    scored: int = 0
    counts: dict = field(default_factory=dict)  # per status, plus "fake"
    elapsed_s: float = 0.0
    videos_per_min: float = 0.0
    resources: dict = field(default_factory=dict)
    threshold: float | None = None
    temperature: float | None = None  # temperature scaling applied to the video scores (calibration), if any
    threshold_source: str = ""  # where the threshold came from (calibration record, tag, --threshold)
    calibration_notes: list = field(default_factory=list)  # how this job's settings differ from the calibration's
    model_input: str = ""  # how crops reach the model (its spec's crop path and sequence length)
    warnings: list = field(default_factory=list)  # settings that differ from the model's training
    startup: dict = field(default_factory=dict)  # where the fixed cost went: steps from the process start (monitor.StartupClock)

    def to_dict(self) -> dict:
        return asdict(self)


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
    if needed). A job that fails before it needs Ray (a wrong model URI, say) reports at once; at exit the
    process waits for the start to finish (`settle`, atexit) and Ray's own atexit handler stops it.

    The thread stays (asleep) once it started a local Ray: Linux kills the processes a thread spawned when that
    thread ends (Ray starts GCS and raylet with PR_SET_PDEATHSIG), so it must live as long as the process."""

    def __init__(self, address: str | None = None, clock=None):
        self.address, self.clock = address, clock
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            # what ray.init installs when called from the main thread: SIGTERM exits through atexit (Ray shut down)
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
        import atexit

        import ray  # noqa: F401  (here: Ray registers its atexit shutdown on import, so `settle` below runs before it)

        atexit.register(self.settle)  # at exit, a start in flight finishes before Ray's own atexit shutdown stops it
        self._thread = threading.Thread(target=self._run, name="dfbatch-ray-start", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import ray

        started = time.time()
        quiet = [(logging.getLogger(name), _DropNotice(text)) for name, text in _RAY_NOTICES.items()]
        for logger, drop in quiet:
            logger.addFilter(drop)
        ours = not ray.is_initialized()
        try:
            init_ray(self.address)
        except BaseException as exc:  # re-raised by wait(), in the caller's thread
            self._error, ours = exc, False
        finally:
            for logger, drop in quiet:
                logger.removeFilter(drop)
            if self.clock is not None:
                self.clock.record("ray_start", started)
            self._done.set()
        if ours:
            threading.Event().wait()  # keep the processes this thread started alive (see the class doc)

    def wait(self) -> None:
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


def plan_resources(cfg: ScoreConfig) -> dict:
    """Actor counts and per-actor resources from the cluster: GPU actors when GPUs exist, else CPU."""
    import ray

    res = ray.cluster_resources()
    n_cpu, n_gpu = int(res.get("CPU", 1)), int(res.get("GPU", 0))
    use_gpu = cfg.device == "cuda" or (cfg.device == "auto" and n_gpu > 0)
    if cfg.device == "cuda" and n_gpu == 0:
        raise UserError("--device cuda: the Ray cluster has no GPUs")
    if cfg.precision == "fp16" and not use_gpu:
        raise UserError("--precision fp16 needs a GPU and the Ray cluster has none; use auto, bf16 or fp32")
    face_threads = max(1, int(cfg.cpus_per_face_worker))
    score_threads = cfg.torch_threads or max(1, int(cfg.cpus_per_score_worker))
    face_device, face_gpus, fused = "cpu", 0.0, False
    if use_gpu:
        score_workers = cfg.score_workers or max(1, n_gpu)
        score_cpus = cfg.cpus_per_score_worker
        free = n_cpu - min(n_cpu / 2, score_workers * score_cpus)
        face_workers = cfg.face_workers or max(1, int(free // cfg.cpus_per_face_worker))
        face_cpus = cfg.cpus_per_face_worker
        # MTCNN on the GPU too (DFBATCH_DETECT_DEVICE=cpu keeps it on the CPU): the face actors share half a GPU
        if os.environ.get("DFBATCH_DETECT_DEVICE", "cuda") == "cuda":
            face_device, face_gpus = "cuda", math.floor(0.5 * max(1, n_gpu) / face_workers * 1e4) / 1e4
        score_gpus = 0.5 if face_device == "cuda" else 1
    elif cfg.score_workers is None:
        # CPU only: one actor per core runs the whole path for its video, model included (score.FaceScoreStage)
        fused = True
        face_workers = cfg.face_workers or n_cpu
        face_cpus = min(cfg.cpus_per_face_worker, n_cpu / face_workers)
        score_workers, score_cpus, score_gpus = 0, 0.0, 0
    else:
        # CPU only with separate model actors (asked for): they share the cores with one face actor per core.
        # Logical CPUs are scaled to sum to the cluster's: Ray Data's reservation would deadlock otherwise.
        score_workers = cfg.score_workers
        face_workers = cfg.face_workers or max(1, n_cpu - score_workers + 1)
        score_cpus = min(cfg.cpus_per_score_worker, n_cpu / 2 / score_workers)
        face_cpus = min(cfg.cpus_per_face_worker, (n_cpu - score_workers * score_cpus) / face_workers)
        score_gpus = 0
    return {
        "cluster_cpus": n_cpu,
        "cluster_gpus": n_gpu,
        "device": "cuda" if use_gpu else "cpu",
        "face_workers": face_workers,
        "face_cpus": math.floor(face_cpus * 1e4) / 1e4,  # rounded down: the sum must not exceed the cluster's
        "face_threads": face_threads,
        "face_device": face_device,
        "face_gpus": face_gpus,
        "score_workers": score_workers,
        "score_cpus": math.floor(score_cpus * 1e4) / 1e4,
        "score_threads": score_threads,
        "score_gpus": score_gpus,
        "compile": os.environ.get("DFBATCH_TORCH_COMPILE", "") == "1",
        "fused": fused,  # the model runs inside the face actors (CPU only, no --score-workers)
    }


def build_dataset(cfg: ScoreConfig, listing, storage: Storage, bundle, plan: dict, run_id: str | None, frames: int, threshold: float,
                  temperature: float | None = None):
    """The Ray Data graph up to (not including) the write. Listing tables enter the object store one by one."""
    import ray

    from dfbatch.stages.faces import FaceStage
    from dfbatch.stages.score import FaceScoreStage, ScoreStage, shareable_bundle

    refs = [ray.put(table) for table in listing]
    ds = ray.data.from_arrow_refs(refs)
    # a block goes to one actor: more face actors than blocks would only start up (imports, MTCNN, the model) and idle
    face_actors = max(1, min(plan["face_workers"], len(refs)))
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
            fn_constructor_kwargs=dict(face_kwargs=face_kwargs, score_kwargs=score_kwargs),
            # 2 videos per call: their sequences share one forward pass, which halves the LSTM's weight reads
            # (measured on CPU: 0.43 -> 0.35 s per video in bf16; 4 is slower again, activations leave the cache)
            batch_size=min(2, max(1, cfg.videos_per_score_batch)),
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=face_actors),
            num_cpus=plan["face_cpus"],
        )
    ds = ds.map_batches(
        FaceStage,
        fn_constructor_kwargs=face_kwargs,
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=face_actors),
        num_cpus=plan["face_cpus"],
        num_gpus=plan["face_gpus"] or None,
    )
    ds = ds.map_batches(
        ScoreStage,
        fn_constructor_kwargs=score_kwargs,
        batch_size=cfg.videos_per_score_batch,
        batch_format="pyarrow",
        # a GPU actor keeps a few batches queued so it never waits for the next one to arrive
        compute=ray.data.ActorPoolStrategy(size=plan["score_workers"], max_tasks_in_flight_per_actor=4 if plan["score_gpus"] else None),
        num_cpus=plan["score_cpus"],
        num_gpus=plan["score_gpus"],
    )
    return ds


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
    """Score every listed video that has no row yet for the model version; returns the job summary."""
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
    ray_start = RayStart(cfg.ray_address, clock)
    ray_start.start()  # Ray's processes come up while this one imports MLflow, reads the model, opens the run
    import mlflow

    from dfbatch.models import registry
    from dfbatch.io.listing import Listing, iter_videos

    clock.record("imports", clock.created)  # the result store, MLflow, the registry
    if cfg.tracking_uri:
        mlflow.set_tracking_uri(cfg.tracking_uri)
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
    done = set() if cfg.rescore else store.scored_ids(name, version)
    replaced = store.parts_for(name, version) if cfg.rescore else []
    job_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
    summary = Summary(cfg.output, name, version, bundle.pinned_uri or bundle.uri, None, job_id, threshold=threshold,
                      temperature=temperature, threshold_source=decision.source, calibration_notes=decision.notes,
                      warnings=drift, model_input=f"crops {bundle.spec.crop_path()}; {frames} frames per video")
    listing = Listing(iter_videos(cfg.sources, storage), skip_ids=done, rows_per_table=cfg.rows_per_block)
    first = next(iter_first := iter(listing), None)  # lists up to the first block: a bad SOURCE fails before any run starts
    counts = listing.counts
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
        if first is not None:
            from dfbatch.io.datasink import ResultsDatasink

            with clock.step("ray_wait"):
                ray_start.wait()
            summary.resources = plan_resources(cfg)
            tables = itertools.chain([first], iter_first)
            with clock.step("graph"):
                ds = build_dataset(cfg, tables, storage, bundle, summary.resources, run.info.run_id, frames, threshold, temperature)
            sink = ResultsDatasink(cfg.output, storage, job_id=job_id)
            with clock.step("run"):  # actors start, videos are scored and written
                ds.write_datasink(sink, ray_remote_args={"num_cpus": 0})
            totals = dict(sink.totals)
        summary.listed, summary.skipped, summary.duplicates = counts["listed"], counts["skipped"], counts["duplicates"]
        if replaced:
            store.remove(replaced)
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
                "elapsed_s": summary.elapsed_s,
            }
        )
        mlflow.log_dict(summary.to_dict(), "summary.json")
    ray_start.settle()  # when run_score returns, Ray is up or was never started
    log.info("job summary: %s", json.dumps(summary.to_dict()))
    return summary
