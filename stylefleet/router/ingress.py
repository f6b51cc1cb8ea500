"""Direct ingress (docs/operations.md "Direct ingress"): the router replica binds the service's
port itself, so that port must survive a replica restart.

Ray Serve 2.60 binds a direct-ingress replica's socket without ``SO_REUSEADDR`` (its own proxy
sets it; ray-project/ray#60615 proposed the same for replicas) and, after one failed bind, never
hands that port out again. A router replica that closed connections leaves them in TIME_WAIT on
the port for 60 s, so a replacement started within that minute (a crash, ``serve deploy``, an
application restart) failed to bind, and the service lost its port for good. The router replica
binds it the way Serve binds its proxy instead: ``SO_REUSEADDR`` and ``SO_REUSEPORT``, which
also lets a new replica listen while the old one drains. Linux lets a socket bind past TIME_WAIT
only when the old socket asked for reuse too: every router replica binds this way, so each leaves
a port its successor can take (tests/unit/test_ingress.py).
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger("ray.serve")

_PATCHED = "_stylefleet_reuses_its_port"


def reuse_direct_ingress_port() -> bool:
    """In this process (a router replica), make Serve's direct-ingress HTTP server bind with
    address and port reuse; True when direct ingress is on and the server is now patched."""
    from ray.serve._private import constants, replica

    if not constants.RAY_SERVE_ENABLE_DIRECT_INGRESS:
        return False
    original = getattr(replica, "start_asgi_http_server", None)
    if original is None:  # another Ray Serve: say so, and leave it as it is
        logger.warning("direct ingress: Serve has no start_asgi_http_server; a restarted router may not get its port back")
        return False
    if getattr(original, _PATCHED, False):
        return True

    async def start_asgi_http_server(*args: Any, **kwargs: Any) -> Any:
        kwargs["enable_so_reuseport"] = True
        return await original(*args, **kwargs)

    setattr(start_asgi_http_server, _PATCHED, True)
    replica.start_asgi_http_server = start_asgi_http_server
    return True


def ignore_uvicorn_forwarded_headers() -> None:
    """In this process (a router replica), stop uvicorn from rewriting the client address.

    uvicorn wraps every app it serves in its ``ProxyHeadersMiddleware``, which replaces
    ``scope["client"]`` with a hop of ``X-Forwarded-For`` whenever the peer is in
    ``FORWARDED_ALLOW_IPS`` (``127.0.0.1,::1`` unless set), read when the server is configured.
    Serve 2.60 offers no way to turn it off, and a direct-ingress replica's server is configured
    in this process after ``__init__``: an empty value here makes it trust no one, so the client
    address the router sees is the real peer and ``limits.trusted_proxies`` alone decides what a
    forwarding header is worth (``stylefleet.router.clients``). Serve's HTTP proxy is another
    process: it gets the same value from ``stylefleet.config.RAY_ENVIRONMENT``.
    """
    os.environ["FORWARDED_ALLOW_IPS"] = ""
