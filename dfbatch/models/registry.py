"""Model registry on MLflow: log / register / alias / fetch dfbatch detectors.

Storage format of a logged model (MLflow pyfunc, "model from code", nothing pickled):

    MLmodel                 flavor python_function, metadata: dfbatch_format, dfbatch_spec, threshold, weights_sha256
    artifacts/weights.pt    plain state dict (tensors only) -> torch.load(weights_only=True)
    artifacts/spec.json     ModelSpec.to_dict()
    mlflow_model.py         dfbatch/models/mlflow_model.py (the pyfunc: load_context + predict)
    input_example.json, serving_input_example.json, requirements.txt, ...

`fetch()` never runs the logged code and never unpickles: it downloads `spec.json` + `weights.pt` and checks
the weights' sha256. Registered versions carry tags `dfbatch.threshold`, `dfbatch.kind` (native|seed),
`dfbatch.backbone`, `dfbatch.temporal`, `dfbatch.lineage.*`, `dfbatch.calibration` (JSON: thresholds and
temperature per aggregation, how and on what data they were chosen; `dfbatch.evaluation.thresholds`) and
`dfbatch.promotion` (why `dfbatch compare --promote` made it champion). Aliases (`champion`, `challenger`)
replace the old stages.

Importing this module, `list_models` and `show` of a registered version do not import torch; the functions
that handle weights import it when called.

Tracking URI: the argument, else MLFLOW_TRACKING_URI, else MLflow's default (sqlite:///mlflow.db in the
working directory). URIs are shown with credentials redacted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfbatch.errors import CheckpointError, ModelNotFound, UserError, redact
from dfbatch.models.spec import ModelSpec, describe_spec, missing_fields, with_defaults

if TYPE_CHECKING:  # torch is imported by the functions that handle tensors, not by importing this module
    import torch
    from torch import nn

    from dfbatch.models.detector import Detector

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "dfbatch-detector"
DEFAULT_EXPERIMENT = "dfbatch-models"
MLFLOW_FORMAT = "dfbatch-mlflow/1"
ARTIFACT_NAME = "model"  # the logged model's name inside a run: runs:/RUN/model
HOW_TO_GET_A_MODEL = ("run `make demo`, or `dfbatch models import-seed FILE.pt --frames N`, "
                      "or pass --model FILE.pt (a dfbatch checkpoint)")
TAG_PREFIX = "dfbatch."
KNOWN_ALIASES = ("champion", "challenger")
CALIBRATION_TAG = TAG_PREFIX + "calibration"
PROMOTION_TAG = TAG_PREFIX + "promotion"


# --------------------------------------------------------------------------------------------- bundle
@dataclass
class StoredWeights:
    """A registered version's weights file as stored (the bytes of a plain state dict saved by `torch.save`),
    checked against its recorded sha256 but not loaded: `fetch(..., tensors=False)` hands these on, so the
    scoring driver never imports torch; each model actor loads them (`load`, weights-only)."""

    data: Any  # bytes, or a uint8 numpy array over them (mapped from Ray's object store without a copy)
    sha256: str
    source: str = ""

    def load(self) -> "OrderedDict[str, torch.Tensor]":
        import io

        from dfbatch.models.checkpoints import load_state_dict_file

        sd = load_state_dict_file(io.BytesIO(memoryview(self.data)), source=self.source)
        if not isinstance(sd, Mapping):
            raise CheckpointError(f"{self.source}: weights artifact is not a state dict")
        return OrderedDict(sd)


def tensors_of(state_dict: "Mapping[str, torch.Tensor] | StoredWeights") -> "Mapping[str, torch.Tensor]":
    """A bundle's state dict as tensors (loading `StoredWeights`)."""
    return state_dict.load() if isinstance(state_dict, StoredWeights) else state_dict


@dataclass
class ModelBundle:
    """Everything a scoring worker needs (picklable; no MLflow access needed where it is used)."""

    spec: ModelSpec
    state_dict: "OrderedDict[str, torch.Tensor] | StoredWeights"  # StoredWeights: fetch(..., tensors=False)
    name: str | None = None
    version: str | None = None
    uri: str = ""  # as requested (may be an alias)
    pinned_uri: str = ""  # immutable: models:/NAME/3, runs:/RUN/model, or an absolute file path
    threshold: float = 0.5
    run_id: str | None = None
    aliases: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    description: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Detector:
        """Detector in eval mode on CPU with these weights (call `inference.prepare_for_inference` next)."""
        from dfbatch.models.checkpoints import load_weights
        from dfbatch.models.detector import build_model

        return load_weights(build_model(self.spec), tensors_of(self.state_dict), source=self.pinned_uri or self.uri).eval()

    def columns(self) -> dict[str, Any]:
        """Model columns for result rows."""
        return {"model_name": self.name, "model_version": self.version, "model_uri": self.pinned_uri or self.uri}

    @property
    def calibration(self) -> dict | None:
        """The version's calibration record (`dfbatch.evaluation.thresholds`), None when it has none."""
        from dfbatch.evaluation.thresholds import parse_record

        return parse_record(self.tags.get(CALIBRATION_TAG))


# ------------------------------------------------------------------------------------------- helpers
def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The MLflow store a job uses; a relative sqlite file made absolute here, in the driver (Ray Train's workers
    log to it from their own working folder)."""
    import mlflow

    from dfbatch.config.base import absolute_local

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + absolute_local(uri[len("sqlite:///"):])
    return uri


def _registry_uri(tracking_uri: str) -> str:
    return os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri


def _client(tracking_uri: str | None = None):
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=uri, registry_uri=_registry_uri(uri))


def _sqlite_missing(uri: str) -> Path | None:
    """For sqlite:///path URIs whose file does not exist: that path (so a lookup does not create an empty DB)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]  # sqlite:////abs -> /abs; sqlite:///rel -> rel
    if path in ("", ":memory:") or Path(path).exists():
        return None
    return Path(path)


@contextlib.contextmanager
def using_tracking_uri(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at `tracking_uri` (and registry) for the block; restore afterwards
    (module state and the MLFLOW_* variables MLflow's setters write)."""
    import mlflow
    from mlflow.tracking._model_registry import utils as reg_utils
    from mlflow.tracking._tracking_service import utils as trk_utils

    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved = (trk_utils._tracking_uri, reg_utils._registry_uri)
    try:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(_registry_uri(tracking_uri))
        yield
    finally:
        mlflow.set_tracking_uri(saved[0])
        reg_utils._registry_uri = saved[1]
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _quiet_downloads() -> Iterator[None]:
    old = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = old


def _experiment_id(client, experiment: str, tracking_uri: str) -> str:
    """Id of `experiment`, created if needed; with a local sqlite store its artifacts go next to the database
    (<db dir>/mlruns/<experiment>) rather than into whatever the current directory is."""
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):].split("?", 1)[0])
        if str(db) not in ("", ":memory:"):
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment).strip("._") or "experiment"
            location = (db.resolve().parent / "mlruns" / slug).as_uri()
    return client.create_experiment(experiment, artifact_location=location)


def _not_found(what: str, tracking_uri: str, detail: str = "") -> ModelNotFound:
    extra = f" ({detail})" if detail else ""
    return ModelNotFound(f"model {what} not found in the registry at {redact(tracking_uri)}{extra}; {HOW_TO_GET_A_MODEL}")


def _is_not_found(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "") or ""
    return "RESOURCE_DOES_NOT_EXIST" in str(code) or "not found" in str(exc).lower() or "does not exist" in str(exc).lower()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _numel(state_dict: Mapping[str, Any]) -> int:
    return sum(int(v.numel()) for v in state_dict.values())


def _pip_requirements() -> list[str]:
    import mlflow
    import torch
    import torchvision

    def base(v: str) -> str:
        return v.split("+", 1)[0]

    return [f"torch=={base(torch.__version__)}", f"torchvision=={base(torchvision.__version__)}",
            f"mlflow=={mlflow.__version__}", "numpy"]


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """'models:/NAME@ALIAS' | 'models:/NAME/VERSION' | 'NAME@ALIAS' | 'NAME/VERSION' | 'NAME'
    -> (name, version, alias). A bare NAME gives (name, None, None)."""
    s = uri[len("models:/"):] if uri.startswith("models:/") else uri
    s = s.strip("/")
    if not s:
        raise UserError(f"bad model URI {uri!r}; use models:/NAME@ALIAS or models:/NAME/VERSION")
    if "@" in s:
        name, alias = s.rsplit("@", 1)
        return name, None, alias
    if "/" in s:
        name, version = s.rsplit("/", 1)
        return name, version, None
    return s, None, None


# ------------------------------------------------------------------------------------------- logging
def log_model(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor], spec: ModelSpec, *,
              threshold: float = 0.5, name: str = ARTIFACT_NAME, registered_model_name: str | None = None,
              lineage: Mapping[str, Any] | None = None) -> Any:
    """Log a detector into the **active** MLflow run (pyfunc from code + weights/spec artifacts, see module
    doc). Returns MLflow's ModelInfo (`.model_uri`, `.registered_model_version`). The weights are checked
    against the spec first."""
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from dfbatch.models.checkpoints import load_weights, plain_state_dict
    from dfbatch.models.detector import build_model

    sd = plain_state_dict(model_or_state_dict)
    model = load_weights(build_model(spec), sd, source="model to register").eval()
    with tempfile.TemporaryDirectory(prefix="dfbatch-log-") as tmp:
        weights = Path(tmp) / "weights.pt"
        spec_file = Path(tmp) / "spec.json"
        torch.save(sd, weights)
        spec_file.write_text(json.dumps(spec.to_dict(), indent=2, sort_keys=True), encoding="utf-8")
        S, T = spec.input_size, min(2, spec.seq_len)
        example = np.random.default_rng(0).integers(0, 256, size=(1, T, S, S, 3), dtype=np.uint8)
        signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, S, S, 3), "crops")]),
                                   outputs=Schema([TensorSpec(np.dtype(np.float32), (-1,), "fake_probability")]))
        metadata = {"dfbatch_format": MLFLOW_FORMAT, "dfbatch_spec": spec.to_dict(), "threshold": float(threshold),
                    "weights_sha256": _sha256(weights), "parameters": _numel(sd), "lineage": {k: str(v) for k, v in (lineage or {}).items()}}
        del model
        with _quiet_downloads():
            return mlflow.pyfunc.log_model(
                name=name,
                python_model=str(Path(__file__).with_name("mlflow_model.py")),
                artifacts={"weights": str(weights), "spec": str(spec_file)},
                signature=signature,
                input_example=example,
                metadata=metadata,
                pip_requirements=_pip_requirements(),
                registered_model_name=registered_model_name,
            )


def register(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor], spec: ModelSpec,
             name: str = DEFAULT_MODEL_NAME, *, alias: str | None = None, threshold: float = 0.5,
             metrics: Mapping[str, float] | None = None, params: Mapping[str, Any] | None = None,
             tags: Mapping[str, str] | None = None, description: str | None = None, run_id: str | None = None,
             experiment: str = DEFAULT_EXPERIMENT, lineage: Mapping[str, Any] | None = None,
             tracking_uri: str | None = None) -> str:
    """Log the detector into a run (`run_id` to add to an existing run, e.g. the training run; else a new run
    in `experiment`), register it as a new version of `name`, set tags/description/alias. Returns the version."""
    import mlflow

    uri = resolve_tracking_uri(tracking_uri)
    if not 0.0 <= float(threshold) <= 1.0:
        raise UserError(f"threshold must be in [0, 1], got {threshold}")
    with using_tracking_uri(uri):
        active = mlflow.active_run()
        if run_id is not None and active is not None and active.info.run_id == run_id:
            run_ctx = contextlib.nullcontext(active)  # the caller's own run (e.g. training): leave it open
        elif run_id is not None:
            run_ctx = mlflow.start_run(run_id=run_id)
        else:
            exp_id = _experiment_id(_client(uri), experiment, uri)
            run_ctx = mlflow.start_run(experiment_id=exp_id, run_name=f"register-{name}", nested=active is not None)
        with run_ctx as run:
            mlflow.log_params({f"spec.{k}": (json.dumps(v) if isinstance(v, (list, dict)) else v)
                               for k, v in spec.to_dict().items()})
            if params:
                mlflow.log_params(dict(params))
            if metrics:
                mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
            if tags:
                mlflow.set_tags(dict(tags))
            info = log_model(model_or_state_dict, spec, threshold=threshold, registered_model_name=name,
                             lineage=lineage)
            run_id = run.info.run_id
        version = str(info.registered_model_version)
    _tag_version(name, version, spec, threshold, tags=tags, lineage=lineage, description=description,
                 tracking_uri=uri)
    if alias:
        set_alias(name, version, alias, tracking_uri=uri)
    log.info("registered %s version %s (run %s) at %s", name, version, run_id, redact(uri))
    return version


def _tag_version(name: str, version: str, spec: ModelSpec, threshold: float, *, tags=None, lineage=None,
                 description=None, tracking_uri: str | None = None) -> None:
    client = _client(tracking_uri)
    vt = {"threshold": f"{float(threshold):.6g}", "kind": "seed" if spec.seed_compat else "native",
          "backbone": spec.backbone, "temporal": spec.temporal}
    for k, v in vt.items():
        client.set_model_version_tag(name, version, TAG_PREFIX + k, v)
    for k, v in (lineage or {}).items():
        client.set_model_version_tag(name, version, f"{TAG_PREFIX}lineage.{k}", str(v))
    for k, v in (tags or {}).items():
        client.set_model_version_tag(name, version, k, str(v))
    if description:
        client.update_model_version(name, version, description=description)


def register_uri(source: str, name: str = DEFAULT_MODEL_NAME, *, alias: str | None = None,
                 threshold: float | None = None, description: str | None = None,
                 tracking_uri: str | None = None) -> str:
    """Register a dfbatch checkpoint FILE or an already-logged `runs:/RUN/PATH` model. Returns the version."""
    import mlflow

    uri = resolve_tracking_uri(tracking_uri)
    if source.startswith("runs:/"):
        bundle = fetch(source, tracking_uri=uri)  # validates it is a dfbatch model
        thr = bundle.threshold if threshold is None else float(threshold)
        with using_tracking_uri(uri):
            mv = mlflow.register_model(source, name)
        version = str(mv.version)
        _tag_version(name, version, bundle.spec, thr, lineage=bundle.meta.get("lineage"),
                     description=description, tracking_uri=uri)
        if alias:
            set_alias(name, version, alias, tracking_uri=uri)
        return version
    if "://" in source or source.startswith("models:/"):
        raise UserError(f"can register a checkpoint file or a runs:/RUN/PATH model, not {source!r}")
    from dfbatch.models.checkpoints import read_checkpoint

    spec, sd, meta = read_checkpoint(source)
    p = Path(source)
    lineage = {"source_file": p.name, "source_sha256": _sha256(p)}
    lineage.update({k: v for k, v in (meta.get("lineage") or {}).items()})
    metrics = {k: v for k, v in (meta.get("metrics") or {}).items() if isinstance(v, (int, float))}
    thr = float(threshold if threshold is not None else meta.get("threshold", 0.5))
    return register(sd, spec, name, alias=alias, threshold=thr, metrics=metrics or None, description=description,
                    lineage=lineage, tracking_uri=uri)


def import_seed(path: str | os.PathLike, frames: int, name: str = DEFAULT_MODEL_NAME, *, alias: str | None = None,
                threshold: float = 0.5, description: str | None = None, tracking_uri: str | None = None) -> str:
    """Load a seed ResNeXt50-LSTM state dict (weights_only), check every key/shape, register it."""
    from dfbatch.models.checkpoints import import_seed_state_dict, load_state_dict_file

    p = Path(path)
    model, spec = import_seed_state_dict(load_state_dict_file(p), frames)
    return register(model, spec, name, alias=alias, threshold=threshold,
                    description=description or f"seed ResNeXt50-LSTM imported from {p.name} ({frames} frames)",
                    lineage={"source_file": p.name, "source_sha256": _sha256(p), "imported_as": "seed", "frames": frames},
                    params={"seed.frames": int(frames), "seed.file": p.name}, tracking_uri=tracking_uri)


# ------------------------------------------------------------------------------------------ aliases
def set_alias(name: str, version: str | int, alias: str, tracking_uri: str | None = None) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", alias) or alias.lower() == "latest" or re.fullmatch(r"v\d+", alias):
        raise UserError(f"bad alias {alias!r} (use a name like {' / '.join(KNOWN_ALIASES)})")
    uri = resolve_tracking_uri(tracking_uri)
    client = _client(uri)
    try:
        client.get_model_version(name, str(version))
    except Exception as exc:
        if _is_not_found(exc):
            raise _not_found(f"{name}/{version}", uri) from None
        raise
    client.set_registered_model_alias(name, alias, str(version))


def delete_alias(name: str, alias: str, tracking_uri: str | None = None) -> None:
    _client(tracking_uri).delete_registered_model_alias(name, alias)


def set_threshold(name: str, version: str | int, threshold: float, tracking_uri: str | None = None) -> None:
    """Update a version's decision threshold (e.g. after calibration by `evaluate`)."""
    if not 0.0 <= float(threshold) <= 1.0:
        raise UserError(f"threshold must be in [0, 1], got {threshold}")
    _client(tracking_uri).set_model_version_tag(name, str(version), TAG_PREFIX + "threshold", f"{float(threshold):.6g}")


def set_calibration(name: str, version: str | int, calibration: Mapping[str, Any],
                    tracking_uri: str | None = None) -> None:
    """Store a calibration record on a version (tag `dfbatch.calibration`, JSON) and its default aggregation's
    threshold as the plain `dfbatch.threshold` tag."""
    default = calibration["aggregations"][calibration["default"]]
    set_threshold(name, version, float(default["threshold"]), tracking_uri=tracking_uri)
    _client(tracking_uri).set_model_version_tag(name, str(version), CALIBRATION_TAG,
                                                json.dumps(calibration, sort_keys=True))


def set_version_tag(name: str, version: str | int, key: str, value: str, tracking_uri: str | None = None) -> None:
    _client(tracking_uri).set_model_version_tag(name, str(version), key, value)


def version_info(model_uri: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """A registered version without its weights: name, version, aliases, tags, run id, the MLflow 3 logged model id
    (metrics logged with it show on the version's page) and the alias -> version map of its registered model."""
    from mlflow.store.artifact.utils.models import _parse_model_id_if_present

    uri = resolve_tracking_uri(tracking_uri)
    logged = _locate(model_uri, uri)
    mv = logged.version
    if mv is None:
        raise UserError(f"{model_uri} is not a registered model version (use models:/NAME@ALIAS or models:/NAME/VERSION)")
    # MLflow 3 registers a logged model from models:/<model_id>; the sqlite store keeps that only in `source`
    model_id = getattr(mv, "model_id", None) or _parse_model_id_if_present(mv.source or "")
    aliases = dict(_client(uri).get_registered_model(mv.name).aliases or {})
    return {"name": mv.name, "version": str(mv.version), "uri": f"models:/{mv.name}/{mv.version}",
            "aliases": list(mv.aliases or []), "tags": dict(mv.tags or {}), "run_id": mv.run_id,
            "model_id": model_id, "model_aliases": {a: str(v) for a, v in aliases.items()}}


# -------------------------------------------------------------------------------------------- fetch
def _resolve_version(client, name: str, version: str | None, alias: str | None, uri: str):
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        if version is None:
            raise UserError(f"give a version or alias: models:/{name}@champion or models:/{name}/VERSION")
        if version == "latest":
            versions = client.search_model_versions(f"name='{name}'")
            if not versions:
                raise _not_found(f"models:/{name}", uri)
            return max(versions, key=lambda mv: int(mv.version))
        return client.get_model_version(name, version)
    except (UserError, ModelNotFound):
        raise
    except Exception as exc:
        if _is_not_found(exc):
            what = f"models:/{name}@{alias}" if alias else f"models:/{name}/{version}"
            raise _not_found(what, uri) from None
        raise


def _run_model_root(client, run_id: str, path: str, uri: str, tracking_uri: str) -> str:
    """Artifact location of the model logged as `path` in run `run_id` (an MLflow 3 LoggedModel, else a plain
    run artifact directory as MLflow 2 wrote it)."""
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        if _is_not_found(exc):
            raise _not_found(uri, tracking_uri, f"no run {run_id}") from None
        raise
    token = None
    while True:
        page = client.search_logged_models(experiment_ids=[run.info.experiment_id], filter_string=f"name = '{path}'",
                                           page_token=token)
        for lm in page:
            if lm.source_run_id == run_id:
                return lm.artifact_location
        token = page.token
        if not token:
            break
    return f"{run.info.artifact_uri.rstrip('/')}/{path}"


@dataclass
class _Logged:
    """A models:/ or runs:/ URI resolved to its logged model's artifact location (and registry version)."""

    root: str
    pinned_uri: str
    run_id: str | None
    version: Any = None  # MLflow ModelVersion for models:/ URIs


def _check_store(model_uri: str, tracking_uri: str) -> None:
    """A sqlite registry whose file is not there: ModelNotFound (a lookup would create an empty database)."""
    if (missing := _sqlite_missing(_registry_uri(tracking_uri))) is not None:
        raise _not_found(model_uri, tracking_uri, f"no database at {missing}")


def _locate(model_uri: str, tracking_uri: str) -> _Logged:
    _check_store(model_uri, tracking_uri)
    if model_uri.startswith("runs:/"):
        rest = model_uri[len("runs:/"):].strip("/")
        run_id, _, path = rest.partition("/")
        if not run_id:
            raise UserError(f"bad runs URI {model_uri!r}; use runs:/RUN_ID/model")
        root = _run_model_root(_client(tracking_uri), run_id, path or ARTIFACT_NAME, model_uri, tracking_uri)
        return _Logged(root, f"runs:/{run_id}/{path or ARTIFACT_NAME}", run_id)
    if not model_uri.startswith("models:/"):
        raise UserError(f"unsupported model URI {model_uri!r}; use models:/NAME@ALIAS, models:/NAME/VERSION, "
                        "runs:/RUN/model or a checkpoint file")
    name, version, alias = parse_model_uri(model_uri)
    client = _client(tracking_uri)
    mv = _resolve_version(client, name, version, alias, tracking_uri)
    root = client.get_model_version_download_uri(name, str(mv.version))
    return _Logged(root, f"models:/{name}/{mv.version}", mv.run_id, mv)


def _local_dir(artifact_root: str) -> Path | None:
    """The folder of a local (file:// or plain path) artifact location, else None."""
    from urllib.parse import urlsplit
    from urllib.request import url2pathname

    parts = urlsplit(artifact_root)
    if parts.scheme == "file" and parts.netloc in ("", "localhost"):
        path = Path(url2pathname(parts.path))
    elif not parts.scheme or (len(parts.scheme) == 1 and os.name == "nt"):  # a plain path (C:\... on Windows)
        path = Path(artifact_root)
    else:
        return None
    return path if path.is_dir() else None


def _read_logged_model(artifact_root: str, uri: str, tracking_uri: str, *, weights: bool = True,
                       tensors: bool = True) -> tuple[dict, dict, OrderedDict | StoredWeights | None]:
    """(spec dict as stored, MLmodel metadata, state dict if `weights`) of a logged model, downloaded from its
    concrete artifact location (file://, s3://, mlflow-artifacts://, ...); never executes or unpickles.
    Without `weights`, torch is not imported; without `tensors`, weights whose sha256 was recorded come as
    `StoredWeights` (checked, not loaded: no torch either).

    The location is resolved with our own client first: MLflow's models:/ and runs:/ artifact repositories
    look the model up through the *global* default client, ignoring the tracking/registry URI passed in."""
    import mlflow
    from mlflow.models import Model

    local = _local_dir(artifact_root)
    with (contextlib.nullcontext() if local else tempfile.TemporaryDirectory(prefix="dfbatch-fetch-")) as tmp, _quiet_downloads():
        def get(rel: str) -> Path:
            if local:  # a local artifact store: read in place (a copy of the weights costs time and disk)
                if not (local / rel).is_file():
                    raise FileNotFoundError(f"no artifact {rel}")
                return local / rel
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{artifact_root.rstrip('/')}/{rel}",
                                                            dst_path=tmp, tracking_uri=tracking_uri))

        try:
            mlmodel = Model.load(str(get("MLmodel")))
        except Exception as exc:
            if _is_not_found(exc) or isinstance(exc, (OSError, FileNotFoundError)):
                raise _not_found(uri, tracking_uri, "no MLmodel") from None
            raise
        meta = dict(mlmodel.metadata or {})
        if meta.get("dfbatch_format") != MLFLOW_FORMAT:
            raise ModelNotFound(f"{uri} is not a dfbatch model (no {MLFLOW_FORMAT} metadata); {HOW_TO_GET_A_MODEL}")
        arts = (mlmodel.flavors.get("python_function") or {}).get("artifacts") or {}
        rel_w = (arts.get("weights") or {}).get("path", "artifacts/weights.pt")
        rel_s = (arts.get("spec") or {}).get("path", "artifacts/spec.json")
        spec = json.loads(get(rel_s).read_text(encoding="utf-8"))
        if not weights:
            return spec, meta, None
        wpath = get(rel_w)
        if not tensors and meta.get("weights_sha256"):
            data = wpath.read_bytes()
            if hashlib.sha256(data).hexdigest() != meta["weights_sha256"]:
                raise CheckpointError(f"{uri}: weights file does not match its recorded sha256 (corrupted upload?)")
            return spec, meta, StoredWeights(data, meta["weights_sha256"], source=uri)
        from dfbatch.models.checkpoints import load_state_dict_file

        if meta.get("weights_sha256") and _sha256(wpath) != meta["weights_sha256"]:
            raise CheckpointError(f"{uri}: weights file does not match its recorded sha256 (corrupted upload?)")
        sd = load_state_dict_file(wpath)
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{uri}: weights artifact is not a state dict")
    return spec, meta, OrderedDict(sd)


def _checked_spec(d: Mapping[str, Any], uri: str) -> ModelSpec:
    try:
        return ModelSpec.from_dict(d)
    except CheckpointError:
        raise
    except UserError as exc:  # e.g. a backbone registered by a plugin that is not installed here
        raise CheckpointError(f"{uri}: bad model spec: {exc}") from None


def _is_file(model_uri: str) -> bool:
    return not (model_uri.startswith(("models:/", "runs:/")) or "://" in model_uri)


def precheck(model_uri: str, tracking_uri: str | None = None) -> None:
    """What `fetch` refuses without MLflow or torch (no model given, a checkpoint file or a sqlite store that is not
    there): a scoring job asks before it starts Ray, so such a mistake is a one-line error at once."""
    if not model_uri:
        raise ModelNotFound(f"no model given; {HOW_TO_GET_A_MODEL}")
    if _is_file(model_uri):
        if not Path(model_uri).expanduser().exists():
            raise ModelNotFound(f"no such model file: {model_uri}; {HOW_TO_GET_A_MODEL}")
        return
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")  # MLflow's own default needs MLflow: left to fetch
    if uri and model_uri.startswith(("models:/", "runs:/")):
        _check_store(model_uri, uri)


def fetch(model_uri: str, tracking_uri: str | None = None, *, tensors: bool = True) -> ModelBundle:
    """Resolve `models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/RUN/PATH` or a checkpoint file into a
    ModelBundle (spec + CPU state dict + registry metadata). Raises ModelNotFound / CheckpointError.
    `tensors=False`: a logged model's weights come as `StoredWeights` (sha256-checked bytes, torch not imported;
    the scoring job's actors load them); a checkpoint file is read with torch as ever."""
    precheck(model_uri, tracking_uri)
    if _is_file(model_uri):
        p = Path(model_uri).expanduser()
        from dfbatch.models.checkpoints import read_checkpoint

        spec, sd, meta = read_checkpoint(p)
        return ModelBundle(spec=spec, state_dict=sd, uri=model_uri, pinned_uri=str(p.resolve()),
                           threshold=float(meta.get("threshold", 0.5)), meta=meta,
                           name=meta.get("name"), version=None, run_id=meta.get("run_id"))

    uri = resolve_tracking_uri(tracking_uri)
    logged = _locate(model_uri, uri)
    spec_dict, meta, sd = _read_logged_model(logged.root, model_uri, uri, tensors=tensors)
    bundle = ModelBundle(spec=_checked_spec(spec_dict, model_uri), state_dict=sd, uri=model_uri,
                         pinned_uri=logged.pinned_uri, threshold=float(meta.get("threshold", 0.5)),
                         run_id=logged.run_id, meta=meta)
    if (mv := logged.version) is not None:
        bundle.tags = dict(mv.tags or {})
        bundle.threshold = float(bundle.tags.get(TAG_PREFIX + "threshold", bundle.threshold))
        bundle.name, bundle.version = mv.name, str(mv.version)
        bundle.aliases, bundle.description = list(mv.aliases or []), mv.description or None
    return bundle


# ----------------------------------------------------------------------------------------- listing
def list_models(tracking_uri: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
    """One dict per registered version (newest first per model)."""
    uri = resolve_tracking_uri(tracking_uri)
    if _sqlite_missing(_registry_uri(uri)) is not None:
        return []
    client = _client(uri)
    names = [name] if name else sorted(rm.name for rm in client.search_registered_models())
    rows = []
    for n in names:
        try:
            aliases_of: dict[str, list[str]] = {}
            for a, v in (client.get_registered_model(n).aliases or {}).items():
                aliases_of.setdefault(str(v), []).append(a)
            versions = client.search_model_versions(f"name='{n}'")
        except Exception as exc:
            if _is_not_found(exc):
                continue
            raise
        for mv in sorted(versions, key=lambda v: int(v.version), reverse=True):
            t = dict(mv.tags or {})
            rows.append({"name": n, "version": str(mv.version), "aliases": sorted(aliases_of.get(str(mv.version), [])),
                         "kind": t.get(TAG_PREFIX + "kind", "?"), "backbone": t.get(TAG_PREFIX + "backbone", "?"),
                         "temporal": t.get(TAG_PREFIX + "temporal", "?"), "threshold": t.get(TAG_PREFIX + "threshold", ""),
                         "run_id": mv.run_id, "created": mv.creation_timestamp, "description": mv.description or ""})
    return rows


def show(model_uri: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """Spec, threshold, metrics, aliases and lineage of `NAME[@ALIAS|/VERSION]`, a models:/ or runs:/ URI, or
    a checkpoint file. A registered version is described from its stored spec.json and metadata (no torch,
    weights not downloaded); a checkpoint file is read weights-only. `spec` is the stored spec with the fields
    it lacks (stored before they existed) filled in by their defaults; `not_recorded` names those."""
    is_file = not model_uri.startswith(("models:/", "runs:/")) and "://" not in model_uri and Path(model_uri).exists()
    if not is_file and not model_uri.startswith(("models:/", "runs:/")):
        model_uri = "models:/" + model_uri
    if is_file:
        from dfbatch.models.checkpoints import checkpoint_parts, load_state_dict_file

        obj = load_state_dict_file(model_uri)
        spec, sd, meta = checkpoint_parts(obj, model_uri)
        return {"uri": model_uri, "pinned_uri": str(Path(model_uri).resolve()), "spec": spec.to_dict(),
                "not_recorded": missing_fields(obj["spec"]), "summary": spec.describe(),
                "threshold": float(meta.get("threshold", 0.5)), "metrics": meta.get("metrics") or {},
                "lineage": meta.get("lineage") or {}, "meta": meta, "parameters": _numel(sd)}
    uri = resolve_tracking_uri(tracking_uri)
    logged = _locate(model_uri, uri)
    spec, meta, _ = _read_logged_model(logged.root, model_uri, uri, weights=False)
    parameters = meta.get("parameters")
    if parameters is None:  # logged before the count was recorded: count the weights (imports torch)
        parameters = _numel(_read_logged_model(logged.root, model_uri, uri)[2])
    mv = logged.version
    tags = dict(mv.tags or {}) if mv is not None else {}
    out: dict[str, Any] = {"uri": model_uri, "pinned_uri": logged.pinned_uri,
                           "name": mv.name if mv is not None else None,
                           "version": str(mv.version) if mv is not None else None,
                           "aliases": list(mv.aliases or []) if mv is not None else [],
                           "description": (mv.description or None) if mv is not None else None,
                           "threshold": float(tags.get(TAG_PREFIX + "threshold", meta.get("threshold", 0.5))),
                           "spec": with_defaults(spec), "not_recorded": missing_fields(spec),
                           "summary": describe_spec(spec),
                           "parameters": int(parameters), "tracking_uri": redact(uri)}
    lineage = {k[len(TAG_PREFIX + "lineage."):]: v for k, v in tags.items() if k.startswith(TAG_PREFIX + "lineage.")}
    lineage = lineage or dict(meta.get("lineage") or {})
    metrics: dict[str, float] = {}
    if logged.run_id:
        try:
            run = _client(uri).get_run(logged.run_id)
            metrics = dict(run.data.metrics)
            lineage.update({"run_id": logged.run_id, "run_name": run.info.run_name or "",
                            "experiment_id": run.info.experiment_id})
            git = run.data.tags.get("mlflow.source.git.commit")
            if git:
                lineage["git_commit"] = git
        except Exception as exc:  # run deleted: still show the version
            log.debug("run %s not readable: %s", logged.run_id, exc)
            lineage["run_id"] = logged.run_id
    out["metrics"] = metrics
    out["lineage"] = lineage
    from dfbatch.evaluation.thresholds import parse_record

    out["calibration"] = parse_record(tags.get(CALIBRATION_TAG))
    if tags.get(PROMOTION_TAG):
        out["promotion"] = tags[PROMOTION_TAG]
    out["tags"] = {k: v for k, v in tags.items() if not k.startswith(TAG_PREFIX)}
    return out


__all__ = [
    "DEFAULT_MODEL_NAME", "ModelBundle", "fetch", "register", "register_uri", "import_seed", "log_model",
    "set_alias", "delete_alias", "set_threshold", "set_calibration", "set_version_tag", "version_info",
    "list_models", "show", "parse_model_uri", "resolve_tracking_uri",
]
