"""The columns that hold sealed secrets, and helpers to seal and open them on a row."""

from __future__ import annotations

import uuid

from weflux.crypto.keyring import KeyRing, SecretContext
from weflux.crypto.secret import Secret
from weflux.models import OrgScoped, User

# The "workspace" a secret of a global table (not owned by one workspace) is bound to.
NO_WORKSPACE = uuid.UUID(int=0)

# Every column holding an envelope. Key rotation re-encrypts exactly these, so a new
# secret column must be listed here (`seal` refuses any other).
SECRET_COLUMNS: dict[str, tuple[str, ...]] = {
    "whatsapp_accounts": ("access_token_enc", "app_secret_enc", "webhook_verify_token_enc"),
    "smtp_settings": ("password_enc",),
    # A person's own secret, whatever their workspaces: bound to NO_WORKSPACE.
    "users": ("totp_secret_enc",),
    "data_requests": ("file_key_enc",),  # an export file's data key
    "media_files": ("data_key_enc",),  # a media file's data key (weflux.media)
}

SealedRow = OrgScoped | User


def workspace_of(row: object) -> uuid.UUID | None:
    """The workspace a row's secrets are bound to: its own, or NO_WORKSPACE for a user."""
    if isinstance(row, User):
        return NO_WORKSPACE
    org_id = getattr(row, "org_id", None)
    return org_id if isinstance(org_id, uuid.UUID) else None


def context_for(row: SealedRow, column: str) -> SecretContext:
    """The context a secret of `row.column` is bound to; ValueError if it cannot be known."""
    table = type(row).__tablename__
    if not isinstance(table, str) or column not in SECRET_COLUMNS.get(table, ()):
        raise ValueError(
            f"{table}.{column} is not a secret column; add it to SECRET_COLUMNS "
            "so that key rotation covers it"
        )
    row_id = getattr(row, "id", None)
    if not isinstance(row_id, uuid.UUID):
        raise ValueError(f"a {type(row).__name__} needs its id before a secret is sealed")
    org_id = workspace_of(row)
    if org_id is None:
        # The session fills org_id only at flush, after the envelope has been bound.
        raise ValueError(
            f"set {type(row).__name__}.org_id explicitly before sealing or opening a secret"
        )
    return SecretContext(org_id=org_id, table=table, column=column, row_id=row_id)


def seal(keyring: KeyRing, row: SealedRow, column: str, plaintext: str | Secret | None) -> None:
    """Store `plaintext` in `row.column` as an envelope (None clears it)."""
    context = context_for(row, column)
    if plaintext is None:
        setattr(row, column, None)
        return
    value = plaintext.reveal() if isinstance(plaintext, Secret) else plaintext
    setattr(row, column, keyring.encrypt(value, context))


def open_secret(keyring: KeyRing, row: SealedRow, column: str) -> Secret | None:
    """The secret in `row.column`, or None if none is stored; DecryptionError if unreadable."""
    context = context_for(row, column)
    envelope = getattr(row, column)
    if envelope is None:
        return None
    return keyring.decrypt(envelope, context)
