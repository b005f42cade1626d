"""Self-blended fakes and per-sequence augmentation on real face crops (the astronaut portrait)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from dfbatch.training.augment import AugmentConfig, SequenceAugment, jpeg
from dfbatch.corpora.assets import source_frames
from dfbatch.training.sbi import SBIConfig, SBIParams, SelfBlender, self_blend

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def seq():
    """A (5, 96, 96, 3) RGB face-crop sequence cut like faces.square_crop (margin 0.25), drifting 1 px a frame."""
    img = source_frames("astronaut")[0]  # PIL, not cv2.imread: its libpng breaks once decord is loaded
    return np.stack([cv2.resize(img[37 + d:187 + d, 155 + d:305 + d], (96, 96), interpolation=cv2.INTER_AREA)
                     for d in range(5)])


@pytest.mark.parametrize("swap", [False, True])
def test_shape_dtype_and_mask_locality(seq, swap):
    r = self_blend(seq, 3, SBIConfig(swap_prob=float(swap), blend_ratios=(1.0,), p_temporal=0.0, p_local=0.0))
    assert r.fake.shape == seq.shape and r.fake.dtype == np.uint8
    assert r.mask.shape == seq.shape[1:3] and r.mask.dtype == np.float32
    assert 0.0 <= r.mask.min() and r.mask.max() <= 1.0
    assert r.params.swapped is swap
    inside, outside = r.mask > 0.9, r.mask == 0
    assert inside.sum() > 0.1 * inside.size and outside.sum() > 0.2 * outside.size
    # the soft mask is centred on the face: the middle of the crop is inside, the corners outside
    assert r.mask[48, 48] > 0.9 and r.mask[0, 0] == 0 and r.mask[-1, -1] == 0
    diff = np.abs(r.fake.astype(int) - r.real.astype(int)).sum(-1)
    assert (diff[:, outside] == 0).all()  # outside the mask the fake is exactly the target
    assert diff[:, inside].mean() > 3.0  # inside it is the altered source
    if swap:
        assert not np.array_equal(r.real, seq)  # the target was transformed
    else:
        assert np.array_equal(r.real, seq)
        assert (np.abs(r.fake.astype(int) - seq.astype(int)).sum(-1)[:, outside] == 0).all()


def test_parameters_are_drawn_once_per_sequence(seq):
    blender = SelfBlender(SBIConfig(p_temporal=0.0))
    params = blender.sample(seq.shape[1:3], np.random.default_rng(11))
    whole = blender.apply(seq, params)
    for t in range(len(seq)):  # each frame blended alone with the same params gives the same frame
        assert np.array_equal(blender.apply(seq[t:t + 1], params).fake[0], whole.fake[t])
    # a static clip stays static: same mask, colour, warp on every frame
    still = np.repeat(seq[:1], 4, axis=0)
    out = blender.apply(still, params).fake
    assert all(np.array_equal(out[0], out[t]) for t in range(1, 4))


@pytest.mark.parametrize("kind", ["ellipse", "landmarks", "box"])
@pytest.mark.parametrize("blend", ["alpha", "feather", "poisson"])
def test_mask_shapes_and_blends_stay_on_the_face(seq, kind, blend):
    r = self_blend(seq, 4, SBIConfig(mask_kinds=(kind,), blend_kinds=(blend,), blend_ratios=(1.0,), p_local=0.0,
                                     p_temporal=0.0))
    assert (r.params.mask_kind, r.params.blend) == (kind, blend)
    assert r.mask[48, 48] > 0.5 and r.mask[0, 0] == 0 and r.mask[-1, -1] == 0
    diff = np.abs(r.fake.astype(int) - r.real.astype(int)).sum(-1)
    assert (diff[:, r.mask == 0] == 0).all() and diff[:, r.mask > 0.9].mean() > 2.0


def test_local_degradation_changes_only_the_blended_region(seq):
    cfg = SBIConfig(p_local=1.0, local_kinds=("jpeg",), local_jpeg=(5, 5), p_temporal=0.0, blend_ratios=(1.0,))
    blender = SelfBlender(cfg)
    p = blender.sample(seq.shape[1:3], 7)
    assert p.local == ("jpeg", 5.0)
    plain = blender.apply(seq, SBIParams(**{**p.__dict__, "local": None}))
    local = blender.apply(seq, p)
    changed = np.abs(local.fake.astype(int) - plain.fake.astype(int)).sum(-1)
    assert (changed[:, p.mask == 0] == 0).all() and changed[:, p.mask > 0.9].mean() > 2.0


def test_temporal_self_blend_varies_over_time_and_is_reproducible(seq):
    still = np.repeat(seq[:1], 6, axis=0)  # a static clip: any change between frames is the blend's
    blender = SelfBlender(SBIConfig(p_temporal=1.0, p_local=0.0, temporal_shift=(0.03, 0.03)))
    p = blender.sample(seq.shape[1:3], 3)
    assert p.temporal is not None
    res = blender.apply(still, p)
    out = res.fake
    assert np.mean([np.abs(out[t].astype(int) - out[0]).mean() for t in range(1, 6)]) > 0.3
    assert np.array_equal(out, blender.apply(still, p).fake)
    for t in range(6):  # the outside of the face stays the target frame
        assert (out[t][:4] == res.real[t][:4]).all()


def test_classic_recipe_draws_as_before(seq):
    """SBIConfig.classic() draws no new choice: the same seed gives the same parameters as the widened recipe's
    common part, and an ellipse + alpha blend."""
    p = SelfBlender(SBIConfig.classic()).sample(96, 9)
    assert (p.mask_kind, p.blend, p.local, p.temporal) == ("ellipse", "alpha", None, None)


def test_deterministic_by_seed(seq):
    a, b, c = self_blend(seq, 5), self_blend(seq, 5), self_blend(seq, 6)
    assert np.array_equal(a.fake, b.fake) and np.array_equal(a.mask, b.mask)
    assert a.params.describe() == b.params.describe()
    assert not np.array_equal(a.fake, c.fake)


def test_rejects_bad_input(seq):
    with pytest.raises(ValueError):
        self_blend(seq.astype(np.float32), 0)
    blender = SelfBlender()
    with pytest.raises(ValueError):
        blender.apply(seq, blender.sample(64, 0))


def test_augment_once_per_sequence_and_deterministic(seq):
    aug = SequenceAugment(AugmentConfig(p_flip=1, p_color=1, p_blur=1, p_downscale=0, p_jpeg=1))
    p = aug.sample(4)
    assert p.flip and p.color and p.blur_sigma > 0 and p.jpeg_quality is not None
    still = np.repeat(seq[:1], 3, axis=0)
    out = aug.apply(still, p)
    assert out.shape == still.shape and out.dtype == np.uint8
    assert np.array_equal(out[0], out[2])
    assert np.array_equal(aug(seq, 9), aug(seq, 9)) and not np.array_equal(aug(seq, 9), aug(seq, 10))
    flip_only = SequenceAugment(AugmentConfig(p_flip=1, p_color=0, p_blur=0, p_downscale=0, p_jpeg=0))
    assert np.array_equal(flip_only(seq, 0), seq[:, :, ::-1])
    assert np.array_equal(SequenceAugment(AugmentConfig.off())(seq, 0), seq)
    j = jpeg(seq[0], 30)
    assert j.shape == seq[0].shape and 0 < np.abs(j.astype(int) - seq[0].astype(int)).mean() < 20
