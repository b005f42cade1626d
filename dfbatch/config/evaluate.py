"""The evaluation job's config (`dfbatch evaluate OUT --labels DATASET...`)."""

from __future__ import annotations

from typing import Annotated

from dfbatch.config.base import JobConfig, PathStr, Paths, arg, env_endpoint, job_config, opt
from dfbatch.config.training import Layout


@job_config
class EvaluateConfig(JobConfig):
    """Metrics of scored results against labels; `evaluation.evaluate.run_evaluate(cfg)` runs it."""

    output: Annotated[PathStr, arg("OUT", help="a `dfbatch score` output (local or s3://)")]
    labels: Annotated[Paths, opt("--labels", help="dataset root(s) or labels CSV", min_length=1)]
    layout: Annotated[Layout, opt("--layout", help="label layout (default {default}: detected)")] = "auto"
    model_version: Annotated[str | None, opt("--model-version", help="only rows of this model version (default: "
                                             "all)")] = None
    log_mlflow: Annotated[bool, opt("--log-mlflow", help="log the metrics to an MLflow run tagged with the model "
                                    "version")] = False
    tracking_uri: Annotated[str | None, opt("--tracking-uri", help="MLflow tracking URI for --log-mlflow (default: "
                                            "MLFLOW_TRACKING_URI, else MLflow's default)")] = None
    experiment: Annotated[str, opt("--experiment", help="MLflow experiment (default {default})")] = "dfbatch-evaluate"
    s3_endpoint_url: Annotated[str | None, opt("--endpoint-url", help="S3-compatible endpoint (default: "
                                               "AWS_ENDPOINT_URL)")] = None

    @property
    def endpoint_url(self) -> str | None:
        return env_endpoint(self.s3_endpoint_url)
