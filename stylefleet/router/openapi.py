"""What the OpenAPI document declares for each route: request bodies, image responses, the error
model and every status a route answers. The routes read their bodies by hand (a style's params
are data, not a pydantic signature), so FastAPI cannot infer any of this; it is declared here,
once, and a schemathesis test drives the live service from it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from stylefleet.errors import ECHO_MAX_CHARS


class ErrorDetail(BaseModel):
    code: str = Field(description="stable, machine-readable: clients match on it (README, 'Errors')")
    message: str = Field(description=f"for people; what a client sent is echoed at most {ECHO_MAX_CHARS} characters long")


class ErrorBody(BaseModel):
    """Every error the service answers: 4xx and 5xx alike."""

    error: ErrorDetail


class ErrorCode(BaseModel):
    code: str
    status: int = Field(description="the HTTP status it comes with")
    retryable: bool = Field(description="the same request may succeed later: retry with backoff, honouring Retry-After")


class ErrorCodes(BaseModel):
    """``GET /v1/errors``: every code the service answers, from its error classes."""

    errors: list[ErrorCode]


class DeploymentReadiness(BaseModel):
    status: str = Field(description="Serve's: HEALTHY, UPSCALING, DOWNSCALING, UPDATING, UNHEALTHY, DEPLOY_FAILED")
    running_replicas: int
    ready: bool


class Readiness(BaseModel):
    status: str = Field(description="ready or not_ready")
    deployments: dict[str, DeploymentReadiness]
    error: ErrorDetail | None = Field(None, description="only when not ready")


class Liveness(BaseModel):
    status: str = Field(description="always alive")


_WHEN = {
    400: "invalid_image, bad_request, invalid_archive, unsafe_archive",
    404: "unknown_style, no_preview, unknown_job, not_found",
    408: "request_timeout: the body stopped arriving (limits.body_idle_timeout_s) or came too slowly (limits.min_body_bytes_per_s)",
    409: "job_not_finished",
    413: "payload_too_large, archive_too_large",
    415: "unsupported_media_type",
    422: "invalid_params (the message names the field), no_face, multiple_faces, face_too_small, max_kb_too_small",
    429: "too_many_uploads: this address has limits.max_uploads_per_client bodies in flight",
    500: "internal_error (the traceback is in the log, never here)",
    503: "overloaded, model_unavailable, service_stopping, uploads_busy (limits.max_uploads_in_flight bodies in flight on this replica)",
    507: "insufficient_storage: the job storage is full or cannot be written",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for these error statuses (500 is always added)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted({*statuses, 500}):
        entry: dict[str, Any] = {"model": ErrorBody, "description": _WHEN[status]}
        if status in (429, 503):
            entry["headers"] = _RETRY_AFTER
        out[status] = entry
    return out


_BINARY = {"type": "string", "format": "binary"}

IMAGE_RESPONSE: dict[str, Any] = {
    "description": "the image, in the format asked for; with n > 1 (generative styles) a zip, or multipart/mixed when accepted",
    "content": {
        "image/png": {"schema": _BINARY},
        "image/jpeg": {"schema": _BINARY},
        "image/webp": {"schema": _BINARY},
        "application/zip": {"schema": _BINARY},
        "multipart/mixed": {"schema": _BINARY},
    },
    "headers": {
        "X-Stylefleet-Style": {"schema": {"type": "string"}},
        "X-Stylefleet-Variant": {"description": "the A/B arm that served it", "schema": {"type": "string"}},
        "X-Stylefleet-Model-Sha256": {"description": "the weights that made it", "schema": {"type": "string"}},
        "X-Stylefleet-Size": {"description": "WxH", "schema": {"type": "string"}},
        "X-Stylefleet-Seed": {"description": "generative styles: the seed of each image", "schema": {"type": "string"}},
        "X-Stylefleet-Checks": {
            "description": "id-photo: the quality findings' codes, comma-separated, or pass",
            "schema": {"type": "string"},
        },
    },
}

PREVIEW_RESPONSE: dict[str, Any] = {"description": "the sample photo in this style", "content": {"image/webp": {"schema": _BINARY}}}

ZIP_RESPONSE: dict[str, Any] = {
    "description": "outputs, manifest.jsonl and failures.jsonl",
    "content": {"application/zip": {"schema": _BINARY}},
}

EVENTS_RESPONSE: dict[str, Any] = {
    "description": "server-sent events: progress (the job) on every change, end at a final status",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}

_PARAM_FIELDS: dict[str, Any] = {
    "variant": {"type": "string", "description": "force an A/B arm"},
    "client_id": {"type": "string", "description": "sticky A/B assignment (or the X-Client-Id header)"},
    "format": {"type": "string", "enum": ["png", "jpeg", "webp"], "default": "png"},
    "quality": {"type": "integer", "minimum": 1, "maximum": 100, "default": 90},
}
_STYLE_PARAMS = "the style's other params, as GET /v1/styles lists them (an unknown one is 422)"

STYLE_REQUEST: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "description": "the image (and style_image for restyle) with the style's params as form fields; "
        "styles that take no file (text-to-image) also take a JSON object of params, or nothing",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": _BINARY, "style_image": _BINARY, **_PARAM_FIELDS},
                    "additionalProperties": {"type": "string", "description": _STYLE_PARAMS},
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": _PARAM_FIELDS,
                    "additionalProperties": {"type": ["string", "number", "boolean"], "description": _STYLE_PARAMS},
                }
            },
        },
    }
}

JOB_REQUEST: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["style"],
                    "properties": {
                        "style": {"type": "string", "description": "a style name (GET /v1/styles)"},
                        "images": {"type": "array", "items": _BINARY, "description": "the images; or one archive"},
                        "archive": {**_BINARY, "description": "a zip of images; or images"},
                        "style_image": _BINARY,
                        **_PARAM_FIELDS,
                    },
                    "additionalProperties": {"type": "string", "description": _STYLE_PARAMS},
                }
            }
        },
    }
}


class JobUrls(BaseModel):
    self_: str = Field(alias="self")
    events: str
    result: str


class JobItem(BaseModel):
    name: str
    status: str = Field(description="pending, ok or failed")
    error: ErrorDetail | None


class Job(BaseModel):
    id: str
    style: str
    status: str = Field(description="queued, running, succeeded, failed or canceled")
    total: int
    done: int = Field(description="never goes down, whichever router replica answers")
    succeeded: int
    failed: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    error: ErrorDetail | None = Field(
        None, description="why the job itself failed (insufficient_storage: its storage is full); null otherwise"
    )
    deleted: bool | None = Field(None, description="DELETE of a job that had ended: its files are removed (later GETs are 404)")
    items: list[JobItem] | None = Field(None, description="each item (GET only)")
    urls: JobUrls | None = Field(None, description="POST only")


def without_validation_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop FastAPI's own 422 (its validation-error shape, which this API never answers: a route
    that can answer 422 declares it with the error model) and the schemas only it used."""
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            response = operation.get("responses", {}).get("422")
            if response is not None and "HTTPValidationError" in str(response):
                del operation["responses"]["422"]
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    return schema
