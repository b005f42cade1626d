"""The training jobs' configs: `dfbatch prepare` (labelled videos -> face-sequence shards) and `dfbatch train`
(Ray Train -> a registered MLflow model)."""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, model_validator

from dfbatch.config.base import (EndpointUrl, FieldError, JobConfig, Numbers, Options, PathStr, Paths, TrackingUri, UsesS3, arg,
                                 job_config, opt, section)
from dfbatch.models.spec import DEFAULT_CROP_MARGIN
from dfbatch.config.score import FaceConfig, FrameAggregation, LimitsConfig, SamplingConfig, TrackAggregation

Layout = Literal["auto", "dfdc", "ffpp", "celebdf", "csv"]
MONITORS = {"val_auc": "max", "val_log_loss": "min", "val_ap": "max", "val_balanced_accuracy": "max"}
SBI_MODES = ("off", "mix", "only")
Monitor = Literal["val_auc", "val_log_loss", "val_ap", "val_balanced_accuracy"]
LogLevel = Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                     BeforeValidator(lambda v: v.upper() if isinstance(v, str) else v)]


def _three_fractions(value: tuple[float, ...]) -> tuple[float, ...]:
    if len(value) != 3 or any(f < 0 for f in value) or sum(value) <= 0:
        raise ValueError("expected three non-negative numbers TRAIN,VAL,TEST (e.g. 0.8,0.1,0.1)")
    return value


@job_config
class PrepareConfig(UsesS3, JobConfig):
    """Everything `dfbatch prepare` needs; `training.prepare.run_prepare(cfg)` runs it."""

    sources: Annotated[Paths, arg("DATASET", help="dataset root (local or s3://) or a file,label CSV", min_length=1,
                                  error="no labelled dataset given")]
    output: Annotated[PathStr, opt("--output", short="-o", metavar="OUT", help="shard location (local path or s3://)")]
    layout: Annotated[Layout, opt("--layout")] = "auto"
    fractions: Annotated[Numbers, AfterValidator(_three_fractions), opt("--split", metavar="TRAIN,VAL,TEST", help="fractions of source groups per split "
                                      "(default {default}); official splits win")] = (0.8, 0.1, 0.1)
    split_seed: Annotated[int, opt("--split-seed")] = 0
    official: Annotated[bool, opt("--no-official-splits", help="ignore the datasets' official splits")] = True
    frames: Annotated[int, opt("--frames", help="frames sampled per video (default {default}); training picks seq_len "
                               "of them", ge=1)] = 32
    crop_size: Annotated[int, opt("--crop-size", help="face crop side in pixels (default {default}); the model resizes to "
                                  "its input size", ge=16)] = 128
    faces: Annotated[FaceConfig, section(
        margin=f"crop margin per side, fraction of the face box (default {DEFAULT_CROP_MARGIN:g}); recorded in "
        "the model's spec, scoring uses it",
        detect_max_side="MTCNN input size (default {default} px, as scoring's fast path: the trained model is then "
        "scored at that speed with no detection drift; 640 with --detect-every 1 is the reference detection)",
        detect_every="MTCNN on every k-th sampled frame (default {default})",
        min_face_px="smallest face searched (default: 24 px, or 12 px at the detection size)",
    )] = field(default_factory=lambda: FaceConfig(margin=DEFAULT_CROP_MARGIN))  # scoring's fast detection
    jpeg_quality: Annotated[int, opt("--jpeg-quality", help="JPEG quality of the stored crops (default {default})",
                                     ge=1, le=100)] = 92
    compression: Annotated[str | None, opt("--compression", help="FaceForensics++: only this compression level (c0, "
                                           "c23, c40)")] = None
    retry_failed: Annotated[bool, opt("--retry-failed", help="process videos that failed last time again")] = False
    limit: Annotated[int | None, opt("--limit", help="at most this many labelled videos (trials)", ge=1)] = None
    face_workers: Annotated[int | None, opt("--face-workers", help="CPU actors decoding + detecting (default: one per "
                                            "CPU)", ge=1)] = None
    cpus_per_face_worker: Annotated[float, opt(gt=0)] = 1.0
    s3_endpoint_url: EndpointUrl = None
    reader_options: Annotated[Options, opt(help="more options of the dataset reader (dfdc_group, test_list)")] = \
        field(default_factory=dict)
    sampling: Annotated[SamplingConfig, section()] = field(default_factory=SamplingConfig)
    limits: Annotated[LimitsConfig, section()] = field(default_factory=LimitsConfig)

    @model_validator(mode="after")
    def _crops_and_detection_given(self) -> PrepareConfig:
        for key in ("margin", "detect_max_side", "detect_every"):  # they become the trained model's input contract
            if getattr(self.faces, key) is None:
                raise FieldError(f"faces.{key}", f"--{key.replace('_', '-')} is required (the shards are made with it)")
        return self

    def pinned(self) -> dict[str, Any]:
        """The parameters that must not change between runs writing into one OUT (the crop and detection ones
        become the trained model's input contract, `ModelSpec`)."""
        return {"frames": self.frames, "crop_size": self.crop_size, "margin": self.faces.margin,
                "jpeg_quality": self.jpeg_quality, "detection": self.faces.detection(),
                "fractions": list(self.fractions), "split_seed": self.split_seed, "official": self.official}


@job_config
class TrainConfig(UsesS3, JobConfig):
    """Everything `dfbatch train` needs; `training.trainer.train(cfg)` runs it."""

    data: Annotated[PathStr, arg("SHARDS", help="output of `dfbatch prepare` (local or s3://)")]
    output: Annotated[PathStr, opt("--output", short="-o", metavar="CHECKPOINTS",
                                   help="checkpoint storage (local or s3://); checkpoints under OUTPUT/NAME")]
    name: Annotated[str, opt("--name", help="run name: the same output + name resumes (default {default})")] = "dfbatch-train"
    # model (dfbatch.models.detector.ModelSpec, built lazily by `spec()`)
    backbone: Annotated[str, opt("--backbone", help="resnext50_32x4d, efficientnet_b0, mobilenet_v2, tiny, ... "
                                 "(default {default})")] = "resnext50_32x4d"
    backbone_weights: Annotated[str | None, opt("--backbone-weights", help="imagenet (offline file) or a torchvision "
                                                ".pth; default: random init")] = None
    temporal: Annotated[str, opt("--temporal", help="mean | lstm | gru | transformer (default {default}: on unseen "
                                 "recipes it did as well as the others, docs/generalisation.md)")] = "mean"
    hidden_dim: Annotated[int, opt("--hidden-dim", help="temporal head width (default {default})", ge=1)] = 512
    num_layers: Annotated[int, opt("--num-layers", help="temporal head layers (default {default})", ge=1)] = 1
    head: Annotated[str, opt("--head", help="last | mean (default {default})")] = "last"
    input_size: Annotated[int, opt("--input-size", help="model input side in pixels (default {default})", ge=1)] = 112
    seq_len: Annotated[int, opt("--seq-len", help="frames per sequence (default {default})", ge=1)] = 16
    dropout: Annotated[float, opt("--dropout", help="(default {default})", ge=0, lt=1)] = 0.3
    freeze_blocks: Annotated[int, opt(help="the backbone's first N blocks keep their (pretrained) weights: cheaper "
                                      "steps", ge=0)] = 0
    # optimisation
    epochs: Annotated[int, opt("--epochs", help="total epochs (a resumed run continues up to this; default {default})",
                               ge=1)] = 10
    batch_size: Annotated[int, opt("--batch-size", help="sequences per worker per step (default {default})", ge=1)] = 8
    lr: Annotated[float, opt("--lr", help="learning rate (default {default})", gt=0)] = 1e-4
    weight_decay: Annotated[float, opt("--weight-decay", help="(default {default})", ge=0)] = 1e-4
    lr_schedule: Annotated[Literal["cosine", "constant"], opt("--lr-schedule", help="(default {default})")] = "cosine"
    warmup_epochs: Annotated[int, opt("--warmup-epochs", help="(default {default})", ge=0)] = 0
    grad_clip: Annotated[float, opt(help="gradient norm clip (0: off)", ge=0)] = 1.0
    label_smoothing: Annotated[float, opt(ge=0, lt=1)] = 0.0
    precision: Annotated[Literal["auto", "fp32", "bf16", "fp16"], opt(
        "--precision", help="mixed precision on GPU (default auto: bf16 on GPUs that have it, else fp16; fp32 on CPU)",
    )] = "auto"
    # data
    balance: Annotated[Literal["sampler", "none"], opt("--balance", help="class-balanced sampler or none (default "
                                                       "{default})")] = "sampler"
    sbi: Annotated[Literal["off", "mix", "only"], opt("--sbi", help="self-blended fakes from reals (default "
                                                      "{default})")] = "mix"
    sbi_fraction: Annotated[float, opt("--sbi-fraction", help="share of FAKE samples that are self-blended (mix; "
                                       "default {default})", ge=0, le=1)] = 0.5
    augment: Annotated[bool, opt("--no-augment", help="no augmentation (flip, colour, JPEG, blur)")] = True
    pool_size: Annotated[int, opt(help="per-class pool of the balanced sampler", ge=1)] = 256
    shuffle_buffer: Annotated[int, opt(help="train rows shuffled per epoch in windows of this many, in an order that "
                                       "depends on the rows and the seed, not on how prepare wrote its parts (prepared "
                                       "parts are label-ordered); 0: off", ge=0)] = 256
    loader_threads: Annotated[int | None, opt(help="threads building sequences per worker (default: cpus_per_worker)",
                                              ge=1)] = None
    val_sbi: Annotated[Literal["auto", "on", "off"], opt("--val-sbi", help="self-blended val fakes (auto: when val has "
                                                         "no fake)")] = "auto"
    exclude_methods: Annotated[list[str], opt("--exclude-methods", metavar="METHOD",
                                              help="leave the fakes of these manipulation methods (the labels' method "
                                              "column) out of training and validation: a model that never saw them")] = \
        field(default_factory=list)
    threshold_method: Annotated[Literal["eer", "real_fpr", "youden"], opt(
        "--threshold-method", help="how the registered threshold is chosen on the val videos (default {default}: where "
        "the false-positive and false-negative rates meet; real_fpr: the lowest that flags at most --target-fpr of "
        "the REAL val videos, whichever fakes val has; youden: best balanced accuracy on the val fakes at hand)")] = "eer"
    target_fpr: Annotated[float, opt("--target-fpr", help="REAL val videos the threshold may flag (real_fpr; default "
                                     "{default})", ge=0, lt=1)] = 0.05
    min_val_videos: Annotated[int, opt(help="REAL (and FAKE) val videos needed to choose a threshold and an epoch; "
                                       "fewer: the last epoch and the threshold 0.5 are registered, with a warning",
                                       ge=1)] = 8
    val_frame_aggregation: Annotated[FrameAggregation, opt(help="like ScoreConfig.frame_aggregation")] = "mean"
    val_track_aggregation: Annotated[TrackAggregation, opt(help="like ScoreConfig.track_aggregation")] = "max"
    # scaling
    num_workers: Annotated[int, opt("--workers", help="Ray Train workers (DDP; default {default})", ge=1)] = 1
    use_gpu: Annotated[bool | None, opt("--gpu", help="train on GPUs (default: when the cluster has GPUs)",
                                        negative="--cpu", negative_help="train on CPUs")] = None
    cpus_per_worker: Annotated[float, opt("--cpus-per-worker", help="(default {default})", gt=0)] = 1.0
    max_failures: Annotated[int, opt("--max-failures", help="worker-group restarts from the latest checkpoint "
                                     "(default {default}; -1: no limit)", ge=-1)] = 0
    # checkpoints, early stopping
    monitor: Annotated[Monitor, opt("--monitor", help="the metric that picks the best epoch (default {default})")] = "val_auc"
    patience: Annotated[int, opt("--patience", help="epochs without improvement before stopping (0: never; default "
                                 "{default})", ge=0)] = 3
    min_delta: Annotated[float, opt(help="smallest change that counts as an improvement", ge=0)] = 0.0
    keep_checkpoints: Annotated[int, opt("--keep-checkpoints", help="best ones kept (the latest is always kept too; "
                                         "default {default})", ge=1)] = 2
    resume: Annotated[bool, opt("--restart", help="refuse to resume: fail if OUTPUT/NAME already holds "
                                "checkpoints")] = True
    # tracking / registry
    tracking_uri: TrackingUri = None
    experiment: Annotated[str, opt("--experiment", help="MLflow experiment (default {default})")] = "dfbatch-train"
    model_name: Annotated[str, opt("--model-name", help="registered model name (default {default})")] = "dfbatch-detector"
    alias: Annotated[str | None, opt("--alias", help="alias of the new version (default {default})")] = "challenger"
    register: Annotated[bool, opt("--no-register", help="do not register the best checkpoint")] = True
    seed: Annotated[int, opt("--seed", help="(default {default})")] = 0
    s3_endpoint_url: EndpointUrl = None
    augment_config: Annotated[Options, opt(help="AugmentConfig overrides")] = field(default_factory=dict)
    sbi_config: Annotated[Options, opt(help="SBIConfig overrides (margin comes from the shards)")] = \
        field(default_factory=dict)
    progress: Annotated[bool, opt(help="rank 0 prints one line per epoch (loss, val metrics, time)")] = False
    worker_log_level: Annotated[LogLevel, opt(help="log level of the Ray Train controller and workers (default "
                                              "{default}: their INFO lines, one dict per reported epoch, stay in Ray's logs)")] = "WARNING"

    def spec(self):
        """The model's ModelSpec (imports torch: built only when training)."""
        from dfbatch.models.detector import ModelSpec

        return ModelSpec(backbone=self.backbone, temporal=self.temporal, hidden_dim=self.hidden_dim,
                         num_layers=self.num_layers, head=self.head, input_size=self.input_size,
                         seq_len=self.seq_len, dropout=self.dropout)
