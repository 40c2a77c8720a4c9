"""`WEFLUX_SMTP_URL`: the platform's own mail server, as one URL (CONTRACT §8).

- `smtp://user:pass@host:587`: STARTTLS, required (a server that does not offer it fails).
- `smtps://user:pass@host:465`: implicit TLS from the first byte.
- `smtp://host:25` to a loopback host (`localhost`, `127.0.0.0/8`, `::1`): no TLS, for a
  relay on the same machine. Anywhere else a plain connection is refused.

User and password are percent-decoded. Error messages never quote the URL (it holds the
password): they say what is wrong with it.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import SplitResult, unquote, urlsplit

from weflux.errors import BadUserInput
from weflux.mail.smtp import SmtpConfig, SmtpSecurity, canonical_host, validate_smtp_input

_DEFAULT_PORTS = {"smtp": 587, "smtps": 465}


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine: `localhost` or a loopback address."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _port(parts: SplitResult) -> int:
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the port must be a number from 1 to 65535") from None
    return port or _DEFAULT_PORTS[parts.scheme]


def parse_smtp_url(url: str, *, from_address: str) -> SmtpConfig:
    """The `SmtpConfig` an SMTP URL describes; ValueError saying what is wrong."""
    parts = urlsplit(url.strip())
    if parts.scheme not in _DEFAULT_PORTS:
        raise ValueError("use smtp://user:pass@host:587 (STARTTLS) or smtps://user:pass@host:465")
    host = parts.hostname or ""
    if not host:
        raise ValueError("the URL names no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("the URL takes no path, query or fragment")
    port = _port(parts)
    if parts.scheme == "smtps":
        security = SmtpSecurity.TLS
    elif is_loopback(host):
        security = SmtpSecurity.NONE
    else:
        security = SmtpSecurity.STARTTLS
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    try:
        validate_smtp_input(host, port, from_address, security, username)
    except BadUserInput as error:
        problems = "; ".join(
            f"{detail['field']}: {detail['message']}" for detail in error.details or []
        )
        raise ValueError(problems.replace("fromAddress:", "WEFLUX_SMTP_FROM:")) from None
    return SmtpConfig(
        host=canonical_host(host),
        port=port,
        username=username,
        password=password,
        from_address=from_address,
        security=security,
    )
