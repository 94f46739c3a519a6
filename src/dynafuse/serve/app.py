"""`dynafuse serve`'s HTTP API and web page (FastAPI), over the `Service` that holds the warm runs.

    GET  /         the web page (static/index.html + app.js + style.css, shipped with the package)
    GET  /health   {"status": "ok", "runs": [...], "busy", "capacity", "timeout_s", "max_upload_bytes"}
    GET  /runs     the loaded runs with their feature specs
    POST /predict  multipart: `clip` (file), optional `transcript`, optional `run` (default: the first run)
                   -> the JSON object of `dynafuse predict --json` (`clip` is the uploaded file's name)

Every error is JSON `{"error": "<one line>"}` with its status: 400 no clip / empty clip / malformed form,
404 unknown run or path, 413 over the upload limit, 415 not a multipart form or not a video/audio file,
422 a clip that cannot be scored (corrupt, truncated, empty transcript, nothing usable), 503 busy (Retry-After),
504 over the time limit, 500 a bug (logged with its traceback). Swagger's /docs page is off: it would load its
scripts from a CDN, and nothing here is fetched from the internet.
"""

from __future__ import annotations

import logging
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from .. import __version__
from .service import ServeError, Service

FORM = "a `clip` file field, optional `transcript` and `run` text fields"
NO_CLIP = f"no clip: send a multipart/form-data form with {FORM}"
TRANSCRIPT_LIMIT = 64 * 1024  # bytes of a form text field (the transcript, the run name)
PREDICT_FORM = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["clip"],
    "properties": {"clip": {"type": "string", "format": "binary", "description": "a video or audio file"},
                   "transcript": {"type": "string", "description": "what is said (default: whisper tiny.en)"},
                   "run": {"type": "string", "description": "a loaded run's name (GET /runs)"}}}}}}}
log = logging.getLogger("dynafuse.serve")


def create_app(service: Service):
    """The FastAPI app over `service` (which the caller owns and closes)."""
    app = FastAPI(title="dynafuse", version=__version__, docs_url=None, redoc_url=None,
                  description="Multimodal sentiment scores for video and audio clips, from trained dynafuse runs.")
    static = files("dynafuse.serve") / "static"
    page = (static / "index.html").read_text(encoding="utf-8")
    app.mount("/static", StaticFiles(packages=[("dynafuse.serve", "static")]), name="static")

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(ServeError)
    async def serve_error(_, e: ServeError):
        return error(e.status, str(e), e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        message = f"no such page: {request.method} {request.url.path}" if e.status_code in (404, 405) else e.detail
        return error(e.status_code, str(message), getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error(500, f"internal error ({type(e).__name__}): see the server log")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.get("/health")
    async def health() -> dict:
        return service.health()

    @app.get("/runs")
    async def runs() -> list[dict]:
        return service.runs()

    @app.post("/predict", openapi_extra=PREDICT_FORM)
    async def predict(request: Request) -> dict:
        """Score one uploaded clip with a loaded run: the JSON object of `dynafuse predict --json`."""
        kind = request.headers.get("content-type", "").lower()
        if not kind:
            raise ServeError(400, NO_CLIP)
        if not kind.startswith("multipart/form-data"):
            raise ServeError(415, f"the body is {kind}: send a multipart/form-data form instead, with {FORM}")
        if int(request.headers.get("content-length") or 0) > service.max_upload:
            raise service.too_large()
        with service.admit() as ticket:  # 503 before a byte of the upload is read
            form = await bounded(request, service).form(max_files=1, max_fields=8, max_part_size=TRANSCRIPT_LIMIT)
            try:
                _, predictor = service.predictor(text_field(form, "run"))
                clip = form.get("clip")
                if not isinstance(clip, UploadFile):
                    raise ServeError(400, NO_CLIP)
                transcript = text_field(form, "transcript")
                path, name = await run_in_threadpool(ticket.save, clip.file, clip.filename, clip.content_type)
            finally:
                await form.close()
            future = ticket.submit(service.score, predictor, path, transcript, name)
        return await service.result(future, path, name)

    return app


def bounded(request: Request, service: Service) -> Request:
    """The same request, whose body raises ServeError 413 as soon as more than the upload limit has arrived
    (a chunked upload states no length up front)."""
    seen = 0

    async def receive():
        nonlocal seen
        message = await request.receive()
        seen += len(message.get("body", b""))
        if seen > service.max_upload:
            raise service.too_large()
        return message

    return Request(request.scope, receive)


def text_field(form, key: str) -> str | None:
    """A form text field, or None when absent (a file sent under a text field's name is a 400)."""
    value = form.get(key)
    if value is not None and not isinstance(value, str):
        raise ServeError(400, f"the form field `{key}` must be text, not a file")
    return value


def run_server(runs: list[str], host: str = "127.0.0.1", port: int = 8000, queue: int = 4, timeout: float = 60.0,
               max_upload_mb: float = 50.0, asr_model: str | None = "tiny.en", threads: int | None = None) -> None:
    """Load and warm `runs` (each PATH or NAME=PATH), then serve until Ctrl-C or SIGTERM (uvicorn, one process).

    uvicorn finishes the requests in flight, then re-raises the signal that stopped it; SIGTERM is made to raise
    KeyboardInterrupt like Ctrl-C, so the upload folder is removed on either."""
    import signal

    import uvicorn

    from .service import parse_runs

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    service = Service(parse_runs(runs), queue=queue, timeout=timeout, max_upload_mb=max_upload_mb,
                      asr_model=asr_model, threads=threads, log=log.info)
    try:
        if host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("listening on %s: anyone who can reach this address can upload clips", host)
        log.info("dynafuse serve: http://%s:%d/ (%d run(s); queue %d; timeout %g s; uploads up to %g MB)",
                 host, port, len(service.predictors), queue, timeout, max_upload_mb)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        uvicorn.run(create_app(service), host=host, port=port, log_level="info", workers=1)
    except KeyboardInterrupt:
        log.info("dynafuse serve stopped")
    finally:
        service.close()
