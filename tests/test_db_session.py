"""The unit of work's shortcuts (issue 11): a transaction's connection asked again, a
flush with nothing pending and the close after the end answer as the full calls do."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlmodel import select

from tests.fixtures.factories import create_contact
from weflux.db import Database, SerializedSession, after_commit
from weflux.models import Contact, Organization


async def test_the_connection_is_the_open_transactions_own(db: Database, org: Organization) -> None:
    """Given a session whose transaction is open,
    then asking for its connection again gives the same one, and after the commit the
    next transaction's connection runs in that new transaction (a rollback of it undoes
    only its own work)."""
    async with db.session(org.id) as session:
        first = await session.connection()
        assert await session.connection() is first
        name = (await create_contact(session)).name
        await session.commit()
        connection = await session.connection()
        assert session.sync_session.in_transaction()
        await connection.execute(text("UPDATE contacts SET name = 'changed'"))
        await session.rollback()
        assert not session.sync_session.in_transaction()
        assert (await session.exec(select(Contact.name))).one() == name


async def test_the_connection_waits_for_an_operation_under_way(
    db: Database, org: Organization
) -> None:
    """While another operation of the session holds its turn (a commit, say), asking
    for the connection waits for it, as before the shortcut."""
    async with db.session(org.id) as session:
        await session.connection()
        assert isinstance(session, SerializedSession)
        async with session._operation_lock:
            asking = asyncio.create_task(session.connection())
            await asyncio.sleep(0.01)
            assert not asking.done()
        await asking


async def test_a_flush_with_nothing_pending_and_one_with_a_change(
    db: Database, org: Organization
) -> None:
    async with db.session(org.id) as session:
        await session.flush()  # nothing pending: nothing happens, no transaction begins
        assert not session.sync_session.in_transaction()
        contact = await create_contact(session)
        contact.name = "Renamed"
        await session.flush()
        assert not session.sync_session.dirty
        assert (await session.exec(select(Contact.name))).one() == "Renamed"


async def test_every_end_gives_the_connection_back(db: Database, org: Organization) -> None:
    """A committed unit, a failed one and one whose after-commit work opened a new
    transaction all end with no connection checked out."""
    pool = db.engine.sync_engine.pool

    async with db.session(org.id) as session:
        await create_contact(session)
    assert pool.checkedout() == 0  # type: ignore[attr-defined]

    try:
        async with db.session(org.id) as session:
            await create_contact(session)
            raise RuntimeError("fails")
    except RuntimeError:
        pass
    assert pool.checkedout() == 0  # type: ignore[attr-defined]

    async with db.session(org.id) as session:

        async def read_again() -> None:
            await session.exec(select(Contact.id))

        after_commit(session, read_again)
    assert pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_savepoint_still_begins_at_the_next_connection(
    db: Database, org: Organization
) -> None:
    """Inside `begin_nested`, asking for the connection emits the SAVEPOINT (the
    shortcut is not taken there): a failure inside rolls back only the savepoint."""
    async with db.session(org.id) as session:
        await session.connection()
        kept = (await create_contact(session)).id
        try:
            async with session.begin_nested():
                connection = await session.connection()
                await connection.execute(text("UPDATE contacts SET name = 'undone'"))
                raise RuntimeError("inside the savepoint")
        except RuntimeError:
            pass
        assert await session.connection() is connection
        assert (await session.exec(select(Contact.name).where(Contact.id == kept))).one() != (
            "undone"
        )
