"""Decision thresholds and temperature scaling: chosen on labelled validation videos, stored on the model version,
used by the scoring job.

A **calibration record** (JSON in the model version tag ``dfbatch.calibration``; `registry.set_calibration`) holds,
for every aggregation strategy (``tracks=max,frames=mean`` ...), the threshold and the temperature chosen for it, how
they were chosen (``eer`` | ``fpr`` at ``target_fpr`` | ``youden`` | ``fixed``), on which data (dataset name and
digest, videos) and under which scoring settings (frames, detection, precision), and the MLflow run that chose them.

`resolve(bundle, aggregation, settings, override)` is what `dfbatch score` applies: the threshold (and temperature)
stored for the job's aggregation, with notes when the job's settings differ from those the calibration saw.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from dfbatch.errors import UserError
from dfbatch.evaluation.metrics import EPS, equal_error_rate, youden_threshold

FORMAT = "dfbatch-calibration/1"
METHODS = ("eer", "fpr", "youden", "fixed")
# the scoring settings a calibration depends on (as the scoring job's MLflow params spell them); the decode backend
# is not one of them (PyAV and decord give identical frames)
SETTINGS = ("frames", "detect_max_side", "detect_every", "min_face_px", "precision")
TEMPERATURE_BOUNDS = (0.05, 20.0)  # the search range of `fit_temperature`


# ----------------------------------------------------------------------------------------- choosing
def fpr_threshold(y, p, target_fpr: float) -> float:
    """The lowest threshold whose false-positive rate ("FAKE if P >= t" on REAL videos) stays <= `target_fpr`:
    the most FAKE videos caught within that false-alarm budget. 0.5 with one class."""
    from sklearn.metrics import roc_curve

    y, p = np.asarray(y, int), np.asarray(p, float)
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, _, thr = roc_curve(y, p, drop_intermediate=False)
    ok = np.flatnonzero(fpr <= target_fpr + 1e-12)
    return float(np.clip(thr[ok[-1]], 0.0, 1.0))  # thresholds descend: the last allowed one is the lowest


def real_fpr_threshold(y, p, target_fpr: float) -> float:
    """The lowest threshold that flags ("FAKE if P >= t") at most `target_fpr` of the REAL videos (y == 0); the FAKE
    scores play no part, so the threshold does not depend on which manipulations the labelled fakes show (a
    threshold fitted to the fakes at hand sits just under them and misses fakes of another kind). 0.5 without reals."""
    y, p = np.asarray(y, int), np.asarray(p, float)
    reals = np.sort(p[y == 0])[::-1]
    if len(reals) == 0:
        return 0.5
    k = int(math.floor(target_fpr * len(reals) + 1e-9))  # reals allowed at or above the threshold
    if k >= len(reals):
        return 0.0
    return float(min(1.0, np.nextafter(reals[k], np.inf)))


TRAINING_METHODS = ("eer", "real_fpr", "youden")


def training_threshold(y, p, method: str, target_fpr: float = 0.05) -> float:
    """The threshold training registers (`TrainConfig.threshold_method`): the equal error rate's,
    `real_fpr_threshold` or Youden's."""
    if method == "real_fpr":
        return real_fpr_threshold(y, p, target_fpr)
    if method in ("eer", "youden"):
        return choose_threshold(y, p, method)
    raise UserError(f"unknown training threshold method {method!r}; choose one of {', '.join(TRAINING_METHODS)}")


def choose_threshold(y, p, method: str, *, target_fpr: float | None = None, fixed: float | None = None) -> float:
    """The threshold on scores `p` by `method` (see the module doc)."""
    if method == "eer":
        t = equal_error_rate(y, p)[1]
        return 0.5 if math.isnan(t) else t
    if method == "fpr":
        if target_fpr is None:
            raise UserError("--calibrate fpr needs --target-fpr (e.g. 0.01)")
        return fpr_threshold(y, p, target_fpr)
    if method == "youden":
        return youden_threshold(y, p)
    if method == "fixed":
        if fixed is None:
            raise UserError("--calibrate fixed needs --threshold T")
        return float(fixed)
    raise UserError(f"unknown threshold method {method!r}; choose one of {', '.join(METHODS)}")


def fit_temperature(y, p) -> float:
    """Temperature T minimising the log loss of sigmoid(logit(p) / T) on labelled scores (1 = FAKE); 1.0 with one
    class. T > 1 softens over-confident scores, T < 1 sharpens timid ones; the ranking (AUC) never changes."""
    from scipy.optimize import minimize_scalar
    from sklearn.metrics import log_loss

    y, p = np.asarray(y, int), np.clip(np.asarray(p, float), EPS, 1 - EPS)
    if len(np.unique(y)) < 2:
        return 1.0
    logit = np.log(p / (1 - p))

    def nll(log_t: float) -> float:
        return log_loss(y, np.clip(1 / (1 + np.exp(-logit / math.exp(log_t))), EPS, 1 - EPS), labels=[0, 1])

    lo, hi = (math.log(b) for b in TEMPERATURE_BOUNDS)
    res = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    return float(math.exp(res.x))


def at_bound(temperature: float | None) -> bool:
    """Whether a fitted temperature sits at the edge of the search range (the scores barely inform the labels)."""
    lo, hi = TEMPERATURE_BOUNDS
    return temperature is not None and not 1.01 * lo < temperature < 0.99 * hi


def apply_temperature(p, temperature: float | None) -> np.ndarray:
    """Array form of `stages.aggregate.with_temperature`."""
    from dfbatch.stages.aggregate import with_temperature

    return np.array([with_temperature(float(v), temperature) for v in np.asarray(p, float)])


def calibrate(y, scores: dict[str, np.ndarray], method: str, *, target_fpr: float | None = None,
              fixed: float | None = None, temperature: bool = False) -> dict[str, dict]:
    """{aggregation: {"threshold", "temperature"}} for each aggregation's video scores `scores[aggregation]`:
    the temperature fitted first (when asked), then the threshold chosen on the temperature-scaled scores."""
    out = {}
    for agg, p in scores.items():
        t = round(fit_temperature(y, p), 4) if temperature else None  # as the rows' aggregation string spells it
        q = apply_temperature(p, t)
        out[agg] = {"threshold": round(choose_threshold(y, q, method, target_fpr=target_fpr, fixed=fixed), 6),
                    "temperature": t}
    return out


def record(aggregations: dict[str, dict], *, method: str, default: str, dataset: dict, settings: dict | None,
           target_fpr: float | None = None, run_id: str | None = None, source: str = "dfbatch evaluate") -> dict:
    """A calibration record (see the module doc); `default` names the aggregation whose threshold is also the
    version's plain ``dfbatch.threshold`` tag."""
    return {"format": FORMAT, "method": method, "target_fpr": target_fpr, "default": default,
            "aggregations": aggregations, "dataset": dataset, "settings": settings, "source": source,
            "run_id": run_id, "calibrated_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def training_record(threshold: float, aggregation: str, data: str, run_id: str | None, method: str = "youden",
                    target_fpr: float | None = None) -> dict:
    """The record training registers: the threshold chosen on the validation split's crops (made by `dfbatch
    prepare`, not by the scoring job; `training_threshold`), for the validation aggregation only."""
    return record({aggregation: {"threshold": round(float(threshold), 6), "temperature": None}},
                  method="fpr" if method == "real_fpr" else method, target_fpr=target_fpr if method == "real_fpr" else None,
                  default=aggregation, dataset={"name": f"val split of {data}"}, settings=None, run_id=run_id,
                  source="training validation (crops from dfbatch prepare)")


def describe_record(rec: dict) -> str:
    """One line: how and on what a record was made."""
    how = f"fpr <= {rec['target_fpr']:g}" if rec.get("method") == "fpr" and rec.get("target_fpr") is not None \
        else rec.get("method", "?")
    ds = rec.get("dataset") or {}
    data = ds.get("name", "?") + (f" (digest {ds['digest']}, {ds.get('videos', '?')} videos)" if ds.get("digest") else "")
    return f"{how} on {data} by {rec.get('source', '?')}, {rec.get('calibrated_at', '?')}"


# ----------------------------------------------------------------------------------------- applying
def job_settings(*, frames: int, detect_max_side, detect_every, min_face_px, precision) -> dict[str, str]:
    """The scoring settings a calibration depends on, as strings (as the scoring job's MLflow params record them)."""
    return {"frames": str(frames), "detect_max_side": str(detect_max_side), "detect_every": str(detect_every),
            "min_face_px": str(min_face_px or "auto"), "precision": str(precision)}


@dataclass
class Decision:
    """The threshold (and temperature) a scoring job applies, where it comes from, and what does not match."""

    threshold: float
    temperature: float | None = None
    source: str = ""
    notes: list[str] = field(default_factory=list)


def resolve(calibration: dict | None, tag_threshold: float, *, aggregation: str, settings: dict[str, str],
            override: float | None = None, registered: bool = True) -> Decision:
    """The threshold for a job scoring with `aggregation` (``describe()`` without temperature) under `settings`.

    calibration: the model version's record (None: only its ``dfbatch.threshold`` tag, `tag_threshold`); override:
    ``--threshold`` (the calibrated temperature, if any, still applies: the threshold is on the same scale)."""
    notes: list[str] = []
    how = "calibrate it with `dfbatch evaluate --model URI LABELS --calibrate eer`" if registered else ""
    entry = (calibration or {}).get("aggregations", {}).get(aggregation)
    if calibration and entry is None:
        default = calibration.get("default")
        entry = calibration["aggregations"].get(default) or {"threshold": tag_threshold, "temperature": None}
        entry = {"threshold": entry["threshold"], "temperature": None}
        notes.append(f"no threshold calibrated for {aggregation}; using the one for {default}" + (f" ({how})" if how else ""))
    if calibration and entry is not None:
        source = f"calibrated for {aggregation}: {describe_record(calibration)}"
        seen = calibration.get("settings")
        if seen is None:
            notes.append(f"threshold chosen on {calibration.get('source', 'other data')}, not under this job's "
                         f"scoring settings" + (f"; {how}" if how else ""))
        else:
            diff = [f"{k} {seen.get(k)} -> {settings.get(k)}" for k in SETTINGS if str(seen.get(k)) != str(settings.get(k))]
            if diff:
                notes.append("this job's settings differ from the calibration's: " + ", ".join(diff))
        decision = Decision(float(entry["threshold"]), entry.get("temperature"), source, notes)
    else:
        decision = Decision(float(tag_threshold), None, "the model's threshold (no calibration record)",
                            [f"threshold not calibrated on scored videos; {how}"] if how else [])
    if override is not None:
        decision.threshold, decision.source = float(override), "--threshold"
        decision.notes = [n for n in decision.notes if n.startswith("this job's settings")]
    return decision


def parse_record(text: str | None) -> dict | None:
    """The record stored in a tag (None when absent or unreadable)."""
    if not text:
        return None
    try:
        rec = json.loads(text)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) and rec.get("format") == FORMAT else None


__all__ = ["Decision", "FORMAT", "METHODS", "SETTINGS", "TEMPERATURE_BOUNDS", "apply_temperature", "at_bound", "calibrate", "choose_threshold",
           "describe_record", "fit_temperature", "fpr_threshold", "real_fpr_threshold", "training_threshold", "job_settings", "parse_record", "record", "resolve",
           "training_record"]
