"""The benchmark's config (`dfbatch bench`) and its profiles (the settings that decide speed and results)."""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Any

from pydantic import model_validator
from pydantic_core import ArgsKwargs

from dfbatch.config.base import JobConfig, PathStr, Size, job_config, opt, section
from dfbatch.config.score import REFERENCE_FACES, DecodeBackend, Device, FaceConfig, Precision, SamplingConfig


@job_config
class Profile(JobConfig):
    """The settings that decide speed and results (everything else is the job's defaults)."""

    name: str
    backend: Annotated[DecodeBackend, opt("--decode-backend")]
    detect_max_side: Annotated[int, opt("--detect-max-side", ge=12)]
    detect_every: Annotated[int, opt("--detect-every", ge=1)]
    precision: Annotated[Precision, opt("--precision")]
    min_face_px: Annotated[int | None, opt(ge=1)] = FaceConfig.min_face_px

    def describe(self) -> str:
        return f"{self.backend}, MTCNN {self.detect_max_side} px every {self.detect_every}, min face {self.min_face_px or 'auto'}, {self.precision}"

    def faces(self) -> FaceConfig:
        return FaceConfig(detect_max_side=self.detect_max_side, detect_every=self.detect_every, min_face_px=self.min_face_px)


REFERENCE = Profile("reference", "decord", REFERENCE_FACES["detect_max_side"], REFERENCE_FACES["detect_every"], "fp32", REFERENCE_FACES["min_face_px"])
FAST = Profile("fast", SamplingConfig.backend, FaceConfig.detect_max_side, FaceConfig.detect_every, "auto")  # the job's defaults
# `quick: true`: a few short small clips and a tiny model (values given explicitly still win)
QUICK = dict(videos=4, unique=2, size=(480, 270), seconds=2.0, fps=15.0, frames=8, stage_videos=1, baseline_videos=1, startup_runs=1)


@job_config
class BenchSettings(JobConfig):
    """Everything `dfbatch bench` needs; `bench.run_bench(settings)` runs it."""

    output: Annotated[PathStr, opt("--output", short="-o", metavar="OUT", help="folder for the archive cache, model, "
                                   "results and bench.json (default {default})")] = "bench-out"
    quick: Annotated[bool, opt("--quick", help="a few short small clips and a tiny model: proves the bench runs "
                               "(numbers meaningless)")] = False
    archive: Annotated[PathStr | None, opt("--archive", metavar="DIR", help="score the videos in DIR instead of the "
                                           "generated archive")] = None
    videos: Annotated[int, opt("--videos", help="videos through the pipeline (default {default}; distinct clips repeat "
                               "by symlink; ignored with --archive)", ge=1)] = 120
    unique: Annotated[int, opt("--unique", help="distinct generated clips (default {default})", ge=1)] = 8
    size: Annotated[Size, opt("--size", metavar="WxH", help="generated clip size (default {default})")] = (1280, 720)
    seconds: Annotated[float, opt("--seconds", help="generated clip length (default {default})", gt=0)] = 10.0
    fps: Annotated[float, opt(gt=0)] = 30.0
    frames: Annotated[int, opt("--frames", help="frames sampled per video (default {default})", ge=1)] = 32
    model: Annotated[str | None, opt("--model", help="checkpoint file or models:/ URI (default: random-weight "
                                     "ResNeXt50-LSTM(2048) at 112 px)")] = None
    stage_videos: Annotated[int, opt("--stage-videos", help="videos timed stage by stage (default {default})", ge=1)] = 4
    baseline_videos: Annotated[int, opt("--baseline-videos", help="videos through the sequential baseline (default "
                                        "{default})", ge=1)] = 6
    startup_runs: Annotated[int, opt("--startup-runs", help="fresh `dfbatch score` processes on one video timed for "
                                     "the job's start-up, process start to first result (default {default}; 0: skip)",
                                     ge=0)] = 3
    device: Annotated[Device, opt("--device")] = "auto"
    cpus: Annotated[int | None, opt("--cpus", help="CPUs of the local Ray (default: all)", ge=1)] = None
    score_workers: Annotated[int | None, opt("--score-workers", help="separate model actors (default on CPU: the model "
                                             "runs inside each face actor)", ge=1)] = None
    ray_address: Annotated[str | None, opt("--ray-address", help="Ray cluster to join (default: RAY_ADDRESS, else a "
                                           "local Ray)")] = None
    fast: Annotated[Profile, section(
        backend="fast path decode backend (default {default})",
        detect_max_side="fast path MTCNN frame size (default {default})",
        detect_every="fast path: MTCNN on every k-th sampled frame (default {default})",
        precision="fast path model precision (default auto: bf16 where the GPU/CPU has it natively, else fp32)",
    )] = field(default_factory=lambda: FAST)
    run_pipeline: Annotated[bool, opt("--no-pipeline", help="skip the end-to-end Ray run")] = True
    run_baseline: Annotated[bool, opt("--no-baseline", help="skip the sequential baseline")] = True
    run_reference: Annotated[bool, opt("--no-reference", help="skip the reference-settings stage timings (and the "
                                       "agreement check)")] = True
    rows_per_block: Annotated[int, opt(help="listing rows per Ray Data block: small blocks keep the face actors evenly "
                                       "loaded", ge=1)] = 2
    videos_per_score_batch: Annotated[int | None, opt(help="default: the job's (8), 2 on CPU", ge=1)] = None

    @model_validator(mode="before")
    @classmethod
    def _quick_defaults(cls, data: Any) -> Any:
        kwargs = data.kwargs if isinstance(data, ArgsKwargs) else data
        if isinstance(kwargs, dict) and kwargs.get("quick") is True:
            kwargs = {**QUICK, **kwargs}
            return ArgsKwargs(data.args, kwargs) if isinstance(data, ArgsKwargs) else kwargs
        return data
