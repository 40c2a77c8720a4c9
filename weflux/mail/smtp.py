"""Outgoing mail over SMTP: settings validation, an SSRF guard, and the test email.

- `validate_smtp_input` checks what a workspace admin typed, field by field, in the
  GraphQL field names (`host`, `port`, `fromAddress`, `security`, `username`); a host may
  be a name or an IP literal (IPv6 bare or in brackets), which `canonical_host` stores
  in its short form without brackets.
- `resolve_public_addresses` resolves the host and, unless private hosts are allowed
  (development and tests), refuses a host any of whose addresses is loopback, private,
  link-local, multicast, reserved or unspecified, including IPv6 forms that embed such
  an IPv4 address (IPv4-mapped, 6to4, Teredo, NAT64).
- `send_email` (and `send_test_email`, which uses it) connects to the address that was
  checked, never re-resolving the name, while TLS still verifies the certificate against
  the host name (SNI included): the socket is opened here and handed to aiosmtplib
  together with the host name.
  This leaves no window for DNS rebinding between the check and the connection.

No function here puts the SMTP password in an exception message, a log line or a repr,
and server replies (which may echo what was sent) never reach a message either.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import re
import socket
import ssl
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from enum import StrEnum
from typing import Any

import aiosmtplib

from weflux.emails import is_email
from weflux.errors import BadUserInput, ErrorCode, WefluxError

log = logging.getLogger(__name__)

MAX_HOST_LENGTH = 253
# The `smtp_settings.username` column holds up to 320 characters.
MAX_USERNAME_LENGTH = 320
TEST_SUBJECT = "Weflux test email"
TEST_BODY = (
    "This is a test email from Weflux.\n\n"
    "Your SMTP settings work: Weflux can send email through this server.\n"
)

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
# RFC 6052 well-known NAT64 prefix: the last 32 bits are the IPv4 address reached.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class SmtpSecurity(StrEnum):
    """How the connection to the mail server is protected."""

    STARTTLS = "STARTTLS"  # plain connection upgraded with STARTTLS, usually port 587
    TLS = "TLS"  # implicit TLS from the first byte, usually port 465
    NONE = "NONE"  # no encryption


@dataclass(frozen=True)
class SmtpConfig:
    """A mail server to send through; `password` is plaintext and left out of the repr."""

    host: str
    port: int
    username: str | None
    password: str | None = field(repr=False)
    from_address: str
    security: SmtpSecurity


class SmtpError(WefluxError):
    """The mail server could not be reached or refused the test email; the message is safe."""

    code = ErrorCode.SMTP_ERROR
    graphql_code = ErrorCode.BAD_USER_INPUT
    status = 400


def _has_control_or_space(value: str) -> bool:
    return any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value)


def _parse_ip(value: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _ip_literal(host: str) -> IPAddress | None:
    """The address `host` is, as an IP literal: IPv4, or IPv6 bare or in brackets; never
    one with a zone (`%eth0` names an interface of one machine)."""
    bracketed = host.startswith("[") and host.endswith("]")
    inner = host[1:-1] if bracketed else host
    if "%" in inner:
        return None
    address = _parse_ip(inner)
    if address is None or (bracketed and address.version != 6):
        return None
    return address


def canonical_host(host: str) -> str:
    """The host as stored and used: an IP literal in its short form without brackets
    (`[2001:DB8:0::25]` is `2001:db8::25`); a name as given."""
    address = _ip_literal(host)
    return host if address is None else str(address)


def _where(host: str, port: int) -> str:
    """`host:port` as people write it: an IPv6 address in brackets."""
    address = _ip_literal(host)
    if address is not None and address.version == 6:
        return f"[{address}]:{port}"
    return f"{host}:{port}"


def _ascii_hostname(host: str) -> str | None:
    """The IDNA (punycode) form of a host name, or None when it is not a valid name."""
    try:
        encoded = host.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    if not encoded or len(encoded) > MAX_HOST_LENGTH:
        return None
    labels = encoded.removesuffix(".").split(".")
    if not all(_LABEL.match(label) for label in labels):
        return None
    # An all-numeric last label is no host name, and resolvers would read `127.1` or
    # `2130706433` as IPv4 addresses in shorthand.
    if labels[-1].isdigit():
        return None
    return encoded


def _host_problem(host: str) -> str | None:
    if not host:
        return "Enter the host name of the mail server, such as smtp.example.com."
    if len(host) > MAX_HOST_LENGTH:
        return f"The host name must be at most {MAX_HOST_LENGTH} characters long."
    if _has_control_or_space(host):
        return "The host name must not contain spaces."
    if any(mark in host for mark in ("/", "\\", "@", "?", "#")):
        return "Enter only the host name, such as smtp.example.com, without scheme or path."
    if _ip_literal(host) is not None:
        return None
    if host.startswith("[") and "]:" in host:
        return "Enter the port in its own field, not after the host name."
    if _parse_ip(host.strip("[]").partition("%")[0]) is not None and "%" in host:
        return "Enter the IPv6 address without a zone (the % and what follows)."
    if host.startswith("[") or host.endswith("]"):
        return "Between brackets, enter an IPv6 address only, such as [2001:db8::25]."
    if ":" in host:
        return "Enter the port in its own field, not after the host name."
    if _ascii_hostname(host) is None:
        return "Enter a valid host name, such as smtp.example.com, or an IP address."
    return None


def _email_problem(address: str) -> str | None:
    return None if is_email(address) else "Enter an email address such as name@example.com."


def validate_smtp_input(
    host: str, port: int, from_address: str, security: str, username: str | None
) -> None:
    """Raise `BadUserInput` listing every SMTP setting that is not acceptable."""
    details: list[dict[str, str]] = []

    def problem(name: str, message: str) -> None:
        details.append({"field": name, "message": message})

    if (message := _host_problem(host)) is not None:
        problem("host", message)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        problem("port", "The port must be a number from 1 to 65535 (usually 587 or 465).")
    if (message := _email_problem(from_address)) is not None:
        problem("fromAddress", message)
    try:
        SmtpSecurity(security)
    except ValueError:
        problem("security", "Choose STARTTLS, TLS or NONE.")
    if username is not None:
        if len(username) > MAX_USERNAME_LENGTH:
            problem("username", f"The username must be at most {MAX_USERNAME_LENGTH} characters.")
        elif any(ord(ch) < 32 or ord(ch) == 127 for ch in username):
            problem("username", "The username must not contain control characters.")
    if details:
        raise BadUserInput("Check the SMTP settings.", details=details)


def check_port_allowed(port: int, allowed: Collection[int] | None) -> None:
    """Refuse a port outside `allowed` (None: any port), before anything is resolved."""
    if allowed is None or port in allowed:
        return
    ports = sorted(allowed)
    listed = ", ".join(str(p) for p in ports[:-1]) + f" and {ports[-1]}" if ports else "none"
    message = f"Mail servers are reached on ports {listed} only."
    if len(ports) == 1:
        message = f"Mail servers are reached on port {ports[0]} only."
    raise BadUserInput(message, details=[{"field": "port", "message": message}])


def _host_error(message: str) -> BadUserInput:
    return BadUserInput(message, details=[{"field": "host", "message": message}])


def _embedded_ipv4(address: ipaddress.IPv6Address) -> Iterator[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address reaches through a translation mechanism."""
    if address.ipv4_mapped is not None:
        yield address.ipv4_mapped
    if address.sixtofour is not None:
        yield address.sixtofour
    if address.teredo is not None:
        yield from address.teredo
    if address in _NAT64:
        yield ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)


def _is_forbidden(address: IPAddress) -> bool:
    """Whether an address is anything but a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = list(_embedded_ipv4(address))
        if any(_is_forbidden(inner) for inner in embedded):
            return True
        # NAT64 addresses sit in a reserved range; what they reach is the IPv4 address.
        if address in _NAT64:
            return False
        if address.is_site_local:
            return True
    # `is_global` alone is not enough on Python 3.11: multicast counts as global there.
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


async def _resolve(
    host: str, port: int, *, allow_private: bool
) -> list[tuple[int, tuple[Any, ...]]]:
    """The (family, socket address) pairs to connect to, checked against the SSRF rules."""
    literal = _ip_literal(host)
    name = str(literal) if literal is not None else _ascii_hostname(host)
    if name is None:
        raise _host_error("Enter a valid host name, such as smtp.example.com, or an IP address.")
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(
            name, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except (OSError, UnicodeError):
        infos = []
    targets: list[tuple[int, tuple[Any, ...]]] = []
    refused: list[str] = []
    for family, _type, _proto, _canonical, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if not allow_private and _is_forbidden(address):
            refused.append(str(address))
        target = (int(family), tuple(sockaddr))
        if target not in targets:
            targets.append(target)
    if refused:
        # The addresses go to the log only: in a message they would map internal names.
        log.warning(
            "refused an SMTP host with a non-public address",
            extra={"smtp_host": host, "smtp_addresses": refused},
        )
        raise _host_error(
            "This host is a private, local or reserved address; "
            "enter the public host name of your mail server."
        )
    if not targets:
        raise _host_error("This host name does not resolve; check its spelling.")
    return targets


async def resolve_public_addresses(
    host: str, port: int, *, allow_private: bool = False
) -> list[str]:
    """Resolve `host`; unless `allow_private`, refuse it when any address is not public."""
    return [
        str(sockaddr[0])
        for _family, sockaddr in await _resolve(host, port, allow_private=allow_private)
    ]


def _tls_context() -> ssl.SSLContext:
    """The system default client context: trusted CAs, certificate and host name checked."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def _open_socket(targets: list[tuple[int, tuple[Any, ...]]]) -> socket.socket:
    """A TCP connection to the first checked address that accepts one."""
    loop = asyncio.get_running_loop()
    last_error: OSError = ConnectionError("no address to connect to")
    for family, sockaddr in targets:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, sockaddr)
        except OSError as error:
            sock.close()
            last_error = error
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise last_error


@functools.cache
def _fqdn() -> str:
    name = socket.getfqdn()
    # aiosmtplib refuses an EHLO name with spaces or control characters.
    return _ascii_hostname(name) or "localhost"


async def _local_hostname() -> str:
    """The name this host gives in EHLO, looked up once (it may need reverse DNS)."""
    return await asyncio.to_thread(_fqdn)


class _Refusal(Exception):
    """A failure detected here, carrying its safe message."""


def _test_message(config: SmtpConfig, to: str) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = TEST_SUBJECT
    message["From"] = config.from_address
    message["To"] = to
    message.set_content(TEST_BODY)
    return message


async def _deliver(
    config: SmtpConfig,
    message: EmailMessage,
    *,
    allow_private: bool,
    reply_seconds: float,
    phase: list[str],
) -> None:
    """Resolve, connect, secure, log in, send and quit; `phase` records the current step."""
    phase.append("resolve")
    targets = await _resolve(config.host, config.port, allow_private=allow_private)
    tls_context = None
    if config.security is not SmtpSecurity.NONE:
        # Loading the trust store reads files; keep it off the event loop.
        tls_context = await asyncio.to_thread(_tls_context)
    local_name = await _local_hostname()
    phase.append("connect")
    sock = await _open_socket(targets)
    phase.append("greeting")  # implicit TLS's handshake, then the server's 220
    ascii_name = _ascii_hostname(config.host)
    # Certificates name hosts without the root's trailing dot, and addresses without
    # brackets.
    server_name = (
        canonical_host(config.host) if ascii_name is None else ascii_name.removesuffix(".")
    )
    try:
        smtp = aiosmtplib.SMTP(
            # The name is used only for TLS (SNI and the certificate check): the
            # connection is the socket to the address that passed the SSRF check.
            hostname=server_name,
            sock=sock,
            use_tls=config.security is SmtpSecurity.TLS,
            # False, not None: no opportunistic upgrade that would hide a missing STARTTLS.
            start_tls=False,
            tls_context=tls_context,
            local_hostname=local_name,
            # Each reply is awaited at most this long; the caller bounds the whole exchange.
            timeout=reply_seconds,
        )
    except BaseException:
        sock.close()
        raise
    # From `connect` on, the asyncio transport owns the socket and closes it.
    try:
        await smtp.connect()
        phase.append("greeted")
        if config.security is SmtpSecurity.STARTTLS:
            phase.append("starttls")
            await smtp.ehlo()
            if not smtp.supports_extension("starttls"):
                raise _Refusal(
                    "TLS failure: the server does not offer STARTTLS; "
                    "choose TLS (usually port 465) or check the port."
                )
            await smtp.starttls()
        # STARTTLS forgets what the server offered, so greet (again) before AUTH.
        await smtp.ehlo()
        if config.username:
            phase.append("login")
            if not smtp.supports_extension("auth"):
                raise _Refusal(
                    "The SMTP server does not offer authentication on this connection; "
                    "check the security setting and the port, or remove the username."
                )
            await smtp.login(config.username, config.password or "")
        phase.append("send")
        await smtp.send_message(message)
        phase.append("quit")
        # The message was accepted; a server hanging up on QUIT changes nothing.
        with contextlib.suppress(aiosmtplib.SMTPException):
            await smtp.quit()
    finally:
        smtp.close()


def _exception_chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend((current.__cause__, current.__context__))


def unreachable(config: SmtpConfig) -> str:
    """The one answer to every failure to reach an SMTP server (`_describe`)."""
    return (
        f"No SMTP server could be reached at {_where(config.host, config.port)}: "
        "check the host, the port and the security setting."
    )


def _describe(error: BaseException, config: SmtpConfig, to: str, phase: str, timeout: float) -> str:
    """A message for the admin naming the failure, never the password or a server reply.

    Every failure before an SMTP server has greeted (a connection refused, unreachable,
    timed out, reset or closed, a silent or non-SMTP service) is `unreachable`, the same
    words, whatever the cause: the test email must not tell an open port from a closed or
    filtered one (port probing). Only TLS failures, which need a service that answered,
    keep their own words.
    """
    where = _where(config.host, config.port)
    chain = list(_exception_chain(error))
    for item in chain:
        if isinstance(item, ssl.SSLCertVerificationError):
            reason = item.verify_message or "certificate not trusted"
            return (
                f"TLS failure: the certificate of {config.host} could not be verified ({reason})."
            )
    if any(isinstance(item, ssl.SSLError) for item in chain):
        return f"TLS failure: the TLS handshake with {where} failed."
    if phase in ("resolve", "connect", "greeting"):
        return unreachable(config)
    if any(isinstance(item, TimeoutError) for item in chain):
        return f"Timed out after {timeout:g} seconds talking to {where}."
    if isinstance(error, aiosmtplib.SMTPAuthenticationError):
        return (
            f"SMTP authentication failed for user {config.username}: "
            "check the username and password."
        )
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused | aiosmtplib.SMTPRecipientRefused):
        return f"The SMTP server refused the recipient {to}."
    if isinstance(error, aiosmtplib.SMTPSenderRefused):
        return f"The SMTP server refused the sender address {config.from_address}."
    if isinstance(error, aiosmtplib.SMTPDataError):
        return f"The SMTP server refused the message (reply code {error.code})."
    if phase == "starttls":
        return f"TLS failure: the STARTTLS upgrade with {where} failed."
    if isinstance(error, aiosmtplib.SMTPServerDisconnected):
        return f"The SMTP server {where} closed the connection unexpectedly."
    if isinstance(error, aiosmtplib.SMTPResponseException):
        return f"The SMTP server {where} answered with an error (reply code {error.code})."
    if isinstance(error, OSError) and not isinstance(error, aiosmtplib.SMTPException):
        return f"The connection to {where} failed."
    return f"The SMTP conversation with {where} failed."


async def send_test_email(
    config: SmtpConfig,
    to: str,
    *,
    allow_private: bool,
    allowed_ports: Collection[int] | None = None,
    # The callers' contract names it `timeout`; it feeds `asyncio.timeout` below.
    timeout: float = 15.0,  # noqa: ASYNC109
) -> None:
    """Send a short test email through `config`; `timeout` bounds the whole exchange.

    `allowed_ports` (None: any) are the ports it may connect to (WEFLUX_SMTP_ALLOWED_PORTS
    in production)."""
    validate_smtp_input(
        config.host, config.port, config.from_address, config.security, config.username
    )
    check_port_allowed(config.port, allowed_ports)
    if (problem := _email_problem(to)) is not None:
        raise BadUserInput(problem, details=[{"field": "to", "message": problem}])
    await send_email(
        config, _test_message(config, to), allow_private=allow_private, timeout=timeout
    )


async def send_email(
    config: SmtpConfig,
    message: EmailMessage,
    *,
    allow_private: bool,
    timeout: float = 15.0,  # noqa: ASYNC109
) -> None:
    """Send `message` through `config`; `SmtpError` with a safe message when it fails.

    Neither the message (it may hold a link with a token) nor a server reply is logged.
    """
    to = str(message["To"])
    phase: list[str] = []
    failure: str | None = None
    error_type: str | None = None
    reply_code: int | None = None
    try:
        async with asyncio.timeout(timeout):
            await _deliver(
                config, message, allow_private=allow_private, reply_seconds=timeout, phase=phase
            )
    except _Refusal as refusal:
        failure, error_type = str(refusal), "refused"
    except (aiosmtplib.SMTPException, OSError) as error:
        if phase and phase[-1] == "quit":
            # The server had accepted the message; the deadline ran out saying goodbye.
            log.info("email sent", extra={"smtp_host": config.host})
            return
        failure = _describe(error, config, to, phase[-1] if phase else "resolve", timeout)
        error_type, reply_code = type(error).__name__, getattr(error, "code", None)
    if failure is not None:
        # The exception's text may quote server replies; log only its type and code.
        log.warning(
            "email not sent",
            extra={
                "smtp_host": config.host,
                "smtp_port": config.port,
                "smtp_phase": phase[-1] if phase else "resolve",
                "smtp_error": error_type,
                "smtp_reply_code": reply_code,
            },
        )
        # Raised outside the `except` block so no server reply rides along as __context__.
        raise SmtpError(failure)
    log.info("email sent", extra={"smtp_host": config.host, "smtp_port": config.port})
