"""The worker's cross-workspace claims (`weflux.auth.crossings`, migration 0038) asked the
way an attacker or a careless caller would: hostile arguments, and a batch's read while
another transaction claims suspects."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import text

from tests.fixtures.databases import postgres_only
from tests.fixtures.deaths import suspect_and_queued
from weflux.auth import crossings
from weflux.db import Database
from weflux.models import Organization, utcnow


@postgres_only
async def test_the_claim_functions_answer_hostile_arguments_with_no_more_than_is_due(
    db: Database, org: Organization, other_org: Organization
) -> None:
    """Given a suspect and a queued message in each of two workspaces,
    when the app's role calls the claim functions itself (as an injected statement
    would) with a negative, a NULL or a huge batch, a NULL mode or a NULL time,
    then a NULL mode or time answers nothing, a negative or NULL batch only the hint
    (one suspect's ids, unlocked), a huge one the due rows and the hint: nothing that is
    not due, and nothing else of any row but its ids."""
    now = utcnow()
    rows = {
        o.id: await suspect_and_queued(db, o.id, now - timedelta(seconds=1))
        for o in (org, other_org)
    }
    queued = {(o, queued.id, False) for o, (_, queued) in rows.items()}
    suspects = {(o, suspect.id, True) for o, (suspect, _) in rows.items()}
    calls: dict[str, dict[str, Any]] = {
        "weflux_due_outbound_messages(:now, -5, false)": {"now": now},
        "weflux_due_outbound_messages(:now, NULL, false)": {"now": now},
        "weflux_due_outbound_messages(:now, 2147483647, false)": {"now": now},
        "weflux_due_outbound_messages(:now, 10, NULL)": {"now": now},
        "weflux_due_outbound_messages(NULL, 10, false)": {},
        "weflux_due_outbound_messages(NULL, 10, true)": {},
        "weflux_due_media_downloads(:now, -1, NULL)": {"now": now},
        "weflux_due_media_downloads(:now, 2147483647, true)": {"now": now},
    }
    answers = {}
    async with db.session(org.id) as session:
        connection = await session.connection()
        for call, params in calls.items():
            result = await connection.execute(text(f"SELECT * FROM {call}"), params)  # noqa: S608
            answers[call] = {tuple(row) for row in result.all()}

    (hint,) = answers["weflux_due_outbound_messages(:now, -5, false)"]
    assert hint in suspects
    assert answers["weflux_due_outbound_messages(:now, NULL, false)"] == {hint}
    assert answers["weflux_due_outbound_messages(:now, 2147483647, false)"] == queued | {hint}
    assert answers["weflux_due_outbound_messages(:now, 10, NULL)"] == set()
    assert answers["weflux_due_outbound_messages(NULL, 10, false)"] == set()
    assert answers["weflux_due_outbound_messages(NULL, 10, true)"] == set()
    assert answers["weflux_due_media_downloads(:now, -1, NULL)"] == set()
    assert answers["weflux_due_media_downloads(:now, 2147483647, true)"] == set()


@postgres_only
async def test_a_batch_read_locks_its_rows_and_leaves_the_suspects_to_other_workers(
    db: Database, org: Organization
) -> None:
    """Given a suspect and a queued message,
    when one worker's batch read holds its transaction open,
    then another worker's batch read gets neither (the queued one is locked, skipped)
    but still the hint, and its suspect's claim gets the suspect (a batch never locks
    one); the first worker's claim of that suspect then skips it."""
    now = utcnow()
    suspect, queued = await suspect_and_queued(db, org.id, now - timedelta(seconds=1))

    async with db.session() as first:
        batch = await crossings.due_outbound_messages(first, now=now, batch=10)
        assert (batch.rows, batch.suspect_due) == ([crossings.Owned(org.id, queued.id)], True)
        async with db.session() as second:
            other = await crossings.due_outbound_messages(second, now=now, batch=10)
            assert (other.rows, other.suspect_due) == ([], True)
            alone = await crossings.due_outbound_messages(second, now=now, batch=1, suspects=True)
            assert alone.rows == [crossings.Owned(org.id, suspect.id)]
            taken = await crossings.due_outbound_messages(first, now=now, batch=1, suspects=True)
            assert (taken.rows, taken.suspect_due) == ([], False)


async def test_the_claims_answer_the_same_on_both_engines_whatever_the_batch(
    db: Database, org: Organization
) -> None:
    """Given a suspect and a queued message,
    when a batch is read with a negative, a zero and a huge size, and the suspects with
    a huge one,
    then a negative or zero batch reads no row but says a suspect is due, a huge one
    reads the queued message, and a suspects' read the suspect alone: the same on
    SQLite's statements as through PostgreSQL's functions."""
    now = utcnow()
    suspect, queued = await suspect_and_queued(db, org.id, now - timedelta(seconds=1))
    answers = {}
    async with db.session() as session:
        for batch in (-5, 0, 10**9):
            answers[batch] = await crossings.due_outbound_messages(session, now=now, batch=batch)
        alone = await crossings.due_outbound_messages(session, now=now, batch=10**9, suspects=True)

    assert answers[-5] == answers[0] == crossings.DueWork([], True)
    assert answers[10**9] == crossings.DueWork([crossings.Owned(org.id, queued.id)], True)
    assert alone == crossings.DueWork([crossings.Owned(org.id, suspect.id)], True)
