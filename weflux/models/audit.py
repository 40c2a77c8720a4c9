"""The audit trail: who did what, when, to which object; never a secret."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, text
from sqlmodel import Field

from weflux.models.base import OrgScoped, created_at_field, new_id

NETWORK_KEPT = "ip_address IS NOT NULL"


class AuditEvent(OrgScoped, table=True):
    """One security-relevant action in a workspace."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index(None, "org_id", "created_at", "id"),
        # The rows whose IP address the daily retention has still to blank
        # (`WEFLUX_AUDIT_NETWORK_RETENTION`, migration 0027): a blanked row leaves it.
        Index(
            "ix_audit_events_network",
            "org_id",
            "created_at",
            postgresql_where=text(NETWORK_KEPT),
            sqlite_where=text(NETWORK_KEPT),
        ),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    action: str = Field(max_length=64, nullable=False)
    severity: str = Field(default="info", max_length=16, nullable=False)
    # No foreign keys: the trail is append-only and outlives the members it names.
    actor_user_id: uuid.UUID | None = Field(default=None)
    actor_membership_id: uuid.UUID | None = Field(default=None)
    target_type: str | None = Field(default=None, max_length=64)
    target_id: str | None = Field(default=None, max_length=64)
    ip_address: str | None = Field(default=None, max_length=64)
    details: dict[str, Any] = Field(default_factory=dict, sa_type=JSON, nullable=False)
    created_at: datetime = created_at_field()
