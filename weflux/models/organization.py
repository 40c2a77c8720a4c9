"""Workspaces."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, false
from sqlmodel import Field, SQLModel

from weflux.models.base import UTCDateTime, created_at_field, new_id


class Organization(SQLModel, table=True):
    """A workspace: a company with its members, channels and conversations.

    Not `OrgScoped` (it is the scope itself), but row-level security on PostgreSQL
    still limits it to the current workspace.
    """

    __tablename__ = "organizations"

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    name: str = Field(max_length=200, nullable=False)
    # Every member must enroll in two factors before doing anything else.
    require_two_factor: bool = Field(
        default=False, nullable=False, sa_column_kwargs={"server_default": false()}
    )
    created_at: datetime = created_at_field()
    # Retention (CONTRACT §7): None keeps messages; raw webhook bodies at most 30 days.
    message_retention_days: int | None = Field(default=None)
    webhook_payload_retention_days: int = Field(default=30, nullable=False)
    # When the daily retention job last ran for the workspace.
    retention_ran_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Set while a deletion is pending: when its rows start to go.
    deletion_scheduled_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # SQLite: the change feed's highest position a purge deleted; positions are allocated
    # above it, so none is handed out twice (weflux.auth.scoping, migration 0021).
    feed_floor: int = Field(
        default=0, nullable=False, sa_type=BigInteger, sa_column_kwargs={"server_default": "0"}
    )
    # The highest position of a conversation removal the daily retention deleted:
    # `conversationRemoved(after:)` refuses an older cursor.
    removals_pruned_through: int = Field(
        default=0, nullable=False, sa_type=BigInteger, sa_column_kwargs={"server_default": "0"}
    )
