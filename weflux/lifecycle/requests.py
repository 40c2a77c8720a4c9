"""Data requests as an Admin files them: erasure, workspace deletion, retention, the list.

Each runs in the caller's unit of work, is audited, and leaves a `DataRequest` the
worker drives to COMPLETED (weflux.lifecycle.worker). What must hold at once (a contact
hidden, a workspace's sessions and credentials gone) happens here, in the same commit.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth.authenticator import Authenticator
from weflux.auth.permissions import Permission
from weflux.auth.principal import Principal
from weflux.auth.scoping import feed_values, lock_feed
from weflux.errors import BadUserInput, Conflict, NotFound
from weflux.lifecycle.erasure import tombstone_contact
from weflux.models import (
    OPEN_STATUSES,
    AccountStatus,
    AuthSession,
    Contact,
    DataRequest,
    DataRequestKind,
    DataRequestStatus,
    Message,
    MessageStatus,
    Organization,
    SmtpSettings,
    WhatsAppAccount,
    utcnow,
)
from weflux.pagination import Page, decode_cursor, encode_cursor, page_of, page_size
from weflux.realtime.broker import Broker
from weflux.realtime.events import EventName, publish_after_commit
from weflux.secops.events import Actor, SecurityKind, record_security_event
from weflux.services import sessions as session_service
from weflux.services.audit import Action, RequestMeta, Severity, record

# CONTRACT §7: every erasure and deletion completes within 30 days of its request.
COMPLETION_LIMIT = timedelta(days=30)
MAX_MESSAGE_RETENTION_DAYS = 36500
MAX_WEBHOOK_PAYLOAD_RETENTION_DAYS = 30
DELETION_REVOKE_REASON = "workspace deletion"
DELETION_ERROR = "workspace deletion"


class Unchanged(enum.Enum):
    """A setting left as it is."""

    UNCHANGED = "unchanged"


UNCHANGED = Unchanged.UNCHANGED

PERMISSION = Permission.READ_AUDIT  # ADMIN: audit, security events, data deletion and export


async def _security_event(
    session: AsyncSession,
    broker: Broker | None,
    kind: SecurityKind,
    summary: str,
    principal: Principal,
    meta: RequestMeta,
    request: DataRequest,
) -> None:
    """The security event of a data request (`broker` None: a maintenance caller, none)."""
    if broker is None:
        return
    await record_security_event(
        session,
        broker,
        kind,
        summary,
        actor=Actor(principal.user_id, principal.membership_id),
        meta=meta,
        details={"data_request_id": str(request.id)},
    )


def _new_request(
    kind: DataRequestKind,
    principal: Principal,
    *,
    now: datetime,
    run_after: datetime | None = None,
    subject_id: uuid.UUID | None = None,
) -> DataRequest:
    return DataRequest(
        kind=kind,
        subject_id=subject_id,
        requested_by_membership_id=principal.membership_id,
        requested_at=now,
        run_after=run_after or now,
        due_at=now + COMPLETION_LIMIT,
    )


async def erase_contact(
    session: AsyncSession,
    principal: Principal,
    meta: RequestMeta,
    *,
    contact_id: uuid.UUID,
    broker: Broker | None = None,
) -> DataRequest:
    """Erase a contact: hidden everywhere from this commit, deleted by the worker.

    Idempotent: erasing a contact already erased answers its erasure request.
    """
    principal.require(PERMISSION)
    earlier = await _erasure_of(session, contact_id)
    if earlier is not None:
        return earlier
    # Locked: a second erasure at once waits here, then finds the contact erased (hidden
    # from this read) and answers the first's request (PostgreSQL; SQLite writes one
    # transaction at a time). The feed's lock first, as every writer of several feed rows
    # takes it (webhooks: then the contact's row), so the row lock cannot deadlock.
    await lock_feed(session)
    contact = await session.get(Contact, contact_id, with_for_update=True, populate_existing=True)
    if contact is None:
        erased_meanwhile = await _erasure_of(session, contact_id)
        if erased_meanwhile is not None:
            return erased_meanwhile
        raise NotFound("Contact not found")
    now = utcnow()
    await tombstone_contact(session, contact, now=now, broker=broker)
    if broker is not None:  # its conversations leave every count
        publish_after_commit(session, broker, principal.org_id, EventName.INBOX_COUNTS_UPDATED)
    request = _new_request(
        DataRequestKind.CONTACT_ERASURE, principal, now=now, subject_id=contact.id
    )
    session.add(request)
    await session.flush()
    await record(
        session,
        Action.CONTACT_ERASURE_REQUESTED,
        actor=principal,
        target_type="Contact",
        target_id=contact.id,
        meta=meta,
        severity=Severity.WARNING,
        details={"dataRequestId": str(request.id)},
    )
    await _security_event(
        session,
        broker,
        SecurityKind.ERASURE_REQUESTED,
        "A contact's erasure was requested",
        principal,
        meta,
        request,
    )
    return request


async def _erasure_of(session: AsyncSession, contact_id: uuid.UUID) -> DataRequest | None:
    return (
        await session.exec(
            select(DataRequest).where(
                DataRequest.kind == DataRequestKind.CONTACT_ERASURE,
                DataRequest.subject_id == contact_id,
            )
        )
    ).first()


async def export_contact_data(
    session: AsyncSession,
    principal: Principal,
    meta: RequestMeta,
    *,
    contact_id: uuid.UUID,
    broker: Broker | None = None,
) -> DataRequest:
    """Ask the worker for a file of everything about a contact (a subject access request)."""
    principal.require(PERMISSION)
    contact = await session.get(Contact, contact_id)
    if contact is None:
        raise NotFound("Contact not found")
    return await _export(
        session,
        principal,
        meta,
        DataRequestKind.CONTACT_EXPORT,
        subject_id=contact.id,
        broker=broker,
    )


async def request_workspace_export(
    session: AsyncSession, principal: Principal, meta: RequestMeta, *, broker: Broker | None = None
) -> DataRequest:
    """Ask the worker for a file of the whole workspace."""
    principal.require(PERMISSION)
    return await _export(session, principal, meta, DataRequestKind.WORKSPACE_EXPORT, broker=broker)


async def _export(
    session: AsyncSession,
    principal: Principal,
    meta: RequestMeta,
    kind: DataRequestKind,
    *,
    subject_id: uuid.UUID | None = None,
    broker: Broker | None = None,
) -> DataRequest:
    request = _new_request(kind, principal, now=utcnow(), subject_id=subject_id)
    session.add(request)
    await session.flush()
    action = (
        Action.CONTACT_EXPORT_REQUESTED
        if kind == DataRequestKind.CONTACT_EXPORT
        else Action.WORKSPACE_EXPORT_REQUESTED
    )
    await record(
        session,
        action,
        actor=principal,
        target_type="Contact" if subject_id else "Organization",
        target_id=subject_id or principal.org_id,
        meta=meta,
        severity=Severity.WARNING,
        details={"dataRequestId": str(request.id)},
    )
    await _security_event(
        session,
        broker,
        SecurityKind.EXPORT_REQUESTED,
        "A contact's data export was requested"
        if subject_id
        else "An export of the whole workspace was requested",
        principal,
        meta,
        request,
    )
    return request


async def request_workspace_deletion(
    session: AsyncSession,
    authenticator: Authenticator,
    principal: Principal,
    meta: RequestMeta,
    *,
    confirm_name: str,
    grace: timedelta,
    broker: Broker | None = None,
) -> DataRequest:
    """Schedule the workspace's deletion after `grace`; at once end every session,
    stop sending and destroy every credential."""
    principal.require(PERMISSION)
    # First: mutations running in the workspace commit before this, or not at all.
    await session_service.take_deletion_lock(session, principal.org_id)
    # Then the feed's lock, before any row: the replies failed below take feed positions,
    # and a webhook holds the feed from its start, then a reply's row (a status).
    await lock_feed(session)
    # Locked: a second request at once waits here, then sees this one's outcome.
    organization = await session_service.locked_workspace(session, principal.org_id, update=True)
    if organization.deletion_scheduled_at is not None:
        raise Conflict("The workspace's deletion is already scheduled")
    if confirm_name.strip() != organization.name.strip():
        raise BadUserInput(
            "`confirmOrganizationName` must be the workspace's name",
            details=[{"field": "confirmOrganizationName", "message": "not the workspace's name"}],
        )
    now = utcnow()
    organization.deletion_scheduled_at = now + grace
    session.add(organization)
    # Written first (and locked since it was read): a session being opened or a credential
    # being stored holds the row for share (sessions.locked_workspace), so this waits for
    # them, and what follows sees them.
    await session.flush()
    request = _new_request(
        DataRequestKind.WORKSPACE_DELETION, principal, now=now, run_after=now + grace
    )
    session.add(request)
    await _destroy_credentials(session, now)
    await session.exec(
        update(Message)
        .where(col(Message.status).in_([MessageStatus.QUEUED, MessageStatus.SENDING]))
        .values(
            status=MessageStatus.FAILED,
            next_attempt_at=None,
            error_title=DELETION_ERROR,
            **feed_values((await session.connection()).dialect.name, principal.org_id),
        )
    )
    live = (
        await session.exec(select(AuthSession.id).where(col(AuthSession.revoked_at).is_(None)))
    ).all()
    await session_service.revoke(session, authenticator, list(live), reason=DELETION_REVOKE_REASON)
    await session.flush()
    await record(
        session,
        Action.WORKSPACE_DELETION_REQUESTED,
        actor=principal,
        target_type="Organization",
        target_id=organization.id,
        meta=meta,
        severity=Severity.HIGH,
        details={"dataRequestId": str(request.id), "runAfter": request.run_after.isoformat()},
    )
    await _security_event(
        session,
        broker,
        SecurityKind.WORKSPACE_DELETION_REQUESTED,
        "The workspace's deletion was requested",
        principal,
        meta,
        request,
    )
    return request


async def _destroy_credentials(session: AsyncSession, now: datetime) -> None:
    """Every number disconnected with its secrets gone; the SMTP password gone."""
    await session.exec(
        update(WhatsAppAccount)
        .where(col(WhatsAppAccount.disconnected_at).is_(None))
        .values(disconnected_at=now, status=AccountStatus.DISCONNECTED)
    )
    await session.exec(
        update(WhatsAppAccount).values(
            access_token_enc=None, app_secret_enc=None, webhook_verify_token_enc=None
        )
    )
    await session.exec(update(SmtpSettings).values(password_enc=None))


async def cancel_workspace_deletion(
    session: AsyncSession, principal: Principal, meta: RequestMeta
) -> DataRequest:
    """Cancel a scheduled deletion during its grace period (credentials stay destroyed)."""
    principal.require(PERMISSION)
    organization = await session_service.locked_workspace(session, principal.org_id, update=True)
    request = (
        await session.exec(
            select(DataRequest)
            .where(
                DataRequest.kind == DataRequestKind.WORKSPACE_DELETION,
                col(DataRequest.status) == DataRequestStatus.PENDING,
            )
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).first()
    if request is None or organization.deletion_scheduled_at is None:
        raise NotFound("No workspace deletion is scheduled")
    now = utcnow()
    organization.deletion_scheduled_at = None
    request.status = DataRequestStatus.CANCELLED
    request.completed_at = now
    session.add_all([organization, request])
    await session.flush()
    await record(
        session,
        Action.WORKSPACE_DELETION_CANCELLED,
        actor=principal,
        target_type="Organization",
        target_id=organization.id,
        meta=meta,
        severity=Severity.HIGH,
        details={"dataRequestId": str(request.id)},
    )
    return request


async def update_retention_policy(
    session: AsyncSession,
    principal: Principal,
    meta: RequestMeta,
    *,
    message_retention_days: int | Unchanged | None,
    webhook_payload_retention_days: int | None,
) -> Organization:
    """Set how long messages (None: forever) and raw webhook bodies are kept
    (`UNCHANGED`, or None for the bodies: as they are)."""
    principal.require(PERMISSION)
    if isinstance(message_retention_days, int) and not (
        1 <= message_retention_days <= MAX_MESSAGE_RETENTION_DAYS
    ):
        raise _range("messageRetentionDays", 1, MAX_MESSAGE_RETENTION_DAYS)
    if webhook_payload_retention_days is not None and not (
        1 <= webhook_payload_retention_days <= MAX_WEBHOOK_PAYLOAD_RETENTION_DAYS
    ):
        raise _range("webhookPayloadRetentionDays", 1, MAX_WEBHOOK_PAYLOAD_RETENTION_DAYS)
    organization = await session.get(Organization, principal.org_id)
    if organization is None:
        raise NotFound("Workspace not found")
    before = (organization.message_retention_days, organization.webhook_payload_retention_days)
    if not isinstance(message_retention_days, Unchanged):
        organization.message_retention_days = message_retention_days
    if webhook_payload_retention_days is not None:
        organization.webhook_payload_retention_days = webhook_payload_retention_days
    organization.retention_ran_at = None  # the next sweep applies the new policy
    session.add(organization)
    await session.flush()
    await record(
        session,
        Action.RETENTION_POLICY_UPDATED,
        actor=principal,
        target_type="Organization",
        target_id=organization.id,
        meta=meta,
        details={
            "before": list(before),
            "after": [
                organization.message_retention_days,
                organization.webhook_payload_retention_days,
            ],
        },
    )
    return organization


def _range(field: str, low: int, high: int) -> BadUserInput:
    return BadUserInput(
        f"`{field}` must be {low} to {high}",
        details=[{"field": field, "message": f"{low} to {high}"}],
    )


async def list_requests(
    session: AsyncSession,
    principal: Principal,
    *,
    first: int | None = None,
    after: str | None = None,
) -> Page[DataRequest]:
    """The workspace's data requests, newest first."""
    principal.require(PERMISSION)
    size = page_size(first)
    query = select(DataRequest).order_by(col(DataRequest.id).desc()).limit(size + 1)
    if after:
        query = query.where(col(DataRequest.id) < decode_cursor(after))
    rows = (await session.exec(query)).all()
    return page_of(
        rows, size, lambda row: encode_cursor(row.id), has_previous_page=after is not None
    )


async def open_requests(session: AsyncSession) -> list[DataRequest]:
    """The workspace's requests not yet finished."""
    query = select(DataRequest).where(col(DataRequest.status).in_(OPEN_STATUSES))
    return list((await session.exec(query)).all())
