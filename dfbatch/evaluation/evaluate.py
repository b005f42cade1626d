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
    if cfg.log_mlflow:
        import mlflow

        if cfg.tracking_uri:
            mlflow.set_tracking_uri(cfg.tracking_uri)
        mlflow.set_experiment(cfg.experiment)
        with mlflow.start_run(run_name="evaluate") as run:
            mlflow.set_tags(tags)
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
            run_id = run.info.run_id
    return EvaluateResult(joined, metrics, run_id, tags)
