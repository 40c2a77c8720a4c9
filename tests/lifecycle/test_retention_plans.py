"""The daily retention's sweeps of one workspace find their rows by date, by an index,
never by reading the workspace's sessions, reactions or events (EXPLAIN QUERY PLAN on
SQLite, EXPLAIN on PostgreSQL with statistics and sequential scans off)."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert
from sqlmodel import SQLModel, col, select

from tests.fixtures.factories import Actor, create_conversation
from tests.fixtures.plans import explained, prefer_indexes
from weflux.db import Database
from weflux.lifecycle.worker import (
    expired_sessions,
    network_kept,
    old_reactions,
)
from weflux.models import (
    AuditEvent,
    AuthSession,
    MessageReaction,
    SecurityEvent,
    contact_reactor,
    new_id,
    utcnow,
)

ROWS = 400
DUE = 4  # the rows older than the sweep's cutoff: earlier sweeps took the others
DAY = timedelta(days=1)
SESSION_LIFETIME = 30 * DAY


async def _fill(db: Database, owner_db: Database, actor: Actor) -> list[datetime]:
    """A workspace with `ROWS` sessions, reactions, audit and security events spread
    over a year, statistics gathered (PostgreSQL: ANALYZE, as autovacuum would); their
    times, newest first."""
    now = utcnow()
    ages = [now - timedelta(hours=22 * n) for n in range(ROWS)]
    async with db.session(actor.org_id) as session:
        conversation = await create_conversation(session)
        rows: dict[type[SQLModel], list[dict[str, Any]]] = {
            AuthSession: [
                {
                    "id": new_id(),
                    "org_id": actor.org_id,
                    "user_id": actor.user.id,
                    "membership_id": actor.membership.id,
                    "refresh_token_hash": hashlib.sha256(str(n).encode()).hexdigest(),
                    "created_at": at,
                    "expires_at": at + SESSION_LIFETIME,
                    "ip_address": "203.0.113.1",
                    "user_agent": "Firefox",
                }
                for n, at in enumerate(ages)
            ],
            MessageReaction: [
                {
                    "id": new_id(),
                    "org_id": actor.org_id,
                    "conversation_id": conversation.id,
                    "target_wa_message_id": f"wamid.{n}",
                    "reactor": contact_reactor(conversation.contact_id),
                    "contact_id": conversation.contact_id,
                    "emoji": "👍",
                    "created_at": at,
                }
                for n, at in enumerate(ages)
            ],
            AuditEvent: [
                {
                    "id": new_id(),
                    "org_id": actor.org_id,
                    "action": "auth.login",
                    "ip_address": "203.0.113.1",
                    "details": {},
                    "created_at": at,
                }
                for at in ages
            ],
            SecurityEvent: [
                {
                    "id": new_id(),
                    "org_id": actor.org_id,
                    "kind": "auth.new_device",
                    "severity": "LOW",
                    "summary": "A login from a new device",
                    "ip_address": "203.0.113.1",
                    "user_agent": "Firefox",
                    "details": {},
                    "created_at": at,
                }
                for at in ages
            ],
        }
        for model, values in rows.items():
            await session.exec(insert(model), params=values)
    async with owner_db.engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.exec_driver_sql(
                "ANALYZE sessions, message_reactions, audit_events, security_events"
            )
    return ages


def _used(plan: list[str], table: str, index: str) -> bool:
    """Whether `plan` reads `table` through `index`, with the date in the index's search
    (SQLite: `SEARCH t USING INDEX i (org_id=? AND d<?)`; PostgreSQL: an index scan of
    `i` whose Index Cond names the date column), and never reads `table` whole."""
    text = "\n".join(plan)
    if re.search(rf"\bSCAN {table}\b|Seq Scan on {table}\b", text):
        return False
    if plan and re.match(r"^-?\d+:-?\d+:", plan[0]):
        return bool(re.search(rf"SEARCH {table} USING (?:COVERING )?INDEX {index} \(.*<\?\)", text))
    scan = re.search(rf"Index (?:Only )?Scan (?:using|on) {index}\b.*?\n(.*)", text, re.S)
    return (
        scan is not None
        and re.search(r"Index Cond: .*(expires_at|created_at) <", scan.group(1)) is not None
    )


@pytest.mark.parametrize(
    ("model", "index"),
    [
        (AuthSession, "ix_sessions_org_id_expires_at"),
        (MessageReaction, "ix_message_reactions_org_id_created_at"),
        (AuditEvent, "ix_audit_events_network"),
        (SecurityEvent, "ix_security_events_network"),
    ],
)
async def test_each_sweep_finds_its_rows_by_an_index_of_their_date(
    db: Database, owner_db: Database, admin: Actor, model: type[SQLModel], index: str
) -> None:
    """Given a workspace with 400 sessions, reactions, audit events and security events
    spread over a year, 4 of each past the cutoff (as on any day but the first),
    when the retention's sweep chooses a batch (the condition the worker deletes or
    blanks by),
    then its plan searches the workspace's index of that date (for events, the partial
    index of those still holding an IP address), not the table or the workspace."""
    ages = await _fill(db, owner_db, admin)
    cutoff = ages[-DUE]  # a day's sweep: the few rows that aged past it since yesterday
    where = {
        AuthSession: expired_sessions(cutoff + SESSION_LIFETIME),
        MessageReaction: old_reactions(cutoff),
        AuditEvent: network_kept(AuditEvent, before=cutoff),
        SecurityEvent: network_kept(SecurityEvent, before=cutoff),
    }[model]
    async with db.session(admin.org_id) as session:
        await prefer_indexes(await session.connection())
        with explained(db) as plans:
            await session.exec(select(col(model.id)).where(where).limit(500))  # type: ignore[attr-defined]
    table = model.__tablename__
    assert len(plans) == 1
    assert _used(plans[0], str(table), index), "\n".join(plans[0])
