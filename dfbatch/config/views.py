"""The configs of the commands people look at results with: `dfbatch report` and `dfbatch serve`.
(`dfbatch query` is a plain SQL runner with no job settings.)"""

from __future__ import annotations

from dataclasses import field
from typing import Annotated

from pydantic import model_validator

from dfbatch.config.base import EndpointUrl, FieldError, JobConfig, PathStr, TrackingUri, UsesS3, arg, job_config, opt, section
from dfbatch.config.score import (DEFAULT_MODEL_URI, Device, FaceConfig, FrameAggregation, LimitsConfig, Precision,
                                  SamplingConfig, ScoreConfig, TrackAggregation)


@job_config
class ReportConfig(UsesS3, JobConfig):
    """One self-contained HTML report of a scoring job's results; `views.report.build_report(cfg)` writes it."""

    output: Annotated[PathStr, arg("OUT", help="result location of dfbatch score (local path or s3://)")]
    html: Annotated[PathStr, opt("--html", metavar="FILE", help="the report file to write (local path or s3://)")]
    top: Annotated[int, opt("--top", help="most suspicious videos shown with crops and heatmaps (default {default})",
                            ge=1)] = 20
    frames_per_track: Annotated[int, opt("--frames-per-track", help="crops shown per face track (evenly spaced, the "
                                         "highest-scoring included; default {default})", ge=1)] = 8
    model_version: Annotated[str | None, opt("--model-version", help="report on this model version (default: the one "
                                             "scored last in OUT)")] = None
    model_name: Annotated[str | None, opt("--model-name", help="report on this registered model name (with several "
                                          "in OUT)")] = None
    explain: Annotated[bool, opt("--no-gradcam", help="no heatmaps (no model needed)")] = True
    log_mlflow: Annotated[bool, opt("--no-mlflow", help="do not log the report to the scoring run in MLflow")] = True
    device: Annotated[Device, opt("--device", help="for face extraction and Grad-CAM (default {default})")] = "auto"
    failed_rows: Annotated[int, opt(help="failed videos listed with their errors", ge=0)] = 200
    tracking_uri: TrackingUri = None
    s3_endpoint_url: EndpointUrl = None


@job_config
class ServeConfig(UsesS3, JobConfig):
    """The single-video page (`views.serve`): where it listens, and the scoring settings it applies — a
    `dfbatch score` job's (`score_config()`), so the page and the batch job give the same P(fake)."""

    model_uri: Annotated[str, opt("--model", help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/..., or a "
                                  "checkpoint file (default {default})")] = DEFAULT_MODEL_URI
    host: Annotated[str, opt("--host", help="address to listen on (default {default}: this machine only)")] = "127.0.0.1"
    port: Annotated[int, opt("--port", help="port (default {default})", ge=1, le=65535)] = 8000
    max_upload_mb: Annotated[float, opt("--max-upload-mb", help="largest upload accepted, in MB (default 500)",
                                        gt=0)] = 500.0
    allow_paths: Annotated[bool | None, opt(
        "--allow-paths", help="accept a server-side path or s3:// URI as well as uploads (default: only when "
        "listening on a loopback address)", negative="--no-allow-paths", negative_help="uploads only")] = None
    threshold: Annotated[float | None, opt("--threshold", help="FAKE if P(fake) >= threshold (default: the model's, "
                                           "as dfbatch score)", ge=0, le=1)] = None
    gradcam: Annotated[bool, opt("--no-gradcam", help="no Grad-CAM heatmaps: answers about three times faster with a "
                                 "ResNeXt50 on CPU")] = True
    track_aggregation: Annotated[TrackAggregation, opt("--track-aggregation", help="video score from track scores")] = "max"
    frame_aggregation: Annotated[FrameAggregation, opt("--frame-aggregation", help="track score from frame scores")] = "mean"
    device: Annotated[Device, opt("--device")] = "auto"
    precision: Annotated[Precision, opt("--precision", help="model precision (default auto, as dfbatch score)")] = "auto"
    tracking_uri: TrackingUri = None
    s3_endpoint_url: EndpointUrl = None
    sampling: Annotated[SamplingConfig, section("frames")] = field(default_factory=SamplingConfig)
    faces: Annotated[FaceConfig, section("detect_max_side", "detect_every", "min_face_px")] = field(
        default_factory=lambda: FaceConfig(detect_max_side=None, detect_every=None))  # None: the model's
    limits: Annotated[LimitsConfig, section("max_duration_s", "time_budget_s")] = field(default_factory=LimitsConfig)

    @model_validator(mode="after")
    def _fp16_needs_a_gpu(self) -> ServeConfig:
        if self.precision == "fp16" and self.device == "cpu":
            raise FieldError("precision", "--precision fp16 needs a GPU; on CPU use auto, bf16 or fp32")
        return self

    def score_config(self) -> ScoreConfig:
        """The scoring settings as a `dfbatch score` job with the same flags has them (sources and output unused)."""
        return ScoreConfig(sources=["-"], output="-", model_uri=self.model_uri, threshold=self.threshold,
                           track_aggregation=self.track_aggregation, frame_aggregation=self.frame_aggregation,
                           tracking_uri=self.tracking_uri, s3_endpoint_url=self.s3_endpoint_url, device=self.device,
                           precision=self.precision, sampling=self.sampling, faces=self.faces, limits=self.limits)
