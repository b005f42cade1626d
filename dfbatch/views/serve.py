"""`dfbatch serve`: a local web page to check one video — upload a file (or give a path / s3:// URI) and see
the verdict, P(fake), threshold and model version, the sampled frames with face boxes, the crops with their
Grad-CAM heatmaps and the per-frame scores.

A FastAPI app served by uvicorn in one process: MTCNN, the scoring model and the Grad-CAM model are loaded
once (`explain.VideoAnalyzer`) and stay loaded between uploads; analyses run one at a time in a worker thread.
The analysis is the batch job's own face and score cores with `dfbatch score`'s defaults, so the page and the
job give the same P(fake) for the same file. Routes: `GET /` (the form), `POST /analyze` (the page),
`POST /api/analyze` (JSON), `GET /api/model` (model and settings; a health check).
"""


import contextlib
import hashlib
import ipaddress
import logging
import os
import re
import shutil
import tempfile
import threading

from dfbatch.errors import UserError, one_line, redact

log = logging.getLogger(__name__)

MAX_UPLOAD_MB = 500


class UploadTooLarge(Exception):
    pass


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _BodyLimit:
    """ASGI middleware: a request body over `limit` bytes stops being read (UploadTooLarge inside the parser;
    a declared Content-Length over the limit is answered 413 at once, after draining what the client sends)."""

    def __init__(self, app, limit: int, too_large):
        self.app, self.limit, self.too_large = app, limit, too_large

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            drained, more = 0, True
            while more and drained < 4 * self.limit:  # read what the browser is sending, so it sees the answer
                msg = await receive()
                drained += len(msg.get("body", b""))
                more = msg.get("more_body", False)
            response = self.too_large(scope)
            return await response(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise UploadTooLarge()
            return msg

        return await self.app(scope, limited, send)


def create_app(analyzer, *, storage=None, max_upload_mb: float = MAX_UPLOAD_MB, allow_paths: bool = True):
    """The FastAPI app around one loaded `VideoAnalyzer`."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile

    from dfbatch.io.storage import Storage
    from dfbatch.views import html as H

    storage = storage or Storage()
    limit = int(max_upload_mb * 1024 * 1024)
    lock = threading.Lock()
    upload_dir = tempfile.mkdtemp(prefix="dfbatch-serve-")
    base = {"model": analyzer.model_info, "threshold": analyzer.threshold, "frames": analyzer.frames, "max_upload_mb": f"{max_upload_mb:g}", "allow_paths": allow_paths}

    def page(status: int = 200, **context) -> HTMLResponse:
        return HTMLResponse(H.render("page.html", **base, **{"result": None, "message": None, **context}), status_code=status)

    def message(status: int, kind: str, title: str, text: str, api: bool):
        if api:
            return JSONResponse({"status": kind, "error": f"{title}: {text}"}, status_code=status)
        return page(status, message={"kind": kind, "title": title, "text": text})

    def too_large(scope):
        api = scope.get("path", "").startswith("/api/")
        return message(413, "too_large", "File too large", f"uploads are limited to {max_upload_mb:g} MB (dfbatch serve --max-upload-mb); for larger files give a path or s3:// URI, or use dfbatch score", api)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        shutil.rmtree(upload_dir, ignore_errors=True)

    app = FastAPI(title="dfbatch", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.exception_handler(Exception)
    async def _any_error(request: Request, exc: Exception):  # never a stack trace to the user
        log.exception("request failed")
        return message(500, "error", "Something went wrong", one_line(exc), request.url.path.startswith("/api/"))

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return page()

    @app.get("/api/model")
    async def model():
        return {**analyzer.model_info, "threshold": analyzer.threshold, "frames": analyzer.frames, "device": analyzer.device,
                "precision": analyzer.scorer.precision, "aggregation": f"tracks={analyzer.cfg.track_aggregation},frames={analyzer.cfg.frame_aggregation}"}

    async def _analyze(request: Request, api: bool):
        try:
            form = await request.form(max_files=1, max_fields=8)
        except UploadTooLarge:
            return too_large(request.scope)
        except Exception as exc:
            return message(400, "bad_request", "Bad request", f"could not read the form: {one_line(exc)}", api)
        upload, uri = form.get("video"), str(form.get("uri") or "").strip()
        tmp = None
        try:
            if isinstance(upload, UploadFile) and upload.filename:
                name = os.path.basename(upload.filename)
                ext = os.path.splitext(name)[1].lower()
                ext = ext if re.fullmatch(r"\.[a-z0-9]{1,6}", ext) else ".bin"
                digest = hashlib.sha1()
                with tempfile.NamedTemporaryFile(dir=upload_dir, suffix=ext, delete=False) as out:
                    tmp = out.name
                    while chunk := await upload.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
                size = os.path.getsize(tmp)
                if size == 0:
                    return message(400, "empty", "Empty file", f"{name} has 0 bytes", api)
                ref = {"video_uri": tmp, "video_id": digest.hexdigest()[:20], "size_bytes": size}
            elif uri:
                if not allow_paths:
                    return message(403, "forbidden", "Paths are off", "this server only takes uploads (dfbatch serve --allow-paths)", api)
                ref, name = await run_in_threadpool(_ref_for, uri, storage)
            else:
                return message(400, "no_input", "No video given", "choose a video file" + (" or give a path / s3:// URI" if allow_paths else ""), api)
            analysis = await run_in_threadpool(_locked, lock, analyzer.analyze, ref, storage)
        except UserError as exc:
            return message(400, "bad_input", "Cannot use that input", str(exc), api)
        finally:
            await form.close()  # Starlette's spooled copy of the upload
            if tmp:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        row = analysis.row
        status = 200 if row["status"] == "ok" else 422
        if api:
            return JSONResponse(_api_result(analysis, name), status_code=status)
        result = await run_in_threadpool(_page_result, analysis, name, analyzer.threshold)
        if row["status"] == "failed":
            error = row["error"] or "unknown error"
            unreadable = error.startswith(("cannot open video", "no video stream", "not a video", "no decodable", "empty file"))
            return page(status, result=result, message={"kind": "not_a_video" if unreadable else "failed",
                                                        "title": "Not a video dfbatch can read" if unreadable else "This video could not be analysed", "text": error})
        if row["status"] == "no_face":
            return page(status, result=result, message={"kind": "no_face", "title": "No face found", "text": f"no face was found in the {row['n_frames']} sampled frames, so there is no verdict (faces smaller than the detector's minimum are not searched)"})
        return page(status, result=result)

    @app.post("/analyze", response_class=HTMLResponse)
    async def analyze_page(request: Request):
        return await _analyze(request, api=False)

    @app.post("/api/analyze")
    async def analyze_api(request: Request):
        return await _analyze(request, api=True)

    return _BodyLimit(app, limit, too_large)


def _locked(lock: threading.Lock, fn, *args):
    with lock:
        return fn(*args)


def _ref_for(uri: str, storage) -> tuple[dict, str]:
    """A path or s3:// URI -> the listing's ref (the same video_id as `dfbatch score` gives it) and a name."""
    from dfbatch.io.listing import iter_videos

    refs = iter_videos([uri], storage)
    ref = next(refs, None)
    if ref is None:
        raise UserError(f"{redact(uri)}: no video there")
    if next(refs, None) is not None:
        raise UserError(f"{redact(uri)} names more than one video; give one file")
    if ref.list_error:
        raise UserError(ref.list_error)
    return {"video_uri": ref.video_uri, "video_id": ref.video_id, "size_bytes": ref.size_bytes}, ref.video_uri


def _api_result(analysis, name: str) -> dict:
    row = analysis.row
    keys = ("status", "error", "fake_probability", "label", "threshold", "n_frames", "n_faces", "n_tracks", "duration_s", "fps", "width", "height",
            "frame_indices", "frame_scores", "aggregation", "model_name", "model_version", "model_uri", "video_id")
    out = {k: row.get(k) for k in keys}
    out["name"] = name
    out["tracks"] = [{k: t.get(k) for k in ("frame_indices", "boxes", "probs", "frame_scores", "fake_probability")} for t in analysis.tracks]
    out["timings"] = {k: round(v, 4) for k, v in analysis.timings.items()}
    return out


def _page_result(analysis, name: str, threshold: float) -> dict:
    from dfbatch.views import html as H

    row = analysis.row
    tracks = analysis.tracks
    indices = row.get("frame_indices") or []
    return {
        "name": name, "status": row["status"], "label": row.get("label"), "p": row.get("fake_probability"),
        "aggregation": row.get("aggregation"), "width": row.get("width"), "height": row.get("height"), "duration_s": row.get("duration_s"),
        "fps": row.get("fps"), "n_frames": row.get("n_frames"), "n_faces": row.get("n_faces"), "n_tracks": row.get("n_tracks"),
        "timings": analysis.timings,
        "strip": H.score_strip(indices, row.get("frame_scores") or [], threshold) if row["status"] == "ok" else None,
        "frames": H.frames_view(analysis.frames, analysis.frame_scale, indices, tracks) if analysis.frames is not None and len(analysis.frames) else [],
        "tracks": [H.track_view(i, c, h, t["frame_indices"], t.get("frame_scores"), t.get("fake_probability"), max_frames=len(c))
                   for i, (t, c, h) in enumerate(zip(tracks, analysis.crops, analysis.heatmaps or [None] * len(tracks)))],
        "gradcam": bool(analysis.heatmaps),
    }


def serve(analyzer, *, host: str = "127.0.0.1", port: int = 8000, max_upload_mb: float = MAX_UPLOAD_MB, allow_paths: bool | None = None, storage=None) -> None:
    """Run the page until interrupted. Paths / s3:// URIs are accepted by default on a loopback address only."""
    import uvicorn

    if allow_paths is None:
        allow_paths = is_loopback(host)
    app = create_app(analyzer, storage=storage, max_upload_mb=max_upload_mb, allow_paths=allow_paths)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
