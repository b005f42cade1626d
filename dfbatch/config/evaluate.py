"""The evaluation job's config (`dfbatch evaluate OUT --labels DATASET...`)."""

from __future__ import annotations

from typing import Annotated

from dfbatch.config.base import EndpointUrl, JobConfig, PathStr, Paths, TrackingUri, UsesS3, arg, job_config, opt
from dfbatch.config.training import Layout


@job_config
class EvaluateConfig(UsesS3, JobConfig):
    """Metrics of scored results against labels; `evaluation.evaluate.run_evaluate(cfg)` runs it."""

    output: Annotated[PathStr, arg("OUT", help="a `dfbatch score` output (local or s3://)")]
    labels: Annotated[Paths, opt("--labels", help="dataset root(s) or labels CSV", min_length=1)]
    layout: Annotated[Layout, opt("--layout", help="label layout (default {default}: detected)")] = "auto"
    model_version: Annotated[str | None, opt("--model-version", help="only rows of this model version (default: "
                                             "all)")] = None
    log_mlflow: Annotated[bool, opt("--log-mlflow", help="log the metrics to an MLflow run tagged with the model "
                                    "version")] = False
    tracking_uri: TrackingUri = None  # for --log-mlflow
    experiment: Annotated[str, opt("--experiment", help="MLflow experiment (default {default})")] = "dfbatch-evaluate"
    s3_endpoint_url: EndpointUrl = None
