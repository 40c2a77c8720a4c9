"""The worker's claims (delivery, media downloads) each read their own partial index: a
batch's rows the due rows' (`ix_messages_outbox`, `ix_media_files_due`), the suspects
and a batch's hint of one the rows in flight (`ix_messages_in_flight`,
`ix_media_files_in_flight`, migration 0038), which every run probes. EXPLAIN of the
functions' bodies as PostgreSQL plans a SQL function's (a generic plan, each arm gated
by the `suspects` argument), sequential scans off; EXPLAIN QUERY PLAN of the app's own
statements on SQLite."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import text

from tests.fixtures.databases import postgres_only
from tests.fixtures.plans import explained
from weflux.auth import crossings
from weflux.db import Database
from weflux.models import utcnow

# function -> arm -> the index its rows are read from
ARMS = {
    "weflux_due_outbound_messages": {
        "fresh": "ix_messages_outbox",
        "hint": "ix_messages_in_flight",
        "suspect": "ix_messages_in_flight",
    },
    "weflux_due_media_downloads": {
        "fresh": "ix_media_files_due",
        "hint": "ix_media_files_in_flight",
        "suspect": "ix_media_files_in_flight",
    },
}


def _first_index_of_each_arm(plan: list[str]) -> dict[str, str]:
    """The first index each arm (`Subquery Scan on <arm>`) reads: its rows' (an arm's
    `NOT EXISTS` reads after them)."""
    found: dict[str, str] = {}
    arm = None
    for line in plan:
        if match := re.search(r"Subquery Scan on (\w+)", line):
            arm = match.group(1)
        elif (
            arm
            and arm not in found
            and (match := re.search(r"Index Scan (?:using|on) (\w+)", line))
        ):
            found[arm] = match.group(1)
    return found


@postgres_only
async def test_each_arm_of_a_claim_reads_its_own_partial_index(owner_db: Database) -> None:
    """Given the migrated schema, when each claim function's body is planned as
    PostgreSQL plans it (generic: the arms are gated by `suspects` at run time), then a
    batch's rows come from the due rows' index and the suspects (and a batch's hint of
    one) from the index of the rows in flight."""
    async with owner_db.engine.begin() as connection:
        await connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        await connection.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
        for function, arms in ARMS.items():
            body = (
                await connection.execute(
                    text("SELECT prosrc FROM pg_proc WHERE proname = :name AND pronargs = 3"),
                    {"name": function},
                )
            ).scalar_one()
            await connection.exec_driver_sql(
                f"PREPARE claim(timestamptz, integer, boolean) AS {body}"
            )
            result = await connection.exec_driver_sql("EXPLAIN EXECUTE claim(now(), 50, false)")
            plan = [row[0] for row in result]
            await connection.exec_driver_sql("DEALLOCATE claim")
            assert _first_index_of_each_arm(plan) == arms, "\n".join(plan)


@pytest.mark.parametrize("dialect", ["sqlite"])  # PostgreSQL: the functions' bodies, above
async def test_the_sqlite_claims_read_their_own_partial_index(db: Database) -> None:
    """Given SQLite (the claims are the app's statements), when a batch and a suspect's
    claim read due messages and files, then each reads its own partial index."""
    now = utcnow() + timedelta(seconds=1)
    async with db.session() as session:
        await session.connection()
        with explained(db) as plans:
            await crossings.due_outbound_messages(session, now=now, batch=50)
            await crossings.due_outbound_messages(session, now=now, batch=1, suspects=True)
            await crossings.due_media_downloads(session, now=now, batch=20)
            await crossings.due_media_downloads(session, now=now, batch=1, suspects=True)
    used = [
        [m.group(1) for line in plan if (m := re.search(r"USING (?:COVERING )?INDEX (\w+)", line))]
        for plan in plans
    ]
    # A batch: its rows, then its hint of a suspect; a suspect's claim: the suspect alone.
    assert [indexes[0] for indexes in used] == [
        "ix_messages_outbox",
        "ix_messages_in_flight",
        "ix_messages_in_flight",
        "ix_media_files_due",
        "ix_media_files_in_flight",
        "ix_media_files_in_flight",
    ]
