"""Reading request bodies: one multipart/urlencoded form reader for every route that takes
files (a style request, a job), and the JSON params of the styles that take no file."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from stylefleet.errors import BadRequest, InvalidParams, PayloadTooLarge, UnsupportedMediaType

MAX_FIELDS = 64
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


@dataclass
class Form:
    """A parsed form: files by field name (in the order sent) and plain fields."""

    files: dict[str, list[UploadFile]]
    fields: dict[str, str]

    def file(self, key: str) -> UploadFile | None:
        """The one file sent as ``key``, if any."""
        return self.files[key][0] if key in self.files else None


@asynccontextmanager
async def read_form(request: Request, *, max_files: int, repeatable: frozenset[str] = frozenset()) -> AsyncIterator[Form]:
    """The request's form, its spooled files closed on exit. A name may come once (422
    ``invalid_params`` otherwise), except the file fields in ``repeatable``."""
    form = await request.form(max_files=max_files, max_fields=MAX_FIELDS)
    try:
        files: dict[str, list[UploadFile]] = {}
        fields: dict[str, str] = {}
        for key, value in form.multi_items():
            if key in fields or (key in files and not (isinstance(value, UploadFile) and key in repeatable)):
                raise InvalidParams(f"{key}: given more than once")
            if isinstance(value, UploadFile):
                files.setdefault(key, []).append(value)
            else:
                fields[key] = value
        yield Form(files, fields)
    finally:
        await form.close()


async def read_limited(upload: UploadFile, key: str, max_bytes: int, knob: str) -> bytes:
    """A whole upload, refused (413) when over ``max_bytes``."""
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{key}: over {max_bytes} bytes ({knob})")
    return data


def require_multipart(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise UnsupportedMediaType(f"send multipart/form-data (got {content_type or 'no content type'})")


async def read_body(request: Request, *, json_allowed: bool) -> tuple[dict[str, bytes], dict[str, Any]]:
    """(files, fields) from multipart or urlencoded forms; or fields from a JSON object (styles
    that take no file, such as text-to-image); an empty body is no fields."""
    content_type = request.headers.get("content-type", "")
    if json_allowed and content_type.startswith("application/json"):
        return {}, await _read_json(request)
    if content_type.startswith(FORM_TYPES):
        async with read_form(request, max_files=8) as form:
            files = {key: await uploads[0].read() for key, uploads in form.files.items()}
            return files, dict(form.fields)
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
