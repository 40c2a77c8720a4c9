"""The incident register: open, notify, list, close (CONTRACT §8).

An incident is discovered at T and affects some workspaces. Their Admins must be told
by T + 72 hours (`notify_by`) and the written post-mortem is due by T + 14 days
(`post_mortem_due_at`). The operator runs it with `weflux incident` on the schema
owner's connection; Admins read their workspace's incidents through GraphQL.

`notify` is idempotent: every Admin told is recorded (`incident_notices`) in its own
transaction right after their message is accepted, so a re-run (after a mail failure,
a crash or a new Admin) tells only those not yet told.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.db import Database
from weflux.errors import BadUserInput, NotFound
from weflux.mail.mailer import Mailer, compose
from weflux.mail.smtp import SmtpError
from weflux.models import (
    Incident,
    IncidentNotice,
    IncidentStatus,
    IncidentWorkspace,
    Membership,
    Organization,
    Role,
    User,
    utcnow,
)
from weflux.services.audit import Action, Severity, record

log = logging.getLogger(__name__)

NOTICE_WINDOW = timedelta(hours=72)
POST_MORTEM_WINDOW = timedelta(days=14)
MAX_TITLE_LENGTH = 200
MAX_URL_LENGTH = 2000
# A discovery "in the future" beyond clock skew is a typo.
CLOCK_SKEW = timedelta(minutes=5)
TARGET_TYPE = "incident"


@dataclass
class IncidentState:
    """An incident with the workspaces it affects, and what is overdue at `now`."""

    incident: Incident
    workspaces: list[IncidentWorkspace]
    now: datetime

    @property
    def unnotified(self) -> list[IncidentWorkspace]:
        return [ws for ws in self.workspaces if ws.notified_at is None]

    @property
    def notice_overdue(self) -> bool:
        return bool(self.unnotified) and self.now > self.incident.notify_by

    @property
    def post_mortem_overdue(self) -> bool:
        incident = self.incident
        return incident.status is IncidentStatus.OPEN and self.now > incident.post_mortem_due_at

    @property
    def overdue(self) -> bool:
        return self.notice_overdue or self.post_mortem_overdue


@dataclass
class NoticeReport:
    """What one `notify` run did."""

    sent: list[str] = field(default_factory=list)  # addresses told now
    already: int = 0  # Admins told by an earlier run
    failed: list[str] = field(default_factory=list)  # addresses the server refused
    without_admin: list[uuid.UUID] = field(default_factory=list)  # workspaces nobody to tell


def deadlines(discovered_at: datetime) -> tuple[datetime, datetime]:
    """(notify_by, post_mortem_due_at) of an incident discovered at `discovered_at`."""
    return discovered_at + NOTICE_WINDOW, discovered_at + POST_MORTEM_WINDOW


async def open_incident(
    session: AsyncSession,
    *,
    title: str,
    discovered_at: datetime,
    org_ids: Sequence[uuid.UUID],
    now: datetime | None = None,
) -> Incident:
    """Register an incident affecting `org_ids`; audited in each of them."""
    now = now or utcnow()
    title = title.strip()
    if not title or len(title) > MAX_TITLE_LENGTH:
        raise BadUserInput(f"The title must be 1 to {MAX_TITLE_LENGTH} characters.")
    if not title.isprintable():  # it becomes an email subject: no line breaks
        raise BadUserInput("The title must be one line of printable characters.")
    if discovered_at.tzinfo is None:
        raise BadUserInput("The discovery time needs a time zone (e.g. 2026-12-05T10:00:00Z).")
    if discovered_at > now + CLOCK_SKEW:
        raise BadUserInput("The discovery time is in the future.")
    unique = list(dict.fromkeys(org_ids))
    if not unique:
        raise BadUserInput("Name at least one affected workspace.")
    for org_id in unique:
        if await session.get(Organization, org_id) is None:
            raise NotFound(f"No workspace {org_id}.")
    notify_by, post_mortem_due_at = deadlines(discovered_at)
    incident = Incident(
        title=title,
        discovered_at=discovered_at,
        notify_by=notify_by,
        post_mortem_due_at=post_mortem_due_at,
    )
    session.add(incident)
    await session.flush()
    for org_id in unique:
        session.add(IncidentWorkspace(org_id=org_id, incident_id=incident.id))
        await record(
            session,
            Action.INCIDENT_OPENED,
            org_id=org_id,
            target_type=TARGET_TYPE,
            target_id=incident.id,
            severity=Severity.HIGH,
            details={"title": title, "discoveredAt": discovered_at.isoformat()},
        )
    await session.flush()
    return incident


async def _incident(session: AsyncSession, incident_id: uuid.UUID) -> Incident:
    incident = await session.get(Incident, incident_id)
    if incident is None:
        raise NotFound("No such incident.")
    return incident


async def _workspaces(
    session: AsyncSession, incident_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[IncidentWorkspace]]:
    rows = (
        await session.exec(
            select(IncidentWorkspace)
            .where(col(IncidentWorkspace.incident_id).in_(incident_ids))
            .order_by(col(IncidentWorkspace.created_at), col(IncidentWorkspace.id))
        )
    ).all()
    found: dict[uuid.UUID, list[IncidentWorkspace]] = {}
    for row in rows:
        found.setdefault(row.incident_id, []).append(row)
    return found


async def list_incidents(
    session: AsyncSession, *, now: datetime | None = None
) -> list[IncidentState]:
    """Every incident, newest discovery first, with its workspaces (operator: all of them)."""
    incidents = (
        await session.exec(
            select(Incident).order_by(col(Incident.discovered_at).desc(), col(Incident.id))
        )
    ).all()
    workspaces = await _workspaces(session, [incident.id for incident in incidents])
    moment = now or utcnow()
    return [IncidentState(i, workspaces.get(i.id, []), moment) for i in incidents]


async def workspace_incidents(session: AsyncSession) -> list[tuple[Incident, IncidentWorkspace]]:
    """The incidents that affect the session's workspace, newest discovery first."""
    rows = (
        await session.exec(
            select(Incident, IncidentWorkspace)
            .join(IncidentWorkspace, col(IncidentWorkspace.incident_id) == col(Incident.id))
            .order_by(col(Incident.discovered_at).desc(), col(Incident.id))
        )
    ).all()
    return [(incident, workspace) for incident, workspace in rows]


async def workspace_incident(
    session: AsyncSession, incident_id: uuid.UUID
) -> tuple[Incident, IncidentWorkspace] | None:
    """One incident, if it affects the session's workspace."""
    row = (
        await session.exec(
            select(Incident, IncidentWorkspace)
            .join(IncidentWorkspace, col(IncidentWorkspace.incident_id) == col(Incident.id))
            .where(col(Incident.id) == incident_id)
        )
    ).first()
    return (row[0], row[1]) if row is not None else None


def notice_subject(incident: Incident) -> str:
    return f"Security incident notice: {incident.title}"


def notice_body(incident: Incident, workspace_name: str, message: str) -> str:
    return (
        f'This notice concerns your Weflux workspace "{workspace_name}", '
        f"of which you are an Admin.\n\n{message.rstrip()}\n"
    )


async def _admins(session: AsyncSession) -> Sequence[tuple[Membership, User]]:
    return (
        await session.exec(
            select(Membership, User)
            .join(User, col(User.id) == col(Membership.user_id))
            .where(Membership.role == Role.ADMIN)
            .order_by(col(Membership.created_at), col(Membership.id))
        )
    ).all()


async def notify(
    db: Database,
    mailer: Mailer,
    incident_id: uuid.UUID,
    message: str,
    *,
    now: datetime | None = None,
) -> NoticeReport:
    """Email every Admin of each affected workspace not yet told; record who, when."""
    if not message.strip():
        raise BadUserInput("The message is empty.")
    report = NoticeReport()
    async with db.session(all_workspaces="incident notices") as session:
        incident = await _incident(session, incident_id)
        workspaces = (await _workspaces(session, [incident.id])).get(incident.id, [])
    for affected in workspaces:
        await _notify_workspace(db, mailer, incident, affected.org_id, message, report, now)
    return report


async def _notify_workspace(
    db: Database,
    mailer: Mailer,
    incident: Incident,
    org_id: uuid.UUID,
    message: str,
    report: NoticeReport,
    now: datetime | None,
) -> None:
    async with db.session(org_id) as session:
        organization = await session.get(Organization, org_id)
        admins = await _admins(session)
        told = set(
            (
                await session.exec(
                    select(IncidentNotice.user_id).where(IncidentNotice.incident_id == incident.id)
                )
            ).all()
        )
    name = organization.name if organization is not None else str(org_id)
    if not admins:
        report.without_admin.append(org_id)
        return
    sent_here: list[str] = []
    failed_here = 0
    for membership, user in admins:
        if membership.user_id in told:
            report.already += 1
            continue
        mail = compose(
            mailer,
            to=user.email,
            subject=notice_subject(incident),
            body=notice_body(incident, name, message),
        )
        try:
            await mailer.send(mail)
        except SmtpError as error:
            log.warning("incident notice not delivered", extra={"reason": error.message})
            report.failed.append(user.email)
            failed_here += 1
            continue
        async with db.session(org_id) as session:
            session.add(
                IncidentNotice(
                    incident_id=incident.id,
                    user_id=user.id,
                    email=user.email,
                    notified_at=now or utcnow(),
                )
            )
        sent_here.append(user.email)
        report.sent.append(user.email)
    async with db.session(org_id) as session:
        if sent_here:
            await record(
                session,
                Action.INCIDENT_NOTIFIED,
                target_type=TARGET_TYPE,
                target_id=incident.id,
                severity=Severity.HIGH,
                details={"recipients": len(sent_here)},
            )
        if failed_here == 0:
            affected = (
                await session.exec(
                    select(IncidentWorkspace).where(IncidentWorkspace.incident_id == incident.id)
                )
            ).one()
            if affected.notified_at is None:
                affected.notified_at = now or utcnow()
                session.add(affected)


async def close_incident(
    session: AsyncSession,
    incident_id: uuid.UUID,
    *,
    post_mortem_url: str,
    now: datetime | None = None,
) -> Incident:
    """Close with the published post-mortem; audited in each affected workspace."""
    url = post_mortem_url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc or len(url) > MAX_URL_LENGTH:
        raise BadUserInput("The post-mortem URL must be an absolute http(s) URL.")
    incident = await _incident(session, incident_id)
    if incident.status is IncidentStatus.CLOSED:
        raise BadUserInput("The incident is closed already.")
    incident.status = IncidentStatus.CLOSED
    incident.post_mortem_url = url
    incident.closed_at = now or utcnow()
    session.add(incident)
    for affected in (await _workspaces(session, [incident.id])).get(incident.id, []):
        await record(
            session,
            Action.INCIDENT_CLOSED,
            org_id=affected.org_id,
            target_type=TARGET_TYPE,
            target_id=incident.id,
            details={"postMortemUrl": url},
        )
    await session.flush()
    return incident
