"""The scoring job's config (`dfbatch score`) and its sections: frame sampling, face detection, input limits.

Settings that shape the model's input and are left unset (None) come from the model's spec
(`ScoreConfig.for_model`): frames per video (the sequence length), the crop margin and the face detection; the
crop side and JPEG round trip always do. An explicit setting that differs from what the model was trained on is
honoured, with a warning."""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Literal

from pydantic import model_validator

from dfbatch.config.base import (EndpointUrl, FieldError, JobConfig, PathStr, Paths, TrackingUri, UsesS3, arg, job_config,
                                 opt, section)
from dfbatch.models.spec import DEFAULT_CROP_MARGIN, DETECTION_KEYS
from dfbatch.stages.aggregate import FRAME_STRATEGIES, TRACK_STRATEGIES
from dfbatch.stages.failures import ERROR_CLASSES, ERROR_KINDS

DEFAULT_MODEL_URI = "models:/dfbatch-detector@champion"
VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .mpg .mpeg .ts .mts .m2ts .wmv .flv .3gp .ogv".split()
)
RETRY_CHOICES = ("all", *ERROR_KINDS, *ERROR_CLASSES)  # --retry-errors: kinds, classes (stages/failures.py)
TRACK_AGGREGATIONS = tuple(TRACK_STRATEGIES)  # the strategies live in dfbatch/stages/aggregate.py
FRAME_AGGREGATIONS = tuple(FRAME_STRATEGIES)
TrackAggregation = Literal[TRACK_AGGREGATIONS]
FrameAggregation = Literal[FRAME_AGGREGATIONS]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
DecodeBackend = Literal["decord", "pyav"]
# one message for the three detection limits (what `dfbatch score` has always printed)
_DETECT_LIMITS = "--detect-every must be at least 1, --detect-max-side at least 12, --min-face-px at least 1"


@job_config
class SamplingConfig(JobConfig):
    """Which frames are decoded: `frames` evenly spaced over the considered duration."""

    frames: Annotated[int | None, opt("--frames", help="frames sampled per video (default: the model's sequence length)",
                                      ge=1)] = None
    # pyav: sparse decode, same frames as decord, ~2x faster
    backend: Annotated[DecodeBackend, opt("--decode-backend", help="frame decoder (default {default}; the other one is "
                                          "the fallback)")] = "pyav"
    decode_threads: Annotated[int, opt(help="decord num_threads (>2 is reported to error)", ge=1)] = 1


@job_config
class FaceConfig(JobConfig):
    """MTCNN detection on downscaled frames, IoU tracking, crops with a margin."""

    # None (scoring's default): the model's (`ScoreConfig.for_model`); these defaults (the fast path) for models
    # that did not record their detection
    detect_max_side: Annotated[int | None, opt(
        "--detect-max-side", help="downscale frames to this longest side for MTCNN, unless --min-face-px needs more "
        "(default: the model's training detection; 320 for models that did not record one)", ge=12,
        error=_DETECT_LIMITS)] = 320
    detect_every: Annotated[int | None, opt(
        "--detect-every", help="run MTCNN on every k-th sampled frame (and the last), interpolate boxes in between "
        "(default: the model's training detection; 4 for models that did not record one)", ge=1,
        error=_DETECT_LIMITS)] = 4
    min_face_prob: Annotated[float, opt(help="MTCNN face probability threshold", ge=0, le=1)] = 0.90
    # smallest face searched, full-resolution pixels: None = 24 px or 12 px at the detection size, whichever is
    # larger (48 px in 720p at 320 px); a number is honoured exactly (the detection size grows when needed)
    min_face_px: Annotated[int | None, opt(
        "--min-face-px", help="smallest face searched, in full-resolution pixels; MTCNN's input grows as needed "
        "(default: 24 px, or 12 px at the detection size if larger: 48 px in 720p)", ge=1, error=_DETECT_LIMITS)] = None
    # None: the model's (scoring; `ScoreConfig.for_model`), DEFAULT_CROP_MARGIN where nothing says otherwise
    margin: Annotated[float | None, opt("--margin", help="crop margin per side, fraction of the face box (default: "
                                        f"the model's; {DEFAULT_CROP_MARGIN:g} for models that did not record one)",
                                        ge=0)] = None
    iou_threshold: Annotated[float, opt(help="link detections in consecutive frames into one track", ge=0, le=1)] = 0.3
    max_tracks: Annotated[int, opt(help="score at most this many tracks (largest first)", ge=1)] = 4
    min_track_frames: Annotated[int, opt(help="a track seen in fewer sampled frames is dropped (unless it is the only "
                                              "one)", ge=1)] = 2

    @property
    def min_face(self) -> int:
        """The size filter in full-resolution pixels (the detection size may raise it further when unset)."""
        return self.min_face_px or 24

    @property
    def crop_margin(self) -> float:
        """The margin crops are cut with (`margin`, else the default of models that did not record one)."""
        return DEFAULT_CROP_MARGIN if self.margin is None else self.margin

    def detection(self) -> dict:
        """The settings recorded as a model's `detection` (`ModelSpec.detection`)."""
        return {k: getattr(self, k) for k in DETECTION_KEYS}


# the detection settings before the fast path (`dfbatch score --reference`; the benchmark's reference profile)
REFERENCE_FACES = {"detect_max_side": 640, "detect_every": 1, "min_face_px": None}
REFERENCE_PRESET = {"faces": REFERENCE_FACES, "precision": "fp32"}  # `dfbatch score --reference`


@job_config
class LimitsConfig(JobConfig):
    """Inputs over a limit get a `failed` row naming the limit instead of stalling the job."""

    max_duration_s: Annotated[float, opt("--max-duration", help="seconds; longer videos get a failed row", gt=0)] = 6 * 3600.0
    max_pixels: Annotated[int, opt(help="width*height above this is refused", ge=1)] = 8192 * 4320
    max_bytes: Annotated[int, opt(help="larger files are refused", ge=1)] = 20 * 1024**3
    time_budget_s: Annotated[float, opt("--time-budget", help="seconds of decode + detection per video", gt=0)] = 600.0
    min_frames: Annotated[int, opt(help="videos with fewer decodable frames fail", ge=1)] = 1


@job_config
class ScoreConfig(UsesS3, JobConfig):
    """Everything a scoring job needs; `pipeline.run_score(cfg)` runs it."""

    sources: Annotated[Paths, arg("SOURCE", help="file, directory (recursive), glob, s3://bucket/prefix, or manifest "
                                  "(.txt/.csv/.parquet with a uri column)", min_length=1)]
    output: Annotated[PathStr, opt("--output", short="-o", metavar="OUT", help="result location (local path or s3://)")]
    model_uri: Annotated[str, opt("--model", help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/..., or a "
                                  "checkpoint file (default {default})")] = DEFAULT_MODEL_URI
    threshold: Annotated[float | None, opt("--threshold", help="FAKE if P(fake) >= threshold (default: the model's)",
                                           ge=0, le=1)] = None
    track_aggregation: Annotated[TrackAggregation, opt("--track-aggregation", help="video score from track scores")] = "max"
    frame_aggregation: Annotated[FrameAggregation, opt(
        "--frame-aggregation", help="track score from frame scores ('model': the model's own temporal head)")] = "mean"
    rescore: Annotated[bool, opt("--rescore", help="score again videos that already have a row for this model version "
                                 "(the old rows are replaced)")] = False
    retry_failed: Annotated[bool, opt("--retry-failed", help="score again the videos whose row for this model version "
                                      "failed with an error of --retry-errors (the old row is replaced)")] = False
    retry_errors: Annotated[str, opt("--retry-errors", metavar="KINDS", help="with --retry-failed: which failed rows, "
                                     "comma-separated: error kinds (transient, permanent), error classes (storage, "
                                     "time_budget, worker_died, model, over_limit, access_denied, ...) or all "
                                     "(default {default})")] = "transient"
    tracking_uri: TrackingUri = None
    experiment: Annotated[str, opt("--experiment", help="MLflow experiment name")] = "dfbatch-score"
    s3_endpoint_url: EndpointUrl = None
    ray_address: Annotated[str | None, opt("--ray-address", help="Ray cluster to join (default: RAY_ADDRESS, else start "
                                           "a local Ray)")] = None
    save_crops: Annotated[bool, opt("--save-crops", help="keep each face track's crops as a JPEG under OUT/crops/ "
                                    "(faces column crops_file; dfbatch report shows them)")] = False
    device: Annotated[Device, opt("--device")] = "auto"
    precision: Annotated[Precision, opt("--precision", help="model precision (default auto: bf16 where the GPU/CPU has "
                                        "it natively, else fp32; fp16 needs a GPU)")] = "auto"
    score_batch_size: Annotated[int, opt("--batch-size", help="face sequences per forward pass", ge=1)] = 16
    face_workers: Annotated[int | None, opt("--face-workers", help="a fixed number of CPU actors decoding + detecting "
                                            "(default: an autoscaling pool, one per free CPU at start, growing with "
                                            "the cluster)", ge=1)] = None
    score_workers: Annotated[int | None, opt("--score-workers", help="a fixed number of model actors (default: an "
                                             "autoscaling pool, one per GPU, growing with the GPUs the cluster gets)",
                                             ge=1)] = None
    model_resource: Annotated[str | None, opt("--model-resource", metavar="NAME", help="custom Ray resource each model "
                                              "actor also asks 1 of: the node type that runs the model (e.g. one "
                                              "started with --resources '{\"NAME\": 1}')", min_length=1)] = None
    sampling: Annotated[SamplingConfig, section("frames", "backend")] = field(default_factory=SamplingConfig)
    videos_per_score_batch: Annotated[int, opt(help="videos handed to one scoring call", ge=1)] = 8
    cpus_per_face_worker: Annotated[float, opt(gt=0)] = 1.0
    cpus_per_score_worker: Annotated[float, opt(gt=0)] = 1.0
    torch_threads: Annotated[int | None, opt(help="torch threads per model actor (default: its CPUs)", ge=1)] = None
    rows_per_block: Annotated[int, opt(help="listing rows per Ray Data block (the unit handed to one face actor; "
                                       "small blocks keep the actors evenly loaded)", ge=1)] = 2
    rows_per_part: Annotated[int, opt(help="result rows per Parquet part: the job commits a part once it holds this "
                                      "many (smaller parts show results sooner, in more files)", ge=1)] = 128
    listing_shards: Annotated[int, opt(help="at most this many listing read tasks per SOURCE (S3 key ranges, "
                                       "subtrees, manifest row groups)", ge=1)] = 16
    listing_lead: Annotated[int, opt(help="videos listed ahead of the committed results (bounds the listing's memory)",
                                     ge=1)] = 4096
    faces: Annotated[FaceConfig, section("detect_max_side", "detect_every", "min_face_px")] = field(
        default_factory=lambda: FaceConfig(detect_max_side=None, detect_every=None))  # None: the model's
    limits: Annotated[LimitsConfig, section("max_duration_s", "time_budget_s")] = field(default_factory=LimitsConfig)

    @model_validator(mode="after")
    def _known_retry_errors(self) -> ScoreConfig:
        unknown = [e for e in self.retry_targets() if e not in RETRY_CHOICES]
        if unknown or not self.retry_targets():
            raise FieldError("retry_errors", f"--retry-errors: unknown {', '.join(unknown) or 'empty value'} (choose "
                             f"from {', '.join(RETRY_CHOICES)})")
        return self

    def retry_targets(self) -> tuple[str, ...]:
        """The failed rows --retry-failed scores again: error kinds, classes or `all` (`io.results.retry_filter`)."""
        return tuple(e.strip() for e in self.retry_errors.split(",") if e.strip())

    def resume_retry(self) -> tuple[str, ...] | None:
        """What resume leaves to score again among the version's rows: None, or `retry_targets()` with --retry-failed."""
        return self.retry_targets() if self.retry_failed else None

    @model_validator(mode="after")
    def _fp16_needs_a_gpu(self) -> ScoreConfig:
        if self.precision == "fp16" and self.device == "cpu":
            raise FieldError("precision", "--precision fp16 needs a GPU; on CPU use auto, bf16 or fp32")
        return self

    def for_model(self, spec) -> tuple[ScoreConfig, list[str]]:
        """This config with what it leaves to the model taken from `spec` (a `ModelSpec`): frames per video (its
        sequence length), the crop margin and the detection the training crops were found with (the fast path,
        `FaceConfig`'s defaults, for a model that did not record it). Returns (config, warnings): one line for
        each setting that differs from what the model was trained on (honoured all the same)."""
        trained = spec.detection or {}
        faces, fast = self.faces, FaceConfig()
        detect = {k: getattr(faces, k) if getattr(faces, k) is not None else trained.get(k, getattr(fast, k))
                  for k in ("detect_max_side", "detect_every")}
        resolved = self.replace(sampling={"frames": self.sampling.frames or spec.seq_len},
                                faces={"margin": spec.crop_margin if faces.margin is None else faces.margin, **detect})
        warnings = []
        if resolved.sampling.frames != spec.seq_len:
            warnings.append(f"--frames {resolved.sampling.frames} but the model was trained on {spec.seq_len}-frame "
                            f"sequences")
        if resolved.faces.margin != spec.crop_margin:
            warnings.append(f"scored with margin {resolved.faces.margin:g} but the model was trained on "
                            f"{spec.crop_margin:g} crops")
        if trained and any(trained.get(k) != v for k, v in resolved.faces.detection().items() if k in trained):
            warnings.append(detection_warning(resolved.faces.detection(), trained))
        return resolved, warnings


def detection_warning(used: dict, trained: dict) -> str:
    """One line: the face detection a job uses against the one its model's training faces were found with."""
    def show(d) -> str:
        every, side, small = d.get("detect_every"), d.get("detect_max_side"), d.get("min_face_px")
        return (f"MTCNN on {'every sampled frame' if every == 1 else f'1 in {every} sampled frames'} at {side} px, "
                f"faces >= {f'{small} px' if small else 'auto'}, probability >= {d.get('min_face_prob'):g}")

    return f"detection: {show(used)}, but the model was trained on faces found with {show(trained)}"
