"""Shared model machinery: naming convention, ids, UTC timestamps, the OrgScoped mixin."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import uuid6
from sqlalchemy import DateTime, Dialect, TypeDecorator
from sqlmodel import Field, SQLModel

SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_id() -> uuid.UUID:
    """A time-ordered UUIDv7: new rows land at the right edge of the primary-key index."""
    return uuid.UUID(int=uuid6.uuid7().int)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every dialect (SQLite stores no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        moment: datetime = value
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)


def created_at_field() -> Any:
    return Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class OrgScoped(SQLModel):
    """Mixin of every workspace-owned table.

    Reads, updates and deletes of these models are filtered to the session's workspace
    by `weflux.auth.scoping`, and on PostgreSQL by row-level security beneath it.
    Each table declares an index led by `org_id` for its access paths.
    """

    # Filled from the session's workspace before flush when left unset.
    org_id: uuid.UUID = Field(
        default=None, foreign_key="organizations.id", nullable=False, ondelete="CASCADE"
    )


def workspace_models() -> list[type[OrgScoped]]:
    """Every mapped workspace-owned model class."""
    found: list[type[OrgScoped]] = []
    pending: list[type[OrgScoped]] = list(OrgScoped.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if hasattr(cls, "__table__") and cls not in found:
            found.append(cls)
    return sorted(found, key=lambda cls: cls.__tablename__)  # type: ignore[arg-type, return-value]
