"""The client address the per-address limits count: the peer, or behind a trusted proxy the hop
it saw; never what an untrusted client wrote. Pure, no Ray."""

from __future__ import annotations

import pytest

from stylefleet.router.clients import ClientResolver, forwarded_for, parse_address

PROXY = ["10.0.0.0/8"]


def _xff(*values: str) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"x"), *((b"x-forwarded-for", v.encode()) for v in values)]


def _fwd(*values: str) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"x"), *((b"forwarded", v.encode()) for v in values)]


@pytest.mark.parametrize(("trusted", "peer", "headers", "client"), [
    ([], "203.0.113.9", _xff("1.2.3.4"), "203.0.113.9"),  # nobody trusted: headers ignored
    ([], "127.0.0.1", _xff("1.2.3.4"), "127.0.0.1"),  # loopback is not trusted implicitly
    (PROXY, "203.0.113.9", _xff("1.2.3.4"), "203.0.113.9"),  # an untrusted peer's header is ignored
    (PROXY, "10.0.0.5", [], "10.0.0.5"),  # a trusted peer without the header is the client
    (PROXY, "10.0.0.5", _xff("1.2.3.4"), "1.2.3.4"),
    (PROXY, "10.0.0.5", _xff("6.6.6.6, 1.2.3.4"), "1.2.3.4"),  # the right-most untrusted hop, not the spoof
    (PROXY, "10.0.0.5", _xff("6.6.6.6", "1.2.3.4"), "1.2.3.4"),  # several header lines are one list
    (PROXY, "10.0.0.5", _xff("6.6.6.6, 1.2.3.4, 10.9.9.9"), "1.2.3.4"),  # a chain of trusted proxies
    (PROXY, "10.0.0.5", _xff("10.0.0.9, 10.0.0.8"), "10.0.0.9"),  # all trusted: the left-most
    (PROXY, "10.0.0.5", _xff("1.2.3.4:5678"), "1.2.3.4"),
    (PROXY, "10.0.0.5", _xff("[2001:db8::1]:443"), "2001:db8::1"),
    (PROXY, "10.0.0.5", _xff("2001:DB8:0::1"), "2001:db8::1"),  # one spelling per address
    (PROXY, "::ffff:10.0.0.5", _xff("1.2.3.4"), "1.2.3.4"),  # an IPv4-mapped peer is its IPv4 address
    (["10.0.0.5"], "10.0.0.5", _xff("1.2.3.4"), "1.2.3.4"),  # a bare address is a network of one
    (["10.0.0.5"], "10.0.0.6", _xff("1.2.3.4"), "10.0.0.6"),
])
def test_x_forwarded_for(trusted: list[str], peer: str, headers: list[tuple[bytes, bytes]], client: str) -> None:
    assert ClientResolver(trusted)(peer, headers) == client


@pytest.mark.parametrize(("value", "client"), [
    ("garbage", "10.0.0.5"),  # malformed: the proxy is all that is known
    ("", "10.0.0.5"),
    ("1.2.3.4, unknown", "10.0.0.5"),  # the trusted proxy wrote no address
    ("unknown, 1.2.3.4", "1.2.3.4"),  # left of the real hop: never read
    ("1.2.3.4, not-an-ip, 10.0.0.9", "10.0.0.9"),  # stops at the trusted hop before it
    ("[2001:db8::1", "10.0.0.5"),
    ("1.2.3.4:port", "10.0.0.5"),
    (",,, 1.2.3.4", "1.2.3.4"),
])
def test_malformed_x_forwarded_for_never_yields_a_chosen_address(value: str, client: str) -> None:
    assert ClientResolver(PROXY)("10.0.0.5", _xff(value)) == client


@pytest.mark.parametrize(("values", "client"), [
    (["for=192.0.2.60;proto=http;by=203.0.113.43"], "192.0.2.60"),
    (['for="[2001:db8:cafe::17]:4711"'], "2001:db8:cafe::17"),
    (["For=192.0.2.60"], "192.0.2.60"),  # parameter names are case-insensitive
    (["for=6.6.6.6, for=192.0.2.60"], "192.0.2.60"),
    (["for=6.6.6.6", "for=192.0.2.60;proto=https"], "192.0.2.60"),
    (['for=192.0.2.60;x="a, for=6.6.6.6"'], "192.0.2.60"),  # a comma inside quotes is no element
    (["for=192.0.2.60, for=10.1.2.3"], "192.0.2.60"),  # a trusted hop is walked past
    (["for=unknown"], "10.0.0.5"),
    (["for=_hidden"], "10.0.0.5"),
    (["proto=https"], "10.0.0.5"),  # an element without for=
    (['for="unterminated'], "10.0.0.5"),
])
def test_forwarded(values: list[str], client: str) -> None:
    assert ClientResolver(PROXY, "forwarded")("10.0.0.5", _fwd(*values)) == client


def test_only_the_configured_header_is_read() -> None:
    both = [(b"forwarded", b"for=6.6.6.6"), (b"x-forwarded-for", b"1.2.3.4")]
    assert ClientResolver(PROXY, "x-forwarded-for")("10.0.0.5", both) == "1.2.3.4"
    assert ClientResolver(PROXY, "forwarded")("10.0.0.5", both) == "6.6.6.6"


def test_a_peer_that_is_no_address_is_used_as_it_is() -> None:
    assert ClientResolver(PROXY)("unix-socket", _xff("1.2.3.4")) == "unix-socket"
    assert ClientResolver(PROXY)(None, _xff("1.2.3.4")) == "unknown"


@pytest.mark.parametrize("bad", [["10.0.0.0/33"], ["proxy.internal"]])
def test_a_bad_trusted_proxy_is_refused(bad: list[str]) -> None:
    with pytest.raises(ValueError, match="neither an IP address nor a CIDR"):
        ClientResolver(bad)


def test_an_unknown_header_is_refused() -> None:
    with pytest.raises(ValueError, match="x-real-ip"):
        ClientResolver(PROXY, "x-real-ip")


def test_forwarded_for_keeps_one_entry_per_element() -> None:
    assert forwarded_for(["for=1.2.3.4;by=x, proto=http", 'for="[::1]"']) == ["1.2.3.4", "", '"[::1]"']
    assert parse_address('"[::1]:80"') is not None and parse_address("_hidden") is None
