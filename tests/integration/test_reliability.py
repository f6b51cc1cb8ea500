"""Unfriendly clients and failures against the real service on 127.0.0.1: idle uploads, dead
replicas. Every load here is bounded in count and time."""

from __future__ import annotations

import json
import socket
import time
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

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


def _response(s: socket.socket) -> tuple[int, dict[str, str], Any]:
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = s.recv(65536)
        if not chunk:
            break
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, json.loads(body) if body else None


def test_idle_uploads_do_not_lock_anyone_out(base_url: str) -> None:
    url = urlparse(base_url)
    sockets = [_idle_upload(url.hostname or "127.0.0.1", url.port or 80) for _ in range(IDLE_UPLOADS)]
    try:
        started = time.monotonic()
        with httpx.Client(base_url=base_url, timeout=10) as client:
            assert client.get("/healthz/live").status_code == 200
            assert client.get("/v1/styles").status_code == 200
        assert time.monotonic() - started < 10
        answers = [_response(s) for s in sockets]  # each within the socket's 30 s timeout
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
