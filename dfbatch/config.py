"""The one configuration object of a scoring job (built from CLI flags, a YAML file, or code)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MODEL_URI = "models:/dfbatch-detector@champion"
VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .mpg .mpeg .ts .mts .m2ts .wmv .flv .3gp .ogv".split()
)
TRACK_AGGREGATIONS = ("max", "mean", "median")
FRAME_AGGREGATIONS = ("mean", "max", "median", "model")


@dataclass
class SamplingConfig:
    """Which frames are decoded: `frames` evenly spaced over the considered duration."""

    frames: int | None = None  # None: the model spec's sequence length
    backend: str = "pyav"  # pyav (sparse decode, same frames as decord, ~2x faster) | decord
    decode_threads: int = 1  # decord num_threads (>2 is reported to error)


@dataclass
class FaceConfig:
    """MTCNN detection on downscaled frames, IoU tracking, crops with a margin."""

    detect_max_side: int = 320  # MTCNN sees frames downscaled to this longest side (less if min_face_px needs more)
    detect_every: int = 4  # run MTCNN on every k-th sampled frame (and the last); boxes are interpolated in between
    min_face_prob: float = 0.90
    # smallest face searched, full-resolution pixels: None = 24 px or 12 px at the detection size, whichever is
    # larger (48 px in 720p at 320 px); a number is honoured exactly (the detection size grows when needed)
    min_face_px: int | None = None
    margin: float = 0.25  # fraction of the box size added on each side before cropping
    iou_threshold: float = 0.3  # link detections in consecutive frames into one track
    max_tracks: int = 4  # score at most this many tracks (largest first)
    min_track_frames: int = 2  # a track seen in fewer sampled frames is dropped (unless it is the only one)

    @property
    def min_face(self) -> int:
        """The size filter in full-resolution pixels (the detection size may raise it further when unset)."""
        return self.min_face_px or 24


# the detection settings before the fast path (`dfbatch score --reference`; the benchmark's reference profile)
REFERENCE_FACES = {"detect_max_side": 640, "detect_every": 1, "min_face_px": None}


@dataclass
class LimitsConfig:
    """Inputs over a limit get a `failed` row naming the limit instead of stalling the job."""

    max_duration_s: float = 6 * 3600.0  # longer videos are refused
    max_pixels: int = 8192 * 4320  # width*height above this is refused
    max_bytes: int = 20 * 1024**3
    time_budget_s: float = 600.0  # per video, decode + detection (checked between steps)
    min_frames: int = 1


@dataclass
class ScoreConfig:
    """Everything a scoring job needs; `pipeline.run_score(cfg)` runs it."""

    sources: list[str]
    output: str
    model_uri: str = DEFAULT_MODEL_URI
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI, else MLflow's default (sqlite:///mlflow.db)
    experiment: str = "dfbatch-score"
    s3_endpoint_url: str | None = None  # None: AWS_ENDPOINT_URL
    rescore: bool = False
    track_aggregation: str = "max"
    frame_aggregation: str = "mean"
    threshold: float | None = None  # None: the registered model's threshold
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 where the GPU/CPU has it, else fp32) | fp32 | bf16 | fp16
    score_batch_size: int = 16  # track sequences per forward pass
    videos_per_score_batch: int = 8  # videos handed to one scoring call
    face_workers: int | None = None  # CPU face-stage actors; None: one per CPU (min 1)
    score_workers: int | None = None  # model actors; None: one per GPU, else 1
    cpus_per_face_worker: float = 1.0
    cpus_per_score_worker: float = 1.0
    torch_threads: int | None = None  # None: cpus of the actor
    rows_per_block: int = 8  # listing rows per Ray Data block (the unit handed to one face actor)
    ray_address: str | None = None  # None: RAY_ADDRESS, else a new local Ray
    save_crops: bool = False  # keep each track's face crops as a JPEG under OUT/crops/ (faces.crops_file)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    faces: FaceConfig = field(default_factory=FaceConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    def __post_init__(self) -> None:
        from dfbatch.errors import UserError

        if self.track_aggregation not in TRACK_AGGREGATIONS:
            raise UserError(f"unknown track aggregation {self.track_aggregation!r} (choose from {', '.join(TRACK_AGGREGATIONS)})")
        if self.frame_aggregation not in FRAME_AGGREGATIONS:
            raise UserError(f"unknown frame aggregation {self.frame_aggregation!r} (choose from {', '.join(FRAME_AGGREGATIONS)})")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise UserError(f"unknown precision {self.precision!r} (auto, fp32, bf16 or fp16)")
        if self.precision == "fp16" and self.device == "cpu":
            raise UserError("--precision fp16 needs a GPU; on CPU use auto, bf16 or fp32")
        if self.faces.detect_every < 1 or self.faces.detect_max_side < 12 or (self.faces.min_face_px is not None and self.faces.min_face_px < 1):
            raise UserError("--detect-every must be at least 1, --detect-max-side at least 12, --min-face-px at least 1")
        if self.sampling.frames is not None and self.sampling.frames < 1:
            raise UserError("--frames must be at least 1")
        if self.sampling.backend not in ("decord", "pyav"):
            raise UserError(f"unknown decode backend {self.sampling.backend!r} (decord or pyav)")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise UserError("--threshold must be within [0, 1]")
        if not self.sources:
            raise UserError("no SOURCE given")

    @property
    def endpoint_url(self) -> str | None:
        return self.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ScoreConfig":
        data = dict(data)
        nested = {"sampling": SamplingConfig, "faces": FaceConfig, "limits": LimitsConfig}
        for key, typ in nested.items():
            if isinstance(data.get(key), dict):
                data[key] = typ(**data[key])
        return cls(**data)
