"""uvicorn's own 400s (a request it cannot parse, answered before the app sees it) and its
WebSocket protocol's own refusals of a handshake carry the security headers of
`SecurityHeadersMiddleware` (weflux.http_protocol)."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send
from uvicorn.importer import import_from_string

from tests.fixtures.live import live_server
from weflux.api.security import SecurityHeadersMiddleware, refusal_headers
from weflux.cli import UVICORN_OPTIONS
from weflux.http_protocol import (
    MAX_REQUEST_HEAD,
    HTTPProtocol,
    SecureH11Protocol,
    SecureHttpToolsProtocol,
    WebSocketProtocol,
    bad_request,
)

GARBAGE = b"\x16\x03\x01 not HTTP at all\r\n\r\n"
GET = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def _handshake(
    path: bytes = b"/", *, key: bytes = _KEY, version: bytes = b"13", extra: bytes = b""
) -> bytes:
    return (
        b"GET " + path + b" HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
        b"Sec-WebSocket-Version: " + version + b"\r\n" + extra + b"\r\n"
    )


# Handshakes uvicorn's WebSocket protocol refuses itself, and the status it answers.
WS_REFUSALS = {
    "a bad key": (_handshake(key=b"bad"), 400),
    "a bad version": (_handshake(version=b"8"), 400),
    "headers too large": (_handshake(extra=b"X-Big: " + b"a" * 9000 + b"\r\n"), 431),
    "closed by the app before accept": (_handshake(b"/close"), 403),
    "the app raising before accept": (_handshake(b"/raise"), 500),
}


async def _hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        if scope["path"] == "/raise":
            raise RuntimeError("the app failed before accepting")
        await send({"type": "websocket.close", "code": 1000})
        return
    await PlainTextResponse("hello")(scope, receive, send)


async def _exchange(base_url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes; the status, headers (lower-case names) and body of the answer."""
    address = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=30)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def _security(headers: dict[str, str]) -> dict[str, str]:
    names = {name.decode() for name, _ in refusal_headers(hsts=True)}
    return {name: value for name, value in headers.items() if name in names}


@pytest.mark.parametrize("protocol", [SecureHttpToolsProtocol, SecureH11Protocol])
async def test_an_unparseable_request_gets_the_security_headers(protocol: type) -> None:
    """Given uvicorn on each HTTP protocol, when a client sends bytes that are no HTTP
    request, then uvicorn's own 400 carries the same security headers as the app's
    answers, and uvicorn's (no Server header: weflux serve turns it off)."""
    app = SecurityHeadersMiddleware(_hello, hsts=False)
    async with live_server(app, http=protocol, lifespan="off") as base_url:
        ok, app_headers, _ = await _exchange(base_url, GET)
        status, headers, body = await _exchange(base_url, GARBAGE)
    assert ok == 200
    assert status == 400
    assert body == b"Invalid HTTP request received."
    assert _security(headers) == _security(app_headers)
    assert len(_security(headers)) == len(refusal_headers(hsts=False))
    assert headers["content-length"] == str(len(body))
    assert headers["connection"] == "close"
    assert "date" in headers
    assert "server" not in headers


def _head(*header_lines: bytes, complete: bool) -> bytes:
    head = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n" + b"".join(header_lines)
    return head + b"\r\n" if complete else head


# Each protocol's bound on a request's head: ours (httptools had none), h11's own.
HEAD_LIMITS: dict[type, int] = {
    SecureHttpToolsProtocol: MAX_REQUEST_HEAD,
    SecureH11Protocol: 16 * 1024,
}


@pytest.mark.parametrize("many", [False, True], ids=["one long header", "many headers"])
@pytest.mark.parametrize("protocol", [SecureHttpToolsProtocol, SecureH11Protocol])
async def test_a_request_head_past_the_limit_is_refused(protocol: type, many: bool) -> None:
    """Given uvicorn on each protocol, when a request's head (one header or many) grows past
    its bound without ending, then it is refused 400 with the security headers at once:
    httptools alone set no bound, holding each connection's head in memory (20 MB each: a
    few hundred connections took the process's memory). Just past the bound, so the
    server has read every byte before it answers (unread bytes would reset the socket)."""
    size = HEAD_LIMITS[protocol] + 1024
    lines = (
        [b"X-%05d: a\r\n" % n for n in range(size // 10)] if many else [b"X-Big: " + b"a" * size]
    )
    app = SecurityHeadersMiddleware(_hello, hsts=False)
    async with live_server(app, http=protocol, lifespan="off") as base_url:
        status, headers, body = await asyncio.wait_for(
            _exchange(base_url, _head(*lines, complete=False)), 10
        )
    assert status == 400
    assert body == b"Invalid HTTP request received."
    assert len(_security(headers)) == len(refusal_headers(hsts=False))


@pytest.mark.parametrize("protocol", [SecureHttpToolsProtocol, SecureH11Protocol])
async def test_a_request_head_within_the_limit_is_served(protocol: type) -> None:
    """Given uvicorn on each protocol, when a request's head is large but within the limit
    (h11's own: 16 KiB), then it is served."""
    request = _head(b"X-Big: " + b"a" * 15_000 + b"\r\n", complete=True)
    app = SecurityHeadersMiddleware(_hello, hsts=False)
    async with live_server(app, http=protocol, lifespan="off") as base_url:
        status, _, body = await _exchange(base_url, request)
    assert (status, body) == (200, b"hello")


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_weflux_serve_answers_garbage_with_the_headers(live: str) -> None:
    """Given the app served with `weflux serve`'s uvicorn options, when garbage comes,
    then the 400 carries the security headers."""
    status, headers, _ = await _exchange(live, GARBAGE)
    assert status == 400
    assert headers.get("x-frame-options") == "DENY", headers
    assert headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert import_from_string(UVICORN_OPTIONS["http"]) is HTTPProtocol
    assert HTTPProtocol is SecureHttpToolsProtocol  # uvicorn's `auto` choice here


@pytest.mark.parametrize("refusal", list(WS_REFUSALS))
async def test_a_refused_websocket_handshake_gets_the_security_headers(refusal: str) -> None:
    """Given uvicorn's WebSocket protocol as weflux serves it, when it refuses a handshake
    itself (malformed, headers too large, the app closing or failing before it accepts),
    then its answer carries the same security headers as the app's answers."""
    request, expected = WS_REFUSALS[refusal]
    app = SecurityHeadersMiddleware(_hello, hsts=False)
    async with live_server(app, ws=WebSocketProtocol, lifespan="off") as base_url:
        _, app_headers, _ = await _exchange(base_url, GET)
        status, headers, _ = await _exchange(base_url, request)
    assert status == expected
    assert _security(headers) == _security(app_headers)
    assert len(_security(headers)) == len(refusal_headers(hsts=False))


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_weflux_serve_refuses_a_bad_handshake_with_the_headers(live: str) -> None:
    """Given the app served with `weflux serve`'s uvicorn options, when a handshake to
    /graphql is malformed, or to a path without a socket, then the refusal carries the
    security headers."""
    for request in (_handshake(b"/graphql", key=b"bad"), _handshake(b"/no-socket-here")):
        status, headers, _ = await _exchange(live, request)
        assert status in (400, 403)
        assert headers.get("x-frame-options") == "DENY", headers
        assert headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert import_from_string(UVICORN_OPTIONS["ws"]) is WebSocketProtocol


def test_hsts_only_over_tls() -> None:
    """A browser ignores HSTS over plain HTTP: the 400 sends it on a TLS connection only."""
    plain = bad_request("Invalid HTTP request received.", default_headers=[], tls=False)
    tls = bad_request("Invalid HTTP request received.", default_headers=[], tls=True)
    assert b"strict-transport-security" not in plain
    assert b"\r\nstrict-transport-security: max-age=31536000; includeSubDomains\r\n" in tls
