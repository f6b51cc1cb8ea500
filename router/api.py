"""The HTTP API as a plain FastAPI app over an injected backend, so it is testable without Ray."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Protocol

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.batching import EncodedImage, ModelRequest, Reply
from router import bundle
from router.catalog import Catalog, seeded_params, split_count, split_params
from stylefleet.config import Limits
from stylefleet.errors import (
    BadRequest,
    InternalError,
    InvalidParams,
    PayloadTooLarge,
    StylefleetError,
    UnsupportedMediaType,
)
from stylefleet.imageio import decode

logger = logging.getLogger("ray.serve")

_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}


class Backend(Protocol):
    """What the API needs from the cluster: run a request on a deployment, report health."""

    async def run(self, deployment: str, request: ModelRequest) -> Reply: ...

    async def health(self) -> dict[str, str]: ...


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


def create_api(catalog: Catalog, backend: Backend, limits: Limits) -> FastAPI:
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
        return {"styles": catalog.describe()}

    @app.post("/v1/styles/{style_name}")
    async def apply_style(style_name: str, request: Request) -> Response:
        style = catalog.get(style_name)
        files, fields = await _read_body(request, json_allowed=not style.image_fields)
        unexpected = set(files) - set(style.image_fields)
        if unexpected:
            takes = f"it takes {', '.join(style.image_fields)}" if style.image_fields else "it takes no file"
            raise InvalidParams(f"{', '.join(sorted(unexpected))}: not a file this style takes ({takes})")
        missing = [f for f in style.image_fields if f not in files]
        if missing:
            raise InvalidParams(f"the '{missing[0]}' file is required (multipart/form-data)")
        fields, count = split_count(style, fields)
        params, output = split_params(style, fields)
        images = await asyncio.to_thread(_decode_all, files, limits.max_pixels)
        each = seeded_params(params, count)
        replies = await asyncio.gather(*(backend.run(style.deployment, ModelRequest(images, p, output)) for p in each))
        encoded = [_encoded(reply, style.deployment) for reply in replies]
        headers = {
            "X-Stylefleet-Style": style.name,
            "X-Stylefleet-Model-Sha256": encoded[0].model_sha256,
            "X-Stylefleet-Size": f"{encoded[0].width}x{encoded[0].height}",
        }
        if "seed" in params:
            headers["X-Stylefleet-Seed"] = ",".join(str(p["seed"]) for p in each)
        if count == 1:
            return Response(encoded[0].data, media_type=encoded[0].content_type, headers=headers)
        return _many_images(style.name, encoded, [p.get("seed") for p in each], request.headers.get("accept", ""), headers)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        statuses = await backend.health()
        healthy = bool(statuses) and all(s == "HEALTHY" for s in statuses.values())
        return JSONResponse(
            {"status": "ok" if healthy else "unhealthy", "deployments": statuses},
            status_code=200 if healthy else 503,
        )

    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes)
    return app


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


def _encoded(reply: Reply, deployment: str) -> EncodedImage:
    if isinstance(reply, StylefleetError):
        raise reply
    if not isinstance(reply, EncodedImage):
        raise InternalError(f"deployment {deployment} returned {type(reply).__name__}")
    return reply


def _decode_all(files: dict[str, bytes], max_pixels: int) -> dict[str, np.ndarray]:
    return {name: decode(data, max_pixels=max_pixels, field=name).pixels for name, data in files.items()}
