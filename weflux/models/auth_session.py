"""Login sessions: what access and refresh tokens point at, so they can be revoked."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index
from sqlmodel import Field

from weflux.models.base import OrgScoped, UTCDateTime, created_at_field, new_id


class AuthSession(OrgScoped, table=True):
    """One login of one member; revoking it ends every token issued under it."""

    __tablename__ = "sessions"
    __table_args__ = (
        Index(None, "org_id", "membership_id", "created_at"),
        Index(None, "refresh_token_hash", unique=True),
        Index(None, "user_id"),
        # The daily retention's sweep of sessions expired long ago (migration 0027).
        Index(None, "org_id", "expires_at"),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="users.id", nullable=False, ondelete="CASCADE")
    membership_id: uuid.UUID = Field(
        foreign_key="memberships.id", nullable=False, ondelete="CASCADE"
    )
    refresh_token_hash: str = Field(max_length=64, nullable=False, repr=False)
    # The refresh token rotated last, when, and the stamps (jti, iat, exp; no secret) of
    # the pair it was swapped for: presented again within the reuse interval, it is
    # answered with that same pair, re-issued from the stamps (weflux.services.auth).
    previous_refresh_token_hash: str | None = Field(default=None, max_length=64, repr=False)
    rotated_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    successor_stamps: dict[str, Any] | None = Field(default=None, sa_type=JSON, repr=False)
    created_at: datetime = created_at_field()
    last_used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # When the person last proved who they are in this session (a login, or POST
    # /auth/reauthenticate); a refresh does not count. Sensitive operations need it recent.
    authenticated_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_reason: str | None = Field(default=None, max_length=64)
    ip_address: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=512)
