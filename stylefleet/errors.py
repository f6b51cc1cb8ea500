"""The error tree: each class knows its HTTP status and a stable machine-readable code.

One renderer (``stylefleet.router.api``) turns any of them into
``{"error": {"code": ..., "message": ...}}``; nothing else in the code base builds error bodies.
Each class also says whether trying again later can help (``retryable``): the one retry policy
(``stylefleet.retry``) and the web page (through ``GET /v1/errors``) read it from here.
"""

from __future__ import annotations

import errno
from typing import Any, ClassVar

ECHO_MAX_CHARS = 80


def clip(value: object, max_chars: int = ECHO_MAX_CHARS) -> str:
    """``repr(value)`` cut to ``max_chars``: what a client sent is echoed in an error message
    only as far as it helps them find it (a 5,000-character name comes back as its start)."""
    text = repr(value)
    if len(text) <= max_chars:
        return text
    return f"{text[: max_chars - 1]}…' ({len(str(value))} characters)"


class StylefleetError(Exception):
    """Base class. ``status`` and ``code`` are part of the public API: clients match on ``code``.
    ``retryable``: the same request may succeed later (the service was busy or not ready), so a
    client should retry it with backoff; the others fail the same way every time."""

    status: int = 500
    code: str = "internal_error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}

    def __reduce__(self):  # keep message and headers when Ray pickles the error across actors
        return (_rebuild, (type(self), self.message, self.headers))


def _rebuild(cls: type[StylefleetError], message: str, headers: dict[str, str]) -> StylefleetError:
    return cls(message, headers=headers)


class InvalidImage(StylefleetError):
    status = 400
    code = "invalid_image"


class BadRequest(StylefleetError):
    status = 400
    code = "bad_request"


class UnknownStyle(StylefleetError):
    status = 404
    code = "unknown_style"


class NoPreview(StylefleetError):
    """A style with no preview image (a generative one: a render would cost a diffusion run)."""

    status = 404
    code = "no_preview"


class PayloadTooLarge(StylefleetError):
    status = 413
    code = "payload_too_large"


class ImageTooLargeForMemory(PayloadTooLarge):
    """The image, at the size its params ask for, needs more memory than a replica of its
    deployment may use at all (``memory_budget_bytes``); the message names the largest size taken."""

    code = "image_too_large_for_memory"


class RequestTimeout(StylefleetError):
    """The client stopped sending its request body (or Serve's request_timeout_s ran out)."""

    status = 408
    code = "request_timeout"
    retryable = True


class TooManyUploads(StylefleetError):
    """One client address already has ``limits.max_uploads_per_client`` bodies in flight."""

    status = 429
    code = "too_many_uploads"
    retryable = True

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})

    def __reduce__(self):
        return (TooManyUploads, (self.message,), {"headers": self.headers})


class UploadsBusy(StylefleetError):
    """A router replica already reads ``limits.max_uploads_in_flight`` bodies: the service is
    busy, not this client, so 503 (another replica, or this one shortly, can take it)."""

    status = 503
    code = "uploads_busy"
    retryable = True

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})

    def __reduce__(self):
        return (UploadsBusy, (self.message,), {"headers": self.headers})


class UnsupportedMediaType(StylefleetError):
    status = 415
    code = "unsupported_media_type"


class InvalidParams(StylefleetError):
    status = 422
    code = "invalid_params"


class InvalidPromptLine(InvalidParams):
    """One line of a prompt list cannot be read (not JSON, a param no line may set): that item fails alone."""

    code = "invalid_prompt_line"


class UnusablePhoto(StylefleetError):
    """The photo decoded fine but cannot make what was asked (ID photos): a 422, never a guess."""

    status = 422
    code = "unusable_photo"


class NoFace(UnusablePhoto):
    code = "no_face"


class MultipleFaces(UnusablePhoto):
    code = "multiple_faces"


class FaceTooSmall(UnusablePhoto):
    code = "face_too_small"


class FaceCutOff(UnusablePhoto):
    """Part of the face is outside the photo (checks=strict)."""

    code = "face_cut_off"


class PoseNotFrontal(UnusablePhoto):
    """The head is turned or tipped past the size's limits (checks=strict)."""

    code = "pose_not_frontal"


class HeadTilted(UnusablePhoto):
    """The head is tilted past the size's roll limit (checks=strict); smaller tilts are levelled."""

    code = "head_tilted"


class EyesClosed(UnusablePhoto):
    code = "eyes_closed"


class MouthOpen(UnusablePhoto):
    code = "mouth_open"


class ImageBlurry(UnusablePhoto):
    code = "image_blurry"


class PhotoOutOfSpec(UnusablePhoto):
    """The composed photo, measured again, is outside its size's head or margin rules: never returned."""

    code = "photo_out_of_spec"


class MaxKbTooSmall(UnusablePhoto):
    """Even the lowest JPEG quality allowed does not fit the file into ``max_kb``."""

    code = "max_kb_too_small"


class Overloaded(StylefleetError):
    status = 503
    code = "overloaded"
    retryable = True

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})

    def __reduce__(self):
        return (Overloaded, (self.message,), {"headers": self.headers})


class ModelUnavailable(StylefleetError):
    """Every 503 tells the client when to come back: ``Retry-After`` is always set."""

    status = 503
    code = "model_unavailable"
    retryable = True

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s), **(headers or {})})


class ServiceStopping(StylefleetError):
    """The service is going down: a Ray process it cannot live without died (``stylefleet run``
    stops the rest within seconds). Retry once it has been started again."""

    status = 503
    code = "service_stopping"
    retryable = True

    def __init__(self, message: str, *, retry_after_s: int = 10) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})

    def __reduce__(self):
        return (ServiceStopping, (self.message,), {"headers": self.headers})


class InternalError(StylefleetError):
    """An unexpected failure. The message is generic; the traceback goes to the log only."""

    status = 500
    code = "internal_error"


class InvalidArchive(StylefleetError):
    """The ``archive`` upload is not a readable zip, holds no files, or repeats a member."""

    status = 400
    code = "invalid_archive"


class UnsafeArchive(StylefleetError):
    """A member's path would land outside the job's folder (absolute, ``..``, a symlink): zip slip."""

    status = 400
    code = "unsafe_archive"


class ArchiveTooLarge(StylefleetError):
    """More members, or more uncompressed bytes, than the jobs limits allow: a zip bomb."""

    status = 413
    code = "archive_too_large"


class InsufficientStorage(StylefleetError):
    """Job (or batch output) storage cannot take a write: the disk or quota is full (ENOSPC,
    EDQUOT), or the folder cannot be written at all. Not retried by the retry policy (it waits for
    an operator, not for a busy model); a batch re-run does retry the items it failed."""

    status = 507
    code = "insufficient_storage"

    @classmethod
    def from_os_error(cls, exc: OSError, what: str) -> InsufficientStorage:
        """``what`` (a relative path, never the storage root) and the system's reason."""
        reason = exc.strerror or type(exc).__name__
        name = errno.errorcode.get(exc.errno or 0, "")
        return cls(f"cannot write {clip(what)}: {reason}" + (f" ({name})" if name else ""))


class UnknownJob(StylefleetError):
    status = 404
    code = "unknown_job"


class JobNotFinished(StylefleetError):
    status = 409
    code = "job_not_finished"


def _classes(root: type[StylefleetError]) -> list[type[StylefleetError]]:
    return [root, *(c for sub in root.__subclasses__() for c in _classes(sub))]


# Every error class lives in this module, so the tables below are complete once it is imported.
ERROR_CLASSES: dict[str, type[StylefleetError]] = {c.code: c for c in _classes(StylefleetError)}  # a subclass wins a shared code
"""code -> class: an error that came over HTTP is judged by its class through its code."""

RETRYABLE_CODES: frozenset[str] = frozenset(code for code, cls in ERROR_CLASSES.items() if cls.retryable)


def is_retryable(exc: BaseException) -> bool:
    """True for a stylefleet error whose class says trying again later can help."""
    return isinstance(exc, StylefleetError) and exc.retryable


def describe_codes() -> list[dict[str, Any]]:
    """Every code with its HTTP status and whether to retry it, sorted by code (``GET /v1/errors``)."""
    return [{"code": code, "status": cls.status, "retryable": cls.retryable} for code, cls in sorted(ERROR_CLASSES.items())]
