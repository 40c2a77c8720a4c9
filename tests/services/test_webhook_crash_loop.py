"""A stored webhook event whose processing kills its process (out of memory, a crash in a
C extension, SIGKILL by an orchestrator) does not loop for ever: the worker's sweep, a
real process here, counts each attempt before it starts, so after
`WEFLUX_WEBHOOK_MAX_ATTEMPTS` deaths the event is parked as interrupted, reported once,
listed, and a replay once the fault is gone processes it exactly once, on both engines.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, text
from sqlmodel import col, select

from tests.fixtures import webhooks as wh
from tests.fixtures.databases import DatabaseUrls
from weflux.config import Settings
from weflux.db import Database
from weflux.models import Message, WebhookEvent, WebhookEventStatus, WhatsAppAccount, utcnow
from weflux.realtime.broker import InProcessBroker
from weflux.services import ingest, webhook_queue
from weflux.services.webhook_attempts import INTERRUPTED

ATTEMPTS = 2  # each death is a process started: python, weflux, the tests' settings
GUARD = 180  # seconds: a process starting on a loaded machine takes tens of them
_REPOSITORY = str(Path(__file__).resolve().parents[2])
SECRET_TEXT = "the customer's words"

# The sweep as the worker runs it, in a process of its own whose processing of the event
# dies once its share's writes were made (not committed): `os._exit` (a crash) or SIGKILL
# (an orchestrator, the OOM killer). Or `replay` the parked events the same way. The fault
# is this script's own patch: nothing of it exists outside the tests.
_SWEEP_THAT_DIES = """
import asyncio, os, signal, sys
from datetime import timedelta
from pathlib import Path
from tests.fixtures.settings import make_settings
from weflux.db import Database
from weflux.logs import configure_logging
from weflux.models import WebhookEventStatus
from weflux.realtime.broker import InProcessBroker
from weflux.services import webhook_queue
from weflux.services.ingest import process

async def main(url: str, owner_url: str, var: str, attempts: str, how: str, job: str) -> None:
    real = process._process_share

    async def dies_halfway(*args, **kwargs):
        await real(*args, **kwargs)
        print("DYING", flush=True)
        if how == "exit":
            os._exit(70)
        os.kill(os.getpid(), signal.SIGKILL)

    process._process_share = dies_halfway
    configure_logging("INFO", "json")
    db = Database(url)
    settings = make_settings(Path(var), database_url=url, webhook_max_attempts=int(attempts))
    if job == "sweep":
        swept = await webhook_queue.retry_due_events(
            db, InProcessBroker(), settings, settle=timedelta(0)
        )
    else:
        owner = Database(owner_url, maintenance=True)
        swept = await webhook_queue.replay(
            db, InProcessBroker(), settings, owner, status=WebhookEventStatus.PARKED
        )
    print("SWEPT", swept, flush=True)

asyncio.run(main(*sys.argv[1:]))
"""


def _body() -> bytes:
    change = wh.messages_change(
        messages=[wh.text_message("wamid.poison", body=SECRET_TEXT)], contacts=[wh.contact()]
    )
    return wh.encode(wh.webhook_body(change))


async def _run_child(
    urls: DatabaseUrls, var: Path, how: str, job: str = "sweep"
) -> tuple[int, list[str], list[dict[str, object]]]:
    """The child's exit code, its stdout lines and its JSON log lines."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _SWEEP_THAT_DIES,
        urls.app,
        urls.owner,
        str(var),
        str(ATTEMPTS),
        how,
        job,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": _REPOSITORY},
    )
    async with asyncio.timeout(GUARD):
        out, err = await child.communicate()
    assert child.returncode is not None
    logs = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    return child.returncode, out.decode().split("\n"), logs


async def _event(owner_db: Database, event_id: uuid.UUID) -> WebhookEvent:
    async with owner_db.session(all_workspaces="test: the stored event") as session:
        event = await session.get(WebhookEvent, event_id)
    assert event is not None
    return event


async def _time_passes(owner_db: Database, event_id: uuid.UUID) -> None:
    """The claim's lease (or the backoff) ran out: the event is due for the sweep."""
    async with owner_db.session(all_workspaces="test: due now") as session:
        event = await session.get(WebhookEvent, event_id)
        assert event is not None
        event.next_attempt_at = utcnow()


async def _messages(owner_db: Database) -> int:
    async with owner_db.session(all_workspaces="test: count messages") as session:
        return int((await session.exec(select(func.count(col(Message.id))))).one())


async def _dead_transactions_ended(owner_db: Database) -> None:
    """PostgreSQL ends a killed client's transaction (and its row lock) as it notices."""
    if owner_db.dialect != "postgresql":
        return
    async with asyncio.timeout(GUARD):
        while True:
            async with owner_db.engine.connect() as conn:
                open_ones = (
                    await conn.execute(
                        text(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                            "current_database() AND state LIKE 'idle in transaction%'"
                        )
                    )
                ).scalar_one()
            if open_ones == 0:
                return
            await asyncio.sleep(0.05)


# Each case starts four child processes (about 7 s each on a quiet machine): each way of
# dying once, each engine once, rather than every pair.
@pytest.mark.parametrize(("dialect", "how"), [("sqlite", "exit"), ("postgresql", "sigkill")])
async def test_an_event_that_kills_its_processor_is_parked_then_replayed_once(
    dialect: str,
    how: str,
    db: Database,
    owner_db: Database,
    database_urls: DatabaseUrls,
    settings: Settings,
    number: WhatsAppAccount,
    tmp_path: Path,
) -> None:
    """Given WEFLUX_WEBHOOK_MAX_ATTEMPTS=2 and a stored webhook (answered 200, left for
    the sweep) whose processing kills the process halfway (`os._exit` or SIGKILL),
    when the worker's sweep, a process of its own, takes it again after each death,
    then each death spent one attempt (FAILED, due again, `last_error` Interrupted, none
    of its writes kept), and after the second the next sweep parks it without processing
    it (it survives), with one ERROR line (ids, attempts, the class only, no text); the
    sweep leaves it alone after; `weflux webhooks failed` lists it; a replay that dies
    too keeps it parked and counts the attempt; a replay once the fault is gone processes
    it exactly once (its raw body was kept), and a second replay adds nothing."""
    broker = InProcessBroker()
    settings = settings.model_copy(update={"webhook_max_attempts": ATTEMPTS})
    received = ingest.ReceivedEvent.of(_body(), number.id)
    await webhook_queue.store(db, settings, received)
    died = 70 if how == "exit" else -9
    var = tmp_path / "child"

    for attempt in range(1, ATTEMPTS + 1):
        code, out, logs = await _run_child(database_urls, var, how)
        assert (code, out[0]) == (died, "DYING"), (attempt, out, logs)
        await _dead_transactions_ended(owner_db)
        event = await _event(owner_db, received.id)
        assert (event.status, event.attempts, event.last_error) == (
            WebhookEventStatus.FAILED,
            attempt,
            INTERRUPTED,
        )
        assert event.next_attempt_at is not None
        assert event.next_attempt_at > utcnow()
        assert await _messages(owner_db) == 0
        await _time_passes(owner_db, received.id)

    code, out, logs = await _run_child(database_urls, var, how)
    assert (code, out[0]) == (0, "SWEPT 1"), (out, logs)
    event = await _event(owner_db, received.id)
    assert (event.status, event.attempts, event.next_attempt_at) == (
        WebhookEventStatus.PARKED,
        ATTEMPTS,
        None,
    )
    assert event.last_error == INTERRUPTED
    assert event.body == received.body
    errors = [line for line in logs if line.get("level") == "error"]
    assert len(errors) == 1, logs
    (error,) = errors
    assert str(error["msg"]).startswith("webhook event parked")
    assert (error["event"], error["attempts"], error["error"]) == (
        str(received.id),
        ATTEMPTS,
        "Interrupted",
    )
    assert error["workspaces"] == str(number.org_id)
    interrupted = [line for line in logs if "interrupted" in str(line.get("msg"))]
    assert len(interrupted) == 1
    assert SECRET_TEXT not in json.dumps(logs)

    # The sweep leaves a parked event alone.
    assert await webhook_queue.retry_due_events(db, broker, settings, settle=timedelta(0)) == 0

    found = await webhook_queue.failures(owner_db)
    assert (found.parked, found.retrying) == (1, 0)
    assert f"PARKED  attempts={ATTEMPTS}  Interrupted (" in found.lines()[0]

    # A replay that dies too: still parked (the sweep does not take it), counted.
    code, out, logs = await _run_child(database_urls, var, how, job="replay")
    assert (code, out[0]) == (died, "DYING"), (out, logs)
    await _dead_transactions_ended(owner_db)
    event = await _event(owner_db, received.id)
    assert (event.status, event.attempts, event.last_error, event.next_attempt_at) == (
        WebhookEventStatus.PARKED,
        ATTEMPTS + 1,
        INTERRUPTED,
        None,
    )
    assert await _messages(owner_db) == 0

    # The fault is gone (this process has no patch): `weflux webhooks replay --parked`.
    replay_args = (db, broker, settings, owner_db)
    assert await webhook_queue.replay(*replay_args, status=WebhookEventStatus.PARKED) == (1, 0)
    event = await _event(owner_db, received.id)
    assert (event.status, event.attempts, event.last_error, event.next_attempt_at) == (
        WebhookEventStatus.PROCESSED,
        ATTEMPTS + 2,
        None,
        None,
    )
    assert await _messages(owner_db) == 1
    assert await webhook_queue.replay(*replay_args) == (1, 0)
    assert await _messages(owner_db) == 1
    found = await webhook_queue.failures(owner_db)
    assert (found.parked, found.retrying) == (0, 0)
