"""The platform's incident register: incidents, the workspaces they affect, who was told."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import Enum, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from weflux.models.base import OrgScoped, UTCDateTime, created_at_field, new_id


class IncidentStatus(enum.StrEnum):
    """Where an incident stands: open until its post-mortem is published."""

    OPEN = "OPEN"
    CLOSED = "CLOSED"


INCIDENT_STATUS_MEANINGS: dict[IncidentStatus, str] = {
    IncidentStatus.OPEN: "Being handled; its post-mortem is not published yet.",
    IncidentStatus.CLOSED: "Its post-mortem is published (`postMortemUrl`).",
}


class Incident(SQLModel, table=True):
    """A security incident, run by the operator; no single workspace owns it.

    Row-level security lets the app's role read an incident only in a transaction of a
    workspace it affects (docs/security/tenancy.md); only the operator writes.
    """

    __tablename__ = "incidents"

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    title: str = Field(max_length=200, nullable=False)
    status: IncidentStatus = Field(
        default=IncidentStatus.OPEN,
        sa_type=Enum(
            IncidentStatus,
            name="incident_status",
            native_enum=False,
            create_constraint=True,
            length=16,
        ),
        nullable=False,
    )
    discovered_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    notify_by: datetime = Field(sa_type=UTCDateTime, nullable=False)
    post_mortem_due_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    post_mortem_url: str | None = Field(default=None, max_length=2000)
    closed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = created_at_field()


class IncidentWorkspace(OrgScoped, table=True):
    """A workspace an incident affects; `notified_at` once all its Admins were told."""

    __tablename__ = "incident_workspaces"
    __table_args__ = (
        UniqueConstraint("org_id", "incident_id"),
        Index(None, "incident_id"),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    incident_id: uuid.UUID = Field(foreign_key="incidents.id", nullable=False, ondelete="CASCADE")
    notified_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = created_at_field()


class IncidentNotice(OrgScoped, table=True):
    """One Admin told of an incident: who, at which address, when."""

    __tablename__ = "incident_notices"
    __table_args__ = (
        UniqueConstraint("org_id", "incident_id", "user_id"),
        Index(None, "incident_id"),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    incident_id: uuid.UUID = Field(foreign_key="incidents.id", nullable=False, ondelete="CASCADE")
    # No foreign key to users: the record outlives the account it names.
    user_id: uuid.UUID = Field(nullable=False)
    email: str = Field(max_length=320, nullable=False)
    notified_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
