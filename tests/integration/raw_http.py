"""A raw HTTP/1.1 response read off a socket: the slow-upload tests hold their sockets open by hand."""

from __future__ import annotations

import json
import socket
from typing import Any


def read_response(s: socket.socket) -> tuple[int, dict[str, str], Any]:
    """(status, lower-cased headers, JSON body or None) of the next response on ``s``."""
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
