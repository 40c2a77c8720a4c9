"""The lifecycle worker: drives data requests to COMPLETED and runs the daily retention.

Every step reads what is left from the database, so a worker killed at any point
finishes the work on its next sweep; every deletion goes in batches of
`WEFLUX_LIFECYCLE_BATCH_SIZE` rows per transaction.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import case, delete, text, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth import crossings
from weflux.auth.scoping import raise_feed_floor, see_erased
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.lifecycle import erasure, exports, ledger
from weflux.lifecycle.requests import MAX_WEBHOOK_PAYLOAD_RETENTION_DAYS
from weflux.mail.mailer import OutboxMailer
from weflux.media import intents
from weflux.media.store import MediaStore
from weflux.models import (
    OPEN_STATUSES,
    AuditEvent,
    AuthSession,
    ConversationRemoval,
    DataRequest,
    DataRequestKind,
    DataRequestStatus,
    Invitation,
    Message,
    MessageReaction,
    Organization,
    PendingSignup,
    SecurityEvent,
    utcnow,
)
from weflux.models.audit import NETWORK_KEPT as AUDIT_NETWORK_KEPT
from weflux.models.security import NETWORK_KEPT as SECURITY_NETWORK_KEPT
from weflux.services.audit import Action, Severity, record

log = logging.getLogger(__name__)

REQUESTS_PER_SWEEP = 20
RETENTION_EVERY = timedelta(days=1)
WORKSPACES_PER_SWEEP = 50
# An invitation never accepted admits nobody once it expired, and kept only the invited
# person's email and name: deleted this long after (an Admin may resend it until then).
EXPIRED_INVITATION_RETENTION = timedelta(days=30)
# A sign-up never confirmed admits nobody once expired (24 hours); it kept an email, a
# name, an IP address and a password hash. Deleted this long after its expiry: the grace
# covers a confirmation under way at that instant and any skew between the app's clock
# and the database's (whose `now()` the row-level security policy of `pending_signups`
# compares with).
EXPIRED_SIGNUP_GRACE = timedelta(hours=1)
# An account no workspace holds is deleted at once by the step that leaves it so; the
# daily sweep deletes the ones left over, once this old (none is made without its
# membership, in one transaction: a margin only).
ORPHAN_ACCOUNT_MIN_AGE = timedelta(hours=1)
ERROR_LIMIT = 500
EXPORT_ATTEMPTS = 5
# `last_error` while an attempt runs, left behind when its process died (as a webhook's).
INTERRUPTED = "Interrupted"
EXPORT_KINDS = (DataRequestKind.CONTACT_EXPORT, DataRequestKind.WORKSPACE_EXPORT)


@dataclass(frozen=True)
class Lifecycle:
    """What the lifecycle jobs need."""

    db: Database
    keyring: KeyRing
    batch: int = erasure.DEFAULT_BATCH
    export_dir: Path | None = None  # None: exports wait (PENDING)
    security_event_retention: timedelta = timedelta(days=90)
    media_upload_retention: timedelta = timedelta(days=7)  # uploads never sent
    conversation_removal_retention: timedelta = timedelta(days=30)  # the feed's removals
    session_retention: timedelta = timedelta(days=30)  # after a login session expired
    # The IP addresses and user agents of the audit trail and of security events.
    audit_network_retention: timedelta = timedelta(days=90)
    media: MediaStore | None = None  # stored media files deleted with their rows
    # Development and test without WEFLUX_SMTP_URL: the `.eml` files of the mail outbox.
    outbox: OutboxMailer | None = None
    dev_outbox_retention: timedelta = timedelta(days=7)


async def run_due_requests(lifecycle: Lifecycle, *, now: datetime | None = None) -> int:
    """Work on every data request whose time has come; how many were looked at."""
    now = now or utcnow()
    await destroy_expired_exports(lifecycle, now=now)
    async with lifecycle.db.session() as session:
        due = await crossings.due_data_requests(session, now=now, batch=REQUESTS_PER_SWEEP)
    for owned in due:
        try:
            if await _run(lifecycle, owned.org_id, owned.id, now):
                await _not_interrupted(lifecycle.db, owned.org_id, owned.id)
        except Exception as error:
            log.exception(
                "data request failed; retried next sweep",
                extra={"data_request_id": str(owned.id)},
            )
            await _note_failure(lifecycle, owned.org_id, owned.id, error)
    return len(due)


async def _run(
    lifecycle: Lifecycle, org_id: uuid.UUID, request_id: uuid.UUID, now: datetime
) -> bool:
    """Make an attempt at a data request; whether one was made."""
    db = lifecycle.db
    async with db.session(org_id) as session:
        # Locked: a cancellation at once (it locks the row too) is either seen here or
        # finds the request claimed, never overwritten by the claim.
        request = await session.get(
            DataRequest, request_id, with_for_update=True, populate_existing=True
        )
        if request is None or request.status not in OPEN_STATUSES:
            return False
        if request.due_at <= now and request.overdue_reported_at is None:
            # An alarm: the 30-day promise is broken for this request.
            log.error(
                "data request overdue",
                extra={"data_request_id": str(request.id), "kind": request.kind},
            )
            request.overdue_reported_at = now
            await record(
                session,
                Action.DATA_REQUEST_OVERDUE,
                target_type="DataRequest",
                target_id=request.id,
                severity=Severity.HIGH,
                details={"kind": request.kind, "dueAt": request.due_at.isoformat()},
            )
        if request.kind in EXPORT_KINDS and lifecycle.export_dir is None:
            return False  # exports wait (PENDING) for a worker that may write them
        if not _claim(request, now):
            return False
        kind, subject_id = request.kind, request.subject_id

    async def progress(value: float) -> None:
        async with db.session(org_id) as unit:
            row = await unit.get(DataRequest, request_id)
            if row is not None:
                row.progress = max(row.progress or 0.0, round(value, 3))
                unit.add(row)

    if kind == DataRequestKind.CONTACT_ERASURE:
        assert subject_id is not None

        async def erased(unit: AsyncSession, wa_id: str | None, user_id: str | None) -> None:
            see_erased(unit)
            if wa_id or user_id:
                ledger.record_contact_erasure(
                    unit,
                    lifecycle.keyring,
                    org_id=org_id,
                    contact_id=subject_id,
                    wa_id=wa_id,
                    user_id=user_id,
                    data_request_id=request_id,
                )
                await record(
                    unit,
                    Action.CONTACT_ERASED,
                    target_type="Contact",
                    target_id=subject_id,
                    details={"dataRequestId": str(request_id)},
                )
            await _complete(unit, request_id)

        await erasure.purge_contact(
            db,
            org_id,
            subject_id,
            batch=lifecycle.batch,
            progress=progress,
            finish=erased,
            media=lifecycle.media,
        )
    elif kind == DataRequestKind.WORKSPACE_DELETION:

        async def deleted(unit: AsyncSession) -> None:
            ledger.record_workspace_deletion(unit, org_id=org_id, data_request_id=request_id)

        async with db.session(org_id) as session:
            organization = await session.get(Organization, org_id)
            scheduled = organization is not None and organization.deletion_scheduled_at is not None
        if scheduled:
            log.warning("deleting a workspace", extra={"org_id": str(org_id)})
            # Their keys go with the request rows; the files must not outlive them.
            await _destroy_exports_of(lifecycle, org_id)
            await erasure.purge_workspace(
                db,
                org_id,
                batch=lifecycle.batch,
                progress=progress,
                finish=deleted,
                media=lifecycle.media,
            )
    elif lifecycle.export_dir is not None:
        await exports.build_export(
            db, lifecycle.keyring, lifecycle.export_dir, org_id, request_id, progress=progress
        )
    return True


def _claim(request: DataRequest, now: datetime) -> bool:
    """Count an attempt before it starts (committed with the caller's session); whether to
    make it. `last_error` is `INTERRUPTED` until the attempt records an outcome, so a
    process that dies in it (out of memory, killed) leaves that behind: an export
    interrupted `EXPORT_ATTEMPTS` times fails instead of killing the worker at every
    sweep; an erasure or deletion, which must finish, raises an alarm once and goes on."""
    interrupted = request.last_error == INTERRUPTED
    fields = {"data_request_id": str(request.id), "kind": request.kind}
    if interrupted:
        log.warning(
            "data request attempt interrupted", extra={**fields, "attempts": request.attempts}
        )
    if request.kind in EXPORT_KINDS and request.attempts >= EXPORT_ATTEMPTS:
        # Only an attempt that never recorded an outcome gets here (`_note_failure`
        # settles one that raised): its process died every time.
        log.error(
            "data request failed: its process died in every attempt",
            extra={**fields, "attempts": request.attempts},
        )
        request.status = DataRequestStatus.FAILED
        request.completed_at = now
        return False
    if interrupted and request.attempts == EXPORT_ATTEMPTS:
        log.error(
            "data request keeps interrupting its worker; retried at every sweep",
            extra={**fields, "attempts": request.attempts},
        )
    request.status = DataRequestStatus.RUNNING
    request.attempts += 1
    request.last_error = INTERRUPTED
    request.progress = request.progress or 0.0
    return True


async def _not_interrupted(db: Database, org_id: uuid.UUID, request_id: uuid.UUID) -> None:
    """The attempt returned: it was not interrupted (an unfinished one runs again)."""
    async with db.session(org_id) as session:
        request = await session.get(DataRequest, request_id)
        if request is not None and request.last_error == INTERRUPTED:
            request.last_error = None


async def sweep_abandoned_files(lifecycle: Lifecycle, *, now: datetime | None = None) -> int:
    """Delete media files written whose row never came (`weflux.media.intents`); how many.

    Cheap when there are none: one question on an index of the intents' creation time."""
    return await intents.sweep(lifecycle.db, lifecycle.media, now=now)


async def destroy_expired_exports(lifecycle: Lifecycle, *, now: datetime | None = None) -> int:
    """Delete export files (and their keys) past their `expiresAt`; how many."""
    if lifecycle.export_dir is None:
        return 0
    now = now or utcnow()
    async with lifecycle.db.session() as session:
        due = await crossings.expired_exports(session, now=now, batch=REQUESTS_PER_SWEEP)
    for owned in due:
        await exports.destroy(lifecycle.db, lifecycle.export_dir, owned.org_id, owned.id)
    return len(due)


async def _destroy_exports_of(lifecycle: Lifecycle, org_id: uuid.UUID) -> None:
    """Delete every export file of a workspace (one being built is deleted when its build
    ends and finds its request gone)."""
    if lifecycle.export_dir is None:
        return
    async with lifecycle.db.session(org_id) as session:
        # Every export, built or not: a build killed before recording its file left one.
        built = (
            await session.exec(
                select(DataRequest.id).where(col(DataRequest.kind).in_(EXPORT_KINDS))
            )
        ).all()
    for request_id in built:
        await exports.destroy(lifecycle.db, lifecycle.export_dir, org_id, request_id)


async def _complete(session: AsyncSession, request_id: uuid.UUID) -> None:
    request = await session.get(DataRequest, request_id)
    if request is not None:
        request.status = DataRequestStatus.COMPLETED
        request.progress = 1.0
        request.completed_at = utcnow()
        request.last_error = None
        session.add(request)


async def _note_failure(
    lifecycle: Lifecycle, org_id: uuid.UUID, request_id: uuid.UUID, error: Exception
) -> None:
    failed = False
    try:
        async with lifecycle.db.session(org_id) as session:
            request = await session.get(DataRequest, request_id)
            if request is not None:
                # The type only: a message may quote data.
                request.last_error = type(error).__name__[:ERROR_LIMIT]
                if request.kind in EXPORT_KINDS and request.attempts >= EXPORT_ATTEMPTS:
                    # An export can be asked for again; an erasure or deletion must finish.
                    request.status = DataRequestStatus.FAILED
                    request.completed_at = utcnow()
                    failed = True
                session.add(request)
    except Exception:
        log.exception("could not record a data request's failure")
    if failed and lifecycle.export_dir is not None:
        # Given up: nothing an earlier attempt wrote stays (it is never built again).
        exports.discard_files(lifecycle.export_dir, request_id)


async def run_retention(lifecycle: Lifecycle, *, now: datetime | None = None) -> int:
    """Delete what retention policies say is due; the rows deleted.

    Each workspace at most once a day: cheap (one indexed question) when nothing is due.
    """
    now = now or utcnow()
    db = lifecycle.db
    deleted = 0
    async with db.session() as session:
        due = await crossings.due_retention(
            session, ran_before=now - RETENTION_EVERY, batch=WORKSPACES_PER_SWEEP
        )
    for org_id in due:
        async with db.session(org_id) as session:
            organization = await session.get(Organization, org_id)
            days = organization.message_retention_days if organization else None
        if days is not None:
            cutoff = now - timedelta(days=days)
            old = select(col(Message.id)).where(col(Message.created_at) < cutoff)
            # A file a newer message also carries stays with it, detached from the old.
            deleted += await erasure.purge_media_of(
                db,
                lifecycle.media,
                org_id,
                old,
                lifecycle.batch,
                survives=_created_since(cutoff),
            )
            deleted += await erasure.delete_in_batches(
                db, org_id, Message, col(Message.created_at) < cutoff, lifecycle.batch
            )
            # A reaction is a message too (a contact's, or a member's), and points at one.
            deleted += await erasure.delete_in_batches(
                db, org_id, MessageReaction, old_reactions(cutoff), lifecycle.batch
            )
        deleted += await erasure.purge_media(
            db,
            lifecycle.media,
            org_id,
            erasure.unsent_files(now - lifecycle.media_upload_retention),
            lifecycle.batch,
        )
        deleted += await expire_removals(lifecycle, org_id, now=now)
        # An expired session authenticates nothing; it only kept an IP address and agent.
        expired = expired_sessions(now - lifecycle.session_retention)
        deleted += await erasure.delete_in_batches(
            db, org_id, AuthSession, expired, lifecycle.batch
        )
        for model in (AuditEvent, SecurityEvent):
            await erasure.blank_in_batches(
                db,
                org_id,
                model,
                network_kept(model, before=now - lifecycle.audit_network_retention),
                NETWORK_COLUMNS[model],
                lifecycle.batch,
            )
        deleted += await erasure.delete_in_batches(
            db,
            org_id,
            Invitation,
            col(Invitation.accepted_at).is_(None)
            & (col(Invitation.expires_at) < now - EXPIRED_INVITATION_RETENTION),
            lifecycle.batch,
        )
        async with db.session(org_id) as session:
            organization = await session.get(Organization, org_id)
            if organization is not None:
                organization.retention_ran_at = now
                session.add(organization)
    if due:
        deleted += await expire_webhook_bodies(lifecycle, now=now)
        deleted += await expire_security_records(lifecycle, now=now)
        deleted += await expire_orphan_users(lifecycle, now=now)
    # Every sweep: one range of `ix_pending_signups_expires_at`, and no workspace needed.
    deleted += await expire_pending_signups(lifecycle, now=now)
    if lifecycle.outbox is not None:  # every sweep too: one listing of a directory
        deleted += await lifecycle.outbox.expire(now - lifecycle.dev_outbox_retention)
    return deleted


# The columns `WEFLUX_AUDIT_NETWORK_RETENTION` blanks; the events themselves stay.
NETWORK_COLUMNS: dict[type[AuditEvent] | type[SecurityEvent], tuple[str, ...]] = {
    AuditEvent: ("ip_address",),
    SecurityEvent: ("ip_address", "user_agent"),
}


def network_kept(model: type[AuditEvent] | type[SecurityEvent], *, before: datetime) -> Any:
    """Events created before `before` that still hold an IP address (or user agent): the
    condition of their partial index (`ix_audit_events_network`, `ix_security_events_network`),
    spelled as it is, so both engines use it."""
    kept = AUDIT_NETWORK_KEPT if model is AuditEvent else SECURITY_NETWORK_KEPT
    return (col(model.created_at) < before) & text(f"({kept})")


def expired_sessions(before: datetime) -> Any:
    """Login sessions expired before `before` (now less `WEFLUX_SESSION_RETENTION`)."""
    return col(AuthSession.expires_at) < before


def old_reactions(cutoff: datetime) -> Any:
    """Reactions set before a message retention's `cutoff`."""
    return col(MessageReaction.created_at) < cutoff


async def expire_pending_signups(lifecycle: Lifecycle, *, now: datetime) -> int:
    """Delete sign-ups expired longer ago than `EXPIRED_SIGNUP_GRACE`, in batches; how many.

    `pending_signups` is no workspace's: the app's role may delete an expired one (its
    row-level security policy), so no cross-workspace function is needed."""
    key = col(PendingSignup.id)
    total = 0
    while True:
        async with lifecycle.db.session() as session:
            doomed = (
                select(key)
                .where(col(PendingSignup.expires_at) < now - EXPIRED_SIGNUP_GRACE)
                .limit(lifecycle.batch)
            )
            result = await session.exec(delete(PendingSignup).where(key.in_(doomed)))
            gone = int(result.rowcount)
        total += gone
        if gone < lifecycle.batch:
            return total


async def expire_orphan_users(lifecycle: Lifecycle, *, now: datetime) -> int:
    """Delete the accounts no workspace holds (no membership, no invitation still open)
    that a step left behind, in batches; with them their sessions (`ON DELETE CASCADE`),
    password hash, second factor and recovery codes (columns of the row). How many."""
    total = 0
    while True:
        async with lifecycle.db.session() as session:
            gone = await crossings.expire_orphan_users(
                session,
                now=now,
                created_before=now - ORPHAN_ACCOUNT_MIN_AGE,
                batch=lifecycle.batch,
            )
        total += gone
        if gone < lifecycle.batch:
            if total:
                log.info("accounts without a workspace deleted", extra={"count": total})
            return total


def _created_since(cutoff: datetime) -> Callable[[Any], Any]:
    """A message retention keeps: created at or after `cutoff`."""
    return lambda message: message.created_at >= cutoff


async def expire_removals(lifecycle: Lifecycle, org_id: uuid.UUID, *, now: datetime) -> int:
    """Delete a workspace's conversation removals older than
    `WEFLUX_CONVERSATION_REMOVAL_RETENTION`, in batches; how many went.

    Each batch raises `removals_pruned_through` to its highest position in the same
    transaction, so `conversationRemoved(after:)` refuses a cursor below it instead of
    silently skipping what was deleted.
    """
    before = now - lifecycle.conversation_removal_retention
    position = col(ConversationRemoval.update_seq)
    total = 0
    while True:
        async with lifecycle.db.session(org_id) as session:
            rows = (
                await session.exec(
                    select(ConversationRemoval.id, position)
                    .where(col(ConversationRemoval.created_at) < before)
                    .order_by(position)
                    .limit(lifecycle.batch)
                )
            ).all()
            if rows:
                highest = max(row[1] for row in rows)
                pruned = col(Organization.removals_pruned_through)
                await raise_feed_floor(await session.connection(), org_id)
                await session.exec(
                    update(Organization)
                    .where(col(Organization.id) == org_id)
                    .values(removals_pruned_through=case((pruned < highest, highest), else_=pruned))
                )
                ids = [row[0] for row in rows]
                await session.exec(
                    delete(ConversationRemoval).where(col(ConversationRemoval.id).in_(ids))
                )
        total += len(rows)
        if len(rows) < lifecycle.batch:
            return total


async def expire_security_records(lifecycle: Lifecycle, *, now: datetime) -> int:
    """Delete platform security events and finished (sent or suppressed) alerts older
    than `WEFLUX_SECURITY_EVENT_RETENTION`, in batches; how many went."""
    before = now - lifecycle.security_event_retention
    total = 0
    for expire in (crossings.expire_platform_security_events, crossings.expire_security_alerts):
        while True:
            async with lifecycle.db.session() as session:
                gone = await expire(session, created_before=before, batch=lifecycle.batch)
            total += gone
            if gone < lifecycle.batch:
                break
    return total


async def expire_webhook_bodies(lifecycle: Lifecycle, *, now: datetime) -> int:
    """Delete raw webhook bodies processed (or, parked, received) longer ago than the
    shortest retention of any workspace (a body may concern several, and is only known to
    once parsed), and those still to process received longer ago than the longest
    retention (30 days): the worker gives up on an event within hours
    (`WEFLUX_WEBHOOK_MAX_ATTEMPTS`), so only one it could not reach (stopped) is that old."""
    async with lifecycle.db.session() as session:
        days = await crossings.webhook_payload_retention_days(session)
    expired_before = now - timedelta(days=days)
    retrying_before = now - timedelta(days=MAX_WEBHOOK_PAYLOAD_RETENTION_DAYS)
    total = 0
    while True:
        async with lifecycle.db.session() as session:
            gone = await crossings.expire_webhook_bodies(
                session,
                expired_before=expired_before,
                retrying_before=retrying_before,
                batch=lifecycle.batch,
            )
        total += gone
        if gone < lifecycle.batch:
            return total
