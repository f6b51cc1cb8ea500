"""The HTTP API as a plain FastAPI app over an injected backend, so it is testable without Ray."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.batching import EncodedImage
from router import bundle
from router.core import RouterCore
from router.health import NOT_READY_RETRY_AFTER_S, readiness
from router.openapi import (
    EVENTS_RESPONSE,
    IMAGE_RESPONSE,
    JOB_REQUEST,
    PREVIEW_RESPONSE,
    STYLE_REQUEST,
    ZIP_RESPONSE,
    Job,
    Liveness,
    Readiness,
    errors,
    without_validation_errors,
)
from router.jobs import JobManager
from router.previews import PreviewCache
from router.uploads import UploadGuard
from stylefleet.config import Limits
from stylefleet.errors import (
    BadRequest,
    InternalError,
    InvalidParams,
    PayloadTooLarge,
    StylefleetError,
    UnsupportedMediaType,
)

logger = logging.getLogger("ray.serve")

_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}

WEB_DIR = Path(__file__).resolve().parent / "web"
# Explicit types rather than the mimetypes registry: some systems map .js to text/plain, and
# browsers refuse to run an ES module served with a non-JavaScript type.
_STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".jpg": "image/jpeg",
    ".png": "image/png",
}
PREVIEW_MAX_AGE_S = 3600
_READINESS: dict[int | str, dict[str, Any]] = {
    200: {"model": Readiness, "description": "ready"},
    503: {"model": Readiness, "description": "not ready", "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
}


def error_response(exc: StylefleetError) -> JSONResponse:
    if exc.status >= 500:
        logger.error("%s: %s", exc.code, exc.message, exc_info=exc if isinstance(exc, InternalError) else None)
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=exc.headers)


class BodyLimit:
    """Refuses bodies over ``max_bytes``: by Content-Length up front, and by counting while reading.

    ``overrides`` gives some (method, path) their own limit and knob name: batch job uploads
    (``POST /v1/jobs``) are far larger than one image.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, overrides: dict[tuple[str, str], tuple[int, str]] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.overrides = overrides or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, knob = self.overrides.get((scope.get("method", ""), scope.get("path", "")), (self.max_bytes, "max_upload_bytes"))
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await error_response(_too_large(int(declared), limit, knob))(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _too_large(seen, limit, knob)
            return message

        await self.app(scope, counted, send)


def _too_large(size: int, limit: int, knob: str) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body ({size} bytes) is over the limit of {limit} ({knob})")


def create_api(
    core: RouterCore, limits: Limits, previews: PreviewCache | None = None, jobs: JobManager | None = None
) -> FastAPI:
    previews = previews or PreviewCache(core.catalog, core.backend)
    app = FastAPI(
        title="stylefleet",
        description="Image AI styles served on Ray Serve. Errors are {'error': {'code', 'message'}}.",
        version="0.1.0",
    )

    @app.exception_handler(StylefleetError)
    async def _stylefleet_error(_: Request, exc: StylefleetError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(InvalidParams(str(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = StylefleetError(str(exc.detail))
        err.status, err.code = exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(err)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error", exc_info=exc)
        return error_response(InternalError("unexpected server error; it was logged"))

    @app.get("/v1/styles", responses=errors())
    async def list_styles() -> Response:
        return Response(core.styles_json(), media_type="application/json")

    @app.get("/v1/styles/{style_name}/preview", response_class=Response, responses={200: PREVIEW_RESPONSE, **errors(404, 503)})
    async def style_preview(style_name: str) -> Response:
        """The sample photo in this style (rendered once per router process, then cached)."""
        image = await previews.get(style_name)
        return Response(
            image.data,
            media_type=image.content_type,
            headers={"Cache-Control": f"public, max-age={PREVIEW_MAX_AGE_S}"},
        )

    @app.get("/v1/shadow", responses=errors())
    async def shadow_report() -> dict[str, Any]:
        """Drift between each shadow variant and the variant the user got, per style."""
        return {"comparisons": core.shadow_report.describe()}

    @app.post(
        "/v1/styles/{style_name}",
        response_class=Response,
        responses={200: IMAGE_RESPONSE, **errors(400, 404, 408, 413, 415, 422, 429, 503)},
        openapi_extra=STYLE_REQUEST,
    )
    async def apply_style(style_name: str, request: Request) -> Response:
        style = core.catalog.get(style_name)  # 404 before reading the body
        files, fields = await _read_body(request, json_allowed=not style.image_fields)
        if "variant" not in fields and "variant" in request.query_params:
            fields["variant"] = request.query_params["variant"]
        client_id = fields.get("client_id")
        client_key = request.headers.get("x-client-id") or (str(client_id) if client_id is not None else None)
        result = await core.handle(style_name, files, fields, client_key=client_key)
        image = result.image
        headers = {
            "X-Stylefleet-Style": style_name,
            "X-Stylefleet-Variant": result.variant,
            "X-Stylefleet-Model-Sha256": image.model_sha256,
            "X-Stylefleet-Size": f"{image.width}x{image.height}",
            "Server-Timing": f"total;dur={result.seconds * 1000:.1f}",
        }
        if any(seed is not None for seed in result.seeds):
            headers["X-Stylefleet-Seed"] = ",".join(str(seed) for seed in result.seeds)
        if any(i.nsfw is not None for i in result.images):  # the safety checker ran: its verdict per image
            headers["X-Stylefleet-Nsfw"] = ",".join(_verdict(i.nsfw) for i in result.images)
        if len(result.images) == 1:
            return Response(image.data, media_type=image.content_type, headers=headers)
        return _many_images(style.name, list(result.images), list(result.seeds), request.headers.get("accept", ""), headers)

    @app.get("/healthz/live", tags=["health"], response_model=Liveness)
    async def healthz_live() -> dict[str, str]:
        """Liveness: the proxy and a router replica answer (the models are not asked). For a
        Kubernetes livenessProbe."""
        return {"status": "alive"}

    @app.get("/healthz/ready", tags=["health"], responses=_READINESS)
    async def healthz_ready() -> JSONResponse:
        """Readiness: 200 while every deployment has a running replica (busy and scaling up
        included), 503 with Retry-After otherwise. For a Kubernetes readinessProbe."""
        ready, body = readiness(await core.backend.health())
        headers = {} if ready else {"Retry-After": str(NOT_READY_RETRY_AFTER_S)}
        return JSONResponse(body, status_code=200 if ready else 503, headers=headers)

    @app.get("/healthz", tags=["health"], responses=_READINESS)
    async def healthz() -> JSONResponse:
        """The same as ``/healthz/ready`` (kept for existing checks)."""
        return await healthz_ready()

    @app.get("/", include_in_schema=False)
    async def web_page() -> FileResponse:
        return _static_file("index.html")

    @app.get("/static/{name:path}", include_in_schema=False)
    async def web_static(name: str) -> FileResponse:
        return _static_file(name)

    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = without_validation_errors(default_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    overrides = {}
    if jobs is not None:
        add_job_routes(app, jobs, limits)
        overrides[("POST", "/v1/jobs")] = (jobs.config.max_upload_bytes, "jobs.max_upload_bytes")
    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes, overrides=overrides)
    app.add_middleware(
        UploadGuard,
        render=error_response,
        body_idle_timeout_s=limits.body_idle_timeout_s,
        max_uploads_per_client=limits.max_uploads_per_client,
    )
    return app


def add_job_routes(app: FastAPI, jobs: JobManager, limits: Limits) -> None:
    """``/v1/jobs``: batch jobs over the same styles (see ``router.jobs``)."""

    def urls(job_id: str) -> dict[str, str]:
        base = f"/v1/jobs/{job_id}"
        return {"self": base, "events": f"{base}/events", "result": f"{base}/result"}

    @app.post(
        "/v1/jobs",
        status_code=202,
        responses={202: {"model": Job, "description": "the job, queued, with its URLs"}, **errors(400, 404, 408, 413, 415, 422, 429)},
        openapi_extra=JOB_REQUEST,
    )
    async def create_job(request: Request) -> JSONResponse:
        """multipart/form-data: several ``images`` files or one ``archive`` zip (a text-to-image
        style: one ``prompts`` file, a prompt per line or JSONL), ``style``, the style's params
        (and ``variant``/``client_id``); 202 with the job and its URLs."""
        jobs.ensure_started()
        _require_multipart(request)
        form = await request.form(max_files=jobs.config.max_items + 8, max_fields=64)
        try:
            images: list[tuple[str, Any]] = []
            archive = None
            prompts: tuple[str, bytes] | None = None
            shared: dict[str, bytes] = {}
            fields: dict[str, str] = {}
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if key == "images":
                        images.append((value.filename or "", value.file))
                    elif key == "archive" and archive is None:
                        archive = value.file
                    elif key == "prompts" and prompts is None:
                        prompts = (value.filename or "prompts.txt", await value.read(limits.max_upload_bytes + 1))
                        if len(prompts[1]) > limits.max_upload_bytes:
                            raise PayloadTooLarge(f"prompts: over {limits.max_upload_bytes} bytes (limits.max_upload_bytes)")
                    elif key not in shared and key not in ("archive", "prompts"):
                        shared[key] = await value.read(limits.max_upload_bytes + 1)
                        if len(shared[key]) > limits.max_upload_bytes:
                            raise PayloadTooLarge(f"{key}: over {limits.max_upload_bytes} bytes (limits.max_upload_bytes)")
                    else:
                        raise InvalidParams(f"{key}: given more than once")
                elif key in fields:
                    raise InvalidParams(f"{key}: given more than once")
                else:
                    fields[key] = value
            style = fields.pop("style", None)
            if not style:
                raise InvalidParams("style: required (a style name, see GET /v1/styles)")
            client_key = request.headers.get("x-client-id") or fields.get("client_id")
            body = await jobs.create(
                style, fields, client_key=client_key, images=images, archive=archive, shared=shared, prompts=prompts
            )
        finally:
            await form.close()
        body["urls"] = urls(body["id"])
        return JSONResponse(body, status_code=202, headers={"Location": body["urls"]["self"]})

    @app.get("/v1/jobs/{job_id}", responses={200: {"model": Job}, **errors(404)})
    async def get_job(job_id: str) -> dict[str, Any]:
        jobs.ensure_started()
        return await jobs.get(job_id)

    @app.get("/v1/jobs/{job_id}/events", response_class=StreamingResponse, responses={200: EVENTS_RESPONSE, **errors(404)})
    async def job_events(job_id: str) -> StreamingResponse:
        """text/event-stream: ``progress`` (the job as GET shows it) on every change, ``end`` at
        a final status. The stream ends itself after 90 s; EventSource reconnects."""
        jobs.ensure_started()
        stream = await jobs.events(job_id)
        return StreamingResponse(
            stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    @app.get("/v1/jobs/{job_id}/result", response_class=StreamingResponse, responses={200: ZIP_RESPONSE, **errors(404, 409)})
    async def job_result(job_id: str) -> StreamingResponse:
        """application/zip: outputs (original names, the format's extension), manifest.jsonl,
        failures.jsonl; 409 job_not_finished until the job ends."""
        rel = await jobs.result(job_id)
        storage = jobs.storage

        def chunks() -> Any:
            with storage.open(rel, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    yield chunk

        return StreamingResponse(
            chunks(),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="stylefleet-job-{job_id}.zip"', "Content-Length": str(storage.size(rel))},
        )

    @app.delete("/v1/jobs/{job_id}", responses={200: {"model": Job}, **errors(404)})
    async def cancel_job(job_id: str) -> dict[str, Any]:
        jobs.ensure_started()
        return await jobs.cancel(job_id)


def _require_multipart(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise UnsupportedMediaType(f"send multipart/form-data (got {content_type or 'no content type'})")


def _static_file(name: str) -> FileResponse:
    """A file of the web page. Only plain files under ``router/web`` with a known type are served."""
    path = (WEB_DIR / name).resolve()
    media_type = _STATIC_TYPES.get(path.suffix)
    if media_type is None or not path.is_relative_to(WEB_DIR) or not path.is_file():
        raise StarletteHTTPException(404, f"no such file: /static/{name}")
    # no-cache: the browser revalidates, so a new release is picked up at the next page load
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})


async def _read_body(request: Request, *, json_allowed: bool) -> tuple[dict[str, bytes], dict[str, Any]]:
    """(files, fields) from multipart or urlencoded forms; or fields from a JSON object (styles
    that take no file, such as text-to-image); an empty body is no fields."""
    content_type = request.headers.get("content-type", "")
    if json_allowed and content_type.startswith("application/json"):
        return {}, await _read_json(request)
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        return await _read_form(request)
    if json_allowed and not content_type and not await request.body():
        return {}, {}
    expected = "a JSON object or form fields" if json_allowed else "multipart/form-data with the image in the 'image' field"
    raise UnsupportedMediaType(f"send {expected} (got {content_type or 'no content type'})")


async def _read_json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidParams("the JSON body must be an object of params, e.g. {\"prompt\": \"a red bicycle\"}")
    if any(isinstance(v, (dict, list)) for v in body.values()):
        raise InvalidParams("params are plain values (strings, numbers, booleans), not objects or lists")
    return body


async def _read_form(request: Request) -> tuple[dict[str, bytes], dict[str, Any]]:
    form = await request.form(max_files=8, max_fields=64)
    files: dict[str, bytes] = {}
    fields: dict[str, Any] = {}
    try:
        for key, value in form.multi_items():
            if key in files or key in fields:
                raise InvalidParams(f"{key}: given more than once")
            if isinstance(value, UploadFile):
                files[key] = await value.read()
            else:
                fields[key] = value
    finally:
        await form.close()
    return files, fields


def _verdict(nsfw: bool | None) -> str:
    return "unchecked" if nsfw is None else str(nsfw).lower()


def _many_images(
    style: str, images: list[EncodedImage], seeds: list[int | None], accept: str, headers: dict[str, str]
) -> Response:
    """n > 1 images: a zip by default, multipart/mixed when the client accepts it."""
    names = [f"{style}-{i}" + (f"-seed{seed}" if seed is not None else "") for i, seed in enumerate(seeds)]
    headers = {**headers, "X-Stylefleet-Count": str(len(images))}
    if "multipart/mixed" in accept:
        body, media_type = bundle.multipart(images, names, seeds)
        return Response(body, media_type=media_type, headers=headers)
    headers["Content-Disposition"] = f'attachment; filename="{style}.zip"'
    return Response(bundle.zip_archive(images, names), media_type="application/zip", headers=headers)

