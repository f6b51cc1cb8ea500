"""Slow and idle uploads must not hold the router's slots.

Serve hands a request to a router replica as soon as its headers arrive (its HTTP proxy and
direct ingress alike), and the body follows through that replica's slot
(``router.max_ongoing_requests``). A client that sends headers and then a byte now and then holds
its slot for as long as it likes; a few hundred of them hold every slot, ``/healthz/live``
included. ``UploadGuard`` bounds the time and the number of such slots:

- a body that goes quiet for ``body_idle_timeout_s``, or arrives slower than
  ``min_body_bytes_per_s`` once its ``body_rate_grace_s`` is spent, ends with 408
  ``request_timeout``. The body must have sent ``min_body_bytes_per_s * (t - grace)`` bytes by
  every moment ``t`` of its upload: a short stall early on is forgiven, a trickle is not;
- one client address may have at most ``max_uploads_per_client`` bodies being read at once on a
  replica (429 ``too_many_uploads``), and the replica at most ``max_uploads_in_flight`` in all,
  whoever sends them (503 ``uploads_busy``); both refuse at once, with ``Retry-After``, before any
  of the body is read, so a refusal holds its slot only for that moment.

``max_uploads_in_flight`` is below ``router.max_ongoing_requests`` (``AppConfig`` checks it), so
however many addresses send slow bodies, the rest of the slots stay free: requests without a body
(GET, the ``/healthz`` probes) are never counted nor delayed, and a normal upload waits at most
for a slot, never behind the slow ones. The client address is ``ClientResolver``'s (the real peer,
or behind ``trusted_proxies`` the hop they saw), never a header an untrusted client sent.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stylefleet.errors import RequestTimeout, StylefleetError, TooManyUploads, UploadsBusy
from stylefleet.router.clients import ClientResolver

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _has_body(scope: Scope) -> bool:
    if scope.get("method") not in BODY_METHODS:
        return False
    headers = dict(scope.get("headers") or [])
    length = headers.get(b"content-length")
    return b"chunked" in headers.get(b"transfer-encoding", b"") or (length is not None and length.strip() not in (b"", b"0"))


class BodyClock:
    """When a body being read is too late: silent for ``idle_s``, or behind its minimum rate.

    ``timeout(now)`` is how long the next read may wait; ``received(n, now)`` counts what came.
    """

    def __init__(self, idle_s: float, min_bytes_per_s: float, grace_s: float, started: float) -> None:
        self.idle_s = idle_s
        self.min_bytes_per_s = min_bytes_per_s
        self.grace_s = grace_s
        self.started = started
        self.bytes = 0

    def received(self, n: int) -> None:
        self.bytes += n

    def rate_deadline(self) -> float:
        """The moment the bytes received so far fall behind the minimum rate."""
        if self.min_bytes_per_s <= 0:
            return float("inf")
        return self.started + self.grace_s + self.bytes / self.min_bytes_per_s

    def timeout(self, now: float) -> tuple[float, bool]:
        """(how long the next read may take, whether the rate rather than the idle timeout bounds it)."""
        by_rate = self.rate_deadline() - now
        return (by_rate, True) if by_rate < self.idle_s else (self.idle_s, False)


class UploadGuard:
    """ASGI middleware: time bounds on body reads and caps on bodies in flight, per client address
    and per replica. The errors it raises while the app reads the body are rendered by the app's
    error handler."""

    def __init__(
        self,
        app: ASGIApp,
        render: Callable[[StylefleetError], Response],
        body_idle_timeout_s: float,
        max_uploads_per_client: int,
        max_uploads_in_flight: int,
        min_body_bytes_per_s: float = 0.0,
        body_rate_grace_s: float = 0.0,
        resolver: ClientResolver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.render = render
        self.body_idle_timeout_s = body_idle_timeout_s
        self.max_uploads_per_client = max_uploads_per_client
        self.max_uploads_in_flight = max_uploads_in_flight
        self.min_body_bytes_per_s = min_body_bytes_per_s
        self.body_rate_grace_s = body_rate_grace_s
        self.resolver = resolver or ClientResolver()
        self.clock = clock
        self.uploading: Counter[str] = Counter()
        self.in_flight = 0

    def client_of(self, scope: Scope) -> str:
        return self.resolver((scope.get("client") or (None, 0))[0], scope.get("headers") or [])

    def _refusal(self, client: str) -> StylefleetError | None:
        if self.uploading[client] >= self.max_uploads_per_client:
            return TooManyUploads(
                f"{self.uploading[client]} uploads from your address are already in progress here "
                f"(limits.max_uploads_per_client = {self.max_uploads_per_client}); finish them first"
            )
        if self.in_flight >= self.max_uploads_in_flight:
            return UploadsBusy(
                f"this router replica is already reading {self.in_flight} request bodies "
                f"(limits.max_uploads_in_flight = {self.max_uploads_in_flight}); retry shortly"
            )
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        client = self.client_of(scope)
        refusal = self._refusal(client)
        if refusal is not None:
            await self.render(refusal)(scope, receive, send)
            return
        self.uploading[client] += 1
        self.in_flight += 1
        counted = True
        clock = BodyClock(self.body_idle_timeout_s, self.min_body_bytes_per_s, self.body_rate_grace_s, self.clock())

        def done() -> None:
            nonlocal counted
            if counted:
                counted = False
                self.in_flight -= 1
                self.uploading[client] -= 1
                if self.uploading[client] <= 0:
                    del self.uploading[client]

        async def timed() -> Message:
            if not counted:  # the body is in: later reads wait for a disconnect, unbounded by design
                return await receive()
            wait_s, by_rate = clock.timeout(self.clock())
            try:
                if wait_s <= 0:
                    raise asyncio.TimeoutError
                message = await asyncio.wait_for(receive(), timeout=wait_s)
            except asyncio.TimeoutError:
                done()
                raise self._timeout(clock, by_rate) from None
            if message["type"] == "http.request":
                clock.received(len(message.get("body", b"")))
            if message["type"] != "http.request" or not message.get("more_body", False):
                done()
            return message

        try:
            await self.app(scope, timed, send)
        finally:
            done()

    def _timeout(self, clock: BodyClock, by_rate: bool) -> RequestTimeout:
        if by_rate:
            return RequestTimeout(
                f"the request body arrived too slowly ({clock.bytes} bytes in {self.clock() - clock.started:.1f} s; "
                f"limits.min_body_bytes_per_s = {self.min_body_bytes_per_s:g} after "
                f"limits.body_rate_grace_s = {self.body_rate_grace_s:g}); send the body faster"
            )
        return RequestTimeout(
            f"no request body byte for {self.body_idle_timeout_s:g} s (limits.body_idle_timeout_s); "
            "send the body without pausing"
        )
