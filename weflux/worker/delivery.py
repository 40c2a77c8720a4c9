"""Deliver queued outbound messages to the WhatsApp Cloud API.

The `messages` table is the outbox: a send request only inserts a QUEUED row
(`weflux.services.outbound`). This job, run by every worker process every half second,

1. **claims** due rows across workspaces in one short transaction: QUEUED ones whose
   `next_attempt_at` has come, and SENDING ones whose lease ran out (their worker died
   or lost the database mid-send). On PostgreSQL `FOR UPDATE SKIP LOCKED` lets several
   workers claim disjoint rows at once; SQLite serializes transactions anyway. Each
   claimed row becomes SENDING with a lease (`next_attempt_at = now + lease`) and
   `attempts + 1`, and the claim commits. A row whose lease ran out (a suspect: its
   worker may have died of it) is claimed alone, after the batch, so a poison dies alone;
2. **sends** each message outside any transaction (no row lock or connection is held
   while Meta answers), within the number's throughput (a token bucket per number,
   `weflux.throttle.sends`: 80 messages/s, 1,000/s for a HIGH throughput number; across
   processes too when Redis is configured), messages of one conversation one after
   another in queue order;
3. **records** the outcome in a second short transaction, per workspace: SENT with the
   wamid (never moving a status backwards: a status webhook may have been faster);
   QUEUED again with exponential backoff and full jitter for rate limits and transient
   failures, FAILED after `WEFLUX_DELIVERY_MAX_ATTEMPTS`; FAILED with Meta's code and
   title for permanent refusals and a closed service window; for an invalid token (190)
   FAILED *and* the number flagged TOKEN_INVALID, after which its messages fail at once
   without calling Meta until an admin updates the credentials.

Delivery is **at least once**. A worker that dies (or loses the database) after Meta
accepted a message but before the wamid is stored leaves the row SENDING; once the lease
expires another run sends it again, and the customer may get it twice. The alternative,
marking a message sent before calling Meta, would lose messages instead; for a shared
inbox a rare duplicate is the lesser harm. To keep the window small, storing an outcome
is retried for a few seconds before giving up. Every send carries
`biz_opaque_callback_data` = our message id, which Meta echoes in status webhooks, so a
status still finds its message (and fills in the wamid) when the send response was lost.
A call that timed out is retried the same way, since Meta may or may not have sent it.

An erasure withdraws its contact's messages (weflux.lifecycle.erasure): a send reads its
message again just before each call to Meta (`_check_due`), so from the erasure's
commit nothing more is sent for that contact, and the send is dropped, not retried.

Nothing here logs an access token or a message's text: ids, error codes and Meta's
fbtrace ids only.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, BinaryIO

from sqlalchemy import exc as sa_exc
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth import crossings
from weflux.auth.crossings import Owned, due_outbound
from weflux.auth.scoping import lock_feed, use_workspace
from weflux.backoff import exponential_backoff
from weflux.config import Settings
from weflux.crypto.fields import open_secret
from weflux.crypto.keyring import DecryptionError
from weflux.crypto.secret import Secret
from weflux.db import Database
from weflux.media.files import data_key
from weflux.media.sealed import MediaIntegrityError, open_range, sealed_offset
from weflux.media.store import MediaStore, is_outage
from weflux.models import (
    AccountStatus,
    Contact,
    Conversation,
    MediaFile,
    MediaStatus,
    Message,
    MessageStatus,
    MessageType,
    WhatsAppAccount,
    moves_forward,
    utcnow,
)
from weflux.realtime.events import EventName, publish_after_commit
from weflux.services.channels import SandboxRefused, Services, apply_health_error
from weflux.services.reactions import undo_failed_reaction
from weflux.throttle.sends import LocalThrottle, Throttle
from weflux.whatsapp.client import CloudApiClient, SentMessage
from weflux.whatsapp.errors import ErrorKind, MetaApiError
from weflux.whatsapp.payloads import NoRecipient, build_payload
from weflux.worker.suspects import run_with_suspects

log = logging.getLogger(__name__)

STANDARD_THROUGHPUT = 80  # messages a second per number (Meta's default)
HIGH_THROUGHPUT = 1000  # a number whose throughput level is HIGH
MIN_RETRY_DELAY = 1.0  # seconds: full jitter may draw ~0; never retry in a hot loop
# Pauses before re-trying to record an outcome when the database is unreachable; the
# sum must stay well inside the lease, or another worker may send the message again.
STORE_RETRY_DELAYS: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0, 4.0)
_DB_ERRORS = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, OSError)
_MAX_TITLE = 500
# How many messages of one conversation a run sends back to back (then others get a turn).
FOLLOW_UPS_PER_RUN = 20
# A media message whose file was deleted before it went (its sender erased, or it expired).
FILE_DELETED = "Not sent: the file was deleted before it could be sent; upload it again"
STORE_UNAVAILABLE = "Not sent yet: the media store is unavailable"


# -- throughput ---------------------------------------------------------------------------


_DEFAULT_THROTTLE = LocalThrottle()


def throughput_of(account: WhatsAppAccount) -> int:
    level = (account.throughput_level or "").upper()
    return HIGH_THROUGHPUT if level == "HIGH" else STANDARD_THROUGHPUT


# -- claiming -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimedMessage:
    """A message this worker holds the lease of, as claimed."""

    id: uuid.UUID
    org_id: uuid.UUID
    conversation_id: uuid.UUID
    attempts: int
    lease_until: datetime


def backoff_delay(attempts: int, settings: Settings) -> float:
    """Seconds before the next attempt at a message, after `attempts` attempts."""
    return exponential_backoff(
        attempts,
        base=settings.delivery_backoff_base,
        cap=settings.delivery_backoff_cap.total_seconds(),
        floor=MIN_RETRY_DELAY,
    )


def _owned(message: Message, claimed: ClaimedMessage) -> bool:
    """Whether the row is still in the state this worker's claim left it in."""
    return message.status == MessageStatus.SENDING and message.attempts == claimed.attempts


def _publish_update(session: AsyncSession, services: Services, message: Message) -> None:
    if message.type == MessageType.REACTION:
        return  # an outbox row the inbox never lists; the reaction showed when it was set
    publish_after_commit(
        session,
        services.broker,
        message.org_id,
        EventName.MESSAGE_UPDATED,
        id=message.id,
        conversation_id=message.conversation_id,
    )


def _fail(message: Message, code: int | None, title: str, now: datetime) -> None:
    message.status = MessageStatus.FAILED
    message.error_code = code
    message.error_title = title[:_MAX_TITLE]
    message.next_attempt_at = None
    message.status_updated_at = now


async def claim_due_messages(
    db: Database,
    services: Services,
    settings: Settings,
    *,
    batch_size: int = 50,
    after: ClaimedMessage | None = None,
    suspect: bool = False,
) -> list[ClaimedMessage]:
    """Take the lease of up to `batch_size` due messages (committed before returning).

    Only the oldest pending (QUEUED or SENDING) outbound message of a conversation is
    claimable, so a conversation's messages go out one at a time and in order, whichever
    worker sends them: a later message waits while an earlier one is in flight or
    waiting to be retried (a rate limit for that customer would refuse it anyway).
    Across workspaces the due rows come from `crossings.due_outbound_messages` (ids,
    locked); `after` claims the next of that message's conversation, in its workspace.

    A message whose lease ran out is a **suspect**: the worker that held it died or lost
    the database, perhaps because of it. Suspects are never claimed with others, so a
    message that kills its worker (a poison) dies alone and cannot take the messages
    claimed beside it to their last attempt: without `suspect` the claim reads the due
    messages that are not suspects (those a webhook already settled are settled), with it
    the oldest suspect alone.
    """
    claimed, _ = await _claim(db, services, settings, batch_size, after, suspect=suspect)
    return claimed


async def _claim(
    db: Database,
    services: Services,
    settings: Settings,
    batch_size: int,
    after: ClaimedMessage | None,
    *,
    suspect: bool,
) -> tuple[list[ClaimedMessage], bool]:
    """`claim_due_messages`, and whether a suspect is due (for a suspect's claim: whether
    it read one, leased or ended here)."""
    now = utcnow()
    lease_until = now + settings.delivery_lease
    claimed: list[ClaimedMessage] = []
    # A suspect's claim reads one: the first suspect, alone.
    size = 1 if suspect else batch_size
    suspect_due = False
    async with db.session(after.org_id if after else None) as session:
        if after is None:
            work = await crossings.due_outbound_messages(
                session, now=now, batch=size, suspects=suspect
            )
            due, suspect_due = work.rows, work.suspect_due
        else:
            statement = due_outbound(now, suspects=suspect).where(
                Message.conversation_id == after.conversation_id
            )
            due = [Owned(*row) for row in (await session.exec(statement.limit(size))).all()]
        for org_id, ids in crossings.by_workspace(due).items():
            # One workspace at a time: its rows are read, leased and flushed in its scope.
            await use_workspace(session, org_id)
            rows = (await session.exec(select(Message).where(col(Message.id).in_(ids)))).all()
            order = {message_id: position for position, message_id in enumerate(ids)}
            for message in sorted(rows, key=lambda m: order[m.id]):
                lease = _lease(session, services, settings, message, now, lease_until)
                if lease is not None:
                    claimed.append(lease)
            await session.flush()
    return claimed, suspect_due


def _lease(
    session: AsyncSession,
    services: Services,
    settings: Settings,
    message: Message,
    now: datetime,
    lease_until: datetime,
) -> ClaimedMessage | None:
    """Lease one due message to this worker; None when it is settled here instead."""
    expired_lease = message.status == MessageStatus.SENDING
    if expired_lease and message.wa_message_id is not None:
        # A status webhook filled in the wamid of a send whose answer was lost.
        message.status = MessageStatus.SENT
        message.next_attempt_at = None
        message.status_updated_at = now
        _publish_update(session, services, message)
        return None
    if message.attempts >= settings.delivery_max_attempts:
        # Only a lease that keeps expiring gets here: the worker died each time.
        log.warning(
            "delivery abandoned",
            extra={"message_id": str(message.id), "attempts": message.attempts},
        )
        _fail(
            message,
            message.error_code,
            f"Delivery abandoned after {message.attempts} attempts; whether the "
            "last one reached WhatsApp is unknown",
            now,
        )
        _publish_update(session, services, message)
        return None
    if expired_lease:
        log.warning(
            "re-sending a message whose delivery lease expired",
            extra={"message_id": str(message.id), "attempts": message.attempts},
        )
    message.status = MessageStatus.SENDING
    message.attempts += 1
    message.next_attempt_at = lease_until
    _publish_update(session, services, message)
    return ClaimedMessage(
        id=message.id,
        org_id=message.org_id,
        conversation_id=message.conversation_id,
        attempts=message.attempts,
        lease_until=lease_until,
    )


# -- sending ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Send:
    """Everything one Cloud API call needs, read in a short transaction."""

    phone_number_id: str
    account_id: uuid.UUID
    credentials_updated_at: datetime
    rate: int
    token: Secret = field(repr=False)  # revealed only at the call
    payload: dict[str, Any]
    cloud: CloudApiClient = field(repr=False)  # Meta's, or the sandbox's (a sandbox channel)
    upload: _Upload | None = None  # a media message: its file, uploaded before the send


@dataclass(frozen=True)
class _Upload:
    """A media message's stored file, to upload to the Cloud API before sending."""

    store: MediaStore = field(repr=False)
    row: MediaFile = field(repr=False)
    key: bytes = field(repr=False)


@dataclass(frozen=True)
class _Outcome:
    kind: str  # "sent", "retry", "fail", "token_invalid", "stopped" (nothing to record)
    sent: SentMessage | None = None
    code: int | None = None
    title: str = ""
    account_id: uuid.UUID | None = None
    credentials_updated_at: datetime | None = None
    error: MetaApiError | None = None


async def _prepare(
    db: Database, settings: Settings, services: Services, claimed: ClaimedMessage
) -> _Send | _Outcome | None:
    """Read what the send needs; an outcome instead when it must not (or cannot) be sent."""
    async with db.session(claimed.org_id) as session:
        message = await session.get(Message, claimed.id)
        if message is None or not _owned(message, claimed):
            return None  # deleted, or moved on since the claim (a webhook, another worker)
        conversation = await session.get(Conversation, message.conversation_id)
        if conversation is None:
            return None
        contact = await session.get(Contact, conversation.contact_id)
        account = await session.get(WhatsAppAccount, conversation.account_id)
        if contact is None or account is None:
            return None
        if account.disconnected_at is not None or account.status == AccountStatus.DISCONNECTED:
            return _Outcome("fail", title="Not sent: the WhatsApp number was disconnected")
        if account.status == AccountStatus.TOKEN_INVALID:
            return _Outcome(
                "fail",
                code=190,
                title="Not sent: Meta rejected this number's access token; an admin must "
                "update the WhatsApp credentials",
            )
        if contact.opted_out:
            return _Outcome("fail", title="Not sent: the contact opted out (STOP)")
        try:
            token = open_secret(services.keyring, account, "access_token_enc")
        except DecryptionError:
            log.error(
                "stored access token cannot be decrypted",
                extra={"message_id": str(message.id), "account": str(account.id)},
            )
            # Perhaps this process lacks a key the others have (a rotation in progress).
            return _Outcome(
                "retry", title="The stored access token cannot be decrypted; update credentials"
            )
        if token is None:
            return _Outcome(
                "fail", title="Not sent: the WhatsApp number has no access token; update it"
            )
        try:
            cloud = services.cloud_for(account)
        except SandboxRefused as refused:
            log.error("sandbox channel in production", extra={"account": str(account.id)})
            return _Outcome("fail", title=f"Not sent: {refused.message}")
        except DecryptionError:
            return _Outcome(
                "retry", title="The stored app secret cannot be decrypted; update credentials"
            )
        upload: _Upload | None = None
        media: MediaFile | None = None
        if message.media_file_id is not None:
            media = await session.get(MediaFile, message.media_file_id)
            if media is None or media.status != MediaStatus.READY or services.media is None:
                return _Outcome("fail", title=FILE_DELETED)
            try:
                upload = _Upload(services.media, media, data_key(services.keyring, media))
            except (DecryptionError, MediaIntegrityError):
                return _Outcome("retry", title="The stored file's key cannot be decrypted")
        try:
            payload = build_payload(
                message,
                contact,
                media_id=UPLOAD_PENDING if upload else None,
                filename=media.filename if media else None,
            )
        except NoRecipient:
            return _Outcome(
                "fail", title="Not sent: the contact has no WhatsApp number or user id to send to"
            )
        except ValueError as error:
            return _Outcome("fail", title=f"Not sent: {error}")
        return _Send(
            phone_number_id=account.phone_number_id,
            account_id=account.id,
            credentials_updated_at=account.credentials_updated_at,
            rate=throughput_of(account),
            token=token,
            payload=payload,
            cloud=cloud,
            upload=upload,
        )


UPLOAD_PENDING = "upload-pending"  # replaced by the uploaded file's id just before the send


def _decrypted_copy(upload: _Upload) -> BinaryIO:
    """The file's plaintext in an anonymous temporary file (deleted when closed)."""
    row = upload.row
    assert row.storage_key is not None
    assert row.size is not None
    copy = tempfile.TemporaryFile()  # noqa: SIM115 (closed by the caller)
    try:
        if row.size:
            source = upload.store.open(row.storage_key, sealed_offset(0))
            for chunk in open_range(source, upload.key, row.id, row.size, 0, row.size - 1):
                copy.write(chunk)
        copy.seek(0)
    except BaseException:
        copy.close()
        raise
    return copy


async def _upload_file(send: _Send) -> dict[str, Any]:
    """Upload a media message's file; the payload that refers to it."""
    assert send.upload is not None
    row = send.upload.row
    copy = await asyncio.to_thread(_decrypted_copy, send.upload)
    try:
        media_id = await send.cloud.upload_media(
            send.phone_number_id,
            send.token.reveal(),
            copy,
            mime_type=row.mime_type,
            filename=row.filename or f"{row.kind}-{str(row.id)[:8]}",
        )
    finally:
        copy.close()
    kind = send.payload["type"]
    return {**send.payload, kind: {**send.payload[kind], "id": media_id}}


_STOPPED = _Outcome("stopped")  # the message was withdrawn: nothing sent, nothing to record


class _Withdrawn(Exception):
    """The message stopped being this worker's to send while it waited (an erasure)."""


async def _check_due(db: Database, claimed: ClaimedMessage) -> None:
    """Raise _Withdrawn unless the message is still this worker's to send.

    From an erasure's commit its contact's messages are hidden (weflux.auth.scoping) and
    their pending sends FAILED, so a send checked here after that commit stops: one short
    read just before each call to Meta (the upload, the send).
    """
    async with db.session(claimed.org_id) as session:
        message = await session.get(Message, claimed.id)
        if message is None or not _owned(message, claimed):
            raise _Withdrawn


async def _unreadable(
    db: Database, claimed: ClaimedMessage, upload: _Upload | None, error: Exception
) -> _Outcome:
    """The outcome when a media message's stored file could not be read: stopped when
    the message was withdrawn meanwhile (its contact erased), FAILED when the file was
    deleted (its sender erased, or it expired), retried otherwise."""
    try:
        await _check_due(db, claimed)
    except _Withdrawn:
        return _STOPPED
    if upload is not None:
        async with db.session(claimed.org_id) as session:
            media = await session.get(MediaFile, upload.row.id)
        if media is None or media.status != MediaStatus.READY:
            return _Outcome("fail", title=FILE_DELETED)
    log.warning(
        "stored media file unreadable",
        extra={"message_id": str(claimed.id), "error": type(error).__name__},
    )
    return _Outcome("retry", title="The stored file could not be read")


async def _call_meta(
    db: Database,
    services: Services,
    throttle: Throttle,
    claimed: ClaimedMessage,
    send: _Send,
) -> _Outcome:
    await throttle.acquire(send.phone_number_id, send.rate)
    try:
        await _check_due(db, claimed)  # the throttle may have made it wait
        payload = send.payload
        if send.upload is not None:
            payload = await _upload_file(send)
            await _check_due(db, claimed)
        sent = await send.cloud.send_message(send.phone_number_id, send.token.reveal(), payload)
    except _Withdrawn:
        return _STOPPED
    except MetaApiError as error:
        log.warning(
            "message send failed",
            extra={
                "message_id": str(claimed.id),
                "attempt": claimed.attempts,
                "code": error.code,
                "subcode": error.subcode,
                "kind": error.kind.value,
                "fbtrace_id": error.fbtrace_id,
            },
        )
        title = error.title or "Cloud API error"
        if error.kind == ErrorKind.TOKEN_INVALID:
            return _Outcome(
                "token_invalid",
                code=error.code,
                title=title,
                account_id=send.account_id,
                credentials_updated_at=send.credentials_updated_at,
                error=error,
            )
        if error.kind in (ErrorKind.RATE_LIMITED, ErrorKind.RETRYABLE):
            return _Outcome("retry", code=error.code, title=title)
        return _Outcome("fail", code=error.code, title=title)
    except ValueError:
        # The client refused the stored token before sending (not a header-safe value).
        return _Outcome("fail", title="Not sent: the stored access token is not usable")
    except (OSError, MediaIntegrityError) as error:
        return await _unreadable(db, claimed, send.upload, error)
    except Exception as error:
        # S3 refusing, timing out or answering 5xx while the file is read: retried with
        # the backoff like a Cloud API outage, not left to the lease as a fault of ours.
        if send.upload is None or not is_outage(error):
            raise
        log.warning(
            "message send waits for the media store",
            extra={
                "message_id": str(claimed.id),
                "attempt": claimed.attempts,
                "error": type(error).__name__,
            },
        )
        return _Outcome("retry", title=STORE_UNAVAILABLE)
    log.info(
        "message sent",
        extra={
            "message_id": str(claimed.id),
            "attempt": claimed.attempts,
            "wa_message_id": sent.wa_message_id,
        },
    )
    return _Outcome("sent", sent=sent)


async def _apply(
    session: AsyncSession,
    services: Services,
    settings: Settings,
    claimed: ClaimedMessage,
    outcome: _Outcome,
) -> None:
    await lock_feed(session)  # before the row lock, as every feed writer
    message = (
        await session.exec(select(Message).where(Message.id == claimed.id).with_for_update())
    ).first()
    if message is None:
        return
    now = utcnow()
    changed = False
    if outcome.kind == "sent":
        assert outcome.sent is not None
        wamid = outcome.sent.wa_message_id
        if message.wa_message_id is None:
            message.wa_message_id = wamid
            changed = True
        elif message.wa_message_id != wamid:
            log.warning(
                "message was sent more than once",
                extra={"message_id": str(message.id), "wa_message_id": wamid},
            )
        if moves_forward(message.status, MessageStatus.SENT):
            message.status = MessageStatus.SENT
            message.status_updated_at = now
            message.error_code = None
            message.error_title = None
            changed = True
        if message.status not in (MessageStatus.QUEUED, MessageStatus.SENDING):
            message.next_attempt_at = None
    elif not _owned(message, claimed):
        # A status webhook or another worker moved it on: their word stands.
        log.info(
            "delivery outcome ignored: the message moved on",
            extra={"message_id": str(message.id), "status": message.status.value},
        )
        return
    elif outcome.kind == "retry" and message.attempts < settings.delivery_max_attempts:
        delay = backoff_delay(message.attempts, settings)
        message.status = MessageStatus.QUEUED
        message.next_attempt_at = now + timedelta(seconds=delay)
        message.status_updated_at = now
        message.error_code = outcome.code
        message.error_title = outcome.title[:_MAX_TITLE] or None
        changed = True
    else:
        title = outcome.title
        if outcome.kind == "retry":
            title = f"{title} (gave up after {message.attempts} attempts)"
        _fail(message, outcome.code, title, now)
        changed = True
        if message.type == MessageType.REACTION:
            await undo_failed_reaction(session, services.broker, message)
        if outcome.kind == "token_invalid":
            await _flag_account(session, services, outcome)
    if changed:
        await session.flush()
        _publish_update(session, services, message)


async def _flag_account(session: AsyncSession, services: Services, outcome: _Outcome) -> None:
    """Mark the number TOKEN_INVALID, unless its credentials changed since the send."""
    assert outcome.account_id is not None
    assert outcome.error is not None
    account = await session.get(WhatsAppAccount, outcome.account_id)
    if (
        account is None
        or account.disconnected_at is not None
        or account.credentials_updated_at != outcome.credentials_updated_at
        or account.status == AccountStatus.TOKEN_INVALID
    ):
        return
    apply_health_error(account, outcome.error)
    log.warning("access token rejected; account flagged", extra={"account": str(account.id)})
    publish_after_commit(
        session, services.broker, account.org_id, EventName.WHATSAPP_ACCOUNT_UPDATED, id=account.id
    )


async def _record(
    db: Database,
    services: Services,
    settings: Settings,
    claimed: ClaimedMessage,
    outcome: _Outcome,
) -> None:
    """Store an outcome, retrying for a few seconds while the database is unreachable."""
    delays = (0.0, *STORE_RETRY_DELAYS)
    for index, delay in enumerate(delays):
        if delay:
            await asyncio.sleep(delay)
        try:
            async with db.session(claimed.org_id) as session:
                await _apply(session, services, settings, claimed, outcome)
            return
        except _DB_ERRORS as error:
            if index == len(delays) - 1:
                raise
            log.warning(
                "could not record a delivery outcome; retrying",
                extra={
                    "message_id": str(claimed.id),
                    "outcome": outcome.kind,
                    "error": type(error).__name__,
                },
            )


async def deliver_one(
    db: Database,
    services: Services,
    settings: Settings,
    claimed: ClaimedMessage,
    *,
    throttle: Throttle | None = None,
) -> str | None:
    """Send one claimed message and record the outcome; its kind, or None if skipped."""
    prepared = await _prepare(db, settings, services, claimed)
    if prepared is None:
        return None
    if isinstance(prepared, _Send):
        outcome = await _call_meta(db, services, throttle or _DEFAULT_THROTTLE, claimed, prepared)
        if outcome is _STOPPED:
            log.info(
                "send stopped: the message was withdrawn", extra={"message_id": str(claimed.id)}
            )
            return None
    else:
        outcome = prepared
        log.warning(
            "message not sent",
            extra={"message_id": str(claimed.id), "outcome": outcome.kind, "code": outcome.code},
        )
    await _record(db, services, settings, claimed, outcome)
    return outcome.kind


async def deliver_due_messages(
    db: Database,
    services: Services,
    settings: Settings,
    *,
    batch_size: int = 50,
    throttle: Throttle | None = None,
) -> int:
    """Claim up to `batch_size` due messages and deliver them; how many were claimed.

    Each claimed message ends SENT, QUEUED again for a later attempt, or FAILED; one
    whose outcome could not be stored (the database went away) stays SENDING until its
    lease expires and is then claimed again. Returns at once when nothing is due.

    The batch goes first; then up to `SUSPECTS_PER_RUN` suspects (messages whose lease
    ran out: `weflux.worker.suspects`), each claimed and sent alone once nothing else is
    in flight here, so a
    message that kills its worker takes no other message with it.
    """
    return await run_with_suspects(
        lambda suspect: _claim(db, services, settings, batch_size, None, suspect=suspect),
        lambda claimed: _deliver_claimed(db, services, settings, claimed, throttle),
    )


async def _deliver_claimed(
    db: Database,
    services: Services,
    settings: Settings,
    claimed: Sequence[ClaimedMessage],
    throttle: Throttle | None,
) -> int:
    """Deliver these claimed messages, each conversation's next ones after them; how many."""
    if not claimed:
        return 0
    count = len(claimed)
    gate = asyncio.Semaphore(settings.delivery_concurrency)

    async def conversation_in_order(first: ClaimedMessage) -> None:
        nonlocal count
        async with gate:
            item: ClaimedMessage | None = first
            for _ in range(FOLLOW_UPS_PER_RUN):
                assert item is not None
                try:
                    await deliver_one(db, services, settings, item, throttle=throttle)
                except Exception:
                    log.exception(
                        "delivery failed; the message is retried when its lease expires",
                        extra={"message_id": str(item.id)},
                    )
                    return
                # The conversation's next message, if it is due (and no one else has it).
                following = await claim_due_messages(
                    db, services, settings, batch_size=1, after=item
                )
                if not following:
                    return
                item = following[0]
                count += 1

    await asyncio.gather(*(conversation_in_order(item) for item in claimed))
    return count
