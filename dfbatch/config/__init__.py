"""One typed config per job — score, prepare, train, evaluate (and the demo and the benchmark).

Code, command-line flags and YAML build the same frozen object, validated in one place (`config.base`):

    ScoreConfig(sources=["videos/"], output="out/")              # code
    dfbatch score videos/ -o out/ --detect-every 2                # flags (dfbatch.cli.options)
    dfbatch score --config score.yaml -o out/                     # YAML; flags given override it
    ScoreConfig.from_yaml("score.yaml"); cfg.to_yaml("run.yaml")  # round trip

A bad value is a `ConfigError` (a UserError) with one line naming the flag: "--frames must be at least 1".
"""

from dfbatch.config.base import ConfigError, JobConfig, build, job_config
from dfbatch.config.bench import FAST, QUICK, REFERENCE, BenchSettings, Profile
from dfbatch.config.demo import HELDOUT_SEED, TRAIN_SEED, DemoConfig
from dfbatch.config.evaluate import CompareConfig, EvaluateConfig
from dfbatch.config.lomo import LomoConfig
from dfbatch.config.score import (DEFAULT_MODEL_URI, FRAME_AGGREGATIONS, REFERENCE_FACES, REFERENCE_PRESET,
                                  TRACK_AGGREGATIONS, VIDEO_EXTENSIONS, FaceConfig, LimitsConfig, SamplingConfig,
                                  ScoreConfig)
from dfbatch.config.training import MONITORS, SBI_MODES, PrepareConfig, TrainConfig
from dfbatch.config.views import ReportConfig, ServeConfig

__all__ = ["BenchSettings", "CompareConfig", "ConfigError", "DEFAULT_MODEL_URI", "DemoConfig", "EvaluateConfig", "FAST", "FRAME_AGGREGATIONS",
           "FaceConfig", "HELDOUT_SEED", "JobConfig", "LimitsConfig", "LomoConfig", "MONITORS", "PrepareConfig", "Profile", "QUICK",
           "REFERENCE", "REFERENCE_FACES", "REFERENCE_PRESET", "ReportConfig", "SBI_MODES", "SamplingConfig", "ScoreConfig",
           "ServeConfig",
           "TRACK_AGGREGATIONS", "TRAIN_SEED", "TrainConfig", "VIDEO_EXTENSIONS", "build", "job_config"]
