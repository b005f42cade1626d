"""dfbatch.synth: the clips the tests, demo and benchmark run on (decoded with decord, faces by MTCNN)."""

import hashlib

import av
import decord
import numpy as np
import pandas as pd
import pytest

from dfbatch.corpora import synth

SIZE = (640, 360)
SECONDS = 2.0
FPS = 30


def _frames(path, idx=None):
    vr = decord.VideoReader(str(path))
    idx = list(range(len(vr))) if idx is None else list(idx)
    return vr.get_batch(idx).asnumpy()


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _md5(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    kw = dict(size=SIZE, seconds=SECONDS, fps=FPS)
    out = {
        "real": synth.real_clip(d / "real.mp4", seed=3, source="pristine", **kw),
        "swap": synth.fake_clip(d / "swap.mp4", seed=3, source="pristine", method="swap", **kw),
        "blend": synth.fake_clip(d / "blend.mp4", seed=3, source="pristine", method="blend", **kw),
        "real_astro": synth.real_clip(d / "real_astro.mp4", seed=4, source="astronaut", size=SIZE, seconds=1.0),
        "reenact_astro": synth.fake_clip(d / "reenact_astro.mp4", seed=4, source="astronaut", method="reenact",
                                         size=SIZE, seconds=1.0),
        "faceless": synth.faceless_clip(d / "faceless.mp4", seed=0, size=SIZE, seconds=1.0),
    }
    return out


# (fake, its real twin, seed, source, seconds)
PAIRS = [("swap", "real", 3, "pristine", SECONDS), ("blend", "real", 3, "pristine", SECONDS),
         ("reenact_astro", "real_astro", 4, "astronaut", 1.0)]


def test_real_clip_geometry(clips):
    vr = decord.VideoReader(str(clips["real"]))
    assert len(vr) == int(SECONDS * FPS)
    assert vr[0].shape == (SIZE[1], SIZE[0], 3)
    assert vr.get_avg_fps() == pytest.approx(FPS, rel=1e-3)
    assert len(vr) / vr.get_avg_fps() == pytest.approx(SECONDS, abs=0.05)
    assert len(decord.VideoReader(str(clips["real_astro"]))) == FPS


def test_ntsc_rate_and_odd_size(tmp_path):
    p = synth.real_clip(tmp_path / "odd.mp4", seed=1, size=(321, 181), seconds=1.0, fps=29.97)
    vr = decord.VideoReader(str(p))
    assert vr[0].shape == (180, 320, 3)  # cropped to even for yuv420p
    assert len(vr) == 30 and vr.get_avg_fps() == pytest.approx(30000 / 1001, rel=1e-4)


@pytest.mark.parametrize("name,seed,source,seconds",
                         [("real", 3, "pristine", SECONDS), ("swap", 3, "pristine", SECONDS),
                          ("blend", 3, "pristine", SECONDS), ("real_astro", 4, "astronaut", 1.0),
                          ("reenact_astro", 4, "astronaut", 1.0)])
def test_mtcnn_finds_the_face(clips, name, seed, source, seconds):
    gt = synth.face_boxes(seed=seed, source=source, size=SIZE, seconds=seconds, fps=FPS)
    idx = [0, len(gt) // 2, len(gt) - 1]
    for i, boxes in zip(idx, synth.detect_faces(_frames(clips[name], idx))):
        assert len(boxes) >= 1, f"{name}: no face in frame {i}"
        assert max(_iou(b, gt[i]) for b in boxes) > 0.5, f"{name}: face not where expected in frame {i}"


def test_faceless_has_no_face(clips):
    frames = _frames(clips["faceless"], [0, 10, 20, 29])
    assert all(len(b) == 0 for b in synth.detect_faces(frames))


@pytest.mark.parametrize("fake,real,seed,source,seconds", PAIRS)
def test_fake_differs_from_its_twin_only_in_the_face(clips, fake, real, seed, source, seconds):
    gt = synth.face_boxes(seed=seed, source=source, size=SIZE, seconds=seconds, fps=FPS)
    idx = list(range(0, len(gt), 6))
    diff = np.abs(_frames(clips[fake], idx).astype(np.int16) - _frames(clips[real], idx)).mean(-1)
    inside, outside = [], []
    for k, i in enumerate(idx):
        x1, y1, x2, y2 = gt[i]
        cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * 1.6, (y2 - y1) * 1.6
        box = np.zeros(diff.shape[1:], bool)
        box[int(y1):int(y2), int(x1):int(x2)] = True
        far = np.ones_like(box)
        far[max(0, int(cy - h / 2)):int(cy + h / 2), max(0, int(cx - w / 2)):int(cx + w / 2)] = False
        inside.append(diff[k][box].mean())
        outside.append(diff[k][far].mean())
    assert min(inside) > 4.0, inside  # visibly manipulated in every sampled frame
    assert max(outside) < 2.5, outside  # elsewhere only re-encoding noise
    assert np.mean(inside) > 3 * np.mean(outside)


def test_methods_make_different_fakes(clips):
    a, b = _frames(clips["swap"], [0, 30]), _frames(clips["blend"], [0, 30])
    assert np.abs(a.astype(np.int16) - b).mean() > 0.5


def test_face_boxes_stay_in_frame():
    for source in synth.SOURCES:
        for size in [(640, 360), (1280, 720), (360, 640), (320, 240)]:
            for seed in range(4):
                b = synth.face_boxes(seed=seed, source=source, size=size, seconds=4.0, fps=30)
                assert b.shape == (120, 4)
                w, h = size
                assert (b[:, 0] > -0.05 * w).all() and (b[:, 2] < 1.05 * w).all(), (source, size, seed)
                assert (b[:, 1] > -0.05 * h).all() and (b[:, 3] < 1.05 * h).all(), (source, size, seed)


def test_broken_files_fail_to_open(tmp_path):
    expected = synth.broken_files(tmp_path)
    assert expected == {"empty.mp4": "failed", "text.mp4": "failed", "png_named.mp4": "failed",
                        "truncated.mp4": "failed"}
    assert (tmp_path / "empty.mp4").stat().st_size == 0
    assert (tmp_path / "png_named.mp4").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in expected:
        with pytest.raises(Exception):
            decord.VideoReader(str(tmp_path / name))


def test_demo_archive_labels_match_files(tmp_path):
    df = synth.demo_archive(tmp_path, n_real=3, n_fake=len(synth.METHODS), size=(160, 120), seconds=0.5, fps=30, seed=1)
    labels = pd.read_csv(tmp_path / "labels.csv")
    assert list(labels.columns) == ["file", "label"]
    assert labels.equals(df[["file", "label"]])
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == sorted(labels["file"])
    assert set(labels["label"]) == {"REAL", "FAKE"}
    assert (labels["label"] == "FAKE").sum() == len(synth.METHODS)
    assert set(df.loc[df.label == "FAKE", "method"]) == set(synth.METHODS)
    for row in df.itertuples():
        if row.status == "failed":
            with pytest.raises(Exception):
                decord.VideoReader(str(tmp_path / row.file))
        else:
            vr = decord.VideoReader(str(tmp_path / row.file))
            assert len(vr) == 15 and vr[0].shape == (120, 160, 3)
    assert dict(zip(df.file, df.status))["faceless_000.mp4"] == "no_face"


def test_determinism(tmp_path):
    kw = dict(size=(192, 108), seconds=0.5)
    a = synth.fake_clip(tmp_path / "a.mp4", seed=7, source="distorted", **kw)
    b = synth.fake_clip(tmp_path / "b.mp4", seed=7, source="distorted", **kw)
    c = synth.fake_clip(tmp_path / "c.mp4", seed=8, source="distorted", **kw)
    assert _md5(a) == _md5(b) != _md5(c)
    r1 = synth.real_clip(tmp_path / "r1.mp4", seed=7, source="astronaut", **kw)
    r2 = synth.real_clip(tmp_path / "r2.mp4", seed=7, source="astronaut", **kw)
    assert _md5(r1) == _md5(r2)
    f1 = synth.faceless_clip(tmp_path / "f1.mp4", seed=2, **kw)
    f2 = synth.faceless_clip(tmp_path / "f2.mp4", seed=2, **kw)
    assert _md5(f1) == _md5(f2)
    assert synth.resolve_method(7, "distorted") == synth.resolve_method(7, "distorted")


@pytest.mark.parametrize("ext,codec", [(".mp4", "h264"), (".mkv", "h264"), (".mov", "h264"), (".avi", "h264"),
                                       (".webm", "vp9")])
def test_write_video_containers(tmp_path, ext, codec):
    frames = [np.full((61, 81, 3), 10 * i, np.uint8) for i in range(8)]
    p = synth.write_video(tmp_path / f"x{ext}", frames, 25)
    with av.open(str(p)) as c:
        st = c.streams.video[0]
        assert st.codec_context.name == codec
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == 8 and decoded[0].shape == (60, 80, 3)
    assert abs(int(decoded[5].mean()) - 50) <= 3


def test_write_video_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError):
        synth.write_video(tmp_path / "x.flv", [np.zeros((8, 8, 3), np.uint8)], 25)
    with pytest.raises(ValueError):
        synth.write_video(tmp_path / "x.mp4", [], 25)
    with pytest.raises(ValueError):
        synth.write_video(tmp_path / "x.mp4", [np.zeros((8, 8), np.float32)], 25)


def test_bench_archive(tmp_path):
    paths = synth.bench_archive(tmp_path, n=1, size=(320, 180), seconds=1.0)
    assert [p.name for p in paths] == ["bench_000.mp4"]
    vr = decord.VideoReader(str(paths[0]))
    assert len(vr) == 30 and vr[0].shape == (180, 320, 3)


def test_assets_dir_env(monkeypatch, tmp_path):
    assert (synth.assets_dir() / "carphone_pristine.mp4").exists()
    monkeypatch.setenv("DFBATCH_ASSETS", str(tmp_path))
    assert synth.assets_dir() == tmp_path
