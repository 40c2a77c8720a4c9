"""Lifecycle requests at once: one deletion, one cancellation, one claim, one erasure.

Two `requestWorkspaceDeletion` calls at once used to leave two PENDING deletion requests
on PostgreSQL (each read the workspace before the other wrote it). A leftover one is
harmful: cancelled, the workspace scheduled again later, it comes due at the first
request's time and deletes the workspace before the new grace period ends. Each
request (and each cancellation) now locks the workspace's row as it reads it, so the
second waits and sees the first's outcome. SQLite writes one transaction at a time: the
second waits at its first statement.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

from sqlalchemy import text, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.applications import Starlette

from tests.fixtures.databases import postgres_only, waiting_for_a_lock
from tests.fixtures.factories import Actor, create_contact
from tests.fixtures.outbound import Scene, all_messages, queue_text
from tests.fixtures.principals import principal_of
from weflux.auth.scoping import FEED_LOCK_CLASS
from weflux.db import Database
from weflux.errors import Conflict, NotFound
from weflux.lifecycle import requests as lifecycle_requests
from weflux.lifecycle.worker import Lifecycle, run_due_requests
from weflux.models import (
    AuditEvent,
    DataRequest,
    DataRequestKind,
    DataRequestStatus,
    Message,
    MessageStatus,
    Organization,
    utcnow,
)
from weflux.runtime import runtime_of
from weflux.services.audit import Action, RequestMeta
from weflux.services.channels import Services

GRACE = timedelta(days=7)
Step = Callable[[AsyncSession], Awaitable[object]]


async def at_once(
    db: Database, owner_db: Database, org_id: uuid.UUID, step: Step
) -> tuple[object, object]:
    """`step` in one transaction, and again in another started while the first holds what
    it wrote (PostgreSQL: seen waiting for it); the first commits. What each answered
    (the second's error, if it raised)."""

    async def second() -> object:
        async with db.session(org_id) as session:
            return await step(session)

    async with db.session(org_id) as session:
        first = await step(session)
        task = asyncio.create_task(second())
        if db.dialect == "postgresql":
            await asyncio.wait_for(waiting_for_a_lock(owner_db), 30)
    try:
        return first, await task
    except Exception as error:
        return first, error


def deletion(app: Starlette, admin: Actor) -> Step:
    runtime = runtime_of(app)

    async def request(session: AsyncSession) -> object:
        return await lifecycle_requests.request_workspace_deletion(
            session,
            runtime.authenticator,
            principal_of(admin),
            RequestMeta(),
            confirm_name="Acme",
            grace=GRACE,
        )

    return request


def cancellation(admin: Actor) -> Step:
    async def cancel(session: AsyncSession) -> object:
        return await lifecycle_requests.cancel_workspace_deletion(
            session, principal_of(admin), RequestMeta()
        )

    return cancel


async def deletion_requests(db: Database, org_id: uuid.UUID) -> list[DataRequestStatus]:
    async with db.session(org_id) as session:
        rows = await session.exec(
            select(DataRequest).where(DataRequest.kind == DataRequestKind.WORKSPACE_DELETION)
        )
        return sorted(row.status for row in rows)


async def audited(db: Database, org_id: uuid.UUID, action: Action) -> int:
    async with db.session(org_id) as session:
        rows = await session.exec(select(AuditEvent).where(col(AuditEvent.action) == action))
        return len(rows.all())


async def test_two_deletion_requests_at_once_leave_one(
    app: Starlette, db: Database, owner_db: Database, admin: Actor
) -> None:
    """Given a deletion request not yet committed, when a second one runs meanwhile, then
    it waits and answers CONFLICT: one PENDING request, one audit event (PostgreSQL:
    two PENDING requests before)."""
    _, second = await at_once(db, owner_db, admin.org_id, deletion(app, admin))

    assert isinstance(second, Conflict), second
    assert second.message == "The workspace's deletion is already scheduled"
    assert await deletion_requests(db, admin.org_id) == [DataRequestStatus.PENDING]
    assert await audited(db, admin.org_id, Action.WORKSPACE_DELETION_REQUESTED) == 1


async def test_two_cancellations_at_once_cancel_once(
    app: Starlette, db: Database, owner_db: Database, admin: Actor
) -> None:
    """Given a scheduled deletion and a cancellation not yet committed, when a second
    cancellation runs meanwhile, then it waits and answers NOT_FOUND (nothing left to
    cancel): one cancellation audited (PostgreSQL: two before)."""
    async with db.session(admin.org_id) as session:
        await deletion(app, admin)(session)

    _, second = await at_once(db, owner_db, admin.org_id, cancellation(admin))

    assert isinstance(second, NotFound), second
    assert await deletion_requests(db, admin.org_id) == [DataRequestStatus.CANCELLED]
    assert await audited(db, admin.org_id, Action.WORKSPACE_DELETION_CANCELLED) == 1


async def test_a_cancellation_at_the_workers_claim_is_seen_or_refused(
    app: Starlette, db: Database, owner_db: Database, admin: Actor
) -> None:
    """Given a deletion whose grace period is over and a cancellation not yet committed,
    when the worker claims the request meanwhile, then it waits, sees it CANCELLED and
    deletes nothing (PostgreSQL: the claim overwrote CANCELLED with RUNNING before)."""
    async with db.session(admin.org_id) as session:
        await deletion(app, admin)(session)
    lifecycle = Lifecycle(db=db, keyring=runtime_of(app).keyring, batch=100)
    after_grace = utcnow() + GRACE + timedelta(minutes=1)

    async with db.session(admin.org_id) as session:
        await cancellation(admin)(session)
        sweep = asyncio.create_task(run_due_requests(lifecycle, now=after_grace))
        if db.dialect == "postgresql":
            await asyncio.wait_for(waiting_for_a_lock(owner_db), 30)
    await sweep

    assert await deletion_requests(db, admin.org_id) == [DataRequestStatus.CANCELLED]
    async with db.session(admin.org_id) as session:
        organization = await session.get(Organization, admin.org_id)
        assert organization is not None
        assert organization.deletion_scheduled_at is None


async def test_two_erasures_of_a_contact_at_once_are_one_request(
    db: Database, owner_db: Database, admin: Actor
) -> None:
    """Given a contact's erasure not yet committed, when a second erasure of it runs
    meanwhile, then it waits and answers the first's request: one erasure request, one
    audit event (PostgreSQL: two of each before)."""
    async with db.session(admin.org_id) as session:
        contact = await create_contact(session)

    async def erase(session: AsyncSession) -> object:
        return await lifecycle_requests.erase_contact(
            session, principal_of(admin), RequestMeta(), contact_id=contact.id
        )

    first, second = await at_once(db, owner_db, admin.org_id, erase)

    assert isinstance(first, DataRequest)
    assert isinstance(second, DataRequest), second
    assert second.id == first.id
    async with db.session(admin.org_id) as session:
        kinds = await session.exec(
            select(DataRequest.kind).where(DataRequest.subject_id == contact.id)
        )
        assert kinds.all() == [DataRequestKind.CONTACT_ERASURE]
    assert await audited(db, admin.org_id, Action.CONTACT_ERASURE_REQUESTED) == 1


@postgres_only
async def test_a_deletion_request_and_a_webhook_holding_the_feed_do_not_deadlock(
    app: Starlette, db: Database, owner_db: Database, services: Services, admin: Actor, scene: Scene
) -> None:
    """Given two queued replies and a transaction that holds the workspace's feed lock, as
    a webhook's does from its start, when the deletion is requested meanwhile and that
    transaction then changes the replies' rows (a status), then both commit and the
    replies end FAILED: the request takes the feed lock before it locks a reply (it used
    to lock the replies it fails, then wait for the feed inside the feed trigger, while the
    webhook waited for a reply's row: PostgreSQL's deadlock detector aborted one).
    PostgreSQL: SQLite writes one transaction at a time."""
    replies = [await queue_text(db, services, admin, scene, text) for text in ("one", "two")]
    ids = [reply.id for reply in replies]

    async def requested() -> object:
        async with db.session(admin.org_id) as session:
            return await deletion(app, admin)(session)

    async with owner_db.engine.connect() as webhook:
        await webhook.execute(
            text("SELECT pg_advisory_xact_lock(:lock_class, hashtext(:org))"),
            {"lock_class": FEED_LOCK_CLASS, "org": str(admin.org_id)},
        )
        request = asyncio.create_task(requested())
        await asyncio.wait_for(waiting_for_a_lock(owner_db), 30)
        await webhook.execute(
            update(Message).where(col(Message.id).in_(ids)).values(next_attempt_at=utcnow())
        )
        await webhook.commit()
    await request

    messages = await all_messages(db, admin.org_id)
    assert {(m.status, m.error_title) for m in messages} == {
        (MessageStatus.FAILED, "workspace deletion")
    }
