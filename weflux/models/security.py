"""Security events (per workspace and platform-wide) and the outbox of their alerts."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, text
from sqlmodel import Field, SQLModel

from weflux.models.base import OrgScoped, UTCDateTime, created_at_field, new_id


class SecuritySeverity(enum.StrEnum):
    """How urgent a security event is: HIGH and CRITICAL ones are alerted."""

    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"

    @property
    def alerted(self) -> bool:
        return self in (SecuritySeverity.HIGH, SecuritySeverity.CRITICAL)


NETWORK_KEPT = "ip_address IS NOT NULL OR user_agent IS NOT NULL"


class SecurityEvent(OrgScoped, table=True):
    """What a detector saw in a workspace. Never a password, token or message text."""

    __tablename__ = "security_events"
    __table_args__ = (
        Index(None, "org_id", "id"),
        Index(None, "org_id", "severity", "id"),
        # The rows whose IP address and user agent the daily retention has still to blank
        # (`WEFLUX_AUDIT_NETWORK_RETENTION`, migration 0027): a blanked row leaves it.
        Index(
            "ix_security_events_network",
            "org_id",
            "created_at",
            postgresql_where=text(NETWORK_KEPT),
            sqlite_where=text(NETWORK_KEPT),
        ),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    kind: str = Field(max_length=64, nullable=False)
    severity: str = Field(max_length=16, nullable=False)
    summary: str = Field(max_length=500, nullable=False)
    # No foreign keys: events outlive the members they name, like the audit trail.
    actor_user_id: uuid.UUID | None = Field(default=None)
    actor_membership_id: uuid.UUID | None = Field(default=None)
    ip_address: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=512)
    details: dict[str, Any] = Field(default_factory=dict, sa_type=JSON, nullable=False)
    created_at: datetime = created_at_field()
    acknowledged_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    acknowledged_by_membership_id: uuid.UUID | None = Field(default=None)


class PlatformSecurityEvent(SQLModel, table=True):
    """An event of no one workspace (credential stuffing across accounts), for the operator.

    The app's role may only insert (docs/security/tenancy.md); the operator reads them
    as the schema owner, and receives each one at `WEFLUX_SECURITY_ALERT_URL`.
    """

    __tablename__ = "platform_security_events"
    __table_args__ = (Index(None, "created_at"),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    kind: str = Field(max_length=64, nullable=False)
    severity: str = Field(max_length=16, nullable=False)
    summary: str = Field(max_length=500, nullable=False)
    ip_address: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=512)
    details: dict[str, Any] = Field(default_factory=dict, sa_type=JSON, nullable=False)
    created_at: datetime = created_at_field()


class AlertChannel(enum.StrEnum):
    """Where an alert goes."""

    ADMIN_MAIL = "admin_mail"  # every Admin of the event's workspace
    USER_MAIL = "user_mail"  # the one user the event is about (a new device)
    WEBHOOK = "webhook"  # WEFLUX_SECURITY_ALERT_URL, signed


class AlertStatus(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    SUPPRESSED = "suppressed"  # a duplicate, over the mail limit, or nowhere to send it


class SecurityAlert(SQLModel, table=True):
    """One alert to send (the outbox): written with its event, sent by the worker, retried.

    Not workspace-owned: platform events have no workspace. On PostgreSQL the app's role
    inserts from anywhere and reads or updates only outside any workspace (the worker).
    """

    __tablename__ = "security_alerts"
    __table_args__ = (
        Index(None, "status", "next_attempt_at"),
        Index(None, "dedupe_key", "sent_at"),
        Index(None, "audience", "channel", "sent_at"),
        Index(None, "created_at"),  # retention
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    # The event's workspace (None: a platform event). No foreign key: like the event ids,
    # the outbox outlives nothing it must not.
    org_id: uuid.UUID | None = Field(default=None)
    event_id: uuid.UUID = Field(nullable=False)
    channel: str = Field(max_length=16, nullable=False)
    # `<workspace id or "platform">`: the scope of the mail rate limit.
    audience: str = Field(max_length=64, nullable=False)
    # `<audience>:<kind>`: alerts of one kind are mailed once per de-duplication window.
    dedupe_key: str = Field(max_length=128, nullable=False)
    recipient_user_id: uuid.UUID | None = Field(default=None)
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=JSON, nullable=False)
    status: str = Field(default=AlertStatus.PENDING, max_length=16, nullable=False)
    attempts: int = Field(default=0, nullable=False)
    next_attempt_at: datetime = created_at_field()
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = created_at_field()
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
