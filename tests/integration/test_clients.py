"""Slow uploads from many addresses and forged client addresses, against real Ray Serve over real
HTTP on loopback. Source addresses 127.0.0.2-127.0.0.9 stand for distinct clients (Linux routes
all of 127.0.0.0/8 to lo). Every load is bounded in count; each socket has a timeout.

Most of it runs on a small application of its own (``guarded``: 8 router slots, a 4-body cap, a
2-body share per address, a 1000 B/s minimum after 2 s), reached through Serve's HTTP proxy, so
numbers stay small and the main application's limits are untouched."""

from __future__ import annotations

import copy
import select
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from stylefleet.router.uploads import JUDGE_AFTER_S
from tests import samples
from tests.integration.conftest import APP
from tests.integration.raw_http import read_response

pytestmark = pytest.mark.integration

GUARDED = "guarded"
SLOTS = 8  # router.max_ongoing_requests of the guarded app
IN_FLIGHT = 4  # limits.max_uploads_in_flight
PER_CLIENT = 2  # limits.max_uploads_per_client
PREFIX = 10_000  # body bytes sent up front: at 1000 B/s after a 2 s grace, a body held for ~12 s
SOCKET_TIMEOUT_S = 60


def _guarded_application(main: dict[str, Any]) -> dict[str, Any]:
    """The session's main application cut down to frost on its own stylize replica, with small limits."""
    app = copy.deepcopy(main)
    args = app["args"]
    stylize = args["deployments"]["stylize"]
    stylize.update(num_cpus=0.1, threads=1, max_ongoing_requests=16, max_queued_requests=16)
    stylize["autoscaling"] = {"min_replicas": 1, "max_replicas": 1}
    args["deployments"] = {"stylize": stylize}
    args["styles"] = {"frost": args["styles"]["frost"]}
    args["router"]["max_ongoing_requests"] = SLOTS
    args["limits"].update(
        max_uploads_per_client=PER_CLIENT,
        max_uploads_in_flight=IN_FLIGHT,
        min_body_bytes_per_s=1000,
        body_rate_grace_s=2,
        body_idle_timeout_s=30,
    )
    args["jobs"] = {"storage": tempfile.mkdtemp(prefix="stylefleet-guarded-jobs-")}
    app.update(name=GUARDED, route_prefix=f"/{GUARDED}")
    app["deployments"] = [{"name": "stylize", "user_config": {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}}]
    return app


@pytest.fixture(scope="module")
def guarded_url(serve_app: dict[str, Any]) -> Iterator[str]:
    config = copy.deepcopy(serve_app["config"])
    [main] = [a for a in config["applications"] if a["name"] == APP]
    guarded = _guarded_application(main)
    config["applications"].append(guarded)
    try:
        serve_app["cluster"].deploy(config, timeout_s=300)
        yield f"{serve_app['proxy_url']}/{GUARDED}"
    finally:
        serve_app["cluster"].deploy(serve_app["config"], timeout_s=300)  # the session's applications again
        shutil.rmtree(guarded["args"]["jobs"]["storage"], ignore_errors=True)


PART = b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="p.png"\r\nContent-Type: image/png\r\n\r\n'


def _upload(url: str, source: str, *, prefix: int = PREFIX, forwarded_for: str | None = None) -> socket.socket:
    """A POST to frost from ``source`` that promises 100 kB and sends ``prefix`` bytes of it: a
    form part's head, then file bytes (nothing at all for ``prefix=0``)."""
    parsed = urlparse(url)
    s = socket.create_connection((parsed.hostname, parsed.port), timeout=SOCKET_TIMEOUT_S, source_address=(source, 0))
    extra = f"X-Forwarded-For: {forwarded_for}\r\n" if forwarded_for else ""
    s.sendall(
        f"POST {parsed.path}/v1/styles/frost HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}"
        "Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 100000\r\n\r\n".encode()
        + (PART + b"x" * prefix if prefix else b"")
    )
    return s


def _answered(sockets: list[socket.socket], count: int) -> list[socket.socket]:
    """The first ``count`` sockets the server answers (within the socket timeout in all)."""
    answered: list[socket.socket] = []
    while len(answered) < count:
        ready, _, _ = select.select([s for s in sockets if s not in answered], [], [], SOCKET_TIMEOUT_S)
        assert ready, f"only {len(answered)} of {count} uploads were answered within {SOCKET_TIMEOUT_S} s"
        answered += ready
    return answered


def test_slow_uploads_from_many_addresses_leave_probes_and_styles_answering(guarded_url: str) -> None:
    # As many slow bodies as the router has slots, two from each of four addresses: each address
    # is within its share, so only the replica-wide cap can keep slots free.
    sources = [f"127.0.0.{2 + i // PER_CLIENT}" for i in range(SLOTS)]
    sockets = [_upload(guarded_url, source) for source in sources]
    try:
        answered = _answered(sockets, SLOTS - IN_FLIGHT)
        refused = [read_response(s) for s in answered]
        holding = [s for s in sockets if s not in answered]
        with httpx.Client(base_url=guarded_url, timeout=SOCKET_TIMEOUT_S) as client:
            live = client.get("/healthz/live")
            # a body is judged slow once it has been silent this long: then the normal upload
            # takes the slot of one of them instead of being refused
            time.sleep(JUDGE_AFTER_S)
            frost = client.post("/v1/styles/frost", files={"image": ("p.png", samples.encoded(samples.coffee()), "image/png")})
        # answered while the slow bodies held the cap, not after they timed out: one gave its
        # slot to frost, the others were still being read when frost's answer came
        [evicted] = _answered(holding, 1)
        early = select.select([s for s in holding if s is not evicted], [], [], 0)[0]
        held = [read_response(s) for s in holding]
    finally:
        for s in sockets:
            s.close()
    assert live.status_code == 200
    assert frost.status_code == 200 and frost.headers["content-type"].startswith("image/")
    assert early == []
    assert [(status, body["error"]["code"]) for status, _, body in refused] == [(503, "uploads_busy")] * (SLOTS - IN_FLIGHT)
    assert all(headers["retry-after"] == "1" for _, headers, _ in refused)
    assert [(status, body["error"]["code"]) for status, _, body in held] == [(408, "request_timeout")] * IN_FLIGHT
    messages = sorted(body["error"]["message"] for _, _, body in held)
    assert sum("its slot went to a faster one" in m for m in messages) == 1
    assert sum("limits.min_body_bytes_per_s" in m for m in messages) == IN_FLIGHT - 1


def test_a_trickling_body_ends_with_408_once_its_grace_is_spent(guarded_url: str) -> None:
    s = _upload(guarded_url, "127.0.0.2", prefix=1)
    try:
        status, _, body = read_response(s)
    finally:
        s.close()
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert "min_body_bytes_per_s" in body["error"]["message"]


def test_a_forged_forwarded_for_through_the_proxy_does_not_escape_the_per_address_cap(guarded_url: str) -> None:
    """Serve's proxy (uvicorn) believes X-Forwarded-For from 127.0.0.1 unless told otherwise; the
    service trusts no proxy by default, so the three bodies count as one address's."""
    sockets = [_upload(guarded_url, "127.0.0.1", forwarded_for=f"198.51.100.{i}") for i in range(PER_CLIENT + 1)]
    try:
        [refused] = [read_response(s) for s in _answered(sockets, 1)]
    finally:
        for s in sockets:
            s.close()
    assert refused[0] == 429 and refused[2]["error"]["code"] == "too_many_uploads"


def test_a_forged_forwarded_for_on_direct_ingress_does_not_escape_the_per_address_cap(
    base_url: str, serve_app: dict[str, Any]
) -> None:
    """The main application's own port (a direct-ingress router replica runs uvicorn itself),
    with its shipped share per address: one body past it, each with a new forged address."""
    share = serve_app["config"]["applications"][0]["args"]["limits"]["max_uploads_per_client"]
    sockets = [_upload(base_url, "127.0.0.1", prefix=0, forwarded_for=f"198.51.100.{i}") for i in range(share + 1)]
    try:
        [refused] = [read_response(s) for s in _answered(sockets, 1)]
    finally:
        for s in sockets:
            s.close()
    assert refused[0] == 429 and refused[2]["error"]["code"] == "too_many_uploads"
