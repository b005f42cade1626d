"""The evaluation jobs' configs: `dfbatch evaluate --model URI LABELS...` (and `evaluate OUT --labels LABELS`) and
`dfbatch compare MODEL... --labels LABELS`."""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Literal

from pydantic import model_validator

from dfbatch.config.base import (EndpointUrl, FieldError, JobConfig, PathStr, Paths, TrackingUri, UsesS3, arg,
                                 job_config, opt, section)
from dfbatch.config.score import (Device, FaceConfig, FrameAggregation, Precision, SamplingConfig, ScoreConfig,
                                  TrackAggregation)
from dfbatch.config.training import Layout

ThresholdMethod = Literal["eer", "fpr", "youden", "fixed"]


@job_config
class EvaluationSettings(UsesS3, JobConfig):
    """What `evaluate` and `compare` share: where rows go, which labelled videos, the MLflow store, and the scoring
    settings used when videos still need scoring (the same meaning as in `dfbatch score`)."""

    output: Annotated[PathStr | None, opt("--output", short="-o", metavar="OUT", help="results location (local or "
                                          "s3://); rows a version already has there are reused (default with "
                                          "--model: ./dfbatch-eval/<dataset>-<digest>)")] = None
    split: Annotated[str | None, opt("--split", help="only the labelled videos of this split (train, val or test: a "
                                     "`split` column or the dataset's official split)")] = None
    layout: Annotated[Layout, opt("--layout", help="label layout (default {default}: detected)")] = "auto"
    dataset_name: Annotated[str | None, opt("--dataset-name", help="the dataset's name in MLflow (default: the labels' "
                                            "folder name)")] = None
    tracking_uri: TrackingUri = None
    experiment: Annotated[str, opt("--experiment", help="MLflow experiment of the evaluation runs (default "
                                   "{default})")] = "dfbatch-evaluate"
    s3_endpoint_url: EndpointUrl = None
    frame_aggregation: Annotated[FrameAggregation, opt(
        "--frame-aggregation", help="track score from frame scores, for videos scored now (default {default}; every "
        "strategy is compared in the report anyway)")] = "mean"
    track_aggregation: Annotated[TrackAggregation, opt("--track-aggregation", help="video score from track scores "
                                                       "(default {default})")] = "max"
    precision: Annotated[Precision, opt("--precision", help="model precision for videos scored now (default "
                                        "{default})")] = "auto"
    device: Annotated[Device, opt("--device")] = "auto"
    ray_address: Annotated[str | None, opt("--ray-address", help="Ray cluster to join (default: RAY_ADDRESS, else a "
                                           "local Ray)")] = None
    sampling: Annotated[SamplingConfig, section("frames")] = field(default_factory=SamplingConfig)
    faces: Annotated[FaceConfig, section("detect_max_side", "detect_every", "min_face_px")] = field(
        default_factory=FaceConfig)

    def score_config(self, sources: list[str], output: str, model_uri: str) -> ScoreConfig:
        """The scoring job that scores the labelled videos (it resumes: rows OUT holds for the version are kept)."""
        return ScoreConfig(sources=sources, output=output, model_uri=model_uri, tracking_uri=self.tracking_uri,
                           s3_endpoint_url=self.s3_endpoint_url, ray_address=self.ray_address, device=self.device,
                           precision=self.precision, frame_aggregation=self.frame_aggregation,
                           track_aggregation=self.track_aggregation, sampling=self.sampling, faces=self.faces)


@job_config
class EvaluateConfig(EvaluationSettings):
    """One model version against labelled videos; `evaluation.evaluate.run_evaluate(cfg)` runs it.

    With `model_uri`: the labelled videos are scored through the scoring job into `output` (resuming), then
    evaluated. Without: the rows `output` already holds are evaluated (`dfbatch evaluate OUT --labels LABELS`)."""

    labels: Annotated[Paths, arg("LABELS", help="dataset root(s) or labels CSV(s): DFDC, FF++, Celeb-DF, or a "
                                 "file,label[,method,split] CSV")] = field(default_factory=list)
    model_uri: Annotated[str | None, opt("--model", help="models:/NAME@ALIAS, models:/NAME/VERSION (or a checkpoint "
                                         "file): score the labelled videos with it, then evaluate")] = None
    model_version: Annotated[str | None, opt("--model-version", help="without --model: only OUT's rows of this model "
                                             "version")] = None
    calibrate: Annotated[ThresholdMethod | None, opt(
        "--calibrate", help="choose and store the version's thresholds on these (validation) videos: eer, fpr "
        "(--target-fpr), youden, or fixed (--threshold)")] = None
    target_fpr: Annotated[float | None, opt("--target-fpr", help="with --calibrate fpr (implied): the largest "
                                            "false-positive rate allowed, e.g. 0.01", gt=0, lt=1)] = None
    threshold: Annotated[float | None, opt("--threshold", help="with --calibrate fixed: the threshold to store",
                                           ge=0, le=1)] = None
    temperature: Annotated[bool, opt("--temperature", help="with --calibrate: also fit temperature scaling (scores "
                                     "are then calibrated probabilities)")] = False
    log_mlflow: Annotated[bool, opt("--no-mlflow", help="do not log an evaluation run")] = True

    @model_validator(mode="after")
    def _modes(self) -> EvaluateConfig:
        if not self.labels:
            raise FieldError("labels", "give the labelled videos: dataset root(s) or labels CSV(s)")
        if not self.model_uri and not self.output:
            raise FieldError("model_uri", "give --model URI (score the labelled videos with it) or --output OUT "
                             "(evaluate the rows OUT holds)")
        if self.model_uri and self.model_version:
            raise FieldError("model_version", "--model-version selects OUT's rows when no --model is given; with "
                             "--model the rows are that model's")
        if self.calibrate is None and self.target_fpr is not None:
            object.__setattr__(self, "calibrate", "fpr")
        if self.calibrate and not self.model_uri:
            raise FieldError("calibrate", "--calibrate stores thresholds on a model version: give --model "
                             "models:/NAME/VERSION")
        if self.calibrate == "fpr" and self.target_fpr is None:
            raise FieldError("target_fpr", "--calibrate fpr needs --target-fpr (e.g. 0.01)")
        if self.calibrate == "fixed" and self.threshold is None:
            raise FieldError("threshold", "--calibrate fixed needs --threshold T")
        if self.threshold is not None and self.calibrate != "fixed":
            raise FieldError("threshold", "--threshold is the value stored by --calibrate fixed (to score with "
                             "another threshold: dfbatch score --threshold)")
        if self.temperature and not self.calibrate:
            raise FieldError("temperature", "--temperature is fitted by --calibrate (give a method, e.g. eer)")
        return self


@job_config
class CompareConfig(EvaluationSettings):
    """Model versions side by side on the same labelled videos; `evaluation.compare.run_compare(cfg)` runs it."""

    models: Annotated[list[str], arg("MODEL", help="models:/NAME@ALIAS or models:/NAME/VERSION (two or more, or one "
                                     "with --promote)")] = field(default_factory=list)
    labels: Annotated[Paths, opt("--labels", help="dataset root(s) or labels CSV(s) all versions are evaluated on")] = \
        field(default_factory=list)
    promote: Annotated[str | None, opt("--promote", metavar="METRIC", help="move the alias (--alias) to the best "
                                       "version on METRIC (e.g. video/roc_auc) when it beats the current holder "
                                       "on it")] = None
    alias: Annotated[str, opt("--alias", help="the alias --promote moves (default {default})")] = "champion"

    @model_validator(mode="after")
    def _inputs(self) -> CompareConfig:
        if not self.labels:
            raise FieldError("labels", "give --labels: the labelled videos every version is evaluated on")
        if not self.models or (len(self.models) < 2 and not self.promote):
            raise FieldError("models", "give two or more models to compare (or one with --promote: it is compared "
                             "with the current holder of the alias)")
        return self
