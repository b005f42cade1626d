"""Explain videos: Grad-CAM of the detector's fake class on face crops, and the single-video analysis that the
web page (serve) runs — on the batch job's own stage cores (`faces.process_video`, `score.score_rows`), so the
page and `dfbatch score` give the same P(fake) for the same file and settings.

Grad-CAM comes from the maintained `grad-cam` library (pytorch_grad_cam). Its target is the fake class's
logit at every step of the track and its layer the backbone's last convolutional block. The crops of one track
run through the detector as one sequence (the temporal head sees them in order, as when scoring), so a frame's
heatmap shows where in that frame the evidence for "fake" at that step and the later ones lies.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np

from dfbatch.config import ServeConfig


def resolve_device(device: str) -> str:
    """auto -> cuda when a GPU is visible, else cpu."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cam_target_layer(net):
    """The backbone's last convolutional block: layer4 (ResNeXt/ResNet, also in the seed layout), the last
    `features` block (EfficientNet, MobileNetV2), Mixed_7c (Inception v3), the last conv+BN+ReLU (tiny)."""
    body = net.backbone.body if hasattr(net, "backbone") else net.model  # native layout | seed layout
    return body[-1]


class GradCam:
    """Grad-CAM heatmaps of the fake class for a track's crops, from an fp32 copy of the model (gradients
    need it; the probabilities shown come from the scoring model, never from this copy)."""

    def __init__(self, bundle, device: str = "cpu"):
        import torch
        from pytorch_grad_cam import GradCAM

        net = bundle.build().to(device)
        self.spec = bundle.spec
        self.device = torch.device(device)
        target = cam_target_layer(net)
        # Grad-CAM needs gradients from the logits back to the target layer only: the weights are frozen and the
        # layer's output becomes a leaf, so the backbone runs without building a graph and the backward pass
        # stops there (ResNeXt50, 32 frames: several times faster than a full backward). Registered before the
        # library's own hooks, which then see the leaf.
        net.requires_grad_(False)
        target.register_forward_hook(lambda module, args, output: output.detach().requires_grad_(True))
        self.cam = GradCAM(model=_step_logits(net), target_layers=[target])

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """uint8 (T, S, S, 3) RGB crops of one track -> float32 (T, S, S) heatmaps in [0, 1]."""
        import contextlib

        import cv2
        import torch
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        from dfbatch.models.detector import preprocess

        crops = np.ascontiguousarray(crops)
        x = preprocess(crops[None], self.spec, device=self.device)[0]  # (T, 3, S', S')
        targets = [ClassifierOutputTarget(int(self.spec.fake_index))] * len(crops)
        # cuDNN's RNN refuses a backward pass in eval mode: the LSTM runs on the native kernels here
        rnn = torch.backends.cudnn.flags(enabled=False) if self.device.type == "cuda" else contextlib.nullcontext()
        with torch.enable_grad(), rnn:
            maps = self.cam(input_tensor=x, targets=targets).astype(np.float32)
        size = crops.shape[1]
        if maps.shape[1:] != (size, size):
            maps = np.stack([cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR) for m in maps])
        return np.clip(maps, 0.0, 1.0)


def _step_logits(net):
    """The CAM library sees a batch of images: here the T crops of one track, run as one sequence; it gets the
    logits of each step (T, classes)."""
    import torch

    class StepLogits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.unsqueeze(0))[0]

    return StepLogits(net)


def overlay(crops: np.ndarray, heatmaps: np.ndarray, weight: float = 0.55) -> np.ndarray:
    """Heatmaps (jet colour map) over the crops: uint8 (T, S, S, 3) RGB (the library's `show_cam_on_image`)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return np.stack([show_cam_on_image(c.astype(np.float32) / 255.0, m, use_rgb=True, image_weight=weight) for c, m in zip(crops, heatmaps)])


@dataclass
class Analysis:
    """One analysed video: the scored row as `dfbatch score` writes it (videos columns, `tracks` as dicts),
    the crops and Grad-CAM heatmaps per track, and the decoded sampled frames."""

    row: dict
    tracks: list[dict]
    crops: list[np.ndarray]
    heatmaps: list[np.ndarray]
    frames: np.ndarray | None  # (K, h, w, 3) uint8 RGB, `frame_scale` x displayed resolution
    frame_scale: float
    timings: dict


class VideoAnalyzer:
    """MTCNN, the scoring model and the Grad-CAM model, loaded once; `analyze` runs one video through the batch
    job's face and score cores. Not thread-safe: callers serialise (the web app holds a lock)."""

    def __init__(self, cfg: ServeConfig, bundle=None):
        from dfbatch.models import registry
        from dfbatch.pipeline import decide_threshold, model_identity
        from dfbatch.stages.faces import FaceDetector
        from dfbatch.stages.score import Scorer

        bundle = bundle or registry.fetch(cfg.model_uri, cfg.tracking_uri)
        name, version = model_identity(bundle)
        self.bundle = bundle
        self.spec = bundle.spec
        # the settings a `dfbatch score` job with the same flags uses: what they leave open comes from the model's
        # spec (frames, margin, detection), the threshold and temperature from its calibration
        self.cfg, self.warnings = cfg.score_config().for_model(bundle.spec)
        self.frames = int(self.cfg.sampling.frames)
        decision = decide_threshold(self.cfg, bundle, self.frames)
        self.threshold, self.temperature = float(decision.threshold), decision.temperature
        self.device = resolve_device(cfg.device)
        self.model_info = {"model_name": name, "model_version": str(version), "model_uri": bundle.pinned_uri or bundle.uri}
        self.detector = FaceDetector(self.cfg.faces, device=self.device)
        self.scorer = Scorer(bundle.spec, bundle.state_dict, device=self.device, precision=cfg.precision)
        self.cam = GradCam(bundle, self.device) if cfg.gradcam else None

    def warm_up(self) -> None:
        """One pass of each model on blank input: the first real upload then pays no one-time set-up costs."""
        s = int(self.spec.crop_side)
        blank = np.zeros((min(4, self.frames), s, s, 3), np.uint8)
        self.scorer.score([blank])
        if self.cam is not None:
            self.cam(blank)
        self.detector.detect(np.zeros((2, 720, 1280, 3), np.uint8), 1.0)  # 720p: the most common upload

    def analyze(self, ref: dict, storage, *, explain: bool = True) -> Analysis:
        """ref: {video_uri, video_id, size_bytes}. Every failure is a row status, never an exception."""
        from dfbatch.stages.faces import process_video, track_crops
        from dfbatch.stages.score import score_rows

        t0 = time.perf_counter()
        keep: dict = {}
        row = process_video(ref, self.detector, storage, self.cfg.sampling, self.cfg.limits, frames=self.frames,
                            crop_size=self.spec.crop_side, crop_jpeg_quality=self.spec.crop_jpeg_quality, keep=keep)
        crops = track_crops(row) if row["status"] == "ok" else []
        t1 = time.perf_counter()
        row = score_rows([row], self.scorer, threshold=self.threshold, track_aggregation=self.cfg.track_aggregation,
                         frame_aggregation=self.cfg.frame_aggregation, model_info=self.model_info, run_id=None,
                         temperature=self.temperature)[0]
        t2 = time.perf_counter()
        heatmaps = [self.cam(c) for c in crops] if explain and self.cam is not None and row["status"] == "ok" else []
        t3 = time.perf_counter()
        video = keep.get("video")
        return Analysis(
            row=row,
            tracks=json.loads(row.get("tracks") or "[]") if row["status"] == "ok" else [],
            crops=crops if row["status"] == "ok" else [],
            heatmaps=heatmaps,
            frames=video.frames if video is not None else None,
            frame_scale=float(video.scale) if video is not None else 1.0,
            timings={"faces_s": t1 - t0, "score_s": t2 - t1, "gradcam_s": t3 - t2, "total_s": t3 - t0},
        )
