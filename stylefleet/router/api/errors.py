"""Every error the HTTP API answers, rendered one way: ``{"error": {"code", "message"}}`` with the
class's status and headers (``Retry-After``); tracebacks go to the log, never to the client. And
``GET /v1/errors``: the codes, their status, and whether retrying can help (the web page reads it,
so it keeps no list of its own)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from stylefleet.deployments.log import serve_logger
from stylefleet.errors import InternalError, InvalidParams, StylefleetError, describe_codes
from stylefleet.router.api.security import add_security_headers
from stylefleet.router.openapi import ErrorCodes, errors

logger = serve_logger(__name__)

_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}

router = APIRouter()


def error_response(exc: StylefleetError) -> JSONResponse:
    """The one renderer. 5xx are logged (with the traceback for an internal error)."""
    if exc.status >= 500:
        logger.error("%s: %s", exc.code, exc.message, exc_info=exc if isinstance(exc, InternalError) else None)
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=exc.headers)


async def _stylefleet_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StylefleetError)
    return error_response(exc)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(InvalidParams(str(exc.errors())))


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    """Starlette's own 404/405 (no such route, a static file that is not there) in our shape."""
    assert isinstance(exc, StarletteHTTPException)
    err = StylefleetError(str(exc.detail))
    err.status, err.code = exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(err)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error", exc_info=exc)
    response = error_response(InternalError("unexpected server error; it was logged"))
    # Starlette answers this one from its outermost middleware, outside SecurityHeaders.
    add_security_headers(response.headers)
    return response


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StylefleetError, _stylefleet_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


@router.get("/v1/errors", response_model=ErrorCodes, responses=errors())
async def error_codes() -> dict[str, object]:
    """Every error code the service answers with its HTTP status, and whether the same request
    may succeed later (``retryable``: retry it with backoff, honouring ``Retry-After``)."""
    return {"errors": describe_codes()}
