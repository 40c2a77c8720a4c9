"""A webhook's unit of work cancelled at each of its statements (a client gone, a server
stopping, `asyncio.timeout`), or its process killed, on both engines: the event is stored
and processed entirely or not at all, and its connection comes back to the pool clean (no
open transaction, no write lock held, nothing left to run inline), so the next delivery,
or the worker's sweep, processes it once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, text
from sqlmodel import col, select

from tests.fixtures import webhooks as wh
from tests.fixtures.databases import DatabaseUrls
from weflux.config import Settings
from weflux.db import Database
from weflux.models import (
    Contact,
    Conversation,
    Message,
    WebhookEvent,
    WebhookEventStatus,
    WhatsAppAccount,
)
from weflux.realtime.broker import InProcessBroker
from weflux.services import ingest, webhook_queue
from weflux.sqlite_driver import OneHopConnection

GUARD = 30  # seconds; far above anything here
# A child process imports weflux first: up to about 30 s on a loaded 2-core machine.
CHILD_GUARD = 120
_REPOSITORY = str(Path(__file__).resolve().parents[2])


def _body(wamid: str) -> bytes:
    change = wh.messages_change(
        messages=[wh.text_message(wamid, body="hi")], contacts=[wh.contact()]
    )
    return wh.encode(wh.webhook_body(change))


@contextmanager
def cancelled_at(db: Database, task: list[asyncio.Task[Any]], step: int) -> Iterator[list[str]]:
    """Cancel `task[0]` when its unit of work reaches step `step` (its statements in
    order, then its COMMIT); the steps seen are listed."""
    seen: list[str] = []
    sync_engine = db.engine.sync_engine

    def reached(what: str) -> None:
        seen.append(what)
        if len(seen) - 1 == step and task:
            task[0].cancel()

    def before_statement(_c: Any, _cur: Any, statement: str, *_a: Any) -> None:
        reached(" ".join(statement.split(None, 2)[:2]))

    def before_commit(_conn: Any) -> None:
        reached("COMMIT")

    event.listen(sync_engine, "before_cursor_execute", before_statement)
    event.listen(sync_engine, "commit", before_commit)
    try:
        yield seen
    finally:
        event.remove(sync_engine, "before_cursor_execute", before_statement)
        event.remove(sync_engine, "commit", before_commit)


async def _assert_clean_pool(db: Database, urls: DatabaseUrls) -> None:
    """No connection of the pool (nor any other) holds a transaction or the write lock."""
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    if db.dialect == "sqlite":
        # Every pooled connection: no transaction, nothing inline
        for record in list(db.engine.pool._pool._queue._queue):  # type: ignore[attr-defined]
            adapted = record.dbapi_connection
            if adapted is None:
                continue
            assert isinstance(adapted, OneHopConnection)
            assert not adapted._write_locked
            assert not adapted._connection._conn.in_transaction
        # And another process takes the write lock at once
        path = urls.app.split("///", 1)[1]
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
        finally:
            other.close()
        return
    async with db.engine.connect() as conn:
        idle_in_transaction = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND state LIKE 'idle in transaction%'"
                )
            )
        ).scalar_one()
    assert idle_in_transaction == 0


async def _counts(owner_db: Database) -> tuple[int, ...]:
    async with owner_db.session(all_workspaces="test: count rows") as session:
        counts: list[int] = []
        for model in (Contact, Conversation, Message, WebhookEvent):
            counts.append(int((await session.exec(select(func.count(col(model.id))))).one()))
    return tuple(counts)


async def test_a_webhook_cancelled_at_any_statement_leaves_all_or_nothing_and_a_clean_pool(
    db: Database,
    owner_db: Database,
    database_urls: DatabaseUrls,
    settings: Settings,
    number: WhatsAppAccount,
) -> None:
    broker = InProcessBroker()
    # The sender and its conversation exist: each step adds one message and one event
    first = ingest.ReceivedEvent.of(_body("wamid.first"), number.id)
    await ingest.store_and_process(db, broker, settings, first)
    step = 0
    while True:
        # Given a new message's webhook, cancelled at one step of its unit of work
        wamid = f"wamid.cancel-{step}"
        received = ingest.ReceivedEvent.of(_body(wamid), number.id)
        task: list[asyncio.Task[Any]] = []
        before = await _counts(owner_db)
        with cancelled_at(db, task, step) as seen:
            task.append(
                asyncio.create_task(ingest.store_and_process(db, broker, settings, received))
            )
            async with asyncio.timeout(GUARD):
                try:
                    await task[0]
                    finished = True
                except asyncio.CancelledError:
                    finished = False
        # Then the event and its message were both written, or neither
        after = await _counts(owner_db)
        assert after in (before, (before[0], before[1], before[2] + 1, before[3] + 1)), (
            step,
            seen,
            before,
            after,
        )
        # And the pool is clean: no transaction, no write lock, nothing inline
        await _assert_clean_pool(db, database_urls)
        # And Meta's redelivery (the cancelled one got no 200) is processed once
        again = ingest.ReceivedEvent.of(received.body, number.id)
        async with asyncio.timeout(GUARD):
            await ingest.store_and_process(db, broker, settings, again)
        async with db.session(number.org_id) as session:
            stored = (
                await session.exec(select(Message).where(Message.wa_message_id == wamid))
            ).all()
        assert len(stored) == 1, (step, seen)
        await _assert_clean_pool(db, database_urls)
        if finished:
            assert step >= len(seen) - 1  # every step was tried
            break
        step += 1
    assert step >= 3


@pytest.mark.parametrize("cancellations", [1, 3])
@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_a_webhook_cancelled_while_its_begin_waits_for_another_process_s_lock(
    cancellations: int,
    db: Database,
    owner_db: Database,
    database_urls: DatabaseUrls,
    settings: Settings,
    number: WhatsAppAccount,
) -> None:
    """Given another process holding SQLite's write lock,
    when a webhook's BEGIN IMMEDIATE waits for it (its hand-off: the loop runs meanwhile)
    and the webhook is cancelled (again while it cleans up), then the lock is released,
    then the BEGIN that took the lock after the cancellation is rolled back: the pool is
    clean, and the redelivery is processed once."""
    broker = InProcessBroker()
    first = ingest.ReceivedEvent.of(_body("wamid.first"), number.id)
    await ingest.store_and_process(db, broker, settings, first)
    before = await _counts(owner_db)
    holder = sqlite3.connect(database_urls.app.split("///", 1)[1], isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        received = ingest.ReceivedEvent.of(_body("wamid.waited"), number.id)
        webhook = asyncio.create_task(ingest.store_and_process(db, broker, settings, received))
        await asyncio.sleep(0.3)  # the loop runs: the BEGIN waits on aiosqlite's thread
        assert not webhook.done()
        for _ in range(cancellations):  # again during its clean-up: a server stopping
            webhook.cancel()
            await asyncio.sleep(0.1)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    async with asyncio.timeout(GUARD):
        with pytest.raises(asyncio.CancelledError):
            await webhook
    assert await _counts(owner_db) == before
    await _assert_clean_pool(db, database_urls)
    again = ingest.ReceivedEvent.of(received.body, number.id)
    async with asyncio.timeout(GUARD):
        await ingest.store_and_process(db, broker, settings, again)
    assert await _counts(owner_db) == (before[0], before[1], before[2] + 1, before[3] + 1)
    await _assert_clean_pool(db, database_urls)
    # And nothing of the cancelled unit is left waiting (its connection's close finished)
    await asyncio.sleep(0.2)
    left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert left == []


# A process killed (SIGKILL) with a webhook's processing under way, its writes sent and
# not committed: the worker's sweep processes the stored event once.
_KILLED_MID_PROCESSING = """
import asyncio, sys, uuid
from pathlib import Path
from tests.fixtures.settings import make_settings
from weflux.db import Database
from weflux.realtime.broker import InProcessBroker
from weflux.services import ingest
from weflux.services.ingest import process

async def main(url: str, var: str, event_id: str) -> None:
    real = process._send_held

    async def written_then_hang(*args, **kwargs):
        sent = await real(*args, **kwargs)
        print("WRITTEN", flush=True)
        await asyncio.sleep(3600)
        return sent

    process._send_held = written_then_hang
    db = Database(url)
    settings = make_settings(Path(var), database_url=url)
    await ingest.process_event(db, InProcessBroker(), settings, uuid.UUID(event_id))

asyncio.run(main(*sys.argv[1:]))
"""


async def test_a_process_killed_mid_processing_leaves_the_event_for_the_sweep_once(
    db: Database,
    owner_db: Database,
    database_urls: DatabaseUrls,
    settings: Settings,
    number: WhatsAppAccount,
    tmp_path: Path,
) -> None:
    """Given a webhook stored and answered 200 (under load: not processed yet),
    when the process working on it is killed (SIGKILL) after its writes were sent, before
    its commit,
    then none of them is kept (its transaction died with it: no message, no lock left),
    and the worker's sweep processes the event exactly once."""
    broker = InProcessBroker()
    received = ingest.ReceivedEvent.of(_body("wamid.killed"), number.id)
    await webhook_queue.store(db, settings, received)
    before = await _counts(owner_db)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _KILLED_MID_PROCESSING,
        database_urls.app,
        str(tmp_path / "child"),
        str(received.id),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": _REPOSITORY},
    )
    try:
        assert child.stdout is not None
        async with asyncio.timeout(CHILD_GUARD):
            assert (await child.stdout.readline()).strip() == b"WRITTEN"
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    assert await _counts(owner_db) == before
    async with asyncio.timeout(GUARD):
        while True:  # PostgreSQL ends the dead client's transaction as it notices the socket
            await webhook_queue.retry_due_events(db, broker, settings, settle=timedelta(0))
            if (await _counts(owner_db))[2] > before[2]:
                break
            await asyncio.sleep(0.1)
    assert await _counts(owner_db) == (before[0] + 1, before[1] + 1, before[2] + 1, before[3])
    assert await webhook_queue.retry_due_events(db, broker, settings, settle=timedelta(0)) == 0
    async with owner_db.session(all_workspaces="test: the stored event") as session:
        stored = await session.get(WebhookEvent, received.id)
    assert stored is not None
    assert (stored.status, stored.attempts) == (WebhookEventStatus.PROCESSED, 1)
    await _assert_clean_pool(db, database_urls)
