"""`WEFLUX_SMTP_URL` (CONTRACT §8): STARTTLS by default, implicit TLS, plain only to loopback."""

from __future__ import annotations

import pytest

from weflux.mail.smtp import SmtpSecurity
from weflux.mail.url import parse_smtp_url

SENDER = "no-reply@weflux.example"


@pytest.mark.parametrize(
    ("url", "host", "port", "security"),
    [
        ("smtp://mailer:pw@smtp.example.com:587", "smtp.example.com", 587, SmtpSecurity.STARTTLS),
        ("smtp://mailer:pw@smtp.example.com", "smtp.example.com", 587, SmtpSecurity.STARTTLS),
        ("smtp://smtp.example.com:25", "smtp.example.com", 25, SmtpSecurity.STARTTLS),
        ("smtps://mailer:pw@smtp.example.com", "smtp.example.com", 465, SmtpSecurity.TLS),
        ("smtps://mailer:pw@smtp.example.com:2465", "smtp.example.com", 2465, SmtpSecurity.TLS),
        ("smtp://127.0.0.1:2525", "127.0.0.1", 2525, SmtpSecurity.NONE),
        ("smtp://localhost:25", "localhost", 25, SmtpSecurity.NONE),
        ("smtp://[::1]:25", "::1", 25, SmtpSecurity.NONE),
        ("smtp://[0:0::1]:25", "::1", 25, SmtpSecurity.NONE),
        ("smtp://u:p@[2001:DB8:0::25]:587", "2001:db8::25", 587, SmtpSecurity.STARTTLS),
        ("smtps://localhost:465", "localhost", 465, SmtpSecurity.TLS),
    ],
)
def test_the_scheme_and_host_choose_the_security(
    url: str, host: str, port: int, security: SmtpSecurity
) -> None:
    config = parse_smtp_url(url, from_address=SENDER)

    assert (config.host, config.port, config.security) == (host, port, security)
    assert config.from_address == SENDER


def test_user_and_password_are_percent_decoded_and_never_in_the_repr() -> None:
    config = parse_smtp_url(
        "smtp://me%40corp.example:p%40ss%3Aword@smtp.example.com", from_address=SENDER
    )

    assert config.username == "me@corp.example"
    assert config.password == "p@ss:word"
    assert "p@ss" not in repr(config)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://mailer:Secret-pw-99@smtp.example.com", "smtp://"),
        ("smtp://mailer:Secret-pw-99@", "no host"),
        ("smtp://mailer:Secret-pw-99@smtp.example.com:99999", "port"),
        ("smtp://mailer:Secret-pw-99@smtp.example.com/path", "path"),
        ("smtp://mailer:Secret-pw-99@smtp.example.com?tls=no", "query"),
        ("smtp://mailer:Secret-pw-99@bad host.example", "host"),
    ],
)
def test_a_bad_url_says_why_without_quoting_it(url: str, reason: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_smtp_url(url, from_address=SENDER)

    assert reason in str(refused.value)
    assert "Secret-pw-99" not in str(refused.value)


def test_a_bad_sender_is_named_by_its_variable() -> None:
    with pytest.raises(ValueError, match="WEFLUX_SMTP_FROM"):
        parse_smtp_url("smtps://smtp.example.com", from_address="not an address")
