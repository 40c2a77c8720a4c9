"""Security headers on every response, the GraphiQL page's policy, and CORS."""

from __future__ import annotations

import base64
import hashlib
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import websockets
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send
from websockets.typing import Origin, Subprotocol

from tests.fixtures.app import app_client
from tests.fixtures.live import live_server
from tests.fixtures.settings import make_settings
from weflux.api.security import (
    API_CSP,
    IDE_CSP,
    SecurityHeadersMiddleware,
    cors_middleware,
)
from weflux.config import Settings
from weflux.gql.ide import graphiql_page

ALLOWED_ORIGIN = "https://app.example.com"

EXPECTED = {
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "x-frame-options": "DENY",
}
HSTS = "max-age=31536000; includeSubDomains"


async def ok(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def boom(request: Request) -> JSONResponse:
    raise RuntimeError("boom")


async def ide(request: Request) -> HTMLResponse:
    return HTMLResponse("<html></html>", headers={"Content-Security-Policy": IDE_CSP})


def make_app(*, hsts: bool) -> SecurityHeadersMiddleware:
    inner = Starlette(
        routes=[Route("/ok", ok), Route("/boom", boom), Route("/ide", ide)],
        middleware=[cors_middleware([ALLOWED_ORIGIN])],
    )
    return SecurityHeadersMiddleware(inner, hsts=hsts)


def make_client(*, hsts: bool = False, base_url: str = "http://testserver") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(
        app=make_app(hsts=hsts), client=("10.0.0.1", 1234), raise_app_exceptions=False
    )
    return httpx.AsyncClient(transport=transport, base_url=base_url)


def assert_security_headers(response: httpx.Response) -> None:
    for name, value in EXPECTED.items():
        assert response.headers.get(name) == value, name
    policy = response.headers["permissions-policy"]
    for feature in ("camera", "microphone", "geolocation", "payment", "usb", "interest-cohort"):
        assert f"{feature}=()" in policy
    assert len(response.headers.get_list("content-security-policy")) == 1


@pytest.mark.parametrize(("path", "status"), [("/ok", 200), ("/missing", 404), ("/boom", 500)])
async def test_every_response_carries_the_headers(path: str, status: int) -> None:
    async with make_client() as client:
        response = await client.get(path)
    assert response.status_code == status
    assert_security_headers(response)


async def test_no_hsts_on_plain_http() -> None:
    async with make_client(hsts=False) as client:
        response = await client.get("/ok")
    assert "strict-transport-security" not in response.headers


@pytest.mark.parametrize("path", ["/ok", "/missing", "/boom"])
async def test_hsts_when_configured(path: str) -> None:
    async with make_client(hsts=True) as client:
        response = await client.get(path)
    assert response.headers["strict-transport-security"] == HSTS


async def test_hsts_over_https() -> None:
    async with make_client(hsts=False, base_url="https://testserver") as client:
        response = await client.get("/ok")
    assert response.headers["strict-transport-security"] == HSTS
    assert_security_headers(response)


async def test_a_response_keeps_its_own_content_security_policy() -> None:
    async with make_client() as client:
        response = await client.get("/ide")
    assert response.headers.get_list("content-security-policy") == [IDE_CSP]
    assert response.headers["x-frame-options"] == "DENY"


async def test_a_response_keeps_its_own_security_headers() -> None:
    async def embeddable(request: Request) -> JSONResponse:
        return JSONResponse({}, headers={"Cross-Origin-Resource-Policy": "cross-origin"})

    app = SecurityHeadersMiddleware(Starlette(routes=[Route("/", embeddable)]), hsts=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/")
    assert response.headers.get_list("cross-origin-resource-policy") == ["cross-origin"]
    assert response.headers["content-security-policy"] == API_CSP


async def test_other_scopes_pass_through_untouched() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])
        await send({"type": "websocket.accept", "headers": []})

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await SecurityHeadersMiddleware(app, hsts=True)(
        {"type": "websocket", "scheme": "wss", "headers": []}, receive, send
    )
    assert seen == ["websocket"]
    assert sent == [{"type": "websocket.accept", "headers": []}]


class _PageResources(HTMLParser):
    """The script and stylesheet hosts and the inline scripts of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.script_hosts: set[str] = set()
        self.style_hosts: set[str] = set()
        self.inline_scripts: list[str] = []
        self._in_inline_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "script":
            if attributes.get("src"):
                self.script_hosts.add(_origin(attributes["src"] or ""))
            else:
                self._in_inline_script = True
                self.inline_scripts.append("")
        elif tag == "link" and attributes.get("rel") == "stylesheet":
            self.style_hosts.add(_origin(attributes.get("href") or ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_inline_script = False

    def handle_data(self, data: str) -> None:
        if self._in_inline_script:
            self.inline_scripts[-1] += data


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _directives(policy: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for directive in policy.split(";"):
        name, *values = directive.split()
        directives[name] = values
    return directives


def test_the_ide_policy_allows_exactly_what_graphiql_loads() -> None:
    page = _PageResources()
    page.feed(graphiql_page())
    directives = _directives(IDE_CSP)

    assert page.inline_scripts
    script_src = directives["script-src"]
    for script in page.inline_scripts:
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in script_src
    assert page.script_hosts == {"https://unpkg.com"}
    assert set(script_src) == page.script_hosts | {
        value for value in script_src if value.startswith("'sha256-")
    }
    assert page.style_hosts <= set(directives["style-src"])
    assert "'unsafe-eval'" not in IDE_CSP
    assert "'unsafe-inline'" not in script_src
    assert directives["default-src"] == ["'none'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["connect-src"] == ["'self'"]
    assert "data:" in directives["img-src"]


async def test_cors_preflight_from_an_allowed_origin() -> None:
    async with make_client() as client:
        response = await client.options(
            "/ok",
            headers={
                "Origin": ALLOWED_ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type, x-request-id",
            },
        )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "access-control-allow-credentials" not in response.headers
    assert response.headers["access-control-max-age"] == "600"
    methods = {m.strip() for m in response.headers["access-control-allow-methods"].split(",")}
    assert methods == {"GET", "POST", "OPTIONS"}
    allowed = response.headers["access-control-allow-headers"].lower()
    for header in ("authorization", "content-type", "x-request-id"):
        assert header in allowed
    assert_security_headers(response)


async def test_cors_preflight_from_another_origin_is_not_allowed() -> None:
    async with make_client() as client:
        for origin in ("https://evil.example.com", "null", "https://app.example.com.evil.io"):
            response = await client.options(
                "/ok",
                headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
            )
            assert "access-control-allow-origin" not in response.headers
            assert response.status_code == 400
            # in the API's error shape, not Starlette's plain text
            assert response.json() == {
                "error": {"code": "BAD_REQUEST", "message": "Disallowed CORS origin"}
            }


async def test_cors_preflight_asking_for_another_header_is_refused() -> None:
    async with make_client() as client:
        response = await client.options(
            "/ok",
            headers={
                "Origin": ALLOWED_ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-custom",
            },
        )
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "BAD_REQUEST",
        "message": "Disallowed CORS headers",
    }


async def test_cors_simple_request_exposes_headers() -> None:
    async with make_client() as client:
        allowed = await client.get("/ok", headers={"Origin": ALLOWED_ORIGIN})
        other = await client.get("/ok", headers={"Origin": "https://evil.example.com"})
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    exposed = {
        h.strip().lower() for h in allowed.headers["access-control-expose-headers"].split(",")
    }
    assert exposed == {"x-request-id", "retry-after"}
    assert "access-control-allow-credentials" not in allowed.headers
    assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize(
    "origin",
    [
        "*",
        "null",
        "https://*.example.com",
        "https://app.example.com/",
        "https://app.example.com/path",
        "app.example.com",
        "ftp://app.example.com",
        "https://user@app.example.com",
        "https://app.example.com:99999",
        "HTTPS://app.example.com",
    ],
)
def test_cors_refuses_wildcards_and_malformed_origins(origin: str) -> None:
    with pytest.raises(ValueError, match="CORS origin"):
        cors_middleware([ALLOWED_ORIGIN, origin])


def test_cors_middleware_configuration() -> None:
    middleware = cors_middleware(["https://app.example.com", "http://localhost:5173"])
    assert isinstance(middleware, Middleware)
    options = middleware.kwargs
    assert options["allow_origins"] == ["https://app.example.com", "http://localhost:5173"]
    assert options["allow_credentials"] is False
    assert options["max_age"] == 600
    assert cors_middleware([]).kwargs["allow_origins"] == []


APOLLO_AND_TRACING = (
    "apollographql-client-name",
    "apollographql-client-version",
    "sentry-trace",
    "baggage",
    "traceparent",
    "tracestate",
)


async def _preflight(settings: Settings, requested: str) -> httpx.Response:
    async with app_client(settings) as client:
        return await client.options(
            "/graphql",
            headers={
                "Origin": ALLOWED_ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": requested,
            },
        )


async def test_apollo_and_tracing_headers_pass_the_preflight(tmp_path: Path) -> None:
    """Given the app with its default CORS settings,
    when Apollo Client with Sentry or OpenTelemetry tracing sends its preflight,
    then every header it asks for is allowed."""
    settings = make_settings(tmp_path, allowed_origins=ALLOWED_ORIGIN)
    response = await _preflight(
        settings, ", ".join(("authorization", "content-type", *APOLLO_AND_TRACING))
    )
    assert response.status_code == 200
    allowed = {
        h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")
    }
    assert allowed >= {"authorization", "content-type", "x-request-id", *APOLLO_AND_TRACING}


async def test_allowed_request_headers_are_configurable(tmp_path: Path) -> None:
    """Given WEFLUX_CORS_ALLOW_HEADERS naming one custom header,
    when a preflight asks for it, then it is allowed, and what the API needs still is;
    when it asks for a header no longer listed, then the preflight is refused."""
    settings = make_settings(
        tmp_path, allowed_origins=ALLOWED_ORIGIN, cors_allow_headers="X-Tenant-Hint"
    )
    assert settings.cors_allow_headers == ["X-Tenant-Hint"]
    ok = await _preflight(settings, "authorization, content-type, x-request-id, x-tenant-hint")
    assert ok.status_code == 200
    refused = await _preflight(settings, "sentry-trace")
    assert refused.status_code == 400


@pytest.mark.parametrize("value", ["*", "x custom", "x-ok,bad:header"])
def test_a_malformed_allowed_header_names_the_variable(tmp_path: Path, value: str) -> None:
    with pytest.raises(ValidationError, match="cors_allow_headers"):
        make_settings(tmp_path, cors_allow_headers=value)


async def test_a_refused_websocket_handshake_carries_the_headers(live: str) -> None:
    """Given the app under a real uvicorn,
    when a WebSocket handshake from a foreign origin is refused,
    then its 403 carries the security headers as every HTTP answer does."""
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(
            live.replace("http://", "ws://") + "/graphql",
            subprotocols=[Subprotocol("graphql-transport-ws")],
            origin=Origin("https://evil.example"),
        ):
            pass
    response = refused.value.response
    assert response.status_code == 403
    for name, value in EXPECTED.items():
        assert response.headers.get(name) == value, name
    assert "strict-transport-security" not in response.headers  # plain HTTP, not production


async def test_websocket_answers_carry_hsts_where_http_answers_do(live_app: Starlette) -> None:
    """Given the app under a real uvicorn, sending HSTS as in production,
    when a WebSocket handshake is accepted and another one is refused,
    then the 101 and the 403 carry `Strict-Transport-Security` too."""
    live_app.hsts = True  # type: ignore[attr-defined]
    async with live_server(live_app) as base_url:
        url = base_url.replace("http://", "ws://") + "/graphql"
        protocols = [Subprotocol("graphql-transport-ws")]
        async with websockets.connect(url, subprotocols=protocols) as socket:
            assert socket.response is not None
            assert socket.response.headers.get("strict-transport-security") == HSTS
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(
                url, subprotocols=protocols, origin=Origin("https://evil.example")
            ):
                pass
    assert refused.value.response.headers.get("strict-transport-security") == HSTS
