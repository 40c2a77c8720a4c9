"""The incident register: deadlines, what is overdue as time passes, notices that reach a
real SMTP server once per Admin, and workspaces that see only their own incidents."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlmodel import col, select

from tests.fixtures.databases import postgres_only
from tests.fixtures.factories import Actor, create_actor
from tests.fixtures.smtp import REFUSED_RECIPIENT, running_server
from weflux.db import Database
from weflux.errors import BadUserInput, NotFound
from weflux.mail.mailer import SmtpMailer
from weflux.mail.smtp import SmtpConfig, SmtpSecurity
from weflux.models import (
    AuditEvent,
    Incident,
    IncidentNotice,
    IncidentStatus,
    IncidentWorkspace,
    Organization,
    Role,
)
from weflux.secops import incidents
from weflux.services.audit import Action

pytestmark = pytest.mark.usefixtures("dialect")

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
MESSAGE = "We found unauthorised access to message metadata between 1 and 2 December.\n"


def mailer_on(port: int) -> SmtpMailer:
    return SmtpMailer(
        SmtpConfig(
            host="127.0.0.1",
            port=port,
            username=None,
            password=None,
            from_address="security@weflux.example",
            security=SmtpSecurity.NONE,
        )
    )


async def open_for(
    owner_db: Database, *orgs: Organization, discovered_at: datetime = T0
) -> Incident:
    async with owner_db.session(all_workspaces="test: open an incident") as session:
        return await incidents.open_incident(
            session,
            title="Leaked support export",
            discovered_at=discovered_at,
            org_ids=[org.id for org in orgs],
            now=discovered_at + timedelta(hours=1),
        )


async def state_at(owner_db: Database, when: datetime) -> incidents.IncidentState:
    async with owner_db.session(all_workspaces="test: list incidents") as session:
        (state,) = await incidents.list_incidents(session, now=when)
    return state


async def test_deadlines_are_72_hours_and_14_days_after_discovery(
    owner_db: Database, org: Organization
) -> None:
    incident = await open_for(owner_db, org)
    assert incident.notify_by == T0 + timedelta(hours=72)
    assert incident.post_mortem_due_at == T0 + timedelta(days=14)
    assert incident.status is IncidentStatus.OPEN


async def test_notice_becomes_overdue_after_72_hours_without_notifying(
    owner_db: Database, org: Organization, admin: Actor
) -> None:
    await open_for(owner_db, org)
    assert not (await state_at(owner_db, T0 + timedelta(hours=71, minutes=59))).overdue
    late = await state_at(owner_db, T0 + timedelta(hours=72, minutes=1))
    assert late.notice_overdue
    assert not late.post_mortem_overdue


async def test_notified_in_time_is_not_overdue_until_the_post_mortem_is(
    owner_db: Database, org: Organization, admin: Actor
) -> None:
    incident = await open_for(owner_db, org)
    with running_server() as (_, port):
        await incidents.notify(
            owner_db, mailer_on(port), incident.id, MESSAGE, now=T0 + timedelta(hours=10)
        )
    assert not (await state_at(owner_db, T0 + timedelta(days=5))).overdue
    late = await state_at(owner_db, T0 + timedelta(days=14, minutes=1))
    assert late.post_mortem_overdue
    assert not late.notice_overdue


async def test_closing_with_the_post_mortem_ends_what_is_overdue(
    owner_db: Database, org: Organization, admin: Actor
) -> None:
    incident = await open_for(owner_db, org)
    with running_server() as (_, port):
        await incidents.notify(owner_db, mailer_on(port), incident.id, MESSAGE)
    async with owner_db.session(all_workspaces="test: close") as session:
        closed = await incidents.close_incident(
            session, incident.id, post_mortem_url="https://status.example/pm/1"
        )
    assert closed.status is IncidentStatus.CLOSED
    assert not (await state_at(owner_db, T0 + timedelta(days=30))).overdue


async def test_notify_emails_every_admin_of_each_affected_workspace_once(
    db: Database,
    owner_db: Database,
    org: Organization,
    other_org: Organization,
    admin: Actor,
    manager: Actor,
    other_admin: Actor,
) -> None:
    """Given an incident affecting two workspaces,
    when `notify` runs twice, with a new Admin joining in between,
    then each Admin (never a Manager) gets exactly one notice, and each is recorded."""
    incident = await open_for(owner_db, org, other_org)
    with running_server() as (handler, port):
        first = await incidents.notify(owner_db, mailer_on(port), incident.id, MESSAGE)
        async with db.session(org.id) as session:
            late_admin = await create_actor(session, Role.ADMIN, email="second@acme.example")
        second = await incidents.notify(owner_db, mailer_on(port), incident.id, MESSAGE)
    assert sorted(first.sent) == ["admin@acme.example", "admin@globex.example"]
    assert second.sent == [late_admin.user.email]
    assert second.already == 2
    recipients = [rcpt for mail in handler.delivered for rcpt in mail.rcpt_tos]
    assert sorted(recipients) == sorted(
        ["admin@acme.example", "admin@globex.example", "second@acme.example"]
    )
    assert manager.user.email not in recipients
    assert handler.delivered[0].subject == "Security incident notice: Leaked support export"
    assert MESSAGE.strip() in handler.delivered[0].content.decode()
    async with owner_db.session(all_workspaces="test: notices") as session:
        notices = (await session.exec(select(IncidentNotice))).all()
        affected = (await session.exec(select(IncidentWorkspace))).all()
        actions = (
            await session.exec(
                select(AuditEvent.org_id, AuditEvent.action).order_by(col(AuditEvent.created_at))
            )
        ).all()
    assert len(notices) == 3
    assert all(row.notified_at is not None for row in affected)
    for workspace in (org.id, other_org.id):
        mine = [action for org_id, action in actions if org_id == workspace]
        assert Action.INCIDENT_OPENED in mine
        assert Action.INCIDENT_NOTIFIED in mine


async def test_a_refused_recipient_is_retried_and_keeps_the_notice_open(
    db: Database, owner_db: Database, org: Organization, admin: Actor
) -> None:
    async with db.session(org.id) as session:
        await create_actor(session, Role.ADMIN, email=REFUSED_RECIPIENT)
    incident = await open_for(owner_db, org)
    with running_server() as (handler, port):
        report = await incidents.notify(owner_db, mailer_on(port), incident.id, MESSAGE)
        again = await incidents.notify(owner_db, mailer_on(port), incident.id, MESSAGE)
    assert report.sent == ["admin@acme.example"]
    assert report.failed == [REFUSED_RECIPIENT]
    assert again.sent == []
    assert again.failed == [REFUSED_RECIPIENT]
    assert again.already == 1
    assert len(handler.delivered) == 1
    assert (await state_at(owner_db, T0 + timedelta(hours=73))).notice_overdue


@pytest.mark.parametrize(
    ("title", "discovered_at", "problem"),
    [
        ("", T0, "title"),
        ("Breach\nBcc: everyone@example.com", T0, "one line"),
        ("Breach", T0.replace(tzinfo=None), "time zone"),
        ("Breach", datetime.now(UTC) + timedelta(days=1), "future"),
    ],
)
async def test_open_refuses_bad_input(
    owner_db: Database, org: Organization, title: str, discovered_at: datetime, problem: str
) -> None:
    with pytest.raises(BadUserInput, match=problem):
        async with owner_db.session(all_workspaces="test") as session:
            await incidents.open_incident(
                session, title=title, discovered_at=discovered_at, org_ids=[org.id]
            )


async def test_open_refuses_an_unknown_workspace(owner_db: Database, org: Organization) -> None:
    with pytest.raises(NotFound):
        async with owner_db.session(all_workspaces="test") as session:
            await incidents.open_incident(
                session, title="Breach", discovered_at=T0, org_ids=[org.id, uuid.uuid4()]
            )
    async with owner_db.session(all_workspaces="test") as session:
        assert (await session.exec(select(Incident))).all() == []


async def test_a_workspace_sees_only_the_incidents_that_affect_it(
    db: Database, owner_db: Database, org: Organization, other_org: Organization
) -> None:
    mine = await open_for(owner_db, org)
    await open_for(owner_db, other_org)
    async with db.session(org.id) as session:
        rows = await incidents.workspace_incidents(session)
    assert [incident.id for incident, _ in rows] == [mine.id]
    async with db.session(other_org.id) as session:
        assert await incidents.workspace_incident(session, mine.id) is None


@postgres_only
async def test_rls_shows_the_app_role_only_incidents_of_its_workspace(
    db: Database, owner_db: Database, org: Organization, other_org: Organization
) -> None:
    """Around the ORM (raw SQL as the app's role): the database itself hides incidents
    of other workspaces and refuses every write to the register."""
    mine = await open_for(owner_db, org)
    await open_for(owner_db, other_org)
    async with db.engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM incidents"))).scalar_one() == 0
    async with db.session(org.id) as session:
        connection = await session.connection()
        seen = (await connection.execute(text("SELECT id FROM incidents"))).scalars().all()
        assert seen == [mine.id]
        updated = await (await session.connection()).execute(
            text("UPDATE incident_workspaces SET notified_at = now()")
        )
        assert updated.rowcount == 0
    with pytest.raises(DBAPIError, match="row-level security"):
        async with db.session(org.id) as session:
            await (await session.connection()).execute(
                text(
                    "INSERT INTO incidents (id, title, status, discovered_at, notify_by, "
                    "post_mortem_due_at, created_at) "
                    "VALUES (:id, 'x', 'OPEN', now(), now(), now(), now())"
                ),
                {"id": uuid.uuid4()},
            )
