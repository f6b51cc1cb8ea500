"""Slow and idle uploads must not hold the router's slots.

Serve hands a request to a router replica as soon as its headers arrive, and the body follows
through that replica's slot (``max_ongoing_requests``). Clients that send headers and then
nothing held every slot until Serve's ``request_timeout_s`` (120 s), ``/healthz`` included.
``UploadGuard`` bounds that:

- a body that goes quiet for ``body_idle_timeout_s`` ends its request with 408 ``request_timeout``;
- one client address may have at most ``max_uploads_per_client`` bodies being read at once on a
  replica; more are refused at once with 429 ``too_many_uploads`` and ``Retry-After``, before any
  of their body is read. Requests without a body (GET, probes) are never counted.

So one address can hold at most ``max_uploads_per_client`` slots, each for at most the idle
timeout past its last byte, and the rest of the replica's slots stay free for everyone else.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stylefleet.errors import RequestTimeout, StylefleetError, TooManyUploads

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _has_body(scope: Scope) -> bool:
    if scope.get("method") not in BODY_METHODS:
        return False
    headers = dict(scope.get("headers") or [])
    length = headers.get(b"content-length")
    return b"chunked" in headers.get(b"transfer-encoding", b"") or (length is not None and length.strip() not in (b"", b"0"))


class UploadGuard:
    """ASGI middleware: an idle timeout on body reads and a per-address cap on bodies in flight.
    The errors it raises while the app reads the body are rendered by the app's error handler."""

    def __init__(
        self,
        app: ASGIApp,
        render: Callable[[StylefleetError], Response],
        body_idle_timeout_s: float,
        max_uploads_per_client: int,
    ) -> None:
        self.app = app
        self.render = render
        self.body_idle_timeout_s = body_idle_timeout_s
        self.max_uploads_per_client = max_uploads_per_client
        self.uploading: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("unknown", 0))[0]
        if self.uploading[client] >= self.max_uploads_per_client:
            refusal = TooManyUploads(
                f"{self.uploading[client]} uploads from your address are already in progress here "
                f"(limits.max_uploads_per_client = {self.max_uploads_per_client}); finish them first"
            )
            await self.render(refusal)(scope, receive, send)
            return
        self.uploading[client] += 1
        counted = True

        def done() -> None:
            nonlocal counted
            if counted:
                counted = False
                self.uploading[client] -= 1
                if self.uploading[client] <= 0:
                    del self.uploading[client]

        async def timed() -> Message:
            if not counted:  # the body is in: later reads wait for a disconnect, unbounded by design
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout=self.body_idle_timeout_s)
            except asyncio.TimeoutError:
                done()
                raise RequestTimeout(
                    f"no request body byte for {self.body_idle_timeout_s:g} s (limits.body_idle_timeout_s); "
                    "send the body without pausing"
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                done()
            return message

        try:
            await self.app(scope, timed, send)
        finally:
            done()
