"""Score: run the detector over face-track sequences batched across videos, then aggregate per video.

`Scorer` (plain PyTorch) scores sequences; `score_rows` turns face-stage rows into result rows; `ScoreStage`
is the Ray Data adapter (an actor pool, one model per actor; its GPU share: `pipeline.plan_resources`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from dfbatch.io.results import SCORED_SCHEMA
from dfbatch.stages.aggregate import FRAME_AGGREGATION, TRACK_AGGREGATION, aggregate, describe, with_temperature


class Scorer:
    """One model in inference mode; `score` takes uint8 RGB sequences (T,S,S,3) of any lengths."""

    def __init__(self, spec, state_dict, *, device: str = "cpu", precision: str = "auto", batch_size: int = 16, threads: int | None = None, compile: bool = False):
        """`precision` auto: bf16 where the device has it natively, else fp32.
        BatchNorm folded into the convolutions. CPU: channels_last; bf16 casts the weights once (autocast would re-cast them on every call).
        CUDA: channels_last + autocast, pinned uint8 input copied non-blocking. `compile`: torch.compile."""
        import torch

        from dfbatch.models.checkpoints import build_with_weights
        from dfbatch.models.inference import fold_batchnorm, prepare_for_inference, resolve_precision

        if threads:
            torch.set_num_threads(threads)
        self.spec = spec
        self.batch_size = max(1, batch_size)
        self.device = torch.device(device)
        precision = resolve_precision(precision, self.device)
        net = fold_batchnorm(build_with_weights(spec, state_dict).eval())
        self.net = prepare_for_inference(net, self.device, precision)
        self.precision = precision
        self.cast = None  # input dtype when the weights themselves are cast (CPU bf16)
        if self.device.type == "cpu":
            self.net = self.net.to(memory_format=torch.channels_last)
            self.net.channels_last = True
            if precision == "bf16":
                self.net = self.net.to(torch.bfloat16)
                self.cast = torch.bfloat16
        if compile:
            self.net.forward = torch.compile(self.net.forward)

    def score(self, sequences: list[np.ndarray]) -> list[tuple[np.ndarray, float]]:
        """(per-frame P(fake), sequence P(fake)) for each sequence; equal lengths are batched together."""
        import torch

        from dfbatch.models.detector import preprocess
        from dfbatch.models.inference import inference_context

        out: list = [None] * len(sequences)
        by_len: dict[int, list[int]] = defaultdict(list)
        for i, seq in enumerate(sequences):
            by_len[len(seq)].append(i)
        with inference_context(self.device, "fp32" if self.cast is not None else self.precision):
            for idx in by_len.values():
                for start in range(0, len(idx), self.batch_size):
                    chunk = idx[start : start + self.batch_size]
                    batch = torch.from_numpy(np.stack([sequences[i] for i in chunk]))
                    if self.device.type == "cuda":
                        batch = batch.pin_memory()  # preprocess copies it with non_blocking=True
                    x = preprocess(batch, self.spec, device=self.device)
                    if self.cast is not None:
                        x = x.to(self.cast)
                    frame_p, seq_p = self.net.predict(x)
                    frame_p, seq_p = frame_p.float().cpu().numpy(), seq_p.float().cpu().numpy()
                    for j, i in enumerate(chunk):
                        out[i] = (frame_p[j].astype(np.float64), float(seq_p[j]))
        return out


def split_by_lengths(crops: np.ndarray, lengths: list[int]) -> list[np.ndarray]:
    """The face stage's crops (all tracks, one after another) as one sequence per track."""
    ends = np.cumsum(lengths, dtype=np.int64)
    return [crops[end - n : end] for n, end in zip(lengths, ends.tolist())]


def _split_crops(row: dict) -> list[np.ndarray]:
    from dfbatch.stages.faces import track_crops

    return track_crops(row)


def score_rows(rows: list[dict], scorer: Scorer, *, threshold: float, track_aggregation: str = TRACK_AGGREGATION, frame_aggregation: str = FRAME_AGGREGATION, model_info: dict, run_id: str | None, temperature: float | None = None) -> list[dict]:
    """Score every `ok` row's tracks in shared batches; fill the result columns of all rows. A `temperature`
    (calibration stored on the model version) scales the video score, not the per-frame and track scores."""
    now = datetime.now(timezone.utc)
    aggregation = describe(frame_aggregation=frame_aggregation, track_aggregation=track_aggregation, temperature=temperature)
    jobs: list[tuple[int, int]] = []
    seqs: list[np.ndarray] = []
    for i, row in enumerate(rows):
        if row["status"] == "ok":
            try:
                for j, seq in enumerate(_split_crops(row)):
                    jobs.append((i, j))
                    seqs.append(seq)
            except Exception as exc:
                row.update(status="failed", error=f"bad face crops: {exc}"[:300])
    try:
        results = scorer.score(seqs) if seqs else []
    except Exception:  # isolate the bad video: score one row at a time
        results = []
        for k, (i, _) in enumerate(jobs):
            try:
                results.append(scorer.score([seqs[k]])[0])
            except Exception as exc:
                rows[i].update(status="failed", error=f"model failed: {type(exc).__name__}: {str(exc)[:200]}")
                results.append(None)
    per_row: dict[int, list] = defaultdict(list)
    for (i, j), res in zip(jobs, results):
        per_row[i].append(res)
    for i, row in enumerate(rows):
        row.update(model_info, mlflow_run_id=run_id, scored_at=now, aggregation=aggregation, threshold=threshold, fake_probability=None, label=None)
        n = len(row.get("frame_indices") or [])
        row["frame_scores"] = [None] * n
        if row["status"] != "ok":
            continue
        results_i = per_row.get(i, [])
        if any(r is None for r in results_i) or not results_i:
            continue
        tracks = json.loads(row["tracks"])
        pos = {f: k for k, f in enumerate(row["frame_indices"])}
        frame_best = np.full(n, np.nan)
        track_scores, prob = aggregate(results_i, frame_aggregation=frame_aggregation, track_aggregation=track_aggregation)
        prob = with_temperature(prob, temperature)
        for track, (frame_p, seq_p), score in zip(tracks, results_i, track_scores):
            # unrounded: every aggregation can be recomputed exactly from the faces table (dfbatch evaluate)
            track["frame_scores"] = [float(p) for p in frame_p]
            track["sequence_probability"] = float(seq_p)
            track["fake_probability"] = score
            for f, p in zip(track["frame_indices"], frame_p):
                k = pos[f]
                frame_best[k] = p if np.isnan(frame_best[k]) else max(frame_best[k], p)
        row["tracks"] = json.dumps(tracks)
        row["frame_scores"] = [None if np.isnan(v) else float(v) for v in frame_best]
        row["fake_probability"] = prob
        row["label"] = "FAKE" if prob >= threshold else "REAL"
    for row in rows:
        row.pop("crops", None)
    return rows


def shareable_bundle(bundle):
    """The bundle with its tensors as numpy arrays: an actor then maps them from the object store instead of
    unpickling a copy (ResNeXt50-LSTM, 235 MB: ~1.3 s -> a few ms per actor start). `ScoreStage` undoes it.
    Weights still as stored (`registry.StoredWeights`: the driver never imported torch) travel as one uint8
    array over the file's bytes, loaded by each actor."""
    import dataclasses

    from dfbatch.models.registry import StoredWeights

    if isinstance(bundle.state_dict, StoredWeights):
        weights = dataclasses.replace(bundle.state_dict, data=np.frombuffer(bundle.state_dict.data, dtype=np.uint8))
        return dataclasses.replace(bundle, state_dict=weights)
    import torch

    sd = {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) and v.dtype != torch.bfloat16 else v for k, v in bundle.state_dict.items()}
    return dataclasses.replace(bundle, state_dict=sd)


def _tensors(state_dict) -> dict:
    import warnings

    import torch

    from dfbatch.models.registry import StoredWeights

    if isinstance(state_dict, StoredWeights):
        return state_dict.load()
    with warnings.catch_warnings():  # read-only object-store buffers: load_state_dict copies them
        warnings.simplefilter("ignore", UserWarning)
        return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in state_dict.items()}


class ScoreStage:
    """Ray Data adapter: `ds.map_batches(ScoreStage, batch_size=videos, concurrency=n, num_gpus=...)`."""

    def __init__(self, *, bundle_ref: list, device: str, precision: str, batch_size: int, threads: int | None, threshold: float, track_aggregation: str, frame_aggregation: str, run_id: str | None, compile: bool = False, temperature: float | None = None):
        import ray

        bundle = ray.get(bundle_ref[0])  # model weights travel through the object store, fetched once per actor
        self.scorer = Scorer(bundle.spec, _tensors(bundle.state_dict), device=device, precision=precision, batch_size=batch_size, threads=threads, compile=compile)
        self.model_info = {"model_name": bundle.name, "model_version": str(bundle.version), "model_uri": bundle.pinned_uri or bundle.uri}
        self.kw = dict(threshold=threshold, track_aggregation=track_aggregation, frame_aggregation=frame_aggregation, model_info=self.model_info, run_id=run_id, temperature=temperature)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = score_rows(batch.to_pylist(), self.scorer, **self.kw)
        return pa.Table.from_pylist(rows, schema=SCORED_SCHEMA)


class FaceScoreStage:
    """CPU-only clusters: one actor per core does decode + faces + model for its video (`FaceStage` then
    `ScoreStage` in one process; 2 videos per call share a forward pass, more buys nothing on CPU). The layout
    balances itself on any core count (no ratio of model to face actors to tune) and crops never pass
    through the object store."""

    def __init__(self, *, face_kwargs: dict, score_kwargs: dict):
        from dfbatch.stages.faces import FaceStage

        self.faces = FaceStage(**face_kwargs)
        self.score = ScoreStage(**score_kwargs)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.score(self.faces(batch))
