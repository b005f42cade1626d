"""The evaluation job: scored results joined with their labels, video-level metrics, optionally an MLflow run.

    from dfbatch.config import EvaluateConfig
    result = run_evaluate(EvaluateConfig(output="out/", labels=["/data/Celeb-DF-v2"]))
    result.metrics["auc"]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from dfbatch.config import EvaluateConfig
from dfbatch.errors import UserError, redact


@dataclass
class EvaluateResult:
    joined: pd.DataFrame  # the results rows with a true_label column
    metrics: dict
    mlflow_run_id: str | None = None
    tags: dict = field(default_factory=dict)


def run_evaluate(cfg: EvaluateConfig) -> EvaluateResult:
    """Join the results under cfg.output with the labels, compute the video metrics, log them when asked."""
    from dfbatch.evaluation.metrics import join_labels, video_metrics
    from dfbatch.io.results import read_results
    from dfbatch.io.storage import Storage
    from dfbatch.training.labels import load_labels

    results = read_results(cfg.output, "videos", Storage(cfg.endpoint_url))
    if cfg.model_version:
        results = results[results.model_version == cfg.model_version]
    if results.empty:
        raise UserError(f"no results under {redact(cfg.output)}"
                        + (f" for model version {cfg.model_version}" if cfg.model_version else ""))
    options = {"client_kwargs": {"endpoint_url": cfg.endpoint_url}} if cfg.endpoint_url else None
    joined = join_labels(results, load_labels(cfg.labels, layout=cfg.layout, storage_options=options))
    metrics = video_metrics(joined)
    tags = {"model_name": str(results.model_name.iloc[0]), "model_version": str(results.model_version.iloc[0]),
            "results": redact(cfg.output)}
    run_id = None
    if cfg.log_mlflow:  # the client API: the process's MLflow tracking URI stays as it was
        import time

        from mlflow import MlflowClient
        from mlflow.entities import Metric

        client = MlflowClient(cfg.tracking_uri)
        experiment = client.get_experiment_by_name(cfg.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(cfg.experiment)
        run_id = client.create_run(experiment_id, run_name="evaluate", tags=tags).info.run_id
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None])
        client.set_terminated(run_id)
    return EvaluateResult(joined, metrics, run_id, tags)
