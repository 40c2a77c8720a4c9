"""TLS in transit: the server's policy, outbound contexts, and plain-text URL checks.

- `weflux serve --ssl-certfile/--ssl-keyfile` serves TLS 1.2 and 1.3 only; TLS 1.2 with
  forward-secret AEAD suites only (ECDHE with AES-GCM or ChaCha20-Poly1305); TLS 1.3
  suites are all AEAD. No compression, no renegotiation.
- Outbound calls (the Cloud API, SMTP) use `client_context`: TLS 1.2+, certificate and
  host name verified against the system's CAs.
- `plaintext_redis_url` / `plaintext_database_url` tell whether a URL would speak plain
  text to another machine (production refuses that; see weflux.config).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from weflux.mail.url import is_loopback

TLS_MINIMUM = ssl.TLSVersion.TLSv1_2
# OpenSSL's names for the TLS 1.2 suites we allow (TLS 1.3 has its own, all AEAD).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
# PostgreSQL `ssl` modes that encrypt for certain (asyncpg's names, as in libpq).
POSTGRES_TLS_MODES = frozenset({"require", "verify-ca", "verify-full"})


def harden(context: ssl.SSLContext) -> ssl.SSLContext:
    """Hold a server context to our policy: TLS 1.2+, AEAD suites, no compression."""
    context.minimum_version = TLS_MINIMUM
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= ssl.OP_NO_RENEGOTIATION
    return context


def server_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """A server context under our policy with this certificate chain and key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile)
    return harden(context)


def uvicorn_ssl_context(
    config: Any, default_factory: Callable[[], ssl.SSLContext]
) -> ssl.SSLContext:
    """uvicorn's `ssl_context_factory`: its context (files, ALPN), held to our policy."""
    return harden(default_factory())


def client_context() -> ssl.SSLContext:
    """For outbound calls: the system's CAs, host names checked, TLS 1.2 at least."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = TLS_MINIMUM
    return context


def plaintext_redis_url(url: str) -> bool:
    """Whether a Redis URL speaks plain text to another machine."""
    parts = urlsplit(url.strip())
    if parts.scheme in ("rediss", "unix"):
        return False
    return not is_loopback(parts.hostname or "localhost")


def plaintext_database_url(url: str) -> bool:
    """Whether a PostgreSQL URL may speak plain text to another machine.

    Encrypted for certain: `ssl=require` (or `verify-ca`, `verify-full`) in the URL (asyncpg's
    name for libpq's `sslmode`), or PGSSLMODE in the environment. Local: no host (the
    default socket), a socket directory, or loopback.
    """
    parts = urlsplit(url.strip())
    if not parts.scheme.startswith("postgresql"):
        return False  # SQLite: a file
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    mode = query.get("ssl") or os.environ.get("PGSSLMODE", "")
    if mode.lower() in POSTGRES_TLS_MODES:
        return False
    host = query.get("host") or parts.hostname or ""
    if not host or host.startswith("/"):
        return False
    return not is_loopback(host)
