"""Safe by default: nothing listens beyond loopback except the documented socket; token auth on."""

from __future__ import annotations

import os
from typing import Any

import httpx
import psutil
import pytest

pytestmark = pytest.mark.integration

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
WILDCARD = {"0.0.0.0", "::"}


def _service_processes() -> list[psutil.Process]:
    """This test process (the Ray driver) and everything it started: GCS, raylet, workers, agents."""
    me = psutil.Process(os.getpid())
    return [me, *me.children(recursive=True)]


def _listening(proc: psutil.Process) -> list[tuple[str, int, str]]:
    try:
        conns = proc.net_connections(kind="inet")
        name = " ".join(proc.cmdline())[:120] or proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []
    out = []
    for c in conns:
        is_udp = c.type == 2  # SOCK_DGRAM
        if c.status == psutil.CONN_LISTEN or (is_udp and c.laddr):
            out.append((c.laddr.ip, c.laddr.port, name))
    return out


def _documented_exception(ip: str, cmdline: str, replica_wildcards: dict[str, int]) -> bool:
    """docs/operations.md "What listens where": each Serve replica's inter-deployment gRPC port binds [::]
    (hard-coded in Ray Serve 2.60, token-authenticated). One such socket per replica, no more."""
    if ip in WILDCARD and cmdline.startswith("ray::ServeReplica"):
        replica_wildcards[cmdline] = replica_wildcards.get(cmdline, 0) + 1
        return replica_wildcards[cmdline] == 1
    return False


def test_no_socket_beyond_loopback_except_the_documented_one(serve_app: dict[str, Any]) -> None:
    sockets = [s for p in _service_processes() for s in _listening(p)]
    assert any(port == int(serve_app["url"].rsplit(":", 1)[1]) for _, port, _ in sockets)  # we do see the service
    replica_wildcards: dict[str, int] = {}
    exposed = [
        s for s in sockets if s[0] not in LOOPBACK and not _documented_exception(s[0], s[2], replica_wildcards)
    ]
    assert exposed == []


def test_ray_control_calls_need_the_token(serve_app: dict[str, Any], client: httpx.Client) -> None:
    cluster = serve_app["cluster"]
    dashboard = f"http://127.0.0.1:{cluster.dashboard_port}"
    token = cluster.token_path.read_text().strip()
    assert httpx.get(f"{dashboard}/api/version", timeout=10).status_code == 401
    assert httpx.get(f"{dashboard}/api/version", headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 403
    assert httpx.get(f"{dashboard}/api/version", headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 200
    assert client.get("/healthz").status_code == 200  # Serve itself still answers without it


def test_the_token_file_is_private(serve_app: dict[str, Any]) -> None:
    assert serve_app["cluster"].token_path.stat().st_mode & 0o077 == 0


def _owners(port: int) -> list[str]:
    return [name for p in _service_processes() for ip, bound, name in _listening(p) if bound == port]


def test_the_router_replica_answers_on_the_port_itself(serve_app: dict[str, Any], client: httpx.Client) -> None:
    """Direct ingress (docs/operations.md "Direct ingress"): what listens on the config's port is
    the router replica, not Serve's proxy; the proxy serves the same application on its own
    loopback port, and both answer alike."""
    [owner] = _owners(int(serve_app["url"].rsplit(":", 1)[1]))
    assert owner.startswith("ray::ServeReplica:stylefleet:router")
    [proxy] = _owners(int(serve_app["proxy_url"].rsplit(":", 1)[1]))
    assert proxy.startswith("ray::ProxyActor")
    direct = client.get("/v1/styles")
    assert direct.status_code == 200
    assert httpx.get(f"{serve_app['proxy_url']}/v1/styles", timeout=30).json() == direct.json()
