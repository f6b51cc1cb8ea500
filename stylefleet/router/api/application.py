"""The HTTP API as a plain FastAPI app over an injected backend, so it is testable without Ray:
one router per area (styles, jobs, health, errors, the web page), the error renderer, the OpenAPI
document without FastAPI's validation shape, and the body limits around it all."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from stylefleet.config import Limits
from stylefleet.router.api import errors, health, styles
from stylefleet.router.api import jobs as jobs_routes
from stylefleet.router.api.docs import add_docs
from stylefleet.router.api.errors import add_error_handlers, error_response
from stylefleet.router.api.limits import BodyLimit
from stylefleet.router.api.security import SecurityHeaders
from stylefleet.router.api.state import Services
from stylefleet.router.api.web import add_web_page
from stylefleet.router.clients import ClientResolver
from stylefleet.router.core import RouterCore
from stylefleet.router.jobs.manager import JobManager
from stylefleet.router.openapi import without_validation_errors
from stylefleet.router.previews import PreviewCache
from stylefleet.router.uploads import UploadGuard


def create_api(
    core: RouterCore, limits: Limits, previews: PreviewCache | None = None, jobs: JobManager | None = None
) -> FastAPI:
    """The app; the ``/v1/jobs`` routes only with a job manager."""
    app = FastAPI(
        title="stylefleet",
        description="Image AI styles served on Ray Serve. Errors are {'error': {'code', 'message'}}.",
        version="0.1.0",
        docs_url=None,  # FastAPI's loads Swagger UI from a CDN: ours, add_docs, serves its own copy
        redoc_url=None,  # ReDoc injects inline styles, which the Content-Security-Policy forbids
    )
    app.state.services = Services(core, limits, previews or PreviewCache(core.catalog, core.backend), jobs)
    add_error_handlers(app)
    app.include_router(styles.router)
    app.include_router(health.router)
    app.include_router(errors.router)
    add_web_page(app)
    add_docs(app)
    overrides = {}
    if jobs is not None:
        app.include_router(jobs_routes.router)
        overrides[("POST", "/v1/jobs")] = (jobs.config.max_upload_bytes, "jobs.max_upload_bytes")
    _document(app)
    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes, overrides=overrides)
    app.add_middleware(
        UploadGuard,
        render=error_response,
        body_idle_timeout_s=limits.body_idle_timeout_s,
        max_uploads_per_client=limits.max_uploads_per_client,
        max_uploads_in_flight=limits.max_uploads_in_flight,
        min_body_bytes_per_s=limits.min_body_bytes_per_s,
        body_rate_grace_s=limits.body_rate_grace_s,
        resolver=ClientResolver(limits.trusted_proxies, limits.client_address_header),
    )
    app.add_middleware(health.GoingDown, render=error_response)  # before any body is read
    app.add_middleware(SecurityHeaders)  # outermost: every answer carries them, the limits' and GoingDown's too
    return app


def _document(app: FastAPI) -> None:
    """The OpenAPI document, built once, without FastAPI's validation error shape (ours is ErrorBody)."""
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = without_validation_errors(default_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
