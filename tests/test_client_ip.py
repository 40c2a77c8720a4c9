"""The client IP: X-Forwarded-For counts only behind a trusted proxy, walked from the right."""

from __future__ import annotations

from ipaddress import ip_network

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from weflux.client_ip import (
    UNIX_SOCKET,
    TrustedProxy,
    client_ip,
    parse_trusted_proxies,
    resolve_client_ip,
    scope_client_ip,
)
from weflux.config import ConfigError

PROXIES = parse_trusted_proxies(["10.0.0.0/8", "2001:db8::/64", "192.0.2.7"])


def make_app(trusted: tuple[TrustedProxy, ...]) -> Starlette:
    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse({"ip": client_ip(request, trusted)})

    return Starlette(routes=[Route("/", whoami)])


async def ip_seen(
    peer: str,
    forwarded_for: list[str] | None = None,
    trusted: tuple[TrustedProxy, ...] = PROXIES,
) -> str | None:
    transport = httpx.ASGITransport(app=make_app(trusted), client=(peer, 1234))
    headers = [("X-Forwarded-For", value) for value in forwarded_for or []]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/", headers=headers)
    assert response.status_code == 200
    ip: str | None = response.json()["ip"]
    return ip


def test_parse_trusted_proxies() -> None:
    assert parse_trusted_proxies([" 10.0.0.0/8 ", "192.0.2.7", "2001:db8::/64", "::1", ""]) == (
        ip_network("10.0.0.0/8"),
        ip_network("192.0.2.7/32"),
        ip_network("2001:db8::/64"),
        ip_network("::1/128"),
    )
    assert parse_trusted_proxies([]) == ()
    assert parse_trusted_proxies(["10.0.0.1", "10.0.0.1/32"]) == (ip_network("10.0.0.1/32"),)


@pytest.mark.parametrize(
    "entry", ["10.0.0.300", "proxy.internal", "10.0.0.0/33", "10.0.0.1/8", "2001:db8::/129", "*"]
)
def test_an_invalid_trusted_proxy_names_the_entry(entry: str) -> None:
    with pytest.raises(ConfigError, match="WEFLUX_TRUSTED_PROXIES") as error:
        parse_trusted_proxies(["10.0.0.0/8", entry])
    assert f"`{entry}`" in str(error.value)
    assert isinstance(error.value, ValueError)


async def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    assert await ip_seen("203.0.113.50", ["1.2.3.4"]) == "203.0.113.50"
    assert await ip_seen("203.0.113.50", ["1.2.3.4, 10.0.0.2"]) == "203.0.113.50"


async def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert await ip_seen("10.0.0.1", ["1.2.3.4"], trusted=()) == "10.0.0.1"


async def test_a_trusted_peer_without_forwarded_for_is_the_client() -> None:
    assert await ip_seen("10.0.0.1") == "10.0.0.1"


async def test_trusted_chain_takes_the_rightmost_untrusted_address() -> None:
    assert await ip_seen("10.0.0.1", ["203.0.113.9"]) == "203.0.113.9"
    # The client claimed 1.1.1.1 itself; the proxies vouch only for 203.0.113.9.
    assert await ip_seen("10.0.0.1", ["1.1.1.1, 203.0.113.9, 10.0.0.3, 192.0.2.7"]) == (
        "203.0.113.9"
    )


async def test_several_forwarded_for_headers_are_joined() -> None:
    assert await ip_seen("10.0.0.1", ["1.1.1.1", "203.0.113.9, 10.0.0.5"]) == "203.0.113.9"
    assert await ip_seen("10.0.0.1", ["203.0.113.9", "10.0.0.5"]) == "203.0.113.9"


async def test_an_all_trusted_chain_gives_the_leftmost_proxy() -> None:
    assert await ip_seen("10.0.0.1", ["10.0.0.9, 10.0.0.8"]) == "10.0.0.9"


async def test_ipv6() -> None:
    assert await ip_seen("2001:db8::10", ["2001:db8:ffff::1"]) == "2001:db8:ffff::1"
    assert await ip_seen("2001:db8::10", ["[2001:db8:ffff::1]:443"]) == "2001:db8:ffff::1"
    assert await ip_seen("2001:db8::10", ["2001:DB8:FFFF:0::1, 2001:db8::11"]) == (
        "2001:db8:ffff::1"
    )
    # Outside the trusted /64: a client, whatever it claims.
    assert await ip_seen("2001:db8:1::10", ["203.0.113.9"]) == "2001:db8:1::10"
    # IPv4 clients behind IPv6 proxies and the reverse.
    assert await ip_seen("2001:db8::10", ["203.0.113.9"]) == "203.0.113.9"
    assert await ip_seen("10.0.0.1", ["2001:db8:ffff::1"]) == "2001:db8:ffff::1"


async def test_an_ipv4_mapped_peer_is_matched_as_ipv4() -> None:
    assert await ip_seen("::ffff:10.0.0.1", ["203.0.113.9"]) == "203.0.113.9"
    assert await ip_seen("::ffff:203.0.113.50", ["1.2.3.4"]) == "203.0.113.50"


async def test_ports_on_ipv4_hops_are_dropped() -> None:
    assert await ip_seen("10.0.0.1", ["203.0.113.9:5555"]) == "203.0.113.9"


@pytest.mark.parametrize(
    ("forwarded_for", "expected"),
    [
        (["203.0.113.9, garbage, 10.0.0.2"], "10.0.0.2"),
        (["203.0.113.9, unknown"], "10.0.0.1"),
        (["203.0.113.9,,10.0.0.2"], "10.0.0.2"),
        ([""], "10.0.0.1"),
        (["203.0.113.9, 10.0.0.300"], "10.0.0.1"),
        (["203.0.113.9, 010.0.0.2"], "10.0.0.1"),
        (["203.0.113.9, [::1"], "10.0.0.1"),
        (["garbage, 203.0.113.9"], "203.0.113.9"),
        (["1.2.3.4 5.6.7.8"], "10.0.0.1"),
    ],
)
async def test_a_malformed_hop_stops_the_walk(forwarded_for: list[str], expected: str) -> None:
    assert await ip_seen("10.0.0.1", forwarded_for) == expected


def test_unix_is_a_trusted_proxy_entry() -> None:
    assert parse_trusted_proxies(["10.0.0.0/8", " unix ", "UNIX"]) == (
        ip_network("10.0.0.0/8"),
        UNIX_SOCKET,
    )


@pytest.mark.parametrize(
    ("forwarded_for", "expected"),
    [
        (["203.0.113.9"], "203.0.113.9"),
        (["203.0.113.9, 10.0.0.2"], "203.0.113.9"),  # through a trusted proxy too
        (["198.51.100.1, 203.0.113.9"], "203.0.113.9"),  # the rightmost untrusted hop
        ([], None),
        (["garbage"], None),
    ],
)
def test_a_trusted_unix_socket_is_walked_from_its_forwarded_for(
    forwarded_for: list[str], expected: str | None
) -> None:
    """A peer without an address (a Unix socket) is a proxy when `unix` is trusted."""
    trusted = (*PROXIES, UNIX_SOCKET)
    assert resolve_client_ip(None, forwarded_for, trusted) == expected
    assert resolve_client_ip(None, forwarded_for, PROXIES) is None


async def test_trusting_unix_trusts_no_ip_peer() -> None:
    assert await ip_seen("203.0.113.5", ["198.51.100.1"], (UNIX_SOCKET,)) == "203.0.113.5"


def test_resolve_without_a_peer_or_with_a_non_ip_peer() -> None:
    assert resolve_client_ip(None, ["1.2.3.4"], PROXIES) is None
    assert resolve_client_ip("testclient", ["1.2.3.4"], PROXIES) == "testclient"


def test_scope_client_ip_reads_a_websocket_scope() -> None:
    scope = {
        "type": "websocket",
        "client": ("10.0.0.1", 1234),
        "headers": [(b"x-forwarded-for", b"203.0.113.9"), (b"host", b"testserver")],
    }
    assert scope_client_ip(scope, PROXIES) == "203.0.113.9"
    assert scope_client_ip({"type": "http", "headers": []}, PROXIES) is None
