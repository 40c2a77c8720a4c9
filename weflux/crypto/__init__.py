"""Encryption of stored secrets (AES-256-GCM envelopes) and the `Secret` type that masks them.

`weflux.crypto.rotation.rotate_keys` re-encrypts stored secrets under the primary key.
"""

from weflux.crypto.fields import SECRET_COLUMNS, context_for, open_secret, seal
from weflux.crypto.keyring import DecryptionError, KeyRing, SecretContext
from weflux.crypto.secret import (
    REDACTED,
    RedactionRegistry,
    Secret,
    SecretRedactingFilter,
    install_redaction,
    redact,
    register_secret,
)

__all__ = [
    "REDACTED",
    "SECRET_COLUMNS",
    "DecryptionError",
    "KeyRing",
    "RedactionRegistry",
    "Secret",
    "SecretContext",
    "SecretRedactingFilter",
    "context_for",
    "install_redaction",
    "open_secret",
    "redact",
    "register_secret",
    "seal",
]
