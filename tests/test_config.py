"""Job configs: code, command-line flags and YAML build the same frozen object, and every mistake is one line
naming the flag (or the YAML key). No Ray, no torch: building configs and parsers imports neither."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dfbatch.cli import build_parser, main
from dfbatch.cli.options import config_from_args
from dfbatch.config import (BenchSettings, CompareConfig, DemoConfig, EvaluateConfig, FaceConfig, PrepareConfig, ReportConfig, SamplingConfig,
                            ScoreConfig, ServeConfig, TrainConfig)
from dfbatch.config.base import cli_flags
from dfbatch.errors import ConfigError, UserError

REPO = Path(__file__).resolve().parents[1]
JOB_CONFIGS = [ScoreConfig, PrepareConfig, TrainConfig, EvaluateConfig, CompareConfig, BenchSettings, DemoConfig, ReportConfig, ServeConfig]


def parse(*argv: str):
    return config_from_args(build_parser().parse_args(list(argv)))


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# the same job three ways: flags, YAML, code
CASES = [
    (["score", "in/", "s3://b/more/", "-o", "out", "--frames", "8", "--detect-every", "2", "--decode-backend", "decord",
      "--threshold", "0.4", "--batch-size", "4", "--max-duration", "60", "--model", "runs:/abc/model", "--rescore"],
     "sources: [in/, s3://b/more/]\noutput: out\nmodel_uri: runs:/abc/model\nrescore: true\nthreshold: 0.4\n"
     "score_batch_size: 4\nsampling: {frames: 8, backend: decord}\nfaces: {detect_every: 2}\nlimits: {max_duration_s: 60}\n",
     lambda: ScoreConfig(sources=["in/", "s3://b/more/"], output="out", model_uri="runs:/abc/model", rescore=True,
                         threshold=0.4, score_batch_size=4, sampling=SamplingConfig(frames=8, backend="decord"),
                         faces={"detect_every": 2}, limits={"max_duration_s": 60.0})),
    (["prepare", "labels.csv", "-o", "shards", "--split", "0.5,0.5,0", "--no-official-splits", "--frames", "6",
      "--detect-every", "2", "--compression", "c23"],
     "sources: labels.csv\noutput: shards\nfractions: [0.5, 0.5, 0]\nofficial: false\nframes: 6\ncompression: c23\n"
     "faces: {detect_every: 2}\n",
     # a partial section keeps prepare's own section defaults (a margin, where FaceConfig's is None: the model's)
     lambda: PrepareConfig(sources=["labels.csv"], output="shards", fractions=(0.5, 0.5, 0.0), official=False, frames=6,
                           compression="c23", faces=FaceConfig(margin=0.25, detect_every=2))),
    (["train", "shards", "-o", "ckpt", "--workers", "2", "--gpu", "--no-augment", "--restart", "--lr", "0.001",
      "--monitor", "val_log_loss"],
     "data: shards\noutput: ckpt\nnum_workers: 2\nuse_gpu: true\naugment: false\nresume: false\nlr: 0.001\n"
     "monitor: val_log_loss\n",
     lambda: TrainConfig(data="shards", output="ckpt", num_workers=2, use_gpu=True, augment=False, resume=False, lr=1e-3,
                         monitor="val_log_loss")),
    (["evaluate", "--model", "models:/m/1", "a", "b", "--layout", "csv", "-o", "out", "--no-mlflow", "--target-fpr",
      "0.01", "--detect-every", "2"],
     "model_uri: models:/m/1\nlabels: [a, b]\nlayout: csv\noutput: out\nlog_mlflow: false\ntarget_fpr: 0.01\n"
     "faces: {detect_every: 2}\n",
     # --target-fpr implies --calibrate fpr
     lambda: EvaluateConfig(model_uri="models:/m/1", labels=["a", "b"], layout="csv", output="out", log_mlflow=False,
                            calibrate="fpr", target_fpr=0.01, faces=FaceConfig(detect_every=2))),
    (["compare", "models:/m/1", "models:/m@champion", "--labels", "a", "--promote", "video/roc_auc"],
     "models: [models:/m/1, models:/m@champion]\nlabels: a\npromote: video/roc_auc\n",
     lambda: CompareConfig(models=["models:/m/1", "models:/m@champion"], labels=["a"], promote="video/roc_auc")),
    (["bench", "--quick", "--size", "640x360", "--detect-every", "2", "--no-baseline"],
     "quick: true\nsize: 640x360\nfast: {detect_every: 2}\nrun_baseline: false\n",
     lambda: BenchSettings(quick=True, size=(640, 360), fast={"detect_every": 2}, run_baseline=False)),
    (["report", "out", "--html", "r.html", "--top", "5", "--no-gradcam", "--model-version", "3"],
     "output: out\nhtml: r.html\ntop: 5\nexplain: false\nmodel_version: '3'\n",
     lambda: ReportConfig(output="out", html="r.html", top=5, explain=False, model_version="3")),
    (["serve", "--port", "9000", "--no-allow-paths", "--frames", "8", "--detect-every", "2", "--no-gradcam"],
     "port: 9000\nallow_paths: false\nsampling: {frames: 8}\nfaces: {detect_every: 2}\ngradcam: false\n",
     lambda: ServeConfig(port=9000, allow_paths=False, sampling={"frames": 8}, faces={"detect_every": 2}, gradcam=False)),
    (["demo", "--root", "d", "--clips", "4", "--size", "256x144", "--ray-logs"],
     "root: d\nn_train: 4\nsize: [256, 144]\nquiet: false\n",
     lambda: DemoConfig(root="d", n_train=4, size=(256, 144), quiet=False)),
]


@pytest.mark.parametrize("argv, yaml_text, code", CASES, ids=[c[0][0] for c in CASES])
def test_flags_yaml_and_code_build_equal_configs(argv, yaml_text, code, tmp_path):
    from_flags = parse(*argv)
    from_yaml = type(from_flags).from_yaml(write(tmp_path / "job.yaml", yaml_text))
    from_cli_yaml = parse(argv[0], "--config", str(tmp_path / "job.yaml"))
    assert from_flags == from_yaml == from_cli_yaml == code()
    # the YAML the config writes reads back to an equal config (and is what --print-config prints)
    again = type(from_flags).from_yaml(write(tmp_path / "again.yaml", from_flags.to_yaml()))
    assert again == from_flags and type(again.to_dict()) is dict


def test_explicit_flags_override_the_file_and_presets_override_flags(tmp_path):
    path = write(tmp_path / "s.yaml", "sources: [a]\noutput: from-file\nprecision: bf16\n"
                                      "faces: {detect_every: 2, margin: 0.4}\nsampling: {frames: 12}\n")
    cfg = parse("score", "--config", path, "-o", "from-flag", "--detect-every", "3")
    assert (cfg.output, cfg.faces.detect_every, cfg.faces.margin, cfg.sampling.frames, cfg.precision) == \
        ("from-flag", 3, 0.4, 12, "bf16")  # a flag changes its own key only; the section's other keys stay
    assert cfg.sources == ["a"]
    positional = parse("score", "b", "c", "--config", path)
    assert positional.sources == ["b", "c"]
    ref = parse("score", "--config", path, "--reference", "--detect-every", "5")
    assert (ref.faces.detect_every, ref.faces.detect_max_side, ref.faces.margin, ref.precision) == (1, 640, 0.4, "fp32")


@pytest.mark.parametrize("command, flags, yaml_text, message", [
    (["score", "x", "-o", "o"], ["--frames", "0"], "sampling: {frames: 0}", "--frames must be at least 1"),
    (["score", "x", "-o", "o"], ["--detect-max-side", "8"], "faces: {detect_max_side: 8}", "--detect-max-side at least 12"),
    (["score", "x", "-o", "o"], ["--threshold", "1.5"], "threshold: 1.5", "--threshold must be within [0, 1]"),
    (["score", "x", "-o", "o"], ["--precision", "fp16", "--device", "cpu"], "precision: fp16\ndevice: cpu",
     "fp16 needs a GPU"),
    (["prepare", "x", "-o", "o"], ["--split", "1,2"], "fractions: [1, 2]", "--split: expected three non-negative"),
    (["train", "s", "-o", "o"], ["--epochs", "0"], "epochs: 0", "--epochs must be at least 1"),
    (["bench"], ["--size", "12"], "size: '12'", "--size: expected WIDTHxHEIGHT"),
    (["demo"], ["--clips", "2"], "n_train: 2", "--clips must be at least 4"),
])
def test_a_bad_value_is_the_same_one_line_error_from_a_flag_and_from_yaml(command, flags, yaml_text, message, tmp_path,
                                                                          capsys):
    with pytest.raises(ConfigError) as from_flag:
        parse(*command, *flags)
    assert message in str(from_flag.value) and "\n" not in str(from_flag.value)
    path = write(tmp_path / "bad.yaml", yaml_text + "\n")
    with pytest.raises(ConfigError) as from_file:
        parse(*command, "--config", path)
    text = str(from_file.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text, text
    # through the CLI: one `dfbatch: error:` line, exit 2, no pydantic text
    assert main([*command, "--config", path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dfbatch: error:") and message in err, err
    assert "pydantic" not in err and "validation error" not in err.lower()


def test_unknown_and_misplaced_keys_are_one_line_errors(tmp_path, capsys):
    path = write(tmp_path / "t.yaml", "epochz: 3\nworkers: 2\nsbi: only\n")
    with pytest.raises(ConfigError, match="unknown fields") as err:
        parse("train", "s", "-o", "o", "--config", path)
    text = str(err.value)
    assert text.startswith(f"{path}: unknown fields: ") and "epochz (did you mean epochs?)" in text
    assert "workers (did you mean num_workers?)" in text and "\n" not in text  # the flag's name points at its field
    nested = write(tmp_path / "s.yaml", "sources: a\noutput: o\nfaces: {detect_evry: 2}\n")
    with pytest.raises(ConfigError, match=r"faces\.detect_evry \(did you mean faces\.detect_every\?\)"):
        parse("score", "--config", nested)
    with pytest.raises(ConfigError, match="expected a mapping of ScoreConfig fields"):
        parse("score", "--config", write(tmp_path / "list.yaml", "- a\n- b\n"))
    with pytest.raises(ConfigError, match=r"not valid YAML \(line \d\)"):
        parse("score", "--config", write(tmp_path / "broken.yaml", "a: [1\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        parse("score", "--config", str(tmp_path / "missing.yaml"))
    # a key without a flag is named by its path
    with pytest.raises(ConfigError, match=r"rows_per_block must be at least 1"):
        parse("score", "x", "-o", "o", "--config", write(tmp_path / "r.yaml", "rows_per_block: 0\n"))


def test_code_gets_the_same_user_errors_and_frozen_objects():
    with pytest.raises(UserError, match="no SOURCE given"):
        ScoreConfig(sources=[], output="o")
    with pytest.raises(UserError, match=r"--output is required"):
        ScoreConfig(sources=["a"])
    with pytest.raises(UserError, match=r"--track-aggregation: invalid choice 'sum' \(choose from max, mean, median\)"):
        ScoreConfig(sources=["a"], output="o", track_aggregation="sum")
    with pytest.raises(UserError, match="unknown fields: colour"):
        FaceConfig(colour="rgb")
    with pytest.raises(UserError, match="no labelled dataset given"):
        PrepareConfig(sources=[], output="o")
    with pytest.raises(UserError, match="different seeds"):
        DemoConfig(train_seed=1, heldout_seed=1)
    cfg = ScoreConfig(sources=Path("videos"), output=Path("out"))  # os.PathLike and a single source are accepted
    assert cfg.sources == ["videos"] and cfg.output == "out"
    for obj in (cfg, cfg.faces, TrainConfig(data="d", output="o"), BenchSettings().fast):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, dataclasses.fields(obj)[0].name, None)
    changed = cfg.replace(faces={"margin": 0.5})
    assert changed.faces.margin == 0.5 and changed.faces.detect_every == cfg.faces.detect_every and cfg.faces.margin is None
    with pytest.raises(UserError, match="--detect-every must be at least 1"):
        cfg.replace(faces={"detect_every": 0})
    with pytest.raises(UserError, match="--epochs must be at least 1"):
        dataclasses.replace(TrainConfig(data="d", output="o"), epochs=0)


@pytest.mark.parametrize("cls", JOB_CONFIGS, ids=lambda c: c.__name__)
def test_every_flag_is_a_field_with_help(cls):
    flags = [s.cli.get("flag") for s in cli_flags(cls) if s.cli.get("flag")]
    assert len(flags) == len(set(flags)), flags
    assert not [s.dest for s in cli_flags(cls) if "{default}" in (s.help or "")]
    parser = build_parser()
    sub = next(a for a in parser._subparsers._group_actions).choices  # noqa: SLF001
    command = {ScoreConfig: "score", PrepareConfig: "prepare", TrainConfig: "train", EvaluateConfig: "evaluate",
               CompareConfig: "compare", BenchSettings: "bench", DemoConfig: "demo",
               ReportConfig: "report", ServeConfig: "serve"}[cls]
    text = sub[command].format_help()
    assert all(f in text for f in flags) and "--config" in text and "--print-config" in text


def test_print_config_round_trips_through_the_cli(tmp_path, capsys):
    assert main(["train", "shards", "-o", "ckpt", "--backbone", "tiny", "--epochs", "3", "--print-config"]) == 0
    out = capsys.readouterr().out
    path = write(tmp_path / "printed.yaml", out)
    assert TrainConfig.from_yaml(path) == TrainConfig(data="shards", output="ckpt", backbone="tiny", epochs=3)
    assert TrainConfig.from_yaml(path, epochs=5).epochs == 5


def test_demo_train_yaml_trains_the_same_way(tmp_path):
    """The demo writes its training settings with to_yaml; `dfbatch train --config` reads them back."""
    from dfbatch.demo import train_config, write_train_yaml

    tcfg = train_config(DemoConfig(root=str(tmp_path), tracking_uri=f"sqlite:///{tmp_path}/m.db"), "shards", 2)
    path = write_train_yaml(tcfg, str(tmp_path / "train.yaml"))
    assert Path(path).read_text().startswith("# the demo model's training settings")
    cli = parse("train", "shards", "-o", tcfg.output, "--config", path, "--tracking-uri", tcfg.tracking_uri)
    assert cli.replace(progress=tcfg.progress, worker_log_level=tcfg.worker_log_level) == tcfg


def test_building_configs_and_their_parsers_imports_neither_torch_nor_ray():
    code = ("import sys, argparse, importlib\n"
            "from dfbatch.cli.options import config_from_args\n"
            "sub = argparse.ArgumentParser().add_subparsers()\n"
            "for m in ('score', 'train', 'evaluate', 'compare', 'bench', 'demo'):\n"
            "    importlib.import_module('dfbatch.cli.' + m).add_parser(sub)\n"
            "from dfbatch.config import ScoreConfig, TrainConfig\n"
            "ScoreConfig(sources=['a'], output='o').to_yaml(); TrainConfig(data='d', output='o')\n"
            "print(sorted(m for m in ('torch', 'ray', 'mlflow', 'cv2') if m in sys.modules))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_the_readme_config_file_is_a_valid_score_config(tmp_path):
    """The YAML example in README.md's "Config files" section builds the config it says it does."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("### Config files", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    cfg = ScoreConfig.from_yaml(write(tmp_path / "score.yaml", block))
    assert cfg.sources == ["demo/archive/heldout/"] and cfg.model_uri == "models:/dfbatch-detector@champion"
    assert (cfg.sampling.frames, cfg.faces.detect_every, cfg.faces.min_face_px, cfg.limits.time_budget_s) == (16, 2, 32, 300)
    assert parse("score", "--config", str(tmp_path / "score.yaml"), "-o", "out2/", "--frames", "32").sampling.frames == 32


def test_a_job_resolves_its_local_paths_against_the_callers_folder(tmp_path, monkeypatch):
    """Every job's driver starts with `with_absolute_paths`: local paths (defaults included) become absolute against
    its folder, URIs and other strings stay; the config as given keeps its text (YAML, --print-config)."""
    monkeypatch.chdir(tmp_path)
    cfg = ScoreConfig(sources=["in/", "s3://b/p/", "~/v.mp4", "clips/*.mp4"], output="out", model_uri="m.pt")
    done = cfg.with_absolute_paths()
    assert done.sources == [f"{tmp_path}/in/", "s3://b/p/", os.path.expanduser("~/v.mp4"), f"{tmp_path}/clips/*.mp4"]
    assert (done.output, done.model_uri, cfg.output) == (f"{tmp_path}/out", "m.pt", "out")
    assert TrainConfig(data="s3://b/shards", output="ckpt").with_absolute_paths().output == f"{tmp_path}/ckpt"
    assert DemoConfig().with_absolute_paths().root == f"{tmp_path}/demo"  # a default
    assert done.with_absolute_paths() == done
