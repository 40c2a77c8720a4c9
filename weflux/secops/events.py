"""Security events: their kinds and severities, recording them, and queuing their alerts.

An event is written in the unit of work of what caused it (or one of its own), with
its alerts in the outbox (`security_alerts`) beside it, so an alert exists exactly when
its event does; the worker sends them (`weflux.secops.alerts`). An event never holds a
password, a token or message text: a summary written here, ids, an IP and a user agent.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth.scoping import current_workspace
from weflux.errors import NotFound
from weflux.ids import encode_global_id
from weflux.models import (
    AlertChannel,
    PlatformSecurityEvent,
    SecurityAlert,
    SecurityEvent,
    SecuritySeverity,
    utcnow,
)
from weflux.pagination import Page, decode_cursor, encode_cursor, page_of, page_size
from weflux.realtime.broker import Broker
from weflux.realtime.events import EventName, publish_after_commit
from weflux.services.audit import RequestMeta

PLATFORM = "platform"
USER_AGENT_MAX = 512


class SecurityKind(StrEnum):
    """What a security event is about (its `kind`, as stored and shown)."""

    BRUTE_FORCE = "auth.brute_force"
    CREDENTIAL_STUFFING = "auth.credential_stuffing"
    REFRESH_REUSE = "auth.refresh_reuse"
    NEW_DEVICE = "auth.new_device"
    MFA_DISABLED = "auth.mfa_disabled"
    ADMIN_GRANTED = "member.admin_granted"
    EXPORT_REQUESTED = "data.export_requested"
    ERASURE_REQUESTED = "data.erasure_requested"
    WORKSPACE_DELETION_REQUESTED = "data.workspace_deletion_requested"
    CREDENTIALS_CHANGED = "channel.credentials_changed"
    WEBHOOK_SIGNATURE_FAILURES = "webhook.signature_failures"


SEVERITY: dict[SecurityKind, SecuritySeverity] = {
    SecurityKind.BRUTE_FORCE: SecuritySeverity.HIGH,
    SecurityKind.CREDENTIAL_STUFFING: SecuritySeverity.CRITICAL,
    SecurityKind.REFRESH_REUSE: SecuritySeverity.HIGH,
    SecurityKind.NEW_DEVICE: SecuritySeverity.LOW,
    SecurityKind.MFA_DISABLED: SecuritySeverity.HIGH,
    SecurityKind.ADMIN_GRANTED: SecuritySeverity.HIGH,
    SecurityKind.EXPORT_REQUESTED: SecuritySeverity.MEDIUM,
    SecurityKind.ERASURE_REQUESTED: SecuritySeverity.HIGH,
    SecurityKind.WORKSPACE_DELETION_REQUESTED: SecuritySeverity.CRITICAL,
    SecurityKind.CREDENTIALS_CHANGED: SecuritySeverity.HIGH,
    SecurityKind.WEBHOOK_SIGNATURE_FAILURES: SecuritySeverity.MEDIUM,
}


@dataclass(frozen=True)
class Actor:
    """Whom an event is about, as far as it is known."""

    user_id: uuid.UUID | None = None
    membership_id: uuid.UUID | None = None


def _user_agent(meta: RequestMeta | None) -> str | None:
    if meta is None or meta.user_agent is None:
        return None
    return meta.user_agent[:USER_AGENT_MAX]


def webhook_payload(
    event_id: uuid.UUID,
    kind: SecurityKind,
    summary: str,
    *,
    org_id: uuid.UUID | None,
    ip: str | None,
    created_at: str,
) -> dict[str, Any]:
    """The JSON the on-call's webhook receives (its bytes are signed when sent)."""
    return {
        "type": "security_event",
        "id": str(event_id),
        "kind": kind.value,
        "severity": SEVERITY[kind].value,
        "summary": summary,
        "workspaceId": encode_global_id("Organization", org_id) if org_id else None,
        "ipAddress": ip,
        "createdAt": created_at,
    }


def _alert(
    event_id: uuid.UUID,
    org_id: uuid.UUID | None,
    kind: SecurityKind,
    channel: AlertChannel,
    payload: dict[str, Any],
    recipient_user_id: uuid.UUID | None = None,
) -> SecurityAlert:
    audience = str(org_id) if org_id else PLATFORM
    return SecurityAlert(
        org_id=org_id,
        event_id=event_id,
        channel=channel,
        audience=audience,
        dedupe_key=f"{audience}:{kind.value}",
        recipient_user_id=recipient_user_id,
        payload=payload,
    )


async def record_security_event(
    session: AsyncSession,
    broker: Broker,
    kind: SecurityKind,
    summary: str,
    *,
    actor: Actor | None = None,
    meta: RequestMeta | None = None,
    details: dict[str, Any] | None = None,
) -> SecurityEvent:
    """Add an event to the session's workspace, its alerts, and its live notice.

    HIGH and CRITICAL events are mailed to the workspace's Admins and posted to the
    on-call's webhook; a new device is mailed to its user. `details` holds counts and
    ids only, never a secret or message text.
    """
    org_id = current_workspace(session)
    if org_id is None:
        raise ValueError("a security event needs the session's workspace")
    actor = actor or Actor()
    severity = SEVERITY[kind]
    event = SecurityEvent(
        org_id=org_id,
        kind=kind,
        severity=severity,
        summary=summary,
        actor_user_id=actor.user_id,
        actor_membership_id=actor.membership_id,
        ip_address=meta.ip if meta else None,
        user_agent=_user_agent(meta),
        details=details or {},
        created_at=utcnow(),
    )
    session.add(event)
    created = event.created_at.isoformat()
    if severity.alerted:
        mail: dict[str, Any] = {"kind": kind.value, "severity": severity.value}
        mail |= {"summary": summary, "ipAddress": event.ip_address, "createdAt": created}
        session.add(_alert(event.id, org_id, kind, AlertChannel.ADMIN_MAIL, mail))
        body = webhook_payload(
            event.id, kind, summary, org_id=org_id, ip=event.ip_address, created_at=created
        )
        session.add(_alert(event.id, org_id, kind, AlertChannel.WEBHOOK, body))
    if kind == SecurityKind.NEW_DEVICE and actor.user_id is not None:
        notice: dict[str, Any] = {"ipAddress": event.ip_address, "userAgent": event.user_agent}
        notice["createdAt"] = created
        session.add(_alert(event.id, org_id, kind, AlertChannel.USER_MAIL, notice, actor.user_id))
    publish_after_commit(session, broker, org_id, EventName.SECURITY_EVENT_ADDED, id=event.id)
    return event


async def record_platform_event(
    session: AsyncSession,
    kind: SecurityKind,
    summary: str,
    *,
    meta: RequestMeta | None = None,
    details: dict[str, Any] | None = None,
) -> PlatformSecurityEvent:
    """Add an event of no one workspace, for the operator (and its webhook alert)."""
    event = PlatformSecurityEvent(
        kind=kind,
        severity=SEVERITY[kind],
        summary=summary,
        ip_address=meta.ip if meta else None,
        user_agent=_user_agent(meta),
        details=details or {},
        created_at=utcnow(),
    )
    session.add(event)
    if SEVERITY[kind].alerted:
        body = webhook_payload(
            event.id,
            kind,
            summary,
            org_id=None,
            ip=event.ip_address,
            created_at=event.created_at.isoformat(),
        )
        session.add(_alert(event.id, None, kind, AlertChannel.WEBHOOK, body))
    return event


async def list_events(
    session: AsyncSession,
    *,
    first: int | None = None,
    after: str | None = None,
    severity: SecuritySeverity | None = None,
) -> Page[SecurityEvent]:
    """The workspace's security events, newest first, keyset on the time-ordered id."""
    size = page_size(first)
    query = select(SecurityEvent).order_by(col(SecurityEvent.id).desc()).limit(size + 1)
    if after:
        query = query.where(col(SecurityEvent.id) < decode_cursor(after))
    if severity is not None:
        query = query.where(SecurityEvent.severity == severity.value)
    rows = (await session.exec(query)).all()
    return page_of(
        rows, size, lambda row: encode_cursor(row.id), has_previous_page=after is not None
    )


async def acknowledge(
    session: AsyncSession, event_id: uuid.UUID, membership_id: uuid.UUID
) -> SecurityEvent:
    """Mark an event seen by an Admin (the first acknowledgement stays)."""
    event = await session.get(SecurityEvent, event_id)
    if event is None:
        raise NotFound("Security event not found")
    if event.acknowledged_at is None:
        event.acknowledged_at = utcnow()
        event.acknowledged_by_membership_id = membership_id
        session.add(event)
        await session.flush()
    return event
