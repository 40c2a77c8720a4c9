"""A scoped unit of work's BEGIN carries its scope, in one round trip (weflux.pg_driver).

Every unit on PostgreSQL paid BEGIN, then the scope's `set_config` (row-level security's
workspace), then its statements, then COMMIT or ROLLBACK (issue 11). The scope now goes
with the BEGIN; these pin the round trips and what must never change with it: every
statement of the unit sees its own scope, no pooled connection carries one to its next
user, and a unit whose BEGIN failed leaves neither a transaction nor a scope.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta

import pytest
from sqlalchemy import bindparam, event, func, literal_column, text
from sqlalchemy import insert as core_insert
from sqlalchemy import select as core_select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.util.concurrency import greenlet_spawn
from sqlmodel import select

from tests.fixtures.databases import DatabaseUrls, cancelled_while_waiting
from tests.fixtures.factories import create_conversation, create_message
from tests.fixtures.round_trips import round_trips
from tests.fixtures.services import TEST_DATABASE_URL
from weflux.auth.scoping import FEED_LOCK_CLASS, ReadScope, TenantScopeError, use_workspace
from weflux.db import Database, begin_snapshot
from weflux.models import Label, Membership, Message, Organization, new_id, utcnow
from weflux.pg_driver import PreparedSelect, ReadTransaction, fetch_in_transaction

pytestmark = pytest.mark.parametrize("dialect", ["postgresql"])

_SCOPE = text(
    "SELECT pg_backend_pid(), current_setting('app.org_id', true), "
    "current_setting('app.webhook_event_id', true), (SELECT count(*) FROM organizations)"
)


async def _unit(
    database: Database, org_id: uuid.UUID | None, *, webhook_event: uuid.UUID | None = None
) -> tuple[int, str | None, str | None, int]:
    """A unit's backend, the scope row-level security sees and the workspaces it sees."""
    async with database.session(org_id, webhook_event=webhook_event) as session:
        connection = await session.connection()
        pid, org, event, count = (await connection.execute(_SCOPE)).one()
    return pid, org, event, count


async def _outside(database: Database) -> tuple[int, str | None, int]:
    """The same, on a pooled connection used outside any session (no scope of its own)."""
    async with database.engine.connect() as connection:
        pid, org, _event, count = (await connection.execute(_SCOPE)).one()
    return pid, org, count


@pytest.fixture
async def single(database_urls: DatabaseUrls) -> AsyncIterator[Database]:
    """The app's role with one pooled connection: every unit reuses the one before's."""
    database = Database(database_urls.app, pool_size=1)
    database.engine.sync_engine.pool._max_overflow = 0  # type: ignore[attr-defined]
    yield database
    await database.dispose()


async def test_a_scoped_read_is_its_begin_its_statement_and_its_end(
    db: Database, org: Organization
) -> None:
    """Given a warm pool (the statement prepared),
    when a unit scoped to a workspace reads one row and ends,
    then it costs three round trips: BEGIN with the scope's set_config, the SELECT, and
    COMMIT (four before: BEGIN and set_config apart)."""
    for _ in range(2):
        with round_trips() as trips:
            async with db.session(org.id) as session:
                (await session.exec(select(Membership).limit(1))).first()
    assert len(trips) == 3, trips
    begin, read, end = trips
    assert begin.startswith("query: BEGIN; SELECT set_config('app.org_id', ")
    assert f"'{org.id}'" in begin
    assert read.startswith("execute: SELECT")
    assert "memberships" in read
    assert end == "query: COMMIT;"


async def test_a_unit_without_a_workspace_begins_with_an_empty_scope_in_one_round_trip(
    db: Database,
) -> None:
    """Given a unit without a workspace, when it runs a statement, then its BEGIN set the
    scope to none in the same round trip, and row-level security shows it nothing."""
    await _unit(db, None)
    with round_trips() as trips:
        _pid, org, event, count = await _unit(db, None)
    assert (org, event, count) == ("", "", 0)
    assert trips[0] == (
        "query: BEGIN; SELECT set_config('app.org_id', '', true), "
        "set_config('app.webhook_event_id', '', true)"
    )
    assert len(trips) == 3, trips


async def test_every_statement_of_a_unit_sees_its_scope(
    db: Database, org: Organization, other_org: Organization
) -> None:
    """Given two workspaces, when a unit scoped to one runs several statements, then row-
    level security sees that workspace, and only its rows, in each of them."""
    event = uuid.uuid4()
    async with db.session(org.id, webhook_event=event) as session:
        connection = await session.connection()
        for _ in range(3):
            _pid, seen, seen_event, _count = (await connection.execute(_SCOPE)).one()
            assert (seen, seen_event) == (str(org.id), str(event))
            orgs = (await connection.execute(text("SELECT id FROM organizations"))).all()
            assert [row[0] for row in orgs] == [org.id]


async def test_a_pooled_connection_never_carries_a_scope_to_its_next_user(
    single: Database, org: Organization, other_org: Organization
) -> None:
    """Given one pooled connection,
    when units for one workspace, another, none, one that ran no statement, and uses
    outside any session follow each other on it,
    then each sees its own scope alone (none outside a session)."""
    pid, seen, _event, mine = await _unit(single, org.id)
    assert (seen, mine) == (str(org.id), 1)
    assert await _outside(single) == (pid, "", 0)
    theirs = await _unit(single, other_org.id)
    assert theirs[:2] == (pid, str(other_org.id))
    assert await _unit(single, None) == (pid, "", "", 0)
    # A unit that began but sent nothing: its scope waited for a BEGIN that never came.
    async with single.session(org.id) as session:
        await session.connection()
    assert await _outside(single) == (pid, "", 0)
    async with single.session(org.id) as session:
        await session.connection()
        await session.rollback()
    assert await _unit(single, other_org.id) == theirs


async def test_a_failed_unit_leaves_no_scope_on_its_connection(
    single: Database, org: Organization
) -> None:
    """Given one pooled connection, when a unit for a workspace fails in a statement after
    its BEGIN, then the connection's next users, a unit without a workspace and a use
    outside any session, see no workspace and nothing of its rows."""
    pid = (await _unit(single, org.id))[0]
    async with single.session(org.id) as session:
        connection = await session.connection()
        await connection.execute(_SCOPE)
        with pytest.raises(DBAPIError, match="division by zero"):
            await connection.execute(text("SELECT 1 / 0"))
    assert await _unit(single, None) == (pid, "", "", 0)
    assert await _outside(single) == (pid, "", 0)


async def test_a_snapshot_s_isolation_level_and_a_scoped_unit_share_a_connection(
    single: Database, org: Organization
) -> None:
    """Given one pooled connection used by a snapshot (REPEATABLE READ, READ ONLY), when a
    scoped unit follows on it, then that unit begins READ COMMITTED again with its scope."""
    async with single.engine.connect() as connection:
        await begin_snapshot(connection)
        await connection.execute(text("SELECT 1"))
        await connection.rollback()
    with round_trips() as trips:
        async with single.session(org.id) as session:
            connection = await session.connection()
            level = (await connection.execute(text("SHOW transaction_isolation"))).scalar_one()
            read_only = (await connection.execute(text("SHOW transaction_read_only"))).scalar()
            _pid, seen, _event, _count = (await connection.execute(_SCOPE)).one()
    assert (level, read_only, seen) == ("read committed", "off", str(org.id))
    assert trips[0].startswith("query: BEGIN")
    assert "set_config('app.org_id'" in trips[0]


async def test_a_unit_whose_begin_failed_leaves_no_transaction_and_no_scope(
    database_urls: DatabaseUrls, owner_db: Database, org: Organization, other_org: Organization
) -> None:
    """Given one pooled connection whose statements time out after 0.3 s, and the
    workspace's feed lock held elsewhere,
    when a unit taking that lock with its scope (in its BEGIN) fails on the timeout,
    then the unit raises, and the connection's next users (a unit for another workspace,
    a use outside any session) run normally with their own scope, none left over."""
    single = Database(database_urls.app, pool_size=1, statement_timeout=timedelta(milliseconds=300))
    single.engine.sync_engine.pool._max_overflow = 0  # type: ignore[attr-defined]
    try:
        pid = (await _unit(single, other_org.id))[0]
        async with owner_db.engine.connect() as holder:
            await holder.execute(
                text("SELECT pg_advisory_lock(:lock_class, hashtext(:org))"),
                {"lock_class": FEED_LOCK_CLASS, "org": str(org.id)},
            )
            try:
                async with single.session() as session:
                    await use_workspace(session, org.id, feed_lock=True)
                    connection = await session.connection()
                    with pytest.raises(DBAPIError, match="statement timeout"):
                        await connection.execute(text("SELECT 1"))
            finally:
                await holder.execute(text("SELECT pg_advisory_unlock_all()"))
                await holder.commit()
        again = await _unit(single, other_org.id)
        assert again[:2] == (pid, str(other_org.id))
        assert await _outside(single) == (pid, "", 0)
    finally:
        await single.dispose()


class _Sly(uuid.UUID):
    """A UUID whose text is not its value."""

    def __str__(self) -> str:
        return "x', true), set_config('app.org_id', 'y"


async def test_the_scope_s_values_are_uuids_written_from_their_value(
    db: Database, org: Organization
) -> None:
    """Given the scope's values go in BEGIN's simple query as literals,
    when a webhook event that is no UUID is named, then the unit is refused before any
    statement; and a UUID whose text lies is written from its value."""
    with pytest.raises(TenantScopeError):
        async with db.session(org.id, webhook_event="x', true) --") as session:  # type: ignore[arg-type]
            await session.connection()
    event = uuid.uuid4()
    _pid, seen, seen_event, _count = await _unit(db, org.id, webhook_event=_Sly(int=event.int))
    assert (seen, seen_event) == (str(org.id), str(event))


async def test_concurrent_units_each_see_their_own_scope(
    db: Database, org: Organization, other_org: Organization
) -> None:
    """Given two workspaces, when many units of both run at once on the pool, then each
    sees its own workspace."""
    orgs = [org.id, other_org.id] * 10
    seen = await asyncio.gather(*(_unit(db, org_id) for org_id in orgs))
    assert [row[1] for row in seen] == [str(org_id) for org_id in orgs]


# -- ReadTransaction: a scoped read without a Session (live events' own read) ---------------

_MESSAGES = Message.__table__  # type: ignore[attr-defined]
# Deliberately without the scoping layer's conditions: what row-level security alone hides.
_UNSCOPED_MESSAGE = PreparedSelect(
    core_select(_MESSAGES.c.id, _MESSAGES.c.text).where(_MESSAGES.c.id == bindparam("message"))
)
_SEEN_SCOPE = PreparedSelect(
    core_select(
        func.pg_backend_pid(),
        func.current_setting("app.org_id", True),
        func.pg_sleep(bindparam("sleep")),
    )
)


async def _stored_message(db: Database, org: Organization) -> Message:
    async with db.session(org.id) as session:
        conversation = await create_conversation(session)
        return await create_message(session, conversation, text="private")


async def _read_once(
    database: Database, org_id: uuid.UUID, select: PreparedSelect, params: Mapping[str, object]
) -> tuple[object, ...] | None:
    read = await ReadTransaction.begin(database.engine, ReadScope(org_id).begin_sql())
    try:
        return await read.fetch(select, params)
    finally:
        await read.end()


async def test_row_level_security_alone_hides_another_workspace_s_row(
    db: Database, org: Organization, other_org: Organization
) -> None:
    """Given a message of one workspace, when a read transaction begun with another
    workspace's scope runs a SELECT without any scoping condition, then row-level security
    alone hides the row; begun with its own workspace's, the same SELECT reads it."""
    message = await _stored_message(db, org)
    params = {"message": message.id}
    assert await _read_once(db, other_org.id, _UNSCOPED_MESSAGE, params) is None
    assert await _read_once(db, org.id, _UNSCOPED_MESSAGE, params) == (message.id, "private")


async def test_a_read_transaction_is_its_begin_its_select_and_its_rollback(
    db: Database, org: Organization
) -> None:
    """Given a warm pool, when a read transaction reads a row and ends, then it costs three
    round trips: BEGIN with the scope, the prepared SELECT, ROLLBACK."""
    message = await _stored_message(db, org)
    for _ in range(2):
        with round_trips() as trips:
            await _read_once(db, org.id, _UNSCOPED_MESSAGE, {"message": message.id})
    assert trips == [
        f"query: BEGIN; SELECT set_config('app.org_id', '{org.id}', true), "
        "set_config('app.webhook_event_id', '', true)",
        f"execute: {_UNSCOPED_MESSAGE.compiled(db.engine.dialect).sql}",
        "query: ROLLBACK;",
    ]


async def test_a_read_transaction_leaves_no_scope_on_its_connection(
    single: Database, org: Organization, other_org: Organization
) -> None:
    """Given one pooled connection, when read transactions of two workspaces follow each
    other with sessions and uses outside any session, then each sees its own scope alone."""
    params = {"sleep": 0}
    pid, seen, _slept = await _read_once(single, org.id, _SEEN_SCOPE, params) or ()
    assert seen == str(org.id)
    assert await _outside(single) == (pid, "", 0)
    assert (await _read_once(single, other_org.id, _SEEN_SCOPE, params) or ())[:2] == (
        pid,
        str(other_org.id),
    )
    assert await _unit(single, None) == (pid, "", "", 0)


_WAITING = PreparedSelect(
    core_select(
        func.pg_backend_pid(),
        func.current_setting("app.org_id", True),
        func.pg_advisory_xact_lock(bindparam("lock_class"), bindparam("key")),
    )
)


async def test_a_read_cancelled_mid_statement_gives_back_a_clean_connection(
    single: Database, owner_db: Database, org: Organization
) -> None:
    """Given one pooled connection, when a read transaction's task is cancelled while its
    SELECT waits (a subscriber's socket closed mid-read), then its end gives the connection
    back with no transaction and no scope: the next users see none."""
    await _unit(single, None)
    lock = {"lock_class": 4242, "key": uuid.uuid4().int % 2**31}
    await cancelled_while_waiting(
        owner_db, lock, lambda: _read_once(single, org.id, _WAITING, lock)
    )
    pid, seen, count = await _outside(single)
    assert (seen, count) == ("", 0)
    pooled = await single.engine.raw_connection()
    try:
        # The server's own word (its last ReadyForQuery): idle, in no transaction.
        assert not pooled.dbapi_connection._connection.is_in_transaction()  # type: ignore[union-attr]
    finally:
        await greenlet_spawn(pooled.close)
    assert await _unit(single, None) == (pid, "", "", 0)


async def test_a_read_that_fails_or_times_out_gives_back_a_clean_connection(
    database_urls: DatabaseUrls, org: Organization
) -> None:
    """Given one pooled connection whose statements time out after 0.3 s, when a read
    transaction's SELECT fails (a timeout, a division by zero), then it raises, and the
    connection's next users see no scope and no transaction."""
    single = Database(database_urls.app, pool_size=1, statement_timeout=timedelta(milliseconds=300))
    single.engine.sync_engine.pool._max_overflow = 0  # type: ignore[attr-defined]
    failing = PreparedSelect(core_select(literal_column("1") / bindparam("zero")))
    try:
        pid = (await _unit(single, None))[0]
        with pytest.raises(Exception, match="statement timeout"):
            await _read_once(single, org.id, _SEEN_SCOPE, {"sleep": 5})
        with pytest.raises(Exception, match="division by zero"):
            await _read_once(single, org.id, failing, {"zero": 0})
        assert await _outside(single) == (pid, "", 0)
        assert await _unit(single, None) == (pid, "", "", 0)
    finally:
        await single.dispose()


async def test_a_read_scope_is_written_from_uuids(db: Database, org: Organization) -> None:
    """Given a read scope's workspace goes in BEGIN's simple query as a literal, when it is
    no UUID, the read is refused before any round trip; a UUID whose text lies is written
    from its value."""
    with pytest.raises(TenantScopeError):
        ReadScope("x', true) --").begin_sql()  # type: ignore[arg-type]
    _pid, seen, _slept = await _read_once(db, _Sly(int=org.id.int), _SEEN_SCOPE, {"sleep": 0}) or ()
    assert seen == str(org.id)


async def test_a_read_whose_backend_went_away_fails_once_and_the_pool_recovers(
    single: Database, org: Organization
) -> None:
    """Given one pooled connection in brisk use (no ping), when its backend is ended and a
    read transaction uses it, then the read fails with SQLAlchemy's error, saying the
    connection was invalidated, and the next read runs on a new backend."""
    params = {"sleep": 0}
    gone = (await _read_once(single, org.id, _SEEN_SCOPE, params) or ())[0]
    # The server's superuser, on its maintenance database: it may end any backend.
    admin = create_async_engine(make_url(TEST_DATABASE_URL).set(database="postgres"))
    try:
        async with admin.connect() as connection:
            await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": gone})
    finally:
        await admin.dispose()
    with pytest.raises(DBAPIError) as failed:
        await _read_once(single, org.id, _SEEN_SCOPE, params)
    assert failed.value.connection_invalidated
    again, seen, _slept = await _read_once(single, org.id, _SEEN_SCOPE, params) or ()
    assert (again != gone, seen) == (True, str(org.id))


# -- fetch_in_transaction: a Session's statement past SQLAlchemy's execution ----------------

_LABELS = Label.__table__  # type: ignore[attr-defined]
# Deliberately without the scoping layer's check: what row-level security alone confines.
_INSERT_LABEL = PreparedSelect(
    core_insert(_LABELS)
    .values(
        id=bindparam("id"),
        org_id=bindparam("org"),
        name=bindparam("name"),
        color=bindparam("color"),
        created_at=bindparam("at"),
    )
    .returning(_LABELS.c.id, _LABELS.c.created_at, func.current_setting("app.org_id", True))
)


def _label(org_id: uuid.UUID, name: str = "vip") -> dict[str, object]:
    return {"id": new_id(), "org": org_id, "name": name, "color": "#00aa00", "at": utcnow()}


async def _labels(database: Database, org_id: uuid.UUID) -> list[str]:
    async with database.session(org_id) as session:
        return list((await session.exec(select(Label.name))).all())


async def test_a_statement_in_a_session_s_transaction_goes_with_its_scope_and_commits_with_it(
    db: Database, org: Organization
) -> None:
    """Given a scoped unit of work, when its first statement runs past SQLAlchemy's
    execution (`fetch_in_transaction`), then it is BEGIN with the scope, the prepared
    statement and the unit's COMMIT: three round trips; it sees the scope, its rows are
    processed as SQLAlchemy's would be, the engine's listeners hear it, and it commits
    with the unit."""
    heard: list[str] = []
    event.listen(db.engine.sync_engine, "before_cursor_execute", lambda *a: heard.append(a[2]))
    for name in ("warm", "vip"):  # the first one prepares the statement
        label = _label(org.id, name)
        with round_trips() as trips:
            async with db.session(org.id) as session:
                rows = await fetch_in_transaction(await session.connection(), _INSERT_LABEL, label)
    assert rows == [(label["id"], label["at"], str(org.id))]
    assert isinstance(rows[0][0], uuid.UUID)
    sql = _INSERT_LABEL.compiled(db.engine.dialect).sql
    assert trips == [
        f"query: BEGIN; SELECT set_config('app.org_id', '{org.id}', true), "
        "set_config('app.webhook_event_id', '', true)",
        f"execute: {sql}",
        "query: COMMIT;",
    ]
    assert heard == [sql, sql]
    assert sorted(await _labels(db, org.id)) == ["vip", "warm"]


async def test_row_level_security_alone_refuses_a_write_past_the_scoping_layer(
    db: Database, org: Organization, other_org: Organization
) -> None:
    """Given a unit scoped to one workspace, when a statement run past SQLAlchemy's
    execution (and past the scoping layer's check) inserts another workspace's row, then
    row-level security refuses it with SQLAlchemy's error and nothing is written; the
    unit's connection is clean for the next one."""
    with pytest.raises(DBAPIError, match="row-level security"):
        async with db.session(org.id) as session:
            await fetch_in_transaction(
                await session.connection(), _INSERT_LABEL, _label(other_org.id)
            )
    assert await _labels(db, other_org.id) == []
    assert (await _unit(db, None))[1:] == ("", "", 0)


async def test_a_connection_with_no_scope_waiting_for_its_begin_is_refused(
    db: Database, org: Organization
) -> None:
    """Given a connection outside any session (no scope waits for its BEGIN), begun or
    not, when a statement is run past SQLAlchemy's execution, then it is refused before
    any round trip."""
    async with db.engine.connect() as connection:
        with round_trips() as trips:
            with pytest.raises(RuntimeError, match="has not begun"):
                await fetch_in_transaction(connection, _INSERT_LABEL, _label(org.id))
            await connection.begin()
            with pytest.raises(RuntimeError, match="no scope"):
                await fetch_in_transaction(connection, _INSERT_LABEL, _label(org.id))
    assert trips == []
    assert await _labels(db, org.id) == []


async def test_a_failed_or_cancelled_statement_fails_as_sqlalchemy_s_execution_would(
    single: Database, owner_db: Database, org: Organization
) -> None:
    """Given one pooled connection, when a statement run past SQLAlchemy's execution breaks
    a unique index, then it raises SQLAlchemy's IntegrityError and the unit rolls back;
    when one is cancelled while it waits on a lock, then the connection is invalidated as
    SQLAlchemy's execution invalidates it; either way the next unit runs with its own
    scope alone and nothing of the failed ones is written."""
    label = _label(org.id)
    async with single.session(org.id) as session:
        await fetch_in_transaction(await session.connection(), _INSERT_LABEL, label)
    with pytest.raises(IntegrityError):
        async with single.session(org.id) as session:
            await fetch_in_transaction(await session.connection(), _INSERT_LABEL, label)
    lock = {"lock_class": 4243, "key": uuid.uuid4().int % 2**31}
    waiting = PreparedSelect(
        core_select(func.pg_advisory_xact_lock(bindparam("lock_class"), bindparam("key")))
    )

    async def wait() -> None:
        async with single.session(org.id) as session:
            connection = await session.connection()
            await fetch_in_transaction(connection, _INSERT_LABEL, _label(org.id, "lost"))
            await fetch_in_transaction(connection, waiting, lock)

    await cancelled_while_waiting(owner_db, lock, wait)
    assert (await _unit(single, other := uuid.uuid4()))[1:3] == (str(other), "")
    assert await _labels(single, org.id) == ["vip"]
