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
  replica (429 ``too_many_uploads``, with ``Retry-After``, before any of the body is read);
- the replica reads at most ``max_uploads_in_flight`` bodies, whoever sends them. When that many
  are in flight, a new body takes the slot of the slowest one that is behind (silent for half a
  second, or under ``min_body_bytes_per_s`` on average), which ends with 408 at once; only when
  none is behind is it refused (503 ``uploads_busy``).

``max_uploads_in_flight`` is below ``router.max_ongoing_requests`` (``AppConfig`` checks it), so
however many addresses send slow bodies, the rest of the slots stay free: requests without a body
(GET, the ``/healthz`` probes) are never counted nor delayed, and a normal upload is not kept out
by slow ones (it takes a slow one's place). The client address is ``ClientResolver``'s (the real peer,
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


JUDGE_AFTER_S = 0.5  # a body younger than this is never judged slow, and a pause shorter than this is no pause


class Body:
    """One body being read: when it is too late (silent for ``idle_s``, or behind its minimum
    rate), and whether the guard took its slot for a newcomer (``evicted``)."""

    def __init__(self, client: str, idle_s: float, min_bytes_per_s: float, grace_s: float, started: float) -> None:
        self.client = client
        self.idle_s = idle_s
        self.min_bytes_per_s = min_bytes_per_s
        self.grace_s = grace_s
        self.started = started
        self.bytes = 0
        self.last = started  # when its last bytes came
        self.evicted = False
        self.read: asyncio.Future[Message] | None = None  # the receive() under way, cancelled on eviction

    def received(self, n: int, now: float) -> None:
        self.bytes += n
        if n:
            self.last = now

    def rate(self, now: float) -> float:
        return self.bytes / max(now - self.started, 1e-9)

    def behind(self, now: float) -> bool:
        """Old enough to judge, and silent for ``JUDGE_AFTER_S`` or slower on average than the
        minimum rate: a body sent at any usable speed is neither."""
        if now - self.started < JUDGE_AFTER_S:
            return False
        return now - self.last >= JUDGE_AFTER_S or (self.min_bytes_per_s > 0 and self.rate(now) < self.min_bytes_per_s)

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
    error handler.

    With ``max_uploads_in_flight`` bodies in flight, a new one takes the slot of the slowest body
    that is behind (at least ``JUDGE_AFTER_S`` old, and silent that long or slower on average than
    ``min_body_bytes_per_s``), which ends with 408 at once; only when none is behind is the
    newcomer refused (503 ``uploads_busy``). So slow bodies fill the cap but never keep a normal
    upload out, and the cap itself holds.
    """

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
        self.bodies: set[Body] = set()

    @property
    def in_flight(self) -> int:
        return len(self.bodies)

    def client_of(self, scope: Scope) -> str:
        return self.resolver((scope.get("client") or (None, 0))[0], scope.get("headers") or [])

    def _admit(self, client: str) -> Body | StylefleetError:
        if self.uploading[client] >= self.max_uploads_per_client:
            return TooManyUploads(
                f"{self.uploading[client]} uploads from your address are already in progress here "
                f"(limits.max_uploads_per_client = {self.max_uploads_per_client}); finish them first"
            )
        now = self.clock()
        if len(self.bodies) >= self.max_uploads_in_flight:
            slowest = min((b for b in self.bodies if b.behind(now)), key=lambda b: b.rate(now), default=None)
            if slowest is None:
                return UploadsBusy(
                    f"this router replica is already reading {len(self.bodies)} request bodies "
                    f"(limits.max_uploads_in_flight = {self.max_uploads_in_flight}); retry shortly"
                )
            slowest.evicted = True
            self._release(slowest)
            if slowest.read is not None:
                slowest.read.cancel()
        body = Body(client, self.body_idle_timeout_s, self.min_body_bytes_per_s, self.body_rate_grace_s, now)
        self.bodies.add(body)
        self.uploading[client] += 1
        return body

    def _release(self, body: Body) -> None:
        if body in self.bodies:
            self.bodies.discard(body)
            self.uploading[body.client] -= 1
            if self.uploading[body.client] <= 0:
                del self.uploading[body.client]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        admitted = self._admit(self.client_of(scope))
        if isinstance(admitted, StylefleetError):
            await self.render(admitted)(scope, receive, send)
            return
        body = admitted

        async def timed() -> Message:
            if body not in self.bodies and not body.evicted:  # the body is in: later reads wait for a disconnect
                return await receive()
            wait_s, by_rate = body.timeout(self.clock())
            if body.evicted or wait_s <= 0:
                self._release(body)
                raise self._late(body, by_rate)
            read = body.read = asyncio.ensure_future(receive())
            try:
                finished, _ = await asyncio.wait({read}, timeout=wait_s)
            except BaseException:
                read.cancel()
                raise
            finally:
                body.read = None
            if body.evicted or not finished:
                read.cancel()
                self._release(body)
                raise self._late(body, by_rate)
            message = read.result()
            if message["type"] == "http.request":
                body.received(len(message.get("body", b"")), self.clock())
            if message["type"] != "http.request" or not message.get("more_body", False):
                self._release(body)
            return message

        try:
            await self.app(scope, timed, send)
        finally:
            self._release(body)

    def _late(self, body: Body, by_rate: bool) -> RequestTimeout:
        elapsed = self.clock() - body.started
        if body.evicted:
            return RequestTimeout(
                f"the request body arrived too slowly ({body.bytes} bytes in {elapsed:.1f} s, the last "
                f"{self.clock() - body.last:.1f} s ago) while this replica's upload slots were full "
                f"(limits.max_uploads_in_flight = {self.max_uploads_in_flight}); its slot went to a faster one"
            )
        if by_rate:
            return RequestTimeout(
                f"the request body arrived too slowly ({body.bytes} bytes in {elapsed:.1f} s; "
                f"limits.min_body_bytes_per_s = {self.min_body_bytes_per_s:g} after "
                f"limits.body_rate_grace_s = {self.body_rate_grace_s:g}); send the body faster"
            )
        return RequestTimeout(
            f"no request body byte for {self.body_idle_timeout_s:g} s (limits.body_idle_timeout_s); "
            "send the body without pausing"
        )
