"""dfbatch.registry + `dfbatch models ...` against a real MLflow sqlite store in a temp dir (no mocks)."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np
import pytest
import torch

import dfbatch.cli
from dfbatch.models import registry
from dfbatch.errors import CheckpointError, ModelNotFound, redact
from dfbatch.models.checkpoints import import_seed_state_dict, save_checkpoint
from dfbatch.models.detector import build_model
from dfbatch.models.inference import predict_crops
from dfbatch.models.spec import ModelSpec

SPEC = ModelSpec(backbone="tiny", hidden_dim=16, input_size=32, seq_len=4, head="mean")
NAME = "det-test"


def _crops(n=2, t=4, s=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, t, s, s, 3), dtype=np.uint8)


def _probs(model):
    return predict_crops(model, _crops())[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two registered versions of a tiny model: v1 @champion (threshold 0.4, metrics), v2 @challenger."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    torch.manual_seed(0)
    m1, m2 = build_model(SPEC).eval(), build_model(SPEC).eval()
    v1 = registry.register(m1, SPEC, NAME, alias="champion", threshold=0.4, metrics={"auc": 0.91},
                           description="first", lineage={"dataset": "unit-test"}, tracking_uri=uri)
    v2 = registry.register(m2.state_dict(), SPEC, NAME, alias="challenger", tracking_uri=uri)
    return {"uri": uri, "root": root, "models": {v1: m1, v2: m2}, "v1": v1, "v2": v2}


def test_register_alias_fetch_identical(store):
    uri, v1 = store["uri"], store["v1"]
    expected = _probs(store["models"][v1])
    by_alias = registry.fetch(f"models:/{NAME}@champion", tracking_uri=uri)
    by_version = registry.fetch(f"models:/{NAME}/{v1}", tracking_uri=uri)
    by_run = registry.fetch(f"runs:/{by_alias.run_id}/model", tracking_uri=uri)
    for b in (by_alias, by_version, by_run):
        assert b.spec == SPEC
        np.testing.assert_array_equal(_probs(b.build()), expected)
    assert (by_alias.version, by_alias.pinned_uri, by_alias.threshold) == (v1, f"models:/{NAME}/{v1}", 0.4)
    assert by_alias.aliases == ["champion"] and by_alias.columns()["model_uri"] == f"models:/{NAME}/{v1}"
    assert by_run.threshold == 0.4  # from the logged model's metadata
    # artifacts live next to the sqlite database, not in the current directory
    import mlflow

    location = mlflow.MlflowClient(uri, uri).get_model_version_download_uri(NAME, v1)
    assert location.startswith((store["root"] / "mlruns").as_uri())


def test_alias_moves(store):
    uri, v1, v2 = store["uri"], store["v1"], store["v2"]
    assert registry.fetch(f"models:/{NAME}@challenger", tracking_uri=uri).version == v2
    registry.set_alias(NAME, v2, "champion", tracking_uri=uri)
    try:
        b = registry.fetch(f"models:/{NAME}@champion", tracking_uri=uri)
        assert b.version == v2
        np.testing.assert_array_equal(_probs(b.build()), _probs(store["models"][v2]))
    finally:
        registry.set_alias(NAME, v1, "champion", tracking_uri=uri)
    with pytest.raises(ModelNotFound):
        registry.set_alias(NAME, "99", "champion", tracking_uri=uri)


def test_pyfunc_loads_from_code_without_pickle(store):
    """The logged pyfunc ("model from code") gives the same P(FAKE) and contains no pickle."""
    import mlflow

    client = mlflow.MlflowClient(store["uri"], store["uri"])
    local = mlflow.artifacts.download_artifacts(client.get_model_version_download_uri(NAME, store["v1"]))
    files = {os.path.relpath(os.path.join(d, f), local) for d, _, fs in os.walk(local) for f in fs}
    assert {"MLmodel", "mlflow_model.py", "artifacts/weights.pt", "artifacts/spec.json", "input_example.json"} <= files
    assert not any(f.endswith((".pkl", ".pickle", ".cloudpickle")) for f in files)
    with registry.using_tracking_uri(store["uri"]):  # MLflow's models:/ resolution uses the global tracking/registry URI
        pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    np.testing.assert_allclose(pyfunc.predict(_crops()), _probs(store["models"][store["v1"]]), atol=1e-6)
    assert pyfunc.metadata.metadata["dfbatch_spec"] == SPEC.to_dict()


def test_missing_model_is_a_one_line_user_error(store, tmp_path):
    with pytest.raises(ModelNotFound, match="dfbatch models import-seed") as exc:
        registry.fetch("models:/nope@champion", tracking_uri=store["uri"])
    assert "\n" not in str(exc.value)
    with pytest.raises(ModelNotFound):
        registry.fetch(f"models:/{NAME}/42", tracking_uri=store["uri"])
    with pytest.raises(ModelNotFound, match="no database"):
        registry.fetch(f"models:/{NAME}@champion", tracking_uri=f"sqlite:///{tmp_path}/absent.db")
    assert not (tmp_path / "absent.db").exists()
    with pytest.raises(ModelNotFound, match="no such model file"):
        registry.fetch(str(tmp_path / "nope.pt"))


def test_register_refuses_mismatched_weights(store):
    sd = build_model(SPEC).state_dict()
    sd["classifier.weight"] = torch.zeros(2, 8)
    with pytest.raises(CheckpointError, match="classifier.weight"):
        registry.register(sd, SPEC, NAME, tracking_uri=store["uri"])


def test_fetch_reads_a_local_store_in_place_and_downloads_a_remote_one(tmp_path, s3_endpoint, monkeypatch):
    """Local artifacts are read where they are (no copy; the recorded sha256 still guards the weights); an S3
    artifact store (moto over HTTP) is downloaded, to a temporary folder that is gone afterwards."""
    import tempfile

    import boto3
    import mlflow

    local_uri = f"sqlite:///{tmp_path}/local.db"
    torch.manual_seed(1)
    model = build_model(SPEC).eval()
    version = registry.register(model, SPEC, "in-place", tracking_uri=local_uri)
    root = registry._local_dir(mlflow.MlflowClient(local_uri, local_uri).get_model_version_download_uri("in-place", version))
    assert root is not None and (root / "artifacts" / "weights.pt").is_file()
    np.testing.assert_array_equal(_probs(registry.fetch(f"models:/in-place/{version}", tracking_uri=local_uri).build()), _probs(model))
    weights = root / "artifacts" / "weights.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte changed in place
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        registry.fetch(f"models:/in-place/{version}", tracking_uri=local_uri)

    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_endpoint)
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="mlflow-artifacts")
    remote_uri = f"sqlite:///{tmp_path}/remote.db"
    mlflow.MlflowClient(remote_uri, remote_uri).create_experiment("remote", artifact_location="s3://mlflow-artifacts/remote")
    version = registry.register(model, SPEC, "remote", experiment="remote", tracking_uri=remote_uri)
    location = mlflow.MlflowClient(remote_uri, remote_uri).get_model_version_download_uri("remote", version)
    assert location.startswith("s3://") and registry._local_dir(location) is None
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # this test's own: other tests run alongside (xdist)
    bundle = registry.fetch(f"models:/remote/{version}", tracking_uri=remote_uri)
    np.testing.assert_array_equal(_probs(bundle.build()), _probs(model))
    assert os.listdir(tmp_path / "tmp") == []  # the download folder is gone


def test_redact():
    assert redact("https://user:s3cret@mlflow.example/x?token=abc&a=1") == "https://***@mlflow.example/x?token=***&a=1"
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


# ---------------------------------------------------------------------------------------------- CLI
def _cli(monkeypatch, capsys, *argv):
    assert "models" in dfbatch.cli.COMMAND_MODULES
    monkeypatch.setattr(dfbatch.cli, "COMMAND_MODULES", ["models"])  # other groups are other engineers' modules
    rc = dfbatch.cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_show_list_alias(store, monkeypatch, capsys):
    uri = store["uri"]
    rc, out, _ = _cli(monkeypatch, capsys, "models", "show", f"{NAME}@champion", "--tracking-uri", uri)
    assert rc == 0
    for text in ("spec:", "backbone      tiny", "input_size    32", "color_order   RGB", "seq_len       4",
                 "fake_index    1", "threshold:    0.4", "auc", "dataset       unit-test", "run_id", "champion"):
        assert text in out, text
    rc, out, _ = _cli(monkeypatch, capsys, "models", "list", "--tracking-uri", uri)
    assert rc == 0 and NAME in out and "champion" in out and "challenger" in out
    rc, out, _ = _cli(monkeypatch, capsys, "models", "show", f"models:/{NAME}/{store['v2']}", "--tracking-uri", uri)
    assert rc == 0 and f"{NAME} version {store['v2']}" in out
    rc, _, err = _cli(monkeypatch, capsys, "models", "show", "nope@champion", "--tracking-uri", uri)
    assert rc == 2 and err.count("\n") == 1 and "import-seed" in err


def test_cli_register_file_and_run(store, monkeypatch, capsys, tmp_path):
    import mlflow

    uri = store["uri"]
    torch.manual_seed(3)
    model = build_model(SPEC).eval()
    ckpt = save_checkpoint(tmp_path / "trained.pt", model, meta={"threshold": 0.7, "metrics": {"auc": 0.8}})
    rc, out, _ = _cli(monkeypatch, capsys, "models", "register", str(ckpt), "--name", "from-file", "--alias",
                      "champion", "--tracking-uri", uri)
    assert rc == 0 and "models:/from-file/1" in out
    b = registry.fetch("models:/from-file@champion", tracking_uri=uri)
    assert b.threshold == 0.7 and b.tags["dfbatch.lineage.source_file"] == "trained.pt"
    np.testing.assert_array_equal(_probs(b.build()), _probs(model))

    # a model logged inside a (training) run, registered afterwards by its runs:/ URI
    client = mlflow.MlflowClient(uri)
    run = client.create_run(client.get_experiment_by_name(registry.DEFAULT_EXPERIMENT).experiment_id)
    with registry.using_tracking_uri(uri), mlflow.start_run(run_id=run.info.run_id):
        registry.log_model(model, SPEC, threshold=0.6)
    rc, out, _ = _cli(monkeypatch, capsys, "models", "register", f"runs:/{run.info.run_id}/model", "--name",
                      "from-run", "--alias", "challenger", "--tracking-uri", uri)
    assert rc == 0
    b = registry.fetch("models:/from-run@challenger", tracking_uri=uri)
    assert b.threshold == 0.6 and b.run_id == run.info.run_id
    np.testing.assert_array_equal(_probs(b.build()), _probs(model))


@pytest.mark.slow
def test_cli_import_seed_registers_and_fetches(tmp_path, monkeypatch, capsys):
    """Seed layout (resnext50 shapes, random weights) -> import-seed -> models:/…@champion -> same probabilities."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    torch.manual_seed(0)
    sd = build_model(ModelSpec.seed(2)).state_dict()
    seed = tmp_path / "model_90_acc_2_frames_final_data.pt"
    torch.save(sd, seed)
    rc, out, _ = _cli(monkeypatch, capsys, "models", "import-seed", str(seed), "--frames", "2", "--alias", "champion",
                      "--tracking-uri", uri)
    assert rc == 0 and "models:/dfbatch-detector/1" in out
    b = registry.fetch("models:/dfbatch-detector@champion", tracking_uri=uri)
    assert b.spec == ModelSpec.seed(2) and b.tags["dfbatch.kind"] == "seed"
    direct, _ = import_seed_state_dict(torch.load(seed, weights_only=True), 2)
    crops = _crops(1, 2, 112)
    np.testing.assert_array_equal(predict_crops(b.build(), crops)[1], predict_crops(direct, crops)[1])
    rc, out, _ = _cli(monkeypatch, capsys, "models", "show", "dfbatch-detector@champion", "--tracking-uri", uri)
    assert "seed_compat   True" in out and "color_order   BGR" in out and "source_file" in out
    # a file with the wrong layout is refused, naming the keys
    bad = dict(sd)
    bad["lstm.bias_ih_l0"] = torch.zeros(8192)
    torch.save(bad, tmp_path / "bad.pt")
    rc, _, err = _cli(monkeypatch, capsys, "models", "import-seed", str(tmp_path / "bad.pt"), "--frames", "2",
                      "--tracking-uri", uri)
    assert rc == 2 and "unexpected key(s): lstm.bias_ih_l0" in err
