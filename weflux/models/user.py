"""People who can log in; one user may belong to several workspaces."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, Index, Text, text
from sqlmodel import Field, SQLModel

from weflux.models.base import UTCDateTime, created_at_field, new_id


class User(SQLModel, table=True):
    """A person. Global (not workspace-owned): reached through memberships."""

    __tablename__ = "users"
    __table_args__ = (Index("uq_users_email_lower", text("lower(email)"), unique=True),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    email: str = Field(max_length=320, nullable=False)
    name: str = Field(max_length=200, nullable=False)
    password_hash: str = Field(max_length=200, nullable=False, repr=False)
    password_changed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Two factors (docs/security/two-factor.md). The TOTP secret is an envelope of the key
    # ring (weflux.crypto.fields), bound to this row; it is set at enrollment and counts
    # once `two_factor_enabled_at` is set by the first code. `totp_last_step` is the
    # time step of the last accepted code: a code is accepted once only.
    totp_secret_enc: str | None = Field(default=None, sa_type=Text, repr=False)
    two_factor_enabled_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    totp_last_step: int | None = Field(default=None, sa_type=BigInteger)
    # Each unused recovery code as `<kid>:<keyed hash>` (weflux.auth.recovery_codes),
    # space-separated (a used one is removed).
    recovery_code_hashes: str | None = Field(default=None, sa_type=Text, repr=False)
    # The SHA-256 of the mfaToken of the last password step; cleared once it is used.
    mfa_challenge_hash: str | None = Field(default=None, max_length=64, repr=False)
    created_at: datetime = created_at_field()
