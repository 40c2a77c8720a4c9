"""The audit trail: record and read security-relevant actions."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth.principal import Principal
from weflux.models import AuditEvent
from weflux.pagination import Page, decode_cursor, encode_cursor, page_of, page_size


class Action(StrEnum):
    """What an audit event records (its `action`, as stored and shown)."""

    WORKSPACE_CREATED = "workspace.created"
    LOGIN_SUCCEEDED = "auth.login.succeeded"
    LOGIN_FAILED = "auth.login.failed"
    LOGGED_OUT = "auth.logout"
    REFRESH_REUSED = "auth.refresh.reused"
    SESSION_REVOKED = "session.revoked"
    PASSWORD_CHANGED = "user.password_changed"  # noqa: S105
    MEMBER_INVITED = "member.invited"
    INVITATION_REVOKED = "invitation.revoked"
    INVITATION_RESENT = "invitation.resent"
    SESSION_SWITCHED = "auth.switched"
    MEMBER_JOINED = "member.joined"
    ROLE_CHANGED = "member.role_changed"
    MEMBER_REMOVED = "member.removed"
    WHATSAPP_ACCOUNT_CONNECTED = "whatsapp_account.connected"
    WHATSAPP_ACCOUNT_CREDENTIALS_UPDATED = "whatsapp_account.credentials_updated"
    WHATSAPP_ACCOUNT_DISCONNECTED = "whatsapp_account.disconnected"
    SMTP_SETTINGS_UPDATED = "smtp_settings.updated"
    KEYS_ROTATED = "keys.rotated"
    INCIDENT_OPENED = "incident.opened"
    INCIDENT_NOTIFIED = "incident.notified"
    INCIDENT_CLOSED = "incident.closed"
    TWO_FACTOR_ENABLED = "user.two_factor_enabled"
    TWO_FACTOR_DISABLED = "user.two_factor_disabled"
    TWO_FACTOR_RESET = "member.two_factor_reset"  # by an Admin, or by the operator
    RECOVERY_CODES_REGENERATED = "user.recovery_codes_regenerated"
    RECOVERY_CODE_USED = "auth.recovery_code_used"
    MFA_FAILED = "auth.mfa.failed"
    REAUTHENTICATED = "auth.reauthenticated"
    ORGANIZATION_SECURITY_UPDATED = "organization.security_updated"
    SECURITY_EVENT_ACKNOWLEDGED = "security_event.acknowledged"
    CONTACT_ERASURE_REQUESTED = "contact.erasure_requested"
    CONTACT_ERASED = "contact.erased"
    CONTACT_EXPORT_REQUESTED = "contact.export_requested"
    WORKSPACE_EXPORT_REQUESTED = "workspace.export_requested"
    EXPORT_DOWNLOADED = "export.downloaded"
    WORKSPACE_DELETION_REQUESTED = "workspace.deletion_requested"
    WORKSPACE_DELETION_CANCELLED = "workspace.deletion_cancelled"
    RETENTION_POLICY_UPDATED = "workspace.retention_policy_updated"
    DATA_REQUEST_OVERDUE = "data_request.overdue"
    LABEL_CREATED = "label.created"
    LABEL_UPDATED = "label.updated"
    LABEL_DELETED = "label.deleted"
    CANNED_REPLY_CREATED = "canned_reply.created"
    CANNED_REPLY_UPDATED = "canned_reply.updated"
    CANNED_REPLY_DELETED = "canned_reply.deleted"


class Severity(StrEnum):
    """How much an audit event matters to whoever reviews the trail."""

    INFO = "info"
    WARNING = "warning"
    HIGH = "high"


@dataclass(frozen=True)
class RequestMeta:
    """Where a request came from, as far as the edge can tell."""

    ip: str | None = None
    user_agent: str | None = None


async def record(
    session: AsyncSession,
    action: Action,
    *,
    actor: Principal | None = None,
    actor_user_id: uuid.UUID | None = None,
    actor_membership_id: uuid.UUID | None = None,
    org_id: uuid.UUID | None = None,
    target_type: str | None = None,
    target_id: uuid.UUID | str | None = None,
    meta: RequestMeta | None = None,
    severity: Severity = Severity.INFO,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add an audit event (never pass a secret in `details`)."""
    event = AuditEvent(
        action=action,
        severity=severity,
        actor_user_id=actor.user_id if actor else actor_user_id,
        actor_membership_id=actor.membership_id if actor else actor_membership_id,
        target_type=target_type,
        target_id=str(target_id) if target_id is not None else None,
        ip_address=meta.ip if meta else None,
        details=details or {},
    )
    if org_id is not None:
        event.org_id = org_id
    session.add(event)
    return event


def _cursor(event: AuditEvent) -> str:
    return encode_cursor(event.id)


async def list_events(
    session: AsyncSession, *, first: int | None = None, after: str | None = None
) -> Page[AuditEvent]:
    """The workspace's audit trail, newest first, keyset on the time-ordered id."""
    size = page_size(first)
    query = select(AuditEvent).order_by(col(AuditEvent.id).desc()).limit(size + 1)
    if after:
        query = query.where(col(AuditEvent.id) < decode_cursor(after))
    rows = (await session.exec(query)).all()
    return page_of(rows, size, _cursor, has_previous_page=after is not None)
