"""`dfbatch report`: one self-contained HTML file about a scoring job's results.

Counts per status, a P(fake) histogram, the top-K most suspicious videos (face crops, per-frame score strip,
Grad-CAM overlays), the failed videos with their errors, the model version, threshold and MLflow run(s).
Crops come from OUT/crops/ when the job ran with `--save-crops`, else they are extracted again for the top-K
only, with the job's own face stage and settings (read back from its MLflow run). The file is also logged as an
artifact of the scoring run. Images are inlined (data: URIs) and a Content-Security-Policy forbids any fetch.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow.compute as pc

from dfbatch.config import FaceConfig, LimitsConfig, ReportConfig, SamplingConfig
from dfbatch.errors import UserError, one_line, redact
from dfbatch.io.results import ResultStore
from dfbatch.io.storage import Storage

_LIGHT = ["video_uri", "video_id", "status", "error", "fake_probability", "label", "threshold", "aggregation", "model_name", "model_version", "model_uri", "mlflow_run_id", "scored_at"]
STATUS_ORDER = ("ok", "no_face", "failed")


@dataclass
class ReportResult:
    path: str
    model_name: str
    model_version: str
    videos: int
    top: int
    logged_run_id: str | None = None
    notes: list[str] = field(default_factory=list)


def _pick_model(videos, model_name: str | None, model_version: str | None) -> tuple[str, str]:
    """The requested model version, else the one whose rows were scored last."""
    df = videos
    if model_name:
        df = df[df.model_name == model_name]
    if model_version:
        df = df[df.model_version == str(model_version)]
    if df.empty:
        have = sorted({f"{n} v{v}" for n, v in zip(videos.model_name, videos.model_version)})
        raise UserError(f"no results for model {model_name or '*'} version {model_version or '*'} (OUT has: {', '.join(have)})")
    last = df.sort_values("scored_at").iloc[-1]
    return str(last.model_name), str(last.model_version)


def _job_settings(run_id: str | None, tracking_uri: str | None) -> tuple[dict, str | None]:
    """The scoring run's sampling/detection params (to extract the same crops again); ({}, why) if unknown."""
    if not run_id:
        return {}, "no MLflow run recorded"
    try:
        import mlflow

        return dict(mlflow.MlflowClient(tracking_uri).get_run(run_id).data.params), None
    except Exception as exc:
        return {}, one_line(exc)


class _CropSource:
    """A top video's track crops: the saved JPEG strips, else the job's face stage run again on the video."""

    def __init__(self, store: ResultStore, storage: Storage, params: dict, spec, device: str):
        self.store, self.storage, self.params, self.spec, self.device = store, storage, params, spec, device
        self.detector = None

    def saved(self, faces: list[dict]):
        if faces and all(f.get("crops_file") for f in faces):
            try:
                return [self.store.read_crops(f["crops_file"]) for f in faces], None
            except Exception as exc:
                return None, f"saved crops unreadable ({one_line(exc)}); extracted again"
        return None, None

    def extract(self, video: dict, faces: list[dict]):
        """(crops per track, note) from the video itself, with the job's settings."""
        from dfbatch.stages.faces import FaceDetector, process_video, track_crops

        p = self.params
        faces_cfg = FaceConfig(
            detect_max_side=int(p.get("detect_max_side", FaceConfig.detect_max_side)),
            detect_every=int(p.get("detect_every", FaceConfig.detect_every)),
            min_face_px=None if p.get("min_face_px", "auto") in ("auto", "None", None) else int(p["min_face_px"]),
            margin=float(p["margin"]) if p.get("margin") not in (None, "None") else None,
        )
        if self.detector is None or self.detector.cfg != faces_cfg:
            self.detector = FaceDetector(faces_cfg, device=self.device)
        frames = int(p.get("frames", 0)) or (int(self.spec.seq_len) if self.spec is not None else len(video["frame_indices"]))
        sampling = SamplingConfig(backend=p.get("decode_backend", SamplingConfig.backend))
        crop = ({"crop_size": self.spec.crop_side, "crop_jpeg_quality": self.spec.crop_jpeg_quality}  # the model's crop path
                if self.spec is not None else {"crop_size": 112})
        ref = {"video_uri": video["video_uri"], "video_id": video["video_id"], "size_bytes": None}
        row = process_video(ref, self.detector, self.storage, sampling, LimitsConfig(), frames=frames, **crop)
        if row["status"] != "ok":
            return None, f"crops not saved, and extracting them again failed: {row['error'] or row['status']}"
        import json

        got = [t["frame_indices"] for t in json.loads(row["tracks"])]
        want = [list(f["frame_indices"]) for f in faces]
        note = None if got == want else "crops extracted again; the tracks differ from the job's (file or settings changed?)"
        return track_crops(row)[: len(faces)], note


def build_report(cfg: ReportConfig, storage: Storage | None = None) -> ReportResult:
    """Write the HTML report of OUT's results for one model version (default: the last scored)."""
    import pyarrow as pa

    from dfbatch.views import html as H

    output, html, top, tracking_uri, device = cfg.output, cfg.html, cfg.top, cfg.tracking_uri, cfg.device
    storage = storage or Storage.from_env(cfg.endpoint_url)
    store = ResultStore(output, storage)
    try:
        ds = store.dataset("videos")
    except Exception as exc:
        raise UserError(f"cannot read results under {redact(output)}: {one_line(exc)}") from None
    if ds is None:
        raise UserError(f"no results under {redact(output)} (run dfbatch score first)")
    light = ds.to_table(columns=_LIGHT).to_pandas()
    name, version = _pick_model(light, cfg.model_name, cfg.model_version)
    rows = light[(light.model_name == name) & (light.model_version == version)]
    others = sorted({f"{n} v{v}" for n, v in zip(light.model_name, light.model_version)} - {f"{name} v{version}"})
    ok = rows[rows.status == "ok"].sort_values(["fake_probability", "video_uri"], ascending=[False, True])
    top_ids = list(ok.video_id.head(max(0, top)))
    flt = (pc.field("model_name") == name) & (pc.field("model_version") == version)
    top_videos = {r["video_id"]: r for r in ds.to_table(filter=flt & pc.field("video_id").isin(pa.array(top_ids, pa.string()))).to_pylist()} if top_ids else {}
    faces_ds = store.dataset("faces")
    faces_by_video: dict[str, list[dict]] = {}
    if faces_ds is not None and top_ids:
        for f in faces_ds.to_table(filter=flt & pc.field("video_id").isin(pa.array(top_ids, pa.string()))).to_pylist():
            faces_by_video.setdefault(f["video_id"], []).append(f)
    model_uri = str(rows.model_uri.dropna().iloc[-1]) if rows.model_uri.notna().any() else ""
    last_run = rows.sort_values("scored_at").mlflow_run_id.dropna()
    last_run = str(last_run.iloc[-1]) if len(last_run) else None
    notes: list[str] = []

    cam = spec = None
    cam_note = None
    device_used = "cpu"
    if top_ids:
        from dfbatch.views.explain import GradCam, resolve_device

        device_used = resolve_device(device)
        try:
            from dfbatch.models import registry

            bundle = registry.fetch(model_uri, tracking_uri)
            spec = bundle.spec
            cam = GradCam(bundle, device_used) if cfg.explain else None
        except Exception as exc:
            cam_note = f"no Grad-CAM heatmaps: cannot load model {redact(model_uri)}: {one_line(exc)}"
        if not cfg.explain:
            cam_note = "Grad-CAM heatmaps not computed (--no-gradcam)"
    params, why = _job_settings(last_run, tracking_uri)
    crops_src = _CropSource(store, storage, params, spec, device_used)

    top_cards = []
    for vid in top_ids:
        v = top_videos[vid]
        faces = sorted(faces_by_video.get(vid, []), key=lambda f: f["track_id"])
        crops, note = crops_src.saved(faces)
        source = "saved by the job"
        if crops is None:
            extracted, note2 = crops_src.extract(v, faces)
            crops, source = extracted, "extracted again from the video" + ("" if params else f" (job settings unknown: {why}; defaults used)")
            note = note2 if note is None else f"{note}; {note2}" if note2 else note
        tracks = []
        for f in faces:
            c = crops[f["track_id"]] if crops is not None and f["track_id"] < len(crops) else None
            heat = None
            if c is not None and cam is not None:
                try:
                    heat = cam(c)
                except Exception as exc:  # a heatmap must never cost the report
                    note = f"Grad-CAM failed: {one_line(exc)}"
            tracks.append(H.track_view(f["track_id"], c, heat, f["frame_indices"], f["frame_scores"], f["fake_probability"], max_frames=cfg.frames_per_track))
        top_cards.append({
            "video_id": vid, "uri": v["video_uri"], "p": v["fake_probability"], "label": v["label"], "n_tracks": v["n_tracks"],
            "n_frames": v["n_frames"], "width": v["width"], "height": v["height"], "duration_s": v["duration_s"],
            "strip": H.score_strip(v["frame_indices"] or [], v["frame_scores"] or [], float(v["threshold"])),
            "tracks": tracks, "note": note, "crops_source": source,
        })

    failed = rows[rows.status == "failed"].sort_values("video_uri")
    counts = [(s, int((rows.status == s).sum())) for s in STATUS_ORDER]
    thresholds = sorted({float(t) for t in rows.threshold.dropna()}) or [0.5]
    page = H.render(
        "report.html",
        output=redact(output if "://" in output else os.path.abspath(output)), generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        model_name=name, model_version=version, model_uri=model_uri, thresholds=thresholds,
        runs=sorted(set(rows.mlflow_run_id.dropna())), tracking_uri=redact(_tracking_uri(tracking_uri)),
        aggregation=", ".join(sorted(set(rows.aggregation.dropna()))), first_scored=_ts(rows.scored_at.min()), last_scored=_ts(rows.scored_at.max()),
        other_models=others, counts=counts, n_fake=int((rows.label == "FAKE").sum()), n_total=len(rows), n_ok=len(ok),
        hist=H.histogram(list(ok.fake_probability), thresholds[-1]), top=top_cards, cam_note=cam_note,
        failed=[{"uri": r.video_uri, "error": r.error} for r in failed.head(cfg.failed_rows).itertuples()], n_failed=len(failed),
    )
    data = page.encode("utf-8")
    try:
        storage.write_bytes(html, data)
    except Exception as exc:
        raise UserError(f"cannot write {redact(html)}: {one_line(exc)}") from None
    result = ReportResult(html, name, version, len(rows), len(top_cards), notes=notes)
    if cam_note:
        notes.append(cam_note)
    if cfg.log_mlflow and last_run:
        try:
            _log_artifact(last_run, html, data, tracking_uri)
            result.logged_run_id = last_run
        except Exception as exc:
            notes.append(f"not logged to MLflow run {last_run}: {one_line(exc)}")
    return result


def _log_artifact(run_id: str, html: str, data: bytes, tracking_uri: str | None) -> None:
    import mlflow

    name = os.path.basename(html.rstrip("/")) or "report.html"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, name)
        with open(path, "wb") as f:
            f.write(data)
        mlflow.MlflowClient(tracking_uri).log_artifact(run_id, path, artifact_path="report")


def _tracking_uri(tracking_uri: str | None) -> str:
    try:
        from dfbatch.models.registry import resolve_tracking_uri

        return resolve_tracking_uri(tracking_uri)
    except Exception:
        return tracking_uri or ""


def _ts(value) -> str:
    try:
        return value.strftime("%Y-%m-%d %H:%M UTC")
    except Exception:
        return "–"

