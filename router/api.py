"""The HTTP API as a plain FastAPI app over an injected backend, so it is testable without Ray."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.core import RouterCore
from router.previews import PreviewCache
from stylefleet.config import Limits
from stylefleet.errors import (
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


def error_response(exc: StylefleetError) -> JSONResponse:
    if exc.status >= 500:
        logger.error("%s: %s", exc.code, exc.message, exc_info=exc if isinstance(exc, InternalError) else None)
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=exc.headers)


class BodyLimit:
    """Refuses bodies over ``max_bytes``: by Content-Length up front, and by counting while reading."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(self._too_large(int(declared)))(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._too_large(seen)
            return message

        await self.app(scope, counted, send)

    def _too_large(self, size: int) -> PayloadTooLarge:
        return PayloadTooLarge(f"the request body ({size} bytes) is over the limit of {self.max_bytes} (max_upload_bytes)")


def create_api(core: RouterCore, limits: Limits, previews: PreviewCache | None = None) -> FastAPI:
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

    @app.get("/v1/styles")
    async def list_styles() -> dict[str, Any]:
        return {"styles": core.describe_styles()}

    @app.get("/v1/styles/{style_name}/preview")
    async def style_preview(style_name: str) -> Response:
        """The sample photo in this style (rendered once per router process, then cached)."""
        image = await previews.get(style_name)
        return Response(
            image.data,
            media_type=image.content_type,
            headers={"Cache-Control": f"public, max-age={PREVIEW_MAX_AGE_S}"},
        )

    @app.get("/v1/shadow")
    async def shadow_report() -> dict[str, Any]:
        """Drift between each shadow variant and the variant the user got, per style."""
        return {"comparisons": core.shadow_report.describe()}

    @app.post("/v1/styles/{style_name}")
    async def apply_style(style_name: str, request: Request) -> Response:
        core.catalog.get(style_name)  # 404 before reading the body
        files, fields = await _read_form(request)
        if "variant" not in fields and "variant" in request.query_params:
            fields["variant"] = request.query_params["variant"]
        client_key = request.headers.get("x-client-id") or fields.get("client_id")
        result = await core.handle(style_name, files, fields, client_key=client_key)
        image = result.image
        return Response(
            image.data,
            media_type=image.content_type,
            headers={
                "X-Stylefleet-Style": style_name,
                "X-Stylefleet-Variant": result.variant,
                "X-Stylefleet-Model-Sha256": image.model_sha256,
                "X-Stylefleet-Size": f"{image.width}x{image.height}",
                "Server-Timing": f"total;dur={result.seconds * 1000:.1f}",
            },
        )

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        statuses = await core.backend.health()
        healthy = bool(statuses) and all(s == "HEALTHY" for s in statuses.values())
        return JSONResponse(
            {"status": "ok" if healthy else "unhealthy", "deployments": statuses},
            status_code=200 if healthy else 503,
        )

    @app.get("/", include_in_schema=False)
    async def web_page() -> FileResponse:
        return _static_file("index.html")

    @app.get("/static/{name:path}", include_in_schema=False)
    async def web_static(name: str) -> FileResponse:
        return _static_file(name)

    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes)
    return app


def _static_file(name: str) -> FileResponse:
    """A file of the web page. Only plain files under ``router/web`` with a known type are served."""
    path = (WEB_DIR / name).resolve()
    media_type = _STATIC_TYPES.get(path.suffix)
    if media_type is None or not path.is_relative_to(WEB_DIR) or not path.is_file():
        raise StarletteHTTPException(404, f"no such file: /static/{name}")
    # no-cache: the browser revalidates, so a new release is picked up at the next page load
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})


async def _read_form(request: Request) -> tuple[dict[str, bytes], dict[str, str]]:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise UnsupportedMediaType(
            f"send multipart/form-data with the image in the 'image' field (got {content_type or 'no content type'})"
        )
    form = await request.form(max_files=8, max_fields=64)
    files: dict[str, bytes] = {}
    fields: dict[str, str] = {}
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
