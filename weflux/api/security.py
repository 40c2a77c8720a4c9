"""Security headers on every HTTP response, the GraphiQL page's policy, and CORS."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from weflux.api.middleware import REQUEST_ID_HEADER
from weflux.errors import ErrorCode, error_response
from weflux.gql.ide import graphiql_page

# The API serves JSON only: nothing may load, run or frame it.
API_CSP = "default-src 'none'; frame-ancestors 'none'"

HSTS = "max-age=31536000; includeSubDomains"
HSTS_HEADER = (b"strict-transport-security", HSTS.encode())  # raw, as ASGI sends it

PERMISSIONS_POLICY = ", ".join(
    f"{feature}=()"
    for feature in (
        "accelerometer",
        "autoplay",
        "browsing-topics",
        "camera",
        "display-capture",
        "encrypted-media",
        "fullscreen",
        "geolocation",
        "gyroscope",
        "hid",
        "idle-detection",
        "interest-cohort",
        "magnetometer",
        "microphone",
        "midi",
        "payment",
        "picture-in-picture",
        "publickey-credentials-get",
        "screen-wake-lock",
        "serial",
        "usb",
        "xr-spatial-tracking",
    )
)

SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Permissions-Policy", PERMISSIONS_POLICY),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("X-Frame-Options", "DENY"),
)

_INLINE_SCRIPT = re.compile(r"<script\b([^>]*)>(.*?)</script>", re.DOTALL | re.IGNORECASE)


def _inline_script_hashes(html: str) -> list[str]:
    """CSP `'sha256-…'` sources for the inline (no `src`) scripts of a page."""
    hashes = []
    for attributes, body in _INLINE_SCRIPT.findall(html):
        if "src=" in attributes.lower() or not body.strip():
            continue
        digest = base64.b64encode(hashlib.sha256(body.encode("utf-8")).digest()).decode()
        hashes.append(f"'sha256-{digest}'")
    return hashes


def _ide_csp() -> str:
    """A policy for the GraphiQL page, hashing the inline script it serves."""
    hashes = " ".join(_inline_script_hashes(graphiql_page()))
    return "; ".join(
        (
            "default-src 'none'",
            # React, GraphiQL, its explorer plugin and js-cookie come from unpkg (with SRI);
            # the page's own inline script is allowed by its hash only.
            f"script-src https://unpkg.com {hashes}".rstrip(),
            # GraphiQL's stylesheets come from unpkg; the page has an inline <style> and
            # GraphiQL's components inject <style> elements at runtime, which no hash can
            # cover, so inline styles are allowed (styles cannot run code).
            "style-src https://unpkg.com 'unsafe-inline'",
            "font-src https://unpkg.com data:",
            "img-src 'self' data:",  # the favicon is a data: SVG
            "connect-src 'self'",  # queries over fetch, subscriptions over ws(s) to this host
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


IDE_CSP = _ide_csp()


def refusal_headers(*, hsts: bool) -> list[tuple[bytes, bytes]]:
    """The security headers of a response the app builds itself, raw as ASGI sends them."""
    headers = [("Content-Security-Policy", API_CSP), *SECURITY_HEADERS]
    raw = [(name.lower().encode(), value.encode()) for name, value in headers]
    return [*raw, HSTS_HEADER] if hsts else raw


class SecurityHeadersMiddleware:
    """Add the security headers to every HTTP response; a response's own CSP is kept.

    Wrap the whole Starlette app with it (outside its ServerErrorMiddleware) so that
    responses to unhandled errors carry the headers too.
    """

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hsts = self.hsts or scope.get("scheme") in ("https", "wss")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if "content-security-policy" not in headers:
                    headers["Content-Security-Policy"] = API_CSP
                for name, value in SECURITY_HEADERS:
                    if name not in headers:
                        headers[name] = value
                if hsts and "strict-transport-security" not in headers:
                    headers["Strict-Transport-Security"] = HSTS
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _check_origin(origin: str) -> None:
    if origin in ("*", "null") or "*" in origin:
        raise ValueError(f"CORS origin `{origin}` is not allowed; list exact origins")
    parts = urlsplit(origin)
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(f"CORS origin `{origin}` has an invalid port") from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username is not None
        or parts.password is not None
        or parts.path
        or parts.query
        or parts.fragment
        or origin != f"{parts.scheme}://{parts.netloc}"
    ):
        raise ValueError(
            f"CORS origin `{origin}` must be `scheme://host[:port]` with no path or trailing slash"
        )


# What the API itself needs from a browser; `WEFLUX_CORS_ALLOW_HEADERS` adds to it.
REQUIRED_CORS_HEADERS = ("Authorization", "Content-Type", REQUEST_ID_HEADER)


class CodedCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, whose refused preflight answers in the API's error shape."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        # Starlette's plain text: "Disallowed CORS origin, method, headers"
        message = bytes(response.body).decode()
        headers = {
            name: value
            for name, value in response.headers.items()
            if name not in ("content-length", "content-type")
        }
        return error_response(400, ErrorCode.BAD_REQUEST, message, headers=headers)


def cors_middleware(origins: Sequence[str], allow_headers: Sequence[str] = ()) -> Middleware:
    """CORS for exactly these origins: bearer tokens, no cookies, preflight cached 10 minutes.

    Browsers may send `REQUIRED_CORS_HEADERS` and `allow_headers` (compared without case).
    """
    for origin in origins:
        _check_origin(origin)
    headers = {name.lower(): name for name in (*REQUIRED_CORS_HEADERS, *allow_headers)}
    return Middleware(
        CodedCORSMiddleware,
        allow_origins=list(origins),
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=list(headers.values()),
        allow_credentials=False,
        expose_headers=[REQUEST_ID_HEADER, "Retry-After"],
        max_age=600,
    )
