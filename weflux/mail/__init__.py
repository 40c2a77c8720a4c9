"""Outgoing email: SMTP settings checks, the SSRF guard and the test email."""

from weflux.mail.smtp import (
    SmtpConfig,
    SmtpError,
    SmtpSecurity,
    resolve_public_addresses,
    send_test_email,
    validate_smtp_input,
)

__all__ = [
    "SmtpConfig",
    "SmtpError",
    "SmtpSecurity",
    "resolve_public_addresses",
    "send_test_email",
    "validate_smtp_input",
]
