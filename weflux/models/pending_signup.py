"""Sign-ups waiting for their email address to be confirmed."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from weflux.models.base import UTCDateTime, created_at_field, new_id


class PendingSignup(SQLModel, table=True):
    """A sign-up whose mailbox is not proven yet: no workspace or user exists until then.

    Global, like `users`. Several may exist for one address (a squatter's unconfirmed
    one blocks nobody); the first confirmed wins and the others are deleted. Only the
    SHA-256 of the emailed token is stored, and the password only as its bcrypt hash.
    """

    __tablename__ = "pending_signups"
    __table_args__ = (
        Index(None, "token_hash", unique=True),
        Index(None, "email"),
        Index(None, "expires_at"),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    email: str = Field(max_length=320, nullable=False)  # normalised: trimmed, lower case
    name: str = Field(max_length=200, nullable=False)
    organization_name: str = Field(max_length=200, nullable=False)
    password_hash: str = Field(max_length=200, nullable=False, repr=False)
    token_hash: str = Field(max_length=64, nullable=False, repr=False)
    ip_address: str | None = Field(default=None, max_length=64)
    created_at: datetime = created_at_field()
    expires_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
