"""The client's IP address, trusting `X-Forwarded-For` only from configured proxies.

A request without a socket peer (an ASGI server on a Unix socket) has no address unless
`WEFLUX_TRUSTED_PROXIES` lists `unix`: then the proxy in front of that socket is trusted
like a listed network, and `X-Forwarded-For` names the client.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Literal

from starlette.requests import HTTPConnection
from starlette.types import Scope

from weflux.config import ConfigError
from weflux.services.audit import RequestMeta

ProxyNetwork = IPv4Network | IPv6Network
IPAddress = IPv4Address | IPv6Address
# The `WEFLUX_TRUSTED_PROXIES` entry that trusts a peer without an address (a Unix socket).
UNIX_SOCKET: Literal["unix"] = "unix"
TrustedProxy = ProxyNetwork | Literal["unix"]

# `[2001:db8::1]` or `[2001:db8::1]:443`, and `192.0.2.1:443`: ports some proxies append.
_BRACKETED_V6 = re.compile(r"^\[([^\]]+)\](?::\d{1,5})?$")
_V4_WITH_PORT = re.compile(r"^(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}$")


def parse_trusted_proxies(entries: Sequence[str]) -> tuple[TrustedProxy, ...]:
    """Parse `WEFLUX_TRUSTED_PROXIES` entries (IPs, CIDRs, `unix`) once at startup."""
    networks: list[TrustedProxy] = []
    for raw in entries:
        entry = raw.strip()
        if not entry:
            continue
        network: TrustedProxy
        if entry.lower() == UNIX_SOCKET:
            network = UNIX_SOCKET
        else:
            try:
                network = ipaddress.ip_network(entry, strict=True)
            except ValueError as exc:
                raise ConfigError(
                    f"WEFLUX_TRUSTED_PROXIES: `{entry}` is not an IP address, a CIDR network "
                    f"or `unix` ({exc})"
                ) from None
        if network not in networks:
            networks.append(network)
    return tuple(networks)


def parse_ip(value: str) -> IPAddress | None:
    """An address from a socket peer or a forwarded hop; None when it is not an IP address."""
    text = value.strip()
    if (match := _BRACKETED_V6.match(text)) or (match := _V4_WITH_PORT.match(text)):
        text = match.group(1)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket's view of an IPv4 client
    return address


def is_trusted(address: IPAddress, trusted_proxies: Sequence[TrustedProxy]) -> bool:
    """Whether the address lies in one of the trusted proxy networks."""
    return any(not isinstance(network, str) and address in network for network in trusted_proxies)


def resolve_client_ip(
    peer: str | None, forwarded_for: Sequence[str], trusted_proxies: Sequence[TrustedProxy]
) -> str | None:
    """The client address given the socket peer and the raw `X-Forwarded-For` header values.

    None when there is no peer (a Unix socket) and `unix` is not trusted, or it is and no
    forwarded hop is an address."""
    best: IPAddress | None = None
    if peer is not None:
        peer_address = parse_ip(peer)
        if peer_address is None:
            return peer  # not an IP (a test client's name): never a trusted proxy
        if not is_trusted(peer_address, trusted_proxies):
            return str(peer_address)
        best = peer_address
    elif UNIX_SOCKET not in trusted_proxies:
        return None
    hops = ",".join(forwarded_for).split(",") if forwarded_for else []
    for hop in reversed(hops):
        address = parse_ip(hop)
        if address is None:
            break  # a malformed hop: nothing to its left can be vouched for
        best = address
        if not is_trusted(address, trusted_proxies):
            break
    return str(best) if best is not None else None


def scope_client_ip(scope: Scope, trusted_proxies: Sequence[TrustedProxy]) -> str | None:
    """The client address of an ASGI HTTP or WebSocket scope."""
    client = scope.get("client")
    peer = str(client[0]) if client else None
    forwarded_for = [
        value.decode("latin-1")
        for name, value in scope.get("headers", ())
        if name.lower() == b"x-forwarded-for"
    ]
    return resolve_client_ip(peer, forwarded_for, trusted_proxies)


def request_meta(
    connection: HTTPConnection, trusted_proxies: Sequence[TrustedProxy]
) -> RequestMeta:
    """Where a request comes from, for audit events and sessions."""
    return RequestMeta(
        ip=client_ip(connection, trusted_proxies),
        user_agent=connection.headers.get("user-agent"),
    )


def client_ip(connection: HTTPConnection, trusted_proxies: Sequence[TrustedProxy]) -> str | None:
    """The client address of a Starlette request or WebSocket."""
    return scope_client_ip(connection.scope, trusted_proxies)
