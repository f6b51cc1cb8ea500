"""The router replica's direct-ingress port survives a restart: Serve's own HTTP server function,
called the way a direct-ingress replica calls it, on a port with a connection in TIME_WAIT. No
Ray cluster: the server is uvicorn on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from ray.serve._private import constants, replica
from ray.serve.config import HTTPOptions

from stylefleet.router.ingress import ignore_uvicorn_forwarded_headers, reuse_direct_ingress_port


def port_in_time_wait(*, reuse: bool) -> int:
    """A loopback port whose listener is gone and whose one connection the server side closed
    first, as a router replica leaves its port behind (TIME_WAIT lasts 60 s on Linux). Linux lets
    a new socket bind past TIME_WAIT only when it and the old one both asked for reuse: ``reuse``
    is the predecessor's choice, a router replica with the patch (or Serve's plain one)."""
    with socket.socket() as listener:
        if reuse:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = int(listener.getsockname()[1])
        client = socket.create_connection(("127.0.0.1", port))
        served, _ = listener.accept()
        served.close()  # the server closes first: TIME_WAIT is on the server's side, on `port`
        client.recv(1)  # sees the close
        client.close()
    return port


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:  # never called
    raise AssertionError("no request is sent")


async def _start(port: int) -> None:
    loop = asyncio.get_running_loop()
    task, server = await replica.start_asgi_http_server(_app, HTTPOptions(host="127.0.0.1", port=port), event_loop=loop)
    server.should_exit = True
    await asyncio.wait_for(task, 10)


@pytest.fixture()
def serve_start() -> Iterator[None]:
    """Serve's function as it was before each test, whatever the test patched."""
    original = replica.start_asgi_http_server
    yield
    replica.start_asgi_http_server = original


@pytest.mark.parametrize("reuse", [True, False], ids=["after-a-patched-replica", "after-serve-s-own"])
def test_serve_alone_cannot_bind_a_port_in_time_wait(serve_start: None, reuse: bool) -> None:
    """The bug the patch is for (Ray Serve 2.60): if Serve fixes it, this fails and the patch can go."""
    with pytest.raises(RuntimeError, match="Failed to bind"):
        asyncio.run(_start(port_in_time_wait(reuse=reuse)))


def test_the_router_replica_binds_a_port_in_time_wait(serve_start: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "RAY_SERVE_ENABLE_DIRECT_INGRESS", True)
    assert reuse_direct_ingress_port() is True
    assert reuse_direct_ingress_port() is True  # once only: not wrapped twice
    asyncio.run(_start(port_in_time_wait(reuse=True)))  # every router replica binds this way


def test_without_direct_ingress_nothing_is_patched(serve_start: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "RAY_SERVE_ENABLE_DIRECT_INGRESS", False)
    before = replica.start_asgi_http_server
    assert reuse_direct_ingress_port() is False
    assert replica.start_asgi_http_server is before


def test_the_router_replica_stops_uvicorn_rewriting_the_client_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn, as Serve configures it in the replica, believes X-Forwarded-For from loopback
    unless FORWARDED_ALLOW_IPS says otherwise; after the router's call it believes no one."""
    import uvicorn

    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    ignore_uvicorn_forwarded_headers()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["client"])

    seen: list[Any] = []
    config = uvicorn.Config(app, lifespan="off", log_config=None)
    config.load()
    scope = {"type": "http", "client": ("127.0.0.1", 5000), "headers": [(b"x-forwarded-for", b"198.51.100.7")]}
    asyncio.run(config.loaded_app(scope, None, None))
    assert seen == [("127.0.0.1", 5000)]
