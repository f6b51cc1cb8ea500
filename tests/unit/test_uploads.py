"""Idle and slow uploads against the real API app, driven at the ASGI level (a client that sends
headers and then nothing cannot be written with a test client). No Ray."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fastapi import FastAPI
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from stylefleet.config import RAY_ENVIRONMENT, Limits
from stylefleet.errors import StylefleetError
from stylefleet.router.api.application import create_api
from stylefleet.router.api.errors import error_response
from stylefleet.router.catalog import Catalog
from stylefleet.router.core import RouterCore
from stylefleet.router.uploads import UploadGuard
from stylefleet.spec import AppSpec
from tests.unit.apps import shipped_args
from tests.unit.fakes import FakeBackend

IDLE_S = 0.2


@pytest.fixture()
def app() -> FastAPI:
    limits = Limits(max_upload_bytes=1_000_000, max_pixels=10_000_000, body_idle_timeout_s=IDLE_S, max_uploads_per_client=2)
    core = RouterCore(Catalog(AppSpec.from_args(shipped_args())), FakeBackend(), max_pixels=limits.max_pixels)
    return create_api(core, limits)


def _scope(method: str, path: str, client: str, body_bytes: int = 0) -> dict[str, Any]:
    headers = [(b"host", b"test")]
    if body_bytes:
        headers += [(b"content-type", b"multipart/form-data; boundary=xyz"), (b"content-length", str(body_bytes).encode())]
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
        "client": (client, 5000), "server": ("127.0.0.1", 8000),
    }


async def _call(app: FastAPI, scope: dict[str, Any], silent: asyncio.Event | None = None) -> tuple[int, dict[str, str], Any]:
    """One request whose body never comes (``silent`` is set only to end the test)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if scope["method"] == "GET":
            return {"type": "http.request", "body": b"", "more_body": False}
        await (silent or asyncio.Event()).wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, json.loads(body)


def test_an_idle_body_ends_with_a_json_408(app: FastAPI) -> None:
    async def scenario() -> tuple[int, dict[str, str], Any]:
        return await asyncio.wait_for(_call(app, _scope("POST", "/v1/styles/frost", "10.0.0.1", 1000)), timeout=5)

    status, _, body = asyncio.run(scenario())
    assert status == 408 and body["error"]["code"] == "request_timeout"


def test_one_address_cannot_hold_more_than_its_uploads_and_probes_still_answer(app: FastAPI) -> None:
    async def scenario() -> list[Any]:
        silent = asyncio.Event()
        hung = [asyncio.create_task(_call(app, _scope("POST", "/v1/styles/frost", "10.0.0.1", 1000), silent)) for _ in range(2)]
        await asyncio.sleep(0.01)  # both bodies are being read now
        third = await asyncio.wait_for(_call(app, _scope("POST", "/v1/styles/frost", "10.0.0.1", 1000)), timeout=IDLE_S / 2)
        live = await asyncio.wait_for(_call(app, _scope("GET", "/healthz/live", "10.0.0.1")), timeout=IDLE_S / 2)
        other = asyncio.create_task(_call(app, _scope("POST", "/v1/styles/frost", "10.0.0.2", 1000), silent))
        timed_out = await asyncio.wait_for(asyncio.gather(*hung, other), timeout=5)
        again = await asyncio.wait_for(_call(app, _scope("POST", "/v1/styles/frost", "10.0.0.1", 1000)), timeout=5)
        return [third, live, timed_out, again]

    third, live, timed_out, again = asyncio.run(scenario())
    assert third[0] == 429 and third[1]["retry-after"] == "1" and third[2]["error"]["code"] == "too_many_uploads"
    assert live[0] == 200
    assert [t[0] for t in timed_out] == [408, 408, 408]  # another address was not refused
    assert again[0] == 408  # the address's slots were given back: refused no more, only timed out


class _Upload:
    """One request driven by the test: ``reading`` is set once the app asks for body, ``release``
    ends the body (empty: the app answers it as a bad form); a GET's empty body is there at once."""

    def __init__(self, app: Any, scope: dict[str, Any]) -> None:
        self.app, self.scope = app, scope
        self.reading, self.release = asyncio.Event(), asyncio.Event()
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        self.reading.set()
        if self.scope["method"] == "GET":
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.release.wait()
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    async def run(self) -> tuple[int, dict[str, str], Any]:
        await self.app(self.scope, self.receive, self.send)
        start = next(m for m in self.sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")
        return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, json.loads(body)


def _api(**limits: Any) -> FastAPI:
    core = RouterCore(Catalog(AppSpec.from_args(shipped_args())), FakeBackend(), max_pixels=10_000_000)
    return create_api(core, Limits(max_upload_bytes=1_000_000, body_idle_timeout_s=30, **limits))


def _forwarded(scope: dict[str, Any], xff: str) -> dict[str, Any]:
    scope["headers"] = [*scope["headers"], (b"x-forwarded-for", xff.encode())]
    return scope


async def _hold(app: Any, scopes: list[dict[str, Any]]) -> tuple[list[_Upload], list[asyncio.Task[Any]]]:
    """Start these uploads and return once the app is reading each body (so each is counted)."""
    uploads = [_Upload(app, scope) for scope in scopes]
    tasks = [asyncio.create_task(u.run()) for u in uploads]
    await asyncio.wait_for(asyncio.gather(*(u.reading.wait() for u in uploads)), timeout=5)
    assert not any(u.sent for u in uploads)  # admitted: each waits for its body, none was answered
    return uploads, tasks


async def _end(uploads: list[_Upload], tasks: list[asyncio.Task[Any]]) -> list[Any]:
    for upload in uploads:
        upload.release.set()
    return await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)


async def _once(app: Any, scope: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    upload = _Upload(app, scope)
    upload.release.set()  # a body that was admitted ends at once
    return await asyncio.wait_for(upload.run(), timeout=5)


def test_the_replica_caps_bodies_from_all_addresses_and_probes_still_answer() -> None:
    app = _api(max_uploads_per_client=2, max_uploads_in_flight=3)

    async def scenario() -> list[Any]:
        held = await _hold(app, [_scope("POST", "/v1/styles/frost", f"10.0.0.{i}", 1000) for i in range(1, 4)])
        busy = await _once(app, _scope("POST", "/v1/styles/frost", "10.0.0.9", 1000))
        probes = [await _once(app, _scope("GET", path, "10.0.0.9")) for path in ("/healthz/live", "/v1/styles")]
        await _end(*held)
        after = await _once(app, _scope("POST", "/v1/styles/frost", "10.0.0.9", 1000))
        return [busy, probes, after]

    busy, probes, after = asyncio.run(scenario())
    assert busy[0] == 503 and busy[2]["error"]["code"] == "uploads_busy" and busy[1]["retry-after"] == "1"
    assert [p[0] for p in probes] == [200, 200]
    assert after[0] != 503  # the slots came back once the bodies ended


def test_a_spoofed_forwarded_for_from_an_untrusted_peer_changes_nothing() -> None:
    """As Serve serves it: inside uvicorn's proxy-headers middleware, with the FORWARDED_ALLOW_IPS
    every Ray process of the service gets (uvicorn's own default trusts 127.0.0.1)."""
    trusted = RAY_ENVIRONMENT.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
    app = ProxyHeadersMiddleware(_api(max_uploads_per_client=2, max_uploads_in_flight=8), trusted_hosts=trusted)  # type: ignore[arg-type]

    async def scenario() -> tuple[int, dict[str, str], Any]:
        spoofed = [_forwarded(_scope("POST", "/v1/styles/frost", "127.0.0.1", 1000), f"198.51.100.{i}") for i in range(3)]
        held = await _hold(app, spoofed[:2])
        third = await _once(app, spoofed[2])
        await _end(*held)
        return third

    status, _, body = asyncio.run(scenario())
    assert status == 429 and body["error"]["code"] == "too_many_uploads"


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_share() -> None:
    app = _api(max_uploads_per_client=1, max_uploads_in_flight=8, trusted_proxies=["127.0.0.0/8"])

    async def scenario() -> list[Any]:
        clients = [_forwarded(_scope("POST", "/v1/styles/frost", "127.0.0.1", 1000), f"198.51.100.{i}") for i in range(3)]
        held = await _hold(app, clients)  # three bodies through one proxy, one each: none refused
        same = await _once(app, _forwarded(_scope("POST", "/v1/styles/frost", "127.0.0.1", 1000), "6.6.6.6, 198.51.100.0"))
        await _end(*held)
        return [same]

    [same] = asyncio.run(scenario())
    assert same[0] == 429  # 198.51.100.0 already has its one, whatever it wrote left of it


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _drain(scope: Any, receive: Any, send: Any) -> None:
    """An app that reads the whole body, then answers 200; errors rendered as the API renders them."""
    try:
        while (await receive()).get("more_body", False):
            pass
    except StylefleetError as exc:
        await error_response(exc)(scope, receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _trickle(clock: _Clock, chunk: bytes, chunks: int, step_s: float) -> Any:
    """A body of ``chunks`` chunks, each ``step_s`` after the last on the fake clock."""
    sent = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        clock.now += step_s
        sent += 1
        return {"type": "http.request", "body": chunk, "more_body": sent < chunks}

    return receive


@pytest.mark.parametrize(("step_s", "status"), [
    (0.05, 200),  # 100 bytes per 0.05 s: 2000 B/s, over the minimum
    (0.5, 408),  # 200 B/s: behind 1000 B/s once the 1 s grace is spent
])
def test_a_body_under_the_minimum_rate_ends_with_408_after_its_grace(step_s: float, status: int) -> None:
    clock = _Clock()
    guard = UploadGuard(
        _drain, error_response, body_idle_timeout_s=30, max_uploads_per_client=4, max_uploads_in_flight=4,
        min_body_bytes_per_s=1000, body_rate_grace_s=1.0, clock=clock,
    )

    async def scenario() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async def run() -> None:
            await guard(_scope("POST", "/v1/styles/frost", "10.0.0.1", 4000), _trickle(clock, b"x" * 100, 40, step_s), send)

        await asyncio.wait_for(run(), timeout=5)  # the clock is fake: no real wait either way
        return sent

    sent = asyncio.run(scenario())
    assert sent[0]["status"] == status
    if status == 408:
        assert b"limits.min_body_bytes_per_s" in sent[1]["body"]
    assert guard.in_flight == 0 and not guard.uploading


def test_a_slow_start_is_forgiven_within_the_grace() -> None:
    clock = _Clock()
    guard = UploadGuard(
        _drain, error_response, body_idle_timeout_s=30, max_uploads_per_client=4, max_uploads_in_flight=4,
        min_body_bytes_per_s=1000, body_rate_grace_s=5.0, clock=clock,
    )
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        clock.now += 4.0  # one stall of 4 s, then the whole body at once
        return {"type": "http.request", "body": b"x" * 4000, "more_body": False}

    asyncio.run(asyncio.wait_for(guard(_scope("POST", "/v1/styles/frost", "10.0.0.1", 4000), receive, send), timeout=5))
    assert sent[0]["status"] == 200


def test_a_full_replica_gives_a_silent_bodys_slot_to_a_new_upload() -> None:
    clock = _Clock()
    guard = UploadGuard(
        _drain, error_response, body_idle_timeout_s=30, max_uploads_per_client=4, max_uploads_in_flight=2,
        min_body_bytes_per_s=1000, body_rate_grace_s=10.0, clock=clock,
    )

    async def scenario() -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]], list[dict[str, Any]]]:
        release = asyncio.Event()
        reading = [asyncio.Event(), asyncio.Event()]
        slow_sent: list[list[dict[str, Any]]] = [[], []]

        def slow(i: int) -> Any:
            async def receive() -> dict[str, Any]:
                reading[i].set()
                await release.wait()
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: dict[str, Any]) -> None:
                slow_sent[i].append(message)

            return guard(_scope("POST", "/v1/styles/frost", f"10.0.0.{i}", 4000), receive, send)

        async def fast(sent: list[dict[str, Any]]) -> None:
            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b"x" * 4000, "more_body": False}

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            await guard(_scope("POST", "/v1/styles/frost", "10.0.0.9", 4000), receive, send)

        tasks = [asyncio.create_task(slow(i)) for i in range(2)]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in reading)), timeout=5)
        young: list[dict[str, Any]] = []
        await asyncio.wait_for(fast(young), timeout=5)  # both bodies are too young to judge
        clock.now += 2.0  # both silent for 2 s
        admitted: list[dict[str, Any]] = []
        await asyncio.wait_for(fast(admitted), timeout=5)
        release.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)
        return slow_sent, young, admitted

    slow_sent, young, admitted = asyncio.run(scenario())
    assert young[0]["status"] == 503 and b"uploads_busy" in young[1]["body"]
    assert admitted[0]["status"] == 200
    evicted = [sent for sent in slow_sent if sent[0]["status"] == 408]
    assert len(evicted) == 1 and b"its slot went to a faster one" in evicted[0][1]["body"]
    assert guard.in_flight == 0 and not guard.uploading
