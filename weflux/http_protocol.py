"""uvicorn's HTTP/1.1 and WebSocket protocols, whose own refusals carry the security headers.

uvicorn answers a request it cannot parse (bad request line or headers, headers too
large, an upgrade it does not support) with `400 Invalid HTTP request received.` itself,
before the app sees anything, so `SecurityHeadersMiddleware` never adds its headers. Its
protocols build that answer in one method, `send_400_response(msg)` (h11's and
httptools'); the subclasses here override only it, answering the same status and text
with the headers the middleware adds (`weflux.api.security.refusal_headers`: one source),
HSTS on a TLS connection (a browser ignores it over plain HTTP), and uvicorn's own
default headers (`Date`; `Server` unless turned off) as uvicorn's own answer has them.
Everything else is uvicorn's, unchanged, but for one bound: h11 refuses a request whose
head (request line and headers) passes 16 KiB, httptools had no bound at all (a client
could hold megabytes per connection in an unfinished header), so `SecureHttpToolsProtocol`
refuses one past `MAX_REQUEST_HEAD` with the same 400. `tests/test_http_protocol.py` sends
garbage over a raw socket to each protocol, so an upgrade that renames the hook fails there.

Its WebSocket protocol (websockets' sans-I/O handshake, uvicorn's `auto` choice) refuses
some handshakes itself too: malformed (400), headers too large (431), the app closing
(403) or failing (500) before it accepts. Each of those answers is built by websockets'
`ServerProtocol.reject`; `WebSocketProtocol` gives its connection a `reject` that adds the
same headers. A refusal the app sends itself (`websocket.http.response`) is the app's.

`weflux serve` uses `HTTPProtocol` (uvicorn's `auto` choice: httptools when installed,
else h11) and `WebSocketProtocol`; under uvicorn's own command line:
`--http weflux.http_protocol:HTTPProtocol --ws weflux.http_protocol:WebSocketProtocol`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Response
from websockets.server import ServerProtocol
from websockets.typing import StatusLike

from weflux.api.security import refusal_headers

_STATUS_LINE = b"HTTP/1.1 400 Bad Request\r\n"
# The most a request's head (request line and headers) may take before it ends: past it,
# httptools' protocol answers uvicorn's 400 (h11's own bound is 16 KiB, uvicorn's default).
MAX_REQUEST_HEAD = 64 * 1024


def bad_request(message: str, *, default_headers: list[tuple[bytes, bytes]], tls: bool) -> bytes:
    """uvicorn's 400 answer to an unparseable request, with the security headers."""
    body = message.encode("ascii")
    headers = [
        *default_headers,
        *refusal_headers(hsts=tls),
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"connection", b"close"),
    ]
    lines = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return _STATUS_LINE + lines + b"\r\n" + body


class _SecureBadRequest:
    """Overrides uvicorn's `send_400_response` (its attributes, as both protocols set them)."""

    transport: asyncio.Transport
    scheme: Literal["http", "https"] | None
    server_state: Any

    def send_400_response(self, msg: str) -> None:
        self.transport.write(
            bad_request(
                msg,
                default_headers=self.server_state.default_headers,
                tls=self.scheme == "https",
            )
        )
        self.transport.close()


class SecureH11Protocol(_SecureBadRequest, H11Protocol):
    """uvicorn's h11 protocol; its own 400s carry the security headers."""


HTTPProtocol: type[asyncio.Protocol]
try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # no httptools (uvicorn without [standard]): h11, as uvicorn's `auto`
    HTTPProtocol = SecureH11Protocol
else:

    class SecureHttpToolsProtocol(_SecureBadRequest, HttpToolsProtocol):
        """uvicorn's httptools protocol; its own 400s carry the security headers, and a
        request's head is refused past `MAX_REQUEST_HEAD` (httptools has no bound: one
        unfinished 20 MB header held 20 MB of the process per connection)."""

        _head_bytes = 0  # received since this request began, while its head was open
        _head_done = False  # its headers are complete: the body is arriving

        def data_received(self, data: bytes) -> None:
            if not self._head_done:
                self._head_bytes += len(data)
            super().data_received(data)
            # A head that ended within this read is bounded by the read's size.
            if (
                not self._head_done
                and self._head_bytes > MAX_REQUEST_HEAD
                and not self.transport.is_closing()
            ):
                self.logger.warning("Invalid HTTP request received: its head is too large.")
                self.send_400_response("Invalid HTTP request received.")

        def on_headers_complete(self) -> None:
            self._head_done = True
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._head_done, self._head_bytes = False, 0  # the next request's head

    HTTPProtocol = SecureHttpToolsProtocol


class _SecureHandshake(ServerProtocol):
    """websockets' server side, whose refusals of a handshake carry the security headers."""

    tls = False  # set per connection by `WebSocketProtocol` (HSTS over TLS only)

    def reject(self, status: StatusLike, text: str) -> Response:
        response = super().reject(status, text)
        for name, value in refusal_headers(hsts=self.tls):
            response.headers[name.decode("ascii")] = value.decode("latin-1")
        return response


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol; the handshakes it refuses itself carry the headers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn builds its `ServerProtocol` inline: the same object, with our `reject`
        # (a subclass adding no state, so the swap keeps everything uvicorn set).
        self.conn.__class__ = _SecureHandshake

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert isinstance(self.conn, _SecureHandshake)
        self.conn.tls = self.scheme == "wss"
