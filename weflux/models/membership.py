"""Membership: a user's role in one workspace."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import Enum, Index, UniqueConstraint
from sqlmodel import Field

from weflux.models.base import OrgScoped, created_at_field, new_id


class Role(enum.StrEnum):
    """Roles, strongest first: Admin > Manager > Agent."""

    ADMIN = "ADMIN"
    MANAGER = "MANAGER"
    AGENT = "AGENT"


class Membership(OrgScoped, table=True):
    """A user in a workspace, with a role."""

    __tablename__ = "memberships"
    __table_args__ = (
        UniqueConstraint("org_id", "user_id"),
        Index(None, "org_id", "role"),
        Index(None, "user_id"),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="users.id", nullable=False, ondelete="CASCADE")
    role: Role = Field(
        sa_type=Enum(Role, name="role", native_enum=False, create_constraint=True, length=16),
        nullable=False,
    )
    created_at: datetime = created_at_field()
