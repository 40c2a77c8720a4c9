"""Retention: old messages and reactions, old raw webhook bodies, expired sessions, and old
platform security events and finished alerts go daily, in batches."""

from __future__ import annotations

import hashlib
import os
import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from tests.fixtures.factories import Actor, create_conversation, create_message
from tests.fixtures.principals import principal_of
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.errors import BadUserInput
from weflux.lifecycle import requests as lifecycle_requests
from weflux.lifecycle.worker import (
    EXPIRED_INVITATION_RETENTION,
    EXPIRED_SIGNUP_GRACE,
    Lifecycle,
    run_retention,
)
from weflux.models import (
    AlertStatus,
    AuditEvent,
    AuthSession,
    Invitation,
    Message,
    MessageReaction,
    PendingSignup,
    PlatformSecurityEvent,
    Role,
    SecurityAlert,
    SecurityEvent,
    WebhookEvent,
    WebhookEventStatus,
    contact_reactor,
    utcnow,
)
from weflux.services.audit import RequestMeta

DAY = timedelta(days=1)


async def _policy(db: Database, actor: Actor, messages: int | None, bodies: int | None) -> None:
    async with db.session(actor.org_id) as session:
        await lifecycle_requests.update_retention_policy(
            session,
            principal_of(actor),
            RequestMeta(),
            message_retention_days=messages,
            webhook_payload_retention_days=bodies,
        )


async def _body(
    db: Database,
    processed_at: datetime | None,
    *,
    status: WebhookEventStatus | None = None,
    received_at: datetime | None = None,
) -> uuid.UUID:
    event_id = uuid.uuid4()
    if status is None:
        status = WebhookEventStatus.PROCESSED if processed_at else WebhookEventStatus.FAILED
    async with db.session(webhook_event=event_id) as session:
        session.add(
            WebhookEvent(
                id=event_id,
                body=b"{}",
                body_sha256=hashlib.sha256(b"{}").hexdigest(),
                status=status,
                processed_at=processed_at,
                received_at=received_at or processed_at or utcnow(),
            )
        )
    return event_id


async def _stored(owner_db: Database) -> set[uuid.UUID]:
    async with owner_db.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT id FROM webhook_events"))).all()
    return {uuid.UUID(str(row[0])) for row in rows}


async def test_bodies_never_processed_go_by_their_receipt(
    db: Database, owner_db: Database, admin: Actor
) -> None:
    """Given raw bodies kept 7 days, and bodies never processed: parked ones received 8
    and 6 days ago, ones still to process (pending or retried) received 29 and 31 days
    ago, and one received 40 days ago but processed yesterday,
    when the retention job runs,
    then the parked one received more than 7 days ago goes (parked: nothing retries it),
    those still to process stay until 30 days after receipt (the ceiling of every
    retention: the worker may have been stopped; it parks an event within hours), and the
    processed one stays (counted from its processing)."""
    now = utcnow()
    await _policy(db, admin, None, 7)
    parked = WebhookEventStatus.PARKED
    old_parked = await _body(db, None, status=parked, received_at=now - 8 * DAY)
    new_parked = await _body(db, None, status=parked, received_at=now - 6 * DAY)
    retrying = await _body(db, None, received_at=now - 29 * DAY)
    pending = await _body(db, None, status=WebhookEventStatus.PENDING, received_at=now - 29 * DAY)
    old_retrying = await _body(db, None, received_at=now - 31 * DAY)
    old_pending = await _body(
        db, None, status=WebhookEventStatus.PENDING, received_at=now - 31 * DAY
    )
    late = await _body(db, now - DAY, received_at=now - 40 * DAY)
    lifecycle = Lifecycle(db=db, keyring=KeyRing([("k", os.urandom(32))]), batch=2)

    assert await run_retention(lifecycle, now=now) == 3

    assert await _stored(owner_db) == {new_parked, retrying, pending, late}
    assert {old_parked, old_retrying, old_pending}.isdisjoint(await _stored(owner_db))


async def test_old_messages_and_bodies_go_and_the_rest_stays(
    db: Database, owner_db: Database, admin: Actor, other_admin: Actor
) -> None:
    """Given a workspace keeping messages 10 days and another keeping them forever but raw
    bodies only 7 days,
    when the retention job runs,
    then the first loses its messages older than 10 days in batches, the second keeps
    all, raw bodies processed more than 7 days ago go (the shortest period applies to
    every body), unprocessed ones stay; and a second run the same day does nothing."""
    now = utcnow()
    await _policy(db, admin, 10, None)
    await _policy(db, other_admin, None, 7)
    kept: list[uuid.UUID] = []
    for actor in (admin, other_admin):
        async with db.session(actor.org_id) as session:
            conversation = await create_conversation(session)
            for _ in range(5):
                await create_message(session, conversation, created_at=now - 20 * DAY)
            recent = await create_message(session, conversation, created_at=now - DAY)
            kept.append(recent.id)
    old_body = await _body(db, now - 8 * DAY)
    new_body = await _body(db, now - DAY)
    failed_body = await _body(db, None)
    lifecycle = Lifecycle(db=db, keyring=KeyRing([("k", os.urandom(32))]), batch=2)

    assert await run_retention(lifecycle, now=now) == 6

    async with db.session(admin.org_id) as session:
        assert [m.id for m in (await session.exec(select(Message))).all()] == [kept[0]]
    async with db.session(other_admin.org_id) as session:
        assert len((await session.exec(select(Message))).all()) == 6
    async with owner_db.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT id FROM webhook_events"))).all()
    assert {uuid.UUID(str(row[0])) for row in rows} == {new_body, failed_body}
    assert old_body not in {uuid.UUID(str(row[0])) for row in rows}
    assert await run_retention(lifecycle, now=now + DAY / 2) == 0


def _alert(created_at: datetime, status: AlertStatus) -> SecurityAlert:
    return SecurityAlert(
        event_id=uuid.uuid4(),
        channel="webhook",
        audience="platform",
        dedupe_key="platform:auth.credential_stuffing",
        status=status,
        created_at=created_at,
    )


async def test_old_platform_security_events_and_finished_alerts_go(
    db: Database, owner_db: Database, admin: Actor
) -> None:
    """Given platform security events and alerts older and newer than the 90-day
    retention, one old alert still pending,
    when the retention job runs,
    then the old events and the old sent or suppressed alerts go in batches, the pending
    one stays (the worker still owes it), and so does everything newer."""
    now = utcnow()
    old, new = now - 91 * DAY, now - 89 * DAY
    events = [
        PlatformSecurityEvent(
            kind="auth.credential_stuffing",
            severity="CRITICAL",
            summary="failed logins over many accounts",
            ip_address="203.0.113.9",
            created_at=at,
        )
        for at in (old, old, old, new)
    ]
    alerts = [
        _alert(old, AlertStatus.SENT),
        _alert(old, AlertStatus.SUPPRESSED),
        _alert(old, AlertStatus.PENDING),
        _alert(new, AlertStatus.SENT),
    ]
    async with AsyncSession(owner_db.engine, expire_on_commit=False) as session:
        session.add_all([*events, *alerts])
        await session.commit()
    lifecycle = Lifecycle(db=db, keyring=KeyRing([("k", os.urandom(32))]), batch=2)

    assert await run_retention(lifecycle, now=now) == 5

    async with owner_db.engine.connect() as conn:
        kept_events = (await conn.execute(text("SELECT id FROM platform_security_events"))).all()
        kept_alerts = (await conn.execute(text("SELECT id FROM security_alerts"))).all()
    assert {uuid.UUID(str(row[0])) for row in kept_events} == {events[3].id}
    assert {uuid.UUID(str(row[0])) for row in kept_alerts} == {alerts[2].id, alerts[3].id}


@pytest.mark.parametrize(("messages", "bodies"), [(0, None), (None, 31), (None, 0)])
async def test_a_policy_out_of_range_is_refused(
    db: Database, admin: Actor, messages: int | None, bodies: int | None
) -> None:
    """Given days out of range, when the policy is set, then BAD_USER_INPUT."""
    with pytest.raises(BadUserInput):
        await _policy(db, admin, messages, bodies)


async def test_reactions_older_than_the_message_retention_go_with_the_messages(
    db: Database, admin: Actor
) -> None:
    """Given a workspace keeping messages 10 days, a contact's reaction of 20 days ago
    and one of yesterday,
    when the retention job runs, then the old reaction goes with the old messages and
    the recent one stays."""
    now = utcnow()
    await _policy(db, admin, 10, None)
    async with db.session(admin.org_id) as session:
        conversation = await create_conversation(session)
        old, recent = (
            MessageReaction(
                conversation_id=conversation.id,
                target_wa_message_id=f"wamid.{n}",
                reactor=contact_reactor(conversation.contact_id),
                contact_id=conversation.contact_id,
                emoji="👍",
                created_at=at,
            )
            for n, at in enumerate((now - 20 * DAY, now - DAY))
        )
        session.add_all([old, recent])
    lifecycle = Lifecycle(db=db, keyring=KeyRing([("k", os.urandom(32))]), batch=2)

    await run_retention(lifecycle, now=now)

    async with db.session(admin.org_id) as session:
        left = (await session.exec(select(MessageReaction))).all()
    assert [r.id for r in left] == [recent.id]


async def test_sessions_go_once_expired_longer_than_the_session_retention(
    db: Database, admin: Actor
) -> None:
    """Given sessions (with their IP address and user agent) that expired 31 days ago
    and 29 days ago, and a live one, in a workspace that keeps every message,
    when the retention job runs with a 30-day session retention,
    then only the one expired 31 days ago is deleted."""
    now = utcnow()
    ended = {}
    async with db.session(admin.org_id) as session:
        for name, expires_at in (
            ("old", now - 31 * DAY),
            ("recent", now - 29 * DAY),
            ("live", now + DAY),
        ):
            row = AuthSession(
                user_id=admin.user.id,
                membership_id=admin.membership.id,
                refresh_token_hash=hashlib.sha256(name.encode()).hexdigest(),
                expires_at=expires_at,
                ip_address="203.0.113.7",
                user_agent="Firefox",
            )
            session.add(row)
            ended[name] = row.id
    lifecycle = Lifecycle(
        db=db, keyring=KeyRing([("k", os.urandom(32))]), batch=2, session_retention=30 * DAY
    )

    await run_retention(lifecycle, now=now)

    async with db.session(admin.org_id) as session:
        left = {row.id for row in (await session.exec(select(AuthSession))).all()}
    assert ended["old"] not in left
    assert {ended["recent"], ended["live"]} <= left


async def test_invitations_never_accepted_go_once_expired_longer_than_their_retention(
    db: Database, admin: Actor
) -> None:
    """Given invitations (an email and a name each) that expired unaccepted a day more
    and a day less than the retention ago, one accepted long ago and a pending one,
    when the retention job runs, then only the one expired longest is deleted."""
    now = utcnow()
    made = {}
    async with db.session(admin.org_id) as session:
        for name, expires_at, accepted_at in (
            ("old", now - EXPIRED_INVITATION_RETENTION - DAY, None),
            ("recent", now - EXPIRED_INVITATION_RETENTION + DAY, None),
            ("accepted", now - EXPIRED_INVITATION_RETENTION - DAY, now - 40 * DAY),
            ("pending", now + DAY, None),
        ):
            row = Invitation(
                email=f"{name}@example.com",
                name=name,
                role=Role.AGENT,
                token_hash=hashlib.sha256(name.encode()).hexdigest(),
                invited_by_membership_id=admin.membership.id,
                expires_at=expires_at,
                accepted_at=accepted_at,
            )
            session.add(row)
            made[name] = row.id
    lifecycle = Lifecycle(db=db, keyring=KeyRing([("k", os.urandom(32))]), batch=2)

    await run_retention(lifecycle, now=now)

    async with db.session(admin.org_id) as session:
        left = {row.id for row in (await session.exec(select(Invitation))).all()}
    assert made["old"] not in left
    assert {made["recent"], made["accepted"], made["pending"]} <= left


async def test_expired_sign_ups_go_after_their_grace_without_waiting_for_a_signup(
    db: Database, owner_db: Database, admin: Actor
) -> None:
    """Given sign-ups never confirmed (an email, a name, an IP address, a password hash
    each): one expired longer ago than the grace, one expired within it, a live one,
    when the retention job runs (no one signs up),
    then only the one expired longer ago than the grace is deleted."""
    now = utcnow()
    made = {}
    async with db.session() as session:
        for name, expires_at in (
            ("old", now - EXPIRED_SIGNUP_GRACE - timedelta(minutes=1)),
            ("grace", now - EXPIRED_SIGNUP_GRACE + timedelta(minutes=10)),
            ("live", now + DAY),
        ):
            row = PendingSignup(
                email=f"{name}@example.com",
                name=name,
                organization_name=f"{name} Co",
                password_hash="x",
                token_hash=hashlib.sha256(name.encode()).hexdigest(),
                ip_address="203.0.113.5",
                expires_at=expires_at,
            )
            session.add(row)
            made[name] = row.id
    lifecycle = Lifecycle(db=db, keyring=KeyRing([("k", os.urandom(32))]), batch=1)

    assert await run_retention(lifecycle, now=now) == 1

    async with owner_db.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT id FROM pending_signups"))).all()
    assert {uuid.UUID(str(row[0])) for row in rows} == {made["grace"], made["live"]}


async def test_ip_addresses_and_user_agents_are_blanked_after_their_retention_and_events_stay(
    db: Database, admin: Actor, other_admin: Actor
) -> None:
    """Given audit events and security events of two workspaces, with IP addresses and
    user agents, older and newer than a 90-day network retention,
    when the retention job runs,
    then the older ones lose their IP address and user agent and keep everything else
    (the audit trail stays); the newer ones keep theirs; batches of 2 reach them all."""
    now = utcnow()
    old, new = now - 91 * DAY, now - 89 * DAY
    for actor in (admin, other_admin):
        async with db.session(actor.org_id) as session:
            for at in (old, old, old, new):
                session.add(
                    AuditEvent(
                        action="auth.login",
                        actor_user_id=actor.user.id,
                        ip_address="203.0.113.8",
                        details={"n": 1},
                        created_at=at,
                    )
                )
                session.add(
                    SecurityEvent(
                        kind="auth.new_device",
                        severity="LOW",
                        summary="A login from a new device",
                        ip_address="203.0.113.8",
                        user_agent="Firefox",
                        created_at=at,
                    )
                )
            session.add(
                SecurityEvent(
                    kind="auth.new_device",
                    severity="LOW",
                    summary="Only an agent",
                    user_agent="curl",
                    created_at=old,
                )
            )
    lifecycle = Lifecycle(
        db=db, keyring=KeyRing([("k", os.urandom(32))]), batch=2, audit_network_retention=90 * DAY
    )

    await run_retention(lifecycle, now=now)

    for actor in (admin, other_admin):
        async with db.session(actor.org_id) as session:
            audits = (await session.exec(select(AuditEvent))).all()
            events = (await session.exec(select(SecurityEvent))).all()
        kept = [(e.created_at < now - 90 * DAY, e.ip_address) for e in audits]
        assert sorted(kept) == [(False, "203.0.113.8")] + [(True, None)] * 3
        assert all(e.actor_user_id == actor.user.id and e.details == {"n": 1} for e in audits)
        seen = sorted((e.created_at < now - 90 * DAY, e.ip_address, e.user_agent) for e in events)
        assert seen == [(False, "203.0.113.8", "Firefox")] + [(True, None, None)] * 4
        assert all(e.summary for e in events)
