"""Invitations to join a workspace."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Enum, Index
from sqlmodel import Field

from weflux.models.base import OrgScoped, UTCDateTime, created_at_field, new_id
from weflux.models.membership import Role


class Invitation(OrgScoped, table=True):
    """A single-use invitation; only the SHA-256 of its token is stored."""

    __tablename__ = "invitations"
    __table_args__ = (
        Index(None, "org_id", "created_at"),
        Index(None, "token_hash", unique=True),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    email: str = Field(max_length=320, nullable=False)
    name: str = Field(max_length=200, nullable=False)
    role: Role = Field(
        sa_type=Enum(Role, name="role", native_enum=False, create_constraint=True, length=16),
        nullable=False,
    )
    token_hash: str = Field(max_length=64, nullable=False, repr=False)
    invited_by_membership_id: uuid.UUID | None = Field(default=None)
    created_at: datetime = created_at_field()
    expires_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    accepted_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    accepted_membership_id: uuid.UUID | None = Field(default=None)
