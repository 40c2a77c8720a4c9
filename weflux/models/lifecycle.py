"""Data requests (erasure, deletion, exports) and the erasure ledger."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import Enum, Index, Text, text
from sqlmodel import Field, SQLModel

from weflux.models.base import OrgScoped, UTCDateTime, created_at_field, new_id


class DataRequestKind(enum.StrEnum):
    CONTACT_ERASURE = "CONTACT_ERASURE"
    WORKSPACE_DELETION = "WORKSPACE_DELETION"
    CONTACT_EXPORT = "CONTACT_EXPORT"
    WORKSPACE_EXPORT = "WORKSPACE_EXPORT"


class DataRequestStatus(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"


OPEN_STATUSES = (DataRequestStatus.PENDING, DataRequestStatus.RUNNING)


class DataRequest(OrgScoped, table=True):
    """An erasure, deletion or export a workspace's Admin asked for; the worker drives it.

    `subject_id` names the contact of a contact request: no foreign key, as the request
    outlives the contact it erased. `run_after` is when the worker may start (the end of
    a workspace deletion's grace period); `due_at` is the promise (at most 30 days).
    """

    __tablename__ = "data_requests"
    __table_args__ = (
        Index(None, "org_id", "id"),
        # The worker's path, across workspaces: open requests by when they may run.
        Index(
            "ix_data_requests_open",
            "run_after",
            postgresql_where=text("status IN ('PENDING', 'RUNNING')"),
            sqlite_where=text("status IN ('PENDING', 'RUNNING')"),
        ),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    kind: DataRequestKind = Field(
        sa_type=Enum(
            DataRequestKind,
            name="data_request_kind",
            native_enum=False,
            create_constraint=True,
            length=24,
        )
    )
    status: DataRequestStatus = Field(
        default=DataRequestStatus.PENDING,
        sa_type=Enum(
            DataRequestStatus,
            name="data_request_status",
            native_enum=False,
            create_constraint=True,
            length=16,
        ),
    )
    subject_id: uuid.UUID | None = Field(default=None)
    requested_by_membership_id: uuid.UUID | None = Field(
        default=None, foreign_key="memberships.id", ondelete="SET NULL"
    )
    requested_at: datetime = created_at_field()
    run_after: datetime = Field(sa_type=UTCDateTime, nullable=False)
    due_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    completed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    progress: float | None = Field(default=None)
    # Exports: the encrypted file's name under WEFLUX_EXPORT_DIR, and when it is destroyed.
    file_name: str | None = Field(default=None, max_length=128)
    # The export file's data key, sealed with the key ring and bound to this row.
    file_key_enc: str | None = Field(default=None, sa_type=Text, repr=False)
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    attempts: int = Field(default=0, nullable=False)
    last_error: str | None = Field(default=None, max_length=500)
    overdue_reported_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class ErasureLedgerEntry(SQLModel, table=True):
    """What an erasure or deletion removed, without personal data: ids and keyed hashes.

    Platform-level: it outlives the workspace it names. weflux.lifecycle.ledger writes
    and replays it (a restored backup replays it so erased data stays erased).
    """

    __tablename__ = "erasure_ledger"
    __table_args__ = (Index(None, "recorded_at", "id"),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    recorded_at: datetime = created_at_field()
    kind: DataRequestKind = Field(
        sa_type=Enum(
            DataRequestKind,
            name="erasure_ledger_kind",
            native_enum=False,
            create_constraint=True,
            length=24,
        )
    )
    org_id: uuid.UUID = Field(nullable=False)
    contact_id: uuid.UUID | None = Field(default=None)
    data_request_id: uuid.UUID | None = Field(default=None)
    # HMAC-SHA256 (hex) of the WhatsApp id and of the business-scoped user id, under the
    # key ring's ledger key `key_id`.
    wa_id_hmac: str | None = Field(default=None, max_length=64)
    user_id_hmac: str | None = Field(default=None, max_length=64)
    key_id: str | None = Field(default=None, max_length=32)
