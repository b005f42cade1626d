"""Backbone and temporal-head registries: a new entry is one decorated function, usable everywhere by name
(spec, model, training step, checkpoints, MLflow registry, CLI); unknown names are one-line user errors;
installed packages add entries through the `dfbatch.models` entry-point group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import dfbatch.cli
from dfbatch.errors import UserError
from dfbatch.models import registry
from dfbatch.models.backbones import BACKBONE_FEATURES, BACKBONES, register_backbone
from dfbatch.models.checkpoints import load_checkpoint, save_checkpoint
from dfbatch.models.detector import build_model, preprocess
from dfbatch.models.heads import TEMPORAL_HEADS, register_head
from dfbatch.models.inference import predict_crops
from dfbatch.models.spec import ModelSpec

ROOT = Path(__file__).resolve().parents[1]


def _crops(n=2, t=3, s=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, t, s, s, 3), dtype=np.uint8)


class CausalMean(nn.Module):
    """Step t sees the mean of frames 0..t (so trailing padding never changes a valid step), projected."""

    def __init__(self, feature_dim: int, hidden_dim: int):
        super().__init__()
        self.proj = nn.Linear(feature_dim, hidden_dim)

    def forward(self, x, lengths=None):
        steps = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype).view(1, -1, 1)
        return torch.tanh(self.proj(x.cumsum(1) / steps))


@pytest.fixture
def scratch_registries():
    """Entries registered by a test are gone afterwards."""
    saved = dict(BACKBONES._entries), dict(TEMPORAL_HEADS._entries)
    yield
    for reg, entries in zip((BACKBONES, TEMPORAL_HEADS), saved):
        reg._entries.clear()
        reg._entries.update(entries)


def test_new_backbone_and_head_work_everywhere(scratch_registries, tmp_path, capsys):
    @register_backbone("test_strided", features=24, min_input=24)
    def test_strided(load_weights):
        net = nn.Sequential(nn.Conv2d(3, 24, 5, stride=4, padding=2), nn.BatchNorm2d(24), nn.GELU())
        load_weights(net)  # torchvision-format weights, when asked for, go in here
        return net

    @register_head("test_causal_mean")
    def test_causal_mean(spec):
        return CausalMean(spec.feature_dim, spec.hidden_dim)

    spec = ModelSpec(backbone="test_strided", temporal="test_causal_mean", hidden_dim=8, input_size=32, seq_len=3)
    assert spec.feature_dim == 24 and BACKBONE_FEATURES["test_strided"] == 24
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(UserError, match="too small for test_strided"):
        spec.replace(input_size=16)

    # forward + backward: gradients reach the new backbone and the new head; one step lowers the loss
    torch.manual_seed(0)
    model = build_model(spec).train()
    assert {"backbone.body.0.weight", "temporal.proj.weight", "classifier.weight"} <= set(model.state_dict())
    x = preprocess(_crops(4, 3), spec)
    y = torch.tensor([0, 1, 0, 1]).repeat_interleave(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(2):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x).reshape(-1, 2), y)
        loss.backward()
        assert float(model.backbone.body[0].weight.grad.abs().sum()) > 0
        assert float(model.temporal.proj.weight.grad.abs().sum()) > 0
        opt.step()
        losses.append(loss.item())
    assert losses[1] < losses[0]

    # checkpoint round trip: same spec, identical outputs
    model.eval()
    crops = _crops(2, 3, seed=1)
    path = save_checkpoint(tmp_path / "custom.pt", model, meta={"threshold": 0.4})
    loaded, loaded_spec, _ = load_checkpoint(path)
    assert loaded_spec == spec
    np.testing.assert_array_equal(predict_crops(loaded, crops)[0], predict_crops(model, crops)[0])

    # torchvision-format backbone weights go through the function's load_weights hook, checked key by key
    donor = nn.Sequential(nn.Conv2d(3, 24, 5, stride=4, padding=2), nn.BatchNorm2d(24), nn.GELU())
    torch.save(donor.state_dict(), tmp_path / "body.pth")
    warm = build_model(spec, backbone_weights=tmp_path / "body.pth")
    torch.testing.assert_close(warm.backbone.body[0].weight, donor[0].weight)
    with pytest.raises(UserError, match="'tiny' has no pretrained weights"):
        build_model(ModelSpec(backbone="tiny"), backbone_weights=tmp_path / "body.pth")

    # MLflow: register, fetch (identical outputs), show, list
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    version = registry.register(model, spec, "custom-det", alias="champion", tracking_uri=uri)
    bundle = registry.fetch("models:/custom-det@champion", tracking_uri=uri)
    assert bundle.spec == spec and bundle.version == version
    np.testing.assert_array_equal(predict_crops(bundle.build(), crops)[1], predict_crops(model, crops)[1])
    info = registry.show("custom-det@champion", tracking_uri=uri)
    assert info["spec"]["backbone"] == "test_strided" and info["spec"]["temporal"] == "test_causal_mean"
    assert info["parameters"] == sum(int(v.numel()) for v in model.state_dict().values())
    [row] = registry.list_models(uri)
    assert (row["backbone"], row["temporal"]) == ("test_strided", "test_causal_mean")

    # the CLI: `dfbatch train --backbone` takes the new name (and fails later, on the missing shards);
    # an unknown name is a one-line user error that lists the registered names
    train = ["train", str(tmp_path / "no-shards"), "-o", str(tmp_path / "ck")]
    assert dfbatch.cli.main(train + ["--backbone", "test_strided", "--temporal", "test_causal_mean"]) == 2
    err = capsys.readouterr().err
    assert "no prepared shards" in err and "unknown" not in err
    assert dfbatch.cli.main(train + ["--backbone", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown backbone 'nope'" in err and "test_strided" in err


def test_unknown_names_and_duplicates(scratch_registries):
    for field, kind in (("backbone", "backbone"), ("temporal", "temporal head")):
        with pytest.raises(UserError, match=f"unknown {kind} 'nope'; choose one of") as exc:
            ModelSpec(**{field: "nope"})
        assert "\n" not in str(exc.value)
    assert "transformer" in str(pytest.raises(UserError, ModelSpec, temporal="nope").value)
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("tiny", features=8)(lambda load_weights: nn.Identity())
    with pytest.raises(ValueError, match="already registered"):
        register_head("lstm")(lambda spec: nn.Identity())
    assert BACKBONE_FEATURES["tiny"] == 32  # unchanged by the refused registration


def test_versions_logged_before_the_split_still_load():
    """`mlflow_model.py` logged with earlier versions imports these names from dfbatch.models.detector."""
    from dfbatch.models.detector import ModelSpec as S, build_model as b, load_weights, predict_crops as p, prepare_for_inference

    assert (S, b, p) == (ModelSpec, build_model, predict_crops)
    assert callable(load_weights) and callable(prepare_for_inference)


PLUGIN = '''
import torch
from torch import nn

from dfbatch.models.backbones import register_backbone
from dfbatch.models.heads import register_head


@register_backbone("plugin_net", features=12)
def plugin_net(load_weights):
    return nn.Sequential(nn.Conv2d(3, 12, 3, stride=2, padding=1), nn.ReLU())


class LastSeen(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.gru = nn.GRU(spec.feature_dim, spec.hidden_dim, batch_first=True)

    def forward(self, x, lengths=None):
        return self.gru(x)[0]


@register_head("plugin_gru")
def plugin_gru(spec):
    return LastSeen(spec)
'''

SCRIPT = '''
import sys
import numpy as np
import dfbatch.cli
from dfbatch.models.checkpoints import load_checkpoint, save_checkpoint
from dfbatch.models.detector import build_model
from dfbatch.models.inference import predict_crops
from dfbatch.models.spec import ModelSpec

spec = ModelSpec(backbone="plugin_net", temporal="plugin_gru", hidden_dim=6, input_size=32, seq_len=2)
model = build_model(spec).eval()
save_checkpoint(sys.argv[1], model)
crops = np.random.default_rng(0).integers(0, 256, size=(1, 2, 32, 32, 3), dtype=np.uint8)
assert np.array_equal(predict_crops(load_checkpoint(sys.argv[1])[0], crops)[1], predict_crops(model, crops)[1])
sys.exit(dfbatch.cli.main(["models", "show", sys.argv[1], "--json"]))
'''


def test_installed_plugin_registers_by_entry_point(tmp_path):
    """A package declaring a `dfbatch.models` entry point is found in a fresh process (CLI, Ray workers);
    without it, its checkpoint is refused with a one-line error."""
    site = tmp_path / "site"
    (site / "dfb_test_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "dfb_test_plugin.py").write_text(PLUGIN)
    (site / "dfb_test_plugin-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: dfb-test-plugin\nVersion: 0.1\n")
    (site / "dfb_test_plugin-0.1.dist-info" / "entry_points.txt").write_text("[dfbatch.models]\nmine = dfb_test_plugin\n")
    ckpt = tmp_path / "plugin.pt"

    def run(*args, with_plugin=True):
        path = [str(site)] if with_plugin else []
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path + [str(ROOT)])}
        return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300)

    done = run("-c", textwrap.dedent(SCRIPT), str(ckpt))
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert (info["spec"]["backbone"], info["spec"]["temporal"], info["spec"]["feature_dim"]) == ("plugin_net", "plugin_gru", 12)
    refused = run("-m", "dfbatch", "models", "show", str(ckpt), with_plugin=False)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "unknown backbone 'plugin_net'; choose one of resnext50_32x4d" in refused.stderr
