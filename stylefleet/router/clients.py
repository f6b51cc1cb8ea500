"""Who the client is: the address the per-address limits count, resolved by us alone.

The peer of the TCP connection is the client unless it is one of ``limits.trusted_proxies``
(addresses or CIDRs, none by default: loopback is not trusted either). Only then is one
forwarding header read, ``limits.client_address_header``: ``x-forwarded-for`` or ``forwarded``
(RFC 7239, its ``for=`` parameters). Proxies append the address they saw, so the list is walked
from the right past every trusted hop; the first untrusted hop is the client. Everything left of
it was written by that client and is never believed. A hop that is no address (``unknown``, an
obfuscated ``_name``, garbage) stops the walk at the trusted hop before it: those clients share
that proxy's address, which is safe (they share its limits) and cannot be spoofed.

uvicorn rewrites ``scope["client"]`` from ``X-Forwarded-For`` itself when the peer is in its
``FORWARDED_ALLOW_IPS`` (default ``127.0.0.1,::1``), in Serve's HTTP proxy and in a
direct-ingress replica alike. The service turns that off (``FORWARDED_ALLOW_IPS=""`` in
``stylefleet.config.RAY_ENVIRONMENT``, and in the router replica itself), so ``scope["client"]``
is the real peer and this module the only place a forwarding header is read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

HEADERS = ("x-forwarded-for", "forwarded")
MAX_HOPS = 64  # hops looked at from the right; a longer chain of trusted proxies is not real


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """``trusted_proxies`` as networks (a bare address is a /32 or /128); ValueError names a bad entry."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is neither an IP address nor a CIDR network") from None
    return tuple(networks)


def parse_address(text: str) -> Address | None:
    """An address as a hop writes it: bare, with a port (``1.2.3.4:80``, ``[2001:db8::1]:80``) or
    bracketed; an IPv4-mapped IPv6 address is its IPv4 one. None for anything else."""
    text = text.strip().strip('"').strip()
    port = ""
    if text.startswith("["):
        end = text.find("]")
        if end == -1 or (text[end + 1 :] and not text[end + 1 :].startswith(":")):
            return None
        text, port = text[1:end], text[end + 2 :]
    elif text.count(":") == 1:  # IPv4 with a port (a bare IPv6 has several colons)
        text, _, port = text.partition(":")
        if not port:
            return None
    if port and not port.isdigit():
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def forwarded_for(values: Sequence[str]) -> list[str]:
    """The ``for=`` of each element of RFC 7239 ``Forwarded`` header lines, in order; an element
    without one is ``""`` (no address: it stops the walk)."""
    hops = []
    for value in values:
        for element in _split_outside_quotes(value, ","):
            found = ""
            for pair in _split_outside_quotes(element, ";"):
                name, _, token = pair.partition("=")
                if name.strip().lower() == "for":
                    found = token.strip()
            hops.append(found)
    return hops


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [part for part in parts if part.strip()]


class ClientResolver:
    """The client address of an ASGI scope, from its peer and, behind a trusted proxy, one header."""

    def __init__(self, trusted_proxies: Iterable[str] = (), header: str = "x-forwarded-for") -> None:
        if header not in HEADERS:
            raise ValueError(f"the client address header must be one of {', '.join(HEADERS)}, not {header!r}")
        self.trusted = parse_networks(trusted_proxies)
        self.header = header.encode()

    def is_trusted(self, address: Address) -> bool:
        return any(address in network for network in self.trusted)

    def __call__(self, peer: str | None, headers: Iterable[tuple[bytes, bytes]]) -> str:
        """The client's address as text: the peer's, or the right-most untrusted hop behind
        trusted proxies. A peer that is no IP address (a Unix socket, none) is used as it is."""
        if not peer:
            return "unknown"
        current = parse_address(peer)
        if current is None or not self.trusted or not self.is_trusted(current):
            return peer if current is None else str(current)
        values = [value.decode("latin-1") for name, value in headers if name.lower() == self.header]
        if not values:
            return str(current)
        hops = forwarded_for(values) if self.header == b"forwarded" else [h for v in values for h in v.split(",")]
        for hop in reversed(hops[-MAX_HOPS:]):
            address = parse_address(hop)
            if address is None:
                break  # a proxy we trust wrote no address: its client is known only as that proxy
            current = address
            if not self.is_trusted(address):
                break
        return str(current)
