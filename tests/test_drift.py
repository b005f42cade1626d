"""No train/serve drift: everything that shapes the model's input — the crop margin, the side crops are cut at, the
shards' JPEG round trip, the sequence length and the detection — is recorded in the model's spec, the scoring job
feeds the model the same pixels training did, and a setting that differs from the model's says so."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from dfbatch.config import REFERENCE_FACES, FaceConfig, LimitsConfig, PrepareConfig, SamplingConfig, ScoreConfig
from dfbatch.io.listing import _local_ref
from dfbatch.io.storage import Storage
from dfbatch.models.spec import ModelSpec

CARPHONE = Path(__file__).parent / "data" / "carphone_pristine.mp4"
# shards as `dfbatch prepare --margin 0.4 --crop-size 96 --jpeg-quality 90 --detect-every 1 --detect-max-side 640`
# writes their parameters
PREPARED = PrepareConfig(sources=["labels.csv"], output="shards", frames=8, crop_size=96, jpeg_quality=90,
                         faces={"margin": 0.4, **REFERENCE_FACES})  # the reference detection: not scoring's default


def _spec(**kw) -> ModelSpec:
    from dfbatch.training.prepare import model_input

    return ModelSpec(**{"backbone": "tiny", "hidden_dim": 32, "input_size": 64, "seq_len": 8, "head": "mean",
                        **model_input(PREPARED.pinned()), **kw})


def _ref(path: Path) -> dict:
    return asdict(_local_ref(str(path))) | {"video_id": "v"}


def _training_sequences(frames: int, seq_len: int) -> list[np.ndarray]:
    """What training feeds the model for the carphone clip: `dfbatch prepare`'s face rows as JPEG shard frames,
    read back by the validation sequence builder (no augmentation)."""
    from dfbatch.stages.faces import FaceDetector, process_video
    from dfbatch.training.prepare import prepared_row
    from dfbatch.training.sampler import Item, SequenceBuilder

    face = process_video(_ref(CARPHONE), FaceDetector(PREPARED.faces), Storage(), SamplingConfig(), LimitsConfig(),
                         frames=frames, crop_size=PREPARED.crop_size)
    row = prepared_row({"label": "REAL"}, face, PREPARED.jpeg_quality)
    builder = SequenceBuilder(seq_len)
    return [builder(Item({"frames": f, "video_id": "v", "track": t}, "REAL"), None)
            for t, f in enumerate(row["track_frames"])]


def _scoring_sequences(cfg: ScoreConfig, spec: ModelSpec, **crop) -> list[np.ndarray]:
    """What the scoring job feeds the model: the face stage with the config resolved for the model and its spec's
    crop path (as `pipeline.build_dataset` passes them), or the crop settings given."""
    from dfbatch.stages.faces import FaceDetector, process_video
    from dfbatch.stages.score import _split_crops

    cfg, _ = cfg.for_model(spec)
    crop = crop or {"crop_size": spec.crop_side, "crop_jpeg_quality": spec.crop_jpeg_quality}
    row = process_video(_ref(CARPHONE), FaceDetector(cfg.faces), Storage(), cfg.sampling, cfg.limits,
                        frames=cfg.sampling.frames, **crop)
    assert row["status"] == "ok", row["error"]
    return _split_crops(row)


# ------------------------------------------------------------------------------------------ the model's spec
def test_training_records_the_shards_crops_and_detection_in_the_spec():
    from dfbatch.training.prepare import model_input

    spec = _spec()
    assert (spec.crop_margin, spec.crop_size, spec.crop_side, spec.crop_jpeg_quality) == (0.4, 96, 96, 90)
    assert spec.detection == {"detect_every": 1, "detect_max_side": 640, "min_face_prob": 0.9, "min_face_px": None}
    assert "margin 0.4, cut at 96 px, JPEG q90, resized to 64 px" in spec.describe()
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec  # spec.json round trip
    # shards made before the detection was pinned: it comes from their recorded face settings
    old = {"frames": 16, "crop_size": 128, "margin": 0.25, "jpeg_quality": 92,
           "faces": {**asdict(FaceConfig(**REFERENCE_FACES)), "margin": 0.25}}
    assert model_input(old)["detection"] == spec.detection


def test_a_spec_stored_before_the_input_fields_loads_as_scoring_did_then_and_show_says_so(tmp_path, capsys):
    import torch

    from dfbatch.cli import main
    from dfbatch.models.checkpoints import CHECKPOINT_FORMAT
    from dfbatch.models.detector import build_model

    spec = ModelSpec(backbone="tiny", hidden_dim=32, input_size=64, seq_len=8)
    stored = {k: v for k, v in spec.to_dict().items()
              if k not in ("crop_margin", "crop_size", "crop_jpeg_quality", "detection")}
    old = ModelSpec.from_dict(stored)
    # what scoring did before these fields existed: margin 0.25, crops cut straight to the input size, no JPEG
    assert (old.crop_margin, old.crop_side, old.crop_jpeg_quality, old.detection) == (0.25, 64, None, None)
    path = tmp_path / "old.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "spec": stored, "state_dict": build_model(spec).state_dict(), "meta": {}},
               path)
    assert main(["models", "show", str(path)]) == 0
    out = capsys.readouterr().out
    for field, value in (("crop_margin", "0.25"), ("crop_size", "None"), ("crop_jpeg_quality", "None"),
                         ("detection", "None")):
        assert any(line.split()[:2] == [field, value] and line.endswith("(not recorded)") for line in out.splitlines()), out
    assert "not recorded in this model's spec" in out
    assert main(["models", "show", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["not_recorded"] == ["crop_margin", "crop_size", "crop_jpeg_quality", "detection"]


def test_a_registered_version_from_before_fetches_and_shows_as_such(mlflow_uri, tmp_path):
    """A version registered before the input fields existed (its spec.json lacks them) scores as it did then."""
    from urllib.parse import urlparse

    from mlflow import MlflowClient

    from dfbatch.models import registry
    from dfbatch.models.detector import build_model

    spec = ModelSpec(backbone="tiny", hidden_dim=32, input_size=64, seq_len=8)
    version = registry.register(build_model(spec), spec, "drift-old", tracking_uri=mlflow_uri)
    root = MlflowClient(mlflow_uri).get_model_version_download_uri("drift-old", version)
    spec_json = Path(urlparse(root).path if root.startswith("file:") else root) / "artifacts" / "spec.json"
    stored = json.loads(spec_json.read_text())
    for k in ("crop_margin", "crop_size", "crop_jpeg_quality", "detection"):
        del stored[k]
    spec_json.write_text(json.dumps(stored))
    bundle = registry.fetch(f"models:/drift-old/{version}", mlflow_uri)
    assert bundle.spec == spec and (bundle.spec.crop_margin, bundle.spec.crop_side) == (0.25, 64)
    info = registry.show(f"drift-old/{version}", mlflow_uri)
    assert info["not_recorded"] == ["crop_margin", "crop_size", "crop_jpeg_quality", "detection"]
    assert info["spec"]["crop_margin"] == 0.25 and info["spec"]["detection"] is None


# --------------------------------------------------------------------------- settings left to the model
def test_scoring_settings_come_from_the_spec_and_explicit_ones_are_honoured_with_a_warning():
    spec = _spec(seq_len=16)  # trained on 0.4-margin crops of faces found by the reference detection
    cfg, warnings = ScoreConfig(sources=["v/"], output="o").for_model(spec)
    assert (cfg.sampling.frames, cfg.faces.margin, warnings) == (16, 0.4, [])
    assert (cfg.faces.detect_max_side, cfg.faces.detect_every, cfg.faces.min_face_px) == (640, 1, None)
    cfg, warnings = ScoreConfig(sources=["v/"], output="o", sampling={"frames": 8}, faces={"margin": 0.25},
                                ).for_model(spec)
    assert (cfg.sampling.frames, cfg.faces.margin) == (8, 0.25)
    assert warnings == ["--frames 8 but the model was trained on 16-frame sequences",
                        "scored with margin 0.25 but the model was trained on 0.4 crops"]
    cfg, warnings = ScoreConfig(sources=["v/"], output="o", faces={"detect_every": 4, "detect_max_side": 320}
                                ).for_model(spec)
    assert (cfg.faces.detect_max_side, cfg.faces.detect_every) == (320, 4)
    assert warnings == ["detection: MTCNN on 1 in 4 sampled frames at 320 px, faces >= auto, probability >= 0.9, but "
                        "the model was trained on faces found with MTCNN on every sampled frame at 640 px, faces >= "
                        "auto, probability >= 0.9"]
    _, warnings = ScoreConfig(sources=["v/"], output="o", faces={"min_face_prob": 0.8}).for_model(spec)
    assert len(warnings) == 1 and "probability >= 0.8, but" in warnings[0]
    # a model that recorded nothing: what scoring did before (the fast path, margin 0.25), nothing to say
    cfg, warnings = ScoreConfig(sources=["v/"], output="o").for_model(ModelSpec(backbone="tiny"))
    assert (cfg.faces.detect_max_side, cfg.faces.detect_every, cfg.faces.margin, warnings) == (320, 4, 0.25, [])


# ----------------------------------------------------------------------------------------------- pixels
def test_scoring_feeds_the_model_the_pixels_training_did():
    """Same clip, same detection: the crops the scoring job makes for a model equal, pixel for pixel and after
    the model's preprocessing, the sequences training reads from the shards."""
    import torch

    from dfbatch.models.detector import preprocess

    spec = _spec()
    train = _training_sequences(frames=8, seq_len=spec.seq_len)
    score = _scoring_sequences(ScoreConfig(sources=["v/"], output="o"), spec)  # detection: the spec's
    assert len(train) == len(score) >= 1
    for t, s in zip(train, score):
        assert t.shape == s.shape == (len(t), 96, 96, 3)
        assert np.array_equal(t, s)
        assert torch.equal(preprocess(t[None], spec), preprocess(s[None], spec))
    # the crop path scoring had before (cut straight to the input size, no JPEG) is not what training saw
    direct = _scoring_sequences(ScoreConfig(sources=["v/"], output="o"), spec,
                                crop_size=spec.input_size, crop_jpeg_quality=None)
    gap = (preprocess(direct[0][None], spec) - preprocess(train[0][None], spec)).abs().mean()
    assert float(gap) > 0.01


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.mark.slow
def test_the_scoring_job_scores_the_training_crops_and_reports_what_differs(ray_local, mlflow_uri, tmp_path):
    """A model trained on 0.4-margin 96 px JPEG crops of faces found by the reference detection, scored with
    --frames 6: the job detects and cuts its crops the training way (its per-frame scores equal the model's on the
    training-path crops), warns once about the frames, and records the crop path, the warning and the model's
    detection in its MLflow run."""
    import mlflow
    import torch

    from dfbatch.io.results import read_results
    from dfbatch.models.checkpoints import save_checkpoint
    from dfbatch.models.detector import build_model
    from dfbatch.pipeline import run_score
    from dfbatch.stages.score import Scorer

    torch.manual_seed(0)
    spec = _spec()
    net = build_model(spec).eval()
    with torch.no_grad():  # a sharper classifier: P(fake) then moves visibly with the input
        net.classifier.weight.mul_(30.0)
    model = save_checkpoint(tmp_path / "model.pt", net, spec, {"threshold": 0.5})
    cfg = ScoreConfig(sources=[str(CARPHONE)], output=str(tmp_path / "out"), model_uri=str(model), precision="fp32",
                      sampling={"frames": 6}, face_workers=1)
    records = _Records()
    logging.getLogger("dfbatch").addHandler(records)
    try:
        summary = run_score(cfg)
    finally:
        logging.getLogger("dfbatch").removeHandler(records)
    warning = "--frames 6 but the model was trained on 8-frame sequences"
    assert summary.warnings == [warning] and records.lines.count(warning) == 1
    assert "margin 0.4, cut at 96 px, JPEG q90, resized to 64 px" in summary.model_input

    faces = read_results(str(tmp_path / "out"), "faces").sort_values("track_id")
    scorer = Scorer(spec, net.state_dict(), precision="fp32")
    training_path = [p for p, _ in scorer.score(_scoring_sequences(cfg, spec))]
    before = cfg.replace(faces={"margin": 0.25})  # how the job scored this model before: 0.25, cut to 64 px, no JPEG
    direct_path = [p for p, _ in scorer.score(_scoring_sequences(before, spec, crop_size=64, crop_jpeg_quality=None))]
    job = [np.asarray(s) for s in faces["frame_scores"]]
    assert len(job) == len(training_path) >= 1
    for got, want, old in zip(job, training_path, direct_path):
        assert np.allclose(got, want, atol=1e-5), (got, want)
        assert np.abs(got - old).max() > 1e-3  # the old crop path gave other scores

    run = mlflow.get_run(summary.mlflow_run_id)
    p, t = run.data.params, run.data.tags
    assert (p["frames"], p["margin"], p["model_seq_len"], p["detect_every"], p["detect_max_side"]) == ("6", "0.4", "8", "1", "640")
    assert p["crop_path"] == "margin 0.4, cut at 96 px, JPEG q90, resized to 64 px"
    assert json.loads(p["model_detection"]) == spec.detection and t["dfbatch.warnings"] == warning
