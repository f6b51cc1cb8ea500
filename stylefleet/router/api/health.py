"""``/healthz``: liveness and readiness probes (the readiness rules are ``stylefleet.router.health``'s)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from stylefleet.errors import ServiceStopping, StylefleetError
from stylefleet.lifecycle import down_reason
from stylefleet.router.api.state import services
from stylefleet.router.health import NOT_READY_RETRY_AFTER_S, going_down, readiness
from stylefleet.router.openapi import Liveness, Readiness

_READINESS: dict[int | str, dict[str, Any]] = {
    200: {"model": Readiness, "description": "ready"},
    503: {"model": Readiness, "description": "not ready", "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
}

router = APIRouter(tags=["health"])


@router.get("/healthz/live", response_model=Liveness)
async def healthz_live() -> dict[str, str]:
    """Liveness: the proxy and a router replica answer (the models are not asked). For a
    Kubernetes livenessProbe."""
    return {"status": "alive"}


@router.get("/healthz/ready", responses=_READINESS)
async def healthz_ready(request: Request) -> JSONResponse:
    """Readiness: 200 while every deployment has a running replica (busy and scaling up
    included), 503 with Retry-After otherwise. For a Kubernetes readinessProbe."""
    reason = down_reason()
    if reason is not None:
        return JSONResponse(going_down(reason), status_code=503, headers={"Retry-After": str(NOT_READY_RETRY_AFTER_S)})
    ready, body = readiness(await services(request).core.backend.health())
    headers = {} if ready else {"Retry-After": str(NOT_READY_RETRY_AFTER_S)}
    return JSONResponse(body, status_code=200 if ready else 503, headers=headers)


@router.get("/healthz", responses=_READINESS)
async def healthz(request: Request) -> JSONResponse:
    """The same as ``/healthz/ready`` (kept for existing checks)."""
    return await healthz_ready(request)


class GoingDown:
    """While the service is going down (``stylefleet.lifecycle``), every request other than the
    health probes is answered 503 ``service_stopping`` at once, before anything waits on Ray; the
    probes answer for themselves (readiness fails, liveness holds: this replica does answer)."""

    def __init__(self, app: ASGIApp, render: Callable[[StylefleetError], Any]) -> None:
        self.app = app
        self.render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith("/healthz"):
            reason = down_reason()
            if reason is not None:
                await self.render(ServiceStopping(reason))(scope, receive, send)
                return
        await self.app(scope, receive, send)
