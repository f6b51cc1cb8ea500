"""Unfriendly clients and failures against the real service on 127.0.0.1: idle uploads, dead
replicas. Every load here is bounded in count and time."""

from __future__ import annotations

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

import httpx
import psutil
import pytest

from tests import samples
from tests.integration.conftest import deployment_info
from tests.integration.raw_http import read_response

pytestmark = pytest.mark.integration

IDLE_UPLOADS = 272  # more than the router's max_ongoing_requests (256): enough to lock it out before the fix


def _idle_upload(host: str, port: int) -> socket.socket:
    """Headers of a POST promising a body, then nothing."""
    s = socket.create_connection((host, port), timeout=30)
    s.sendall(
        b"POST /v1/styles/frost HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 100000\r\n\r\n"
    )
    return s


def test_idle_uploads_do_not_lock_anyone_out(base_url: str) -> None:
    url = urlparse(base_url)
    sockets = [_idle_upload(url.hostname or "127.0.0.1", url.port or 80) for _ in range(IDLE_UPLOADS)]
    try:
        started = time.monotonic()
        with httpx.Client(base_url=base_url, timeout=10) as client:
            assert client.get("/healthz/live").status_code == 200
            assert client.get("/v1/styles").status_code == 200
        assert time.monotonic() - started < 10
        answers = [read_response(s) for s in sockets]  # each within the socket's 30 s timeout
    finally:
        for s in sockets:
            s.close()
    statuses = sorted({status for status, _, _ in answers})
    assert statuses == [408, 429], statuses  # most refused at once, the address's share timed out
    for status, headers, body in answers:
        assert headers["content-type"].startswith("application/json")
        assert body["error"]["code"] == {408: "request_timeout", 429: "too_many_uploads"}[status]
        if status == 429:
            assert headers["retry-after"] == "1"


def _replica_actor(deployment: str) -> Any:
    import ray

    [name] = [
        a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(f"SERVE_REPLICA::stylefleet#{deployment}#")
    ]
    return ray.get_actor(name["name"], namespace=name["namespace"])


def _batches(deployment: str) -> int:
    return sum(deployment_info(deployment)["batch_sizes"].values())


def test_requests_in_flight_on_a_replica_that_dies_are_retried_elsewhere(base_url: str) -> None:
    import ray

    image = samples.encoded(samples.astronaut(), "JPEG", quality=90)
    before, replica = _batches("stylize"), deployment_info("stylize")["replica"]

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=base_url, timeout=60) as c:
            return c.post("/v1/styles/frost", files={"image": ("a.jpg", image, "image/jpeg")}, data={"max_side": "1024"})

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(post, i) for i in range(8)]
        for _ in range(500):  # bounded: 10 s; a batch has started, the others wait behind it
            if _batches("stylize") > before:
                break
            time.sleep(0.02)
        ray.kill(_replica_actor("stylize"), no_restart=True)
        responses = [f.result(timeout=90) for f in futures]
    for r in responses:
        if r.status_code != 200:  # a request that died twice: typed, and says when to retry
            assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable" and r.headers["retry-after"]
    assert sum(r.status_code == 200 for r in responses) == len(responses), [r.text for r in responses if r.status_code != 200]
    assert deployment_info("stylize")["replica"] != replica  # Serve replaced it; the calls went there


def _listener_pid(port: int) -> int | None:
    """The process of this service listening on 127.0.0.1:port, if any."""
    me = psutil.Process(os.getpid())
    for proc in [me, *me.children(recursive=True)]:
        try:
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in proc.net_connections(kind="inet")):
                return proc.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def test_a_router_replica_that_dies_is_replaced_on_the_same_port(base_url: str) -> None:
    """With direct ingress the router replica owns the port (docs/operations.md "Direct
    ingress"); Serve's replacement takes it back at once (RAY_SERVE_PORT_QUARANTINE_S=0: Serve's
    default keeps a freed port out of use for 150 s, longer than this test waits)."""
    import ray

    port = int(urlparse(base_url).port or 80)
    before = _listener_pid(port)
    assert before is not None
    for _ in range(3):  # connections the router closes: they stay in TIME_WAIT on the port for 60 s
        assert httpx.get(f"{base_url}/healthz", headers={"Connection": "close"}, timeout=10).status_code == 200
    ray.kill(_replica_actor("router"), no_restart=True)
    deadline = time.monotonic() + 90  # bounded: the replacement starts in 5-20 s here
    answered = None
    while time.monotonic() < deadline:
        now = _listener_pid(port)
        if now is not None and now != before:
            try:
                answered = httpx.get(f"{base_url}/healthz", timeout=5).status_code
            except httpx.TransportError:
                answered = None
            if answered == 200:
                break
        time.sleep(0.5)
    assert answered == 200, "no new router replica answered on the port within 90 s"
