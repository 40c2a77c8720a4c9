"""SMTP: input checks, the SSRF guard, and real test emails against a local aiosmtpd."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.fixtures.live import free_port
from tests.fixtures.smtp import (
    PASSWORD,
    REFUSED_RECIPIENT,
    USERNAME,
    RecordingHandler,
    authenticator,
    running_server,
)
from weflux.errors import BadUserInput
from weflux.mail import smtp as smtp_module
from weflux.mail.smtp import (
    SmtpConfig,
    SmtpError,
    SmtpSecurity,
    canonical_host,
    resolve_public_addresses,
    send_test_email,
    validate_smtp_input,
)

WRONG_PASSWORD = "wrong-password-hunter2-secret"
SENDER = "no-reply@example.com"
RECIPIENT = "alice@example.com"
PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"


# --- A real local SMTP server (tests.fixtures.smtp) ----------------------------------------


@pytest.fixture
def server() -> Iterator[tuple[RecordingHandler, int]]:
    with running_server() as running:
        yield running


@pytest.fixture
def auth_server() -> Iterator[tuple[RecordingHandler, int]]:
    with running_server(authenticator=authenticator, auth_require_tls=False) as running:
        yield running


def config(
    port: int,
    *,
    host: str = "127.0.0.1",
    security: SmtpSecurity = SmtpSecurity.NONE,
    username: str | None = None,
    password: str | None = None,
) -> SmtpConfig:
    return SmtpConfig(
        host=host,
        port=port,
        username=username,
        password=password,
        from_address=SENDER,
        security=security,
    )


def assert_secret_free(error: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    """Neither password shows in the error, what it carries, or any log record."""
    assert isinstance(error, SmtpError)
    texts = [str(error), repr(error), error.message, repr(error.details), repr(error.args)]
    # `mail.log` is the test server's own logger, which does see the password.
    texts += [repr(r.__dict__) for r in caplog.records if not r.name.startswith("mail.log")]
    for secret in (PASSWORD, WRONG_PASSWORD):
        assert all(secret not in text for text in texts)
    # No server reply rides along for a traceback printer or error reporter to show.
    assert error.__cause__ is None
    assert error.__context__ is None


# --- Sending ------------------------------------------------------------------------------


async def test_test_email_is_delivered(server: tuple[RecordingHandler, int]) -> None:
    handler, port = server
    await send_test_email(config(port), RECIPIENT, allow_private=True)
    [delivered] = handler.delivered
    assert delivered.mail_from == SENDER
    assert delivered.rcpt_tos == [RECIPIENT]
    assert delivered.subject == "Weflux test email"
    message = message_from_bytes(delivered.content)
    assert message["From"] == SENDER
    assert message["To"] == RECIPIENT
    assert message.get_content_type() == "text/plain"


async def test_login_with_the_right_password(auth_server: tuple[RecordingHandler, int]) -> None:
    handler, port = auth_server
    await send_test_email(
        config(port, username=USERNAME, password=PASSWORD), RECIPIENT, allow_private=True
    )
    assert [d.rcpt_tos for d in handler.delivered] == [[RECIPIENT]]
    assert handler.logins == [USERNAME]


async def test_a_wrong_password_fails_without_revealing_it(
    auth_server: tuple[RecordingHandler, int], caplog: pytest.LogCaptureFixture
) -> None:
    handler, port = auth_server
    caplog.set_level(logging.DEBUG, logger="weflux")
    with pytest.raises(SmtpError) as caught:
        await send_test_email(
            config(port, username=USERNAME, password=WRONG_PASSWORD),
            RECIPIENT,
            allow_private=True,
        )
    error = caught.value
    assert "authentication failed" in error.message
    assert USERNAME in error.message
    assert (error.code, error.graphql_code, error.status) == ("SMTP_ERROR", "BAD_USER_INPUT", 400)
    assert_secret_free(error, caplog)
    assert handler.delivered == []


async def test_the_password_is_not_in_the_repr() -> None:
    settings = config(587, username=USERNAME, password=PASSWORD)
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings)
    assert USERNAME in repr(settings)


async def test_connection_refused(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    for host, where in (("127.0.0.1", "127.0.0.1"), ("::1", "[::1]"), ("[::1]", "[::1]")):
        with pytest.raises(SmtpError) as caught:
            await send_test_email(config(port, host=host), RECIPIENT, allow_private=True)
        assert caught.value.message == (
            f"No SMTP server could be reached at {where}:{port}: "
            "check the host, the port and the security setting."
        )
        assert_secret_free(caught.value, caplog)


@pytest.mark.parametrize("host", ["::1", "[::1]", "0:0:0:0:0:0:0:1"])
async def test_test_email_is_delivered_to_an_ipv6_literal(host: str) -> None:
    with running_server(hostname="::1") as (handler, port):
        await send_test_email(config(port, host=host), RECIPIENT, allow_private=True)
    (envelope,) = handler.delivered
    assert envelope.rcpt_tos == [RECIPIENT]


# --- Port probing: one answer for every way of not reaching an SMTP server -------------------


@contextlib.contextmanager
def unreachable_port(kind: str) -> Iterator[int]:
    """A local port that fails a connection one way: `refused` (nothing listens),
    `filtered` (a listener whose queue is full: the connection never completes), `silent`
    (accepted, never greeted), `closed` (accepted, then hung up on), `not smtp` (another
    protocol's greeting)."""
    if kind == "refused":
        yield free_port()
        return
    if kind == "filtered":
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            with socket.create_connection(listener.getsockname()):  # fills the queue
                yield int(listener.getsockname()[1])
        return
    answers = {"silent": None, "closed": b"", "not smtp": b"SSH-2.0-OpenSSH_9.2\r\n"}
    answer = answers[kind]
    stop = threading.Event()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(0.1)

        def serve() -> None:
            held = []
            while not stop.is_set():
                try:
                    connection, _ = listener.accept()
                except TimeoutError:
                    continue
                if answer is None:
                    held.append(connection)  # never a word
                else:
                    connection.sendall(answer)
                    connection.close()
            for connection in held:
                connection.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield int(listener.getsockname()[1])
        finally:
            stop.set()
            thread.join()


UNREACHABLE = ["refused", "filtered", "silent", "closed", "not smtp"]


@pytest.mark.parametrize("security", [SmtpSecurity.NONE, SmtpSecurity.STARTTLS])
async def test_every_way_of_not_reaching_a_server_answers_the_same(
    caplog: pytest.LogCaptureFixture, security: SmtpSecurity
) -> None:
    """Given a closed port, a filtered one (the connection times out), and open ones that
    are no SMTP server (silent, hanging up, another protocol), when a test email is sent
    to each, then the admin gets one and the same error, code and words (no errno, no
    "refused" or "timed out"): the test email cannot tell an open port from a closed one.
    The log keeps the cause for the operator."""
    answers = set()
    for kind in UNREACHABLE:
        with unreachable_port(kind) as port, pytest.raises(SmtpError) as caught:
            await send_test_email(
                config(port, security=security), RECIPIENT, allow_private=True, timeout=1
            )
        error = caught.value
        answers.add(
            (error.code, error.graphql_code, error.status, error.message.replace(str(port), "P"))
        )
    assert answers == {
        (
            "SMTP_ERROR",
            "BAD_USER_INPUT",
            400,
            "No SMTP server could be reached at 127.0.0.1:P: "
            "check the host, the port and the security setting.",
        )
    }
    causes = {
        r.__dict__["smtp_error"] for r in caplog.records if r.getMessage() == "email not sent"
    }
    assert {"ConnectionRefusedError", "TimeoutError"} <= causes


async def test_production_connects_to_smtp_ports_only(server: tuple[RecordingHandler, int]) -> None:
    """Given the allowed ports (WEFLUX_SMTP_ALLOWED_PORTS), when a test email names
    another, then it is refused on its port field before any lookup or connection."""
    handler, port = server
    with pytest.raises(BadUserInput) as caught:
        await send_test_email(
            config(port), RECIPIENT, allow_private=True, allowed_ports=frozenset({25, 587})
        )
    assert caught.value.details == [
        {"field": "port", "message": "Mail servers are reached on ports 25 and 587 only."}
    ]
    await send_test_email(
        config(port), RECIPIENT, allow_private=True, allowed_ports=frozenset({25, port})
    )
    assert len(handler.delivered) == 1


async def test_a_refused_recipient(server: tuple[RecordingHandler, int]) -> None:
    handler, port = server
    with pytest.raises(SmtpError, match=re.escape("refused the recipient nobody@example.com")):
        await send_test_email(config(port), REFUSED_RECIPIENT, allow_private=True)
    assert handler.delivered == []


async def test_a_silent_server_is_unreachable() -> None:
    connections: list[asyncio.StreamWriter] = []

    async def never_greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    silent = await asyncio.start_server(never_greet, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        with pytest.raises(SmtpError, match=re.escape("No SMTP server could be reached at")):
            await send_test_email(config(port), RECIPIENT, allow_private=True, timeout=0.5)
    finally:
        for writer in connections:
            writer.close()
        silent.close()
        await silent.wait_closed()
    assert len(connections) == 1


async def test_the_recipient_is_checked() -> None:
    with pytest.raises(BadUserInput) as caught:
        await send_test_email(config(25), "bob@example.com\r\nBcc: x@evil.test", allow_private=True)
    assert [d["field"] for d in caught.value.details] == ["to"]


async def test_the_checked_address_is_used_without_resolving_again(
    server: tuple[RecordingHandler, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebinding DNS server gets one question: the connection reuses the checked answer."""
    handler, port = server
    calls: list[str] = []

    async def rebinding(host: str, port: int, **kwargs: Any) -> list[Any]:
        calls.append(host)
        address = "127.0.0.1" if len(calls) == 1 else "203.0.113.7"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", rebinding)
    await send_test_email(config(port, host="mail.example.com"), RECIPIENT, allow_private=True)
    assert calls == ["mail.example.com"]
    assert len(handler.delivered) == 1


async def test_production_refuses_a_local_server_before_connecting(
    server: tuple[RecordingHandler, int],
) -> None:
    handler, port = server
    with pytest.raises(BadUserInput) as caught:
        await send_test_email(config(port), RECIPIENT, allow_private=False)
    assert [d["field"] for d in caught.value.details] == ["host"]
    assert handler.delivered == []


# --- TLS ----------------------------------------------------------------------------------


@dataclass
class Certificates:
    ca_pem: str
    server_context: ssl.SSLContext


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A private CA and a certificate it issued for `localhost` only (no IP address)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("Weflux test CA"))
        .issuer_name(_name("Weflux test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory: Path = tmp_path_factory.mktemp("tls")
    cert_file = directory / "server.pem"
    key_file = directory / "server.key"
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_file, key_file)
    return Certificates(ca.public_bytes(serialization.Encoding.PEM).decode(), server_context)


@pytest.fixture
def trust_test_ca(certificates: Certificates, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client trusts the test CA on top of the system trust store, nothing else changes."""
    system_context: Callable[[], ssl.SSLContext] = smtp_module._tls_context

    def with_test_ca() -> ssl.SSLContext:
        context = system_context()
        context.load_verify_locations(cadata=certificates.ca_pem)
        return context

    monkeypatch.setattr(smtp_module, "_tls_context", with_test_ca)


@pytest.fixture
def tls_server(certificates: Certificates) -> Iterator[tuple[RecordingHandler, int]]:
    """Implicit TLS (as on port 465), with authentication."""
    with running_server(
        ssl_context=certificates.server_context, authenticator=authenticator
    ) as running:
        yield running


@pytest.fixture(params=[SmtpSecurity.TLS, SmtpSecurity.STARTTLS], ids=str)
def secure_server(
    request: pytest.FixtureRequest, certificates: Certificates
) -> Iterator[tuple[SmtpSecurity, RecordingHandler, int]]:
    """Implicit TLS, or STARTTLS required before anything else; both with authentication."""
    security: SmtpSecurity = request.param
    if security is SmtpSecurity.TLS:
        # aiosmtpd only counts STARTTLS as TLS, so it would hide AUTH on implicit TLS.
        parameters: dict[str, Any] = {
            "ssl_context": certificates.server_context,
            "auth_require_tls": False,
        }
    else:
        parameters = {"tls_context": certificates.server_context, "require_starttls": True}
    with running_server(authenticator=authenticator, **parameters) as (handler, port):
        yield security, handler, port


async def test_an_untrusted_certificate_fails_closed(
    secure_server: tuple[SmtpSecurity, RecordingHandler, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    security, handler, port = secure_server
    settings = config(
        port, host="localhost", security=security, username=USERNAME, password=PASSWORD
    )
    with pytest.raises(SmtpError) as caught:
        await send_test_email(settings, RECIPIENT, allow_private=True)
    assert caught.value.message.startswith("TLS failure: the certificate of localhost")
    assert_secret_free(caught.value, caplog)
    assert handler.delivered == []
    assert handler.logins == []


@pytest.mark.usefixtures("trust_test_ca")
async def test_a_trusted_certificate_for_the_host_name_works(
    secure_server: tuple[SmtpSecurity, RecordingHandler, int],
) -> None:
    """Connected to 127.0.0.1, the certificate is checked against the name `localhost`."""
    security, handler, port = secure_server
    settings = config(
        port, host="localhost", security=security, username=USERNAME, password=PASSWORD
    )
    await send_test_email(settings, RECIPIENT, allow_private=True)
    assert [d.rcpt_tos for d in handler.delivered] == [[RECIPIENT]]
    assert handler.logins == [USERNAME]


@pytest.mark.usefixtures("trust_test_ca")
async def test_a_certificate_for_another_name_is_refused(
    tls_server: tuple[RecordingHandler, int],
) -> None:
    handler, port = tls_server
    # The certificate names `localhost`, not the address 127.0.0.1.
    with pytest.raises(SmtpError, match=re.escape("TLS failure: the certificate of 127.0.0.1")):
        await send_test_email(
            config(port, security=SmtpSecurity.TLS), RECIPIENT, allow_private=True
        )
    assert handler.delivered == []


async def test_starttls_missing_on_the_server_is_a_tls_failure(
    server: tuple[RecordingHandler, int],
) -> None:
    handler, port = server
    with pytest.raises(SmtpError, match="does not offer STARTTLS"):
        await send_test_email(
            config(port, security=SmtpSecurity.STARTTLS), RECIPIENT, allow_private=True
        )
    assert handler.delivered == []


async def test_implicit_tls_to_a_plain_server_is_a_tls_failure(
    server: tuple[RecordingHandler, int],
) -> None:
    _handler, port = server
    with pytest.raises(SmtpError, match="TLS failure"):
        await send_test_email(
            config(port, security=SmtpSecurity.TLS), RECIPIENT, allow_private=True, timeout=5
        )


# --- Validation ---------------------------------------------------------------------------


def fields_of(error: BadUserInput) -> list[str]:
    return [detail["field"] for detail in error.details]


@pytest.mark.parametrize(
    "host",
    [
        "smtp.example.com",
        "smtp.example.com.",
        "SMTP.Example.COM",
        "localhost",
        "192.0.2.1",
        "2001:db8::1",
        "[2001:db8::1]",
        "2001:DB8:0:0:0:0:0:1",
        "[::ffff:192.0.2.1]",
        "bücher.example",
        "xn--bcher-kva.example",
        "a" * 63 + ".example.com",
    ],
)
def test_valid_hosts(host: str) -> None:
    validate_smtp_input(host, 587, SENDER, "STARTTLS", USERNAME)


@pytest.mark.parametrize(
    "host",
    [
        "",
        "smtp://mail.example.com",
        "mail.example.com/path",
        "mail example.com",
        " mail.example.com",
        "mail.example.com:587",
        "user@mail.example.com",
        "[smtp.example.com]",
        "[192.0.2.1]",
        "[2001:db8::1",
        "2001:db8::1]",
        "[2001:db8::1]:587",
        "[]",
        "fe80::1%eth0",
        "[fe80::1%eth0]",
        "[fe80::1%25eth0]",  # a zone as a URL writes it
        "::\uff11",  # ::1 in a fullwidth digit
        "\u0661\u0662\u0667.0.0.1",  # 127.0.0.1 in Arabic-Indic digits
        "-mail.example.com",
        "mail..example.com",
        "a" * 64 + ".example.com",
        ("a" * 62 + ".") * 4 + "com",
        "127.1",
        "2130706433",
        "mail_server.example.com",
        "mail.example.com\r\nRCPT TO:<x@y.z>",
    ],
)
def test_invalid_hosts(host: str) -> None:
    with pytest.raises(BadUserInput) as caught:
        validate_smtp_input(host, 587, SENDER, "STARTTLS", None)
    assert fields_of(caught.value) == ["host"]
    assert caught.value.details[0]["message"]


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("[2001:db8::25]", "2001:db8::25"),
        ("2001:DB8:0:0:0:0:0:25", "2001:db8::25"),
        ("[0:0:0:0:0:0:0:1]", "::1"),
        # IPv4-mapped: Python 3.13 writes the IPv4 part dotted, 3.11 in hex
        ("[::FFFF:C000:201]", str(ipaddress.ip_address("::ffff:c000:201"))),
        ("192.0.2.1", "192.0.2.1"),
        ("smtp.example.com", "smtp.example.com"),
    ],
)
def test_an_ip_literal_is_kept_in_its_canonical_form(typed: str, stored: str) -> None:
    """Given a host typed as an IP literal, bracketed or not, in any spelling, when it is
    made canonical, then it is the address's one short form, without brackets (a name is
    left as typed)."""
    validate_smtp_input(typed, 587, SENDER, "STARTTLS", None)
    assert canonical_host(typed) == stored


@pytest.mark.parametrize("port", [0, -1, 65536, 100_000, True])
def test_invalid_ports(port: int) -> None:
    with pytest.raises(BadUserInput) as caught:
        validate_smtp_input("smtp.example.com", port, SENDER, "TLS", None)
    assert fields_of(caught.value) == ["port"]


@pytest.mark.parametrize("port", [1, 25, 465, 587, 2525, 65535])
def test_valid_ports(port: int) -> None:
    validate_smtp_input("smtp.example.com", port, SENDER, "TLS", None)


@pytest.mark.parametrize(
    "address",
    [
        "",
        "no-at-sign.example.com",
        "name@localhost",
        "name@",
        "@example.com",
        "first last@example.com",
        "<name@example.com>",
        "Weflux <name@example.com>",
        "name@example.com\r\nBcc: victim@example.com",
        "name..dots@example.com",
        "name@exa mple.com",
        "x" * 65 + "@example.com",
    ],
)
def test_invalid_from_addresses(address: str) -> None:
    with pytest.raises(BadUserInput) as caught:
        validate_smtp_input("smtp.example.com", 587, address, "STARTTLS", None)
    assert fields_of(caught.value) == ["fromAddress"]


@pytest.mark.parametrize(
    "address", ["no-reply@example.com", "first.last+tag@mail.example.co.uk", "ops@bücher.example"]
)
def test_valid_from_addresses(address: str) -> None:
    validate_smtp_input("smtp.example.com", 587, address, "STARTTLS", None)


@pytest.mark.parametrize("security", ["", "SSL", "starttls", "tls ", "none"])
def test_invalid_security(security: str) -> None:
    with pytest.raises(BadUserInput) as caught:
        validate_smtp_input("smtp.example.com", 587, SENDER, security, None)
    assert fields_of(caught.value) == ["security"]


@pytest.mark.parametrize("security", [*SmtpSecurity, "STARTTLS", "TLS", "NONE"])
def test_valid_security(security: str) -> None:
    validate_smtp_input("smtp.example.com", 587, SENDER, security, None)


@pytest.mark.parametrize("username", ["x" * 321, "user\r\nAUTH", "user\x00"])
def test_invalid_usernames(username: str) -> None:
    with pytest.raises(BadUserInput) as caught:
        validate_smtp_input("smtp.example.com", 587, SENDER, "STARTTLS", username)
    assert fields_of(caught.value) == ["username"]


def test_every_bad_field_is_reported_at_once() -> None:
    with pytest.raises(BadUserInput) as caught:
        validate_smtp_input("https://x", 0, "nope", "SSL", "a\nb")
    assert fields_of(caught.value) == ["host", "port", "fromAddress", "security", "username"]
    assert all(set(detail) == {"field", "message"} for detail in caught.value.details)
    assert caught.value.code == "VALIDATION_FAILED"


# --- The SSRF guard -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "10.0.0.5",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",  # noqa: S104
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "fe80::1",
        "fc00::1",
        "fec0::1",
        "ff02::1",
        "2002:7f00:1::",  # 6to4 around 127.0.0.1
        "2002:a9fe:a9fe::",  # 6to4 around 169.254.169.254
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
        "64:ff9b::a00:5",  # NAT64 around 10.0.0.5
        "2001:db8::1",  # documentation
    ],
)
async def test_the_guard_refuses_non_public_addresses(host: str) -> None:
    with pytest.raises(BadUserInput) as caught:
        await resolve_public_addresses(host, 587)
    assert fields_of(caught.value) == ["host"]
    assert "private, local or reserved" in caught.value.message


@pytest.mark.parametrize(
    "host",
    [
        "[::1]",
        "0:0:0:0:0:0:0:1",
        "[::]",
        "[::ffff:127.0.0.1]",
        "::FFFF:7F00:1",  # IPv4-mapped 127.0.0.1, in hex
        "[::ffff:a9fe:a9fe]",  # IPv4-mapped 169.254.169.254
        "[::ffff:10.0.0.5]",
        "[FE80::1]",
        "[fd00::25]",  # unique local (ULA)
        "[fec0::1]",
        "[ff02::1]",
        "[2002:7f00:1::]",
        "[64:ff9b::a00:5]",
        "[2001:db8::25]",
        "0000:0000::0001",  # leading zeros
        "[::127.0.0.1]",  # IPv4-compatible (deprecated) 127.0.0.1
        "[::ffff:0:127.0.0.1]",  # IPv4-translated 127.0.0.1
        "[64:ff9b:1::a00:5]",  # local-use NAT64 (RFC 8215) around 10.0.0.5
        "[100::1]",  # discard-only
    ],
)
async def test_the_guard_refuses_non_public_ipv6_literals_however_spelled(host: str) -> None:
    """Given a non-public IPv6 literal in brackets or in another spelling, when it is
    checked for production, then it is refused as its plain short form is."""
    with pytest.raises(BadUserInput) as caught:
        await resolve_public_addresses(host, 587)
    assert fields_of(caught.value) == ["host"]
    assert "private, local or reserved" in caught.value.message


async def test_a_public_ipv6_literal_is_accepted_bracketed_or_not() -> None:
    for host in (PUBLIC_V6, f"[{PUBLIC_V6}]", f"[{PUBLIC_V6.upper()}]"):
        assert await resolve_public_addresses(host, 587) == [PUBLIC_V6]


async def test_the_guard_allows_them_outside_production() -> None:
    assert await resolve_public_addresses("127.0.0.1", 25, allow_private=True) == ["127.0.0.1"]
    assert "127.0.0.1" in await resolve_public_addresses("localhost", 25, allow_private=True)


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], list[str]]:
    """Answers every name with the given addresses; the hosts asked for are returned."""
    asked: list[str] = []

    def answer(addresses: list[str]) -> list[str]:
        async def getaddrinfo(host: str, port: int, **kwargs: Any) -> list[Any]:
            asked.append(host)
            if not addresses:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            infos: list[Any] = []
            for address in addresses:
                if ipaddress.ip_address(address).version == 4:
                    infos.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)))
                else:
                    infos.append(
                        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0))
                    )
            return infos

        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
        return asked

    return answer


async def test_a_public_address_is_accepted(fake_dns: Callable[[list[str]], list[str]]) -> None:
    asked = fake_dns([PUBLIC_V4, PUBLIC_V6])
    addresses = await resolve_public_addresses("smtp.example.com", 587)
    assert addresses == [PUBLIC_V4, PUBLIC_V6]
    assert asked == ["smtp.example.com"]


async def test_nat64_of_a_public_address_is_accepted(
    fake_dns: Callable[[list[str]], list[str]],
) -> None:
    fake_dns(["64:ff9b::5db8:d70e"])  # 93.184.215.14 through NAT64
    assert await resolve_public_addresses("smtp.example.com", 587) == ["64:ff9b::5db8:d70e"]


async def test_one_private_address_among_public_ones_is_refused(
    fake_dns: Callable[[list[str]], list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    fake_dns([PUBLIC_V4, "10.1.2.3"])
    with pytest.raises(BadUserInput) as caught:
        await resolve_public_addresses("smtp.example.com", 587)
    assert fields_of(caught.value) == ["host"]
    # The internal address is logged for the operator, never told to the user.
    assert "10.1.2.3" not in caught.value.message
    assert any("10.1.2.3" in repr(record.__dict__) for record in caplog.records)


@pytest.mark.parametrize(
    "address",
    [
        "::ffff:10.0.0.5",  # IPv4-mapped
        "::ffff:169.254.169.254",
        "fd00:ec2::254",  # unique local (a cloud's metadata service)
        "fe80::1%eth0",  # link-local, with the zone a resolver adds
        "64:ff9b::7f00:1",  # NAT64 around 127.0.0.1
        "2002:a00:5::1",  # 6to4 around 10.0.0.5
    ],
)
async def test_a_name_that_resolves_to_a_non_public_ipv6_address_is_refused(
    fake_dns: Callable[[list[str]], list[str]], address: str
) -> None:
    """Given a name whose AAAA answer (beside a public A) is not public, however it is
    written, when it is checked for production, then it is refused as the literal is."""
    fake_dns([PUBLIC_V4, address])
    with pytest.raises(BadUserInput, match="private, local or reserved") as caught:
        await resolve_public_addresses("smtp.example.com", 587)
    assert fields_of(caught.value) == ["host"]


async def test_a_name_that_does_not_resolve_is_refused(
    fake_dns: Callable[[list[str]], list[str]],
) -> None:
    asked = fake_dns([])
    for allow_private in (False, True):
        with pytest.raises(BadUserInput, match="does not resolve") as caught:
            await resolve_public_addresses("nonexistent.invalid", 587, allow_private=allow_private)
        assert fields_of(caught.value) == ["host"]
    assert asked == ["nonexistent.invalid", "nonexistent.invalid"]


async def test_an_internationalized_name_is_resolved_in_punycode(
    fake_dns: Callable[[list[str]], list[str]],
) -> None:
    asked = fake_dns([PUBLIC_V4])
    await resolve_public_addresses("bücher.example", 587)
    assert asked == ["xn--bcher-kva.example"]
