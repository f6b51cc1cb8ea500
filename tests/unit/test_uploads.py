"""Idle and slow uploads against the real API app, driven at the ASGI level (a client that sends
headers and then nothing cannot be written with a test client). No Ray."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fastapi import FastAPI

from stylefleet.config import Limits
from stylefleet.router.api.application import create_api
from stylefleet.router.catalog import Catalog
from stylefleet.router.core import RouterCore
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
