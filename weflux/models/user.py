"""People who can log in; one user may belong to several workspaces."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Index, text
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
    created_at: datetime = created_at_field()
