"""Download inbound media from the Cloud API into the encrypted media store.

Ingest writes a PENDING `media_files` row with each media message (in the webhook's
transaction): that row is the durable job. This worker job, like delivery,

1. **claims** due rows across workspaces in one short transaction (SKIP LOCKED on
   PostgreSQL): each becomes DOWNLOADING with a lease (`next_attempt_at = now + lease`)
   and `attempts + 1`; a worker killed mid-download leaves it DOWNLOADING, and once the
   lease runs out another run claims it again;
2. **downloads** each outside any transaction, several at once
   (`WEFLUX_MEDIA_DOWNLOAD_CONCURRENCY`), so one slow or failing file never holds up
   the others: `GET /{media-id}` for the short-lived URL, then the file with the
   number's token, read as it arrives, refused past Meta's limit for its kind, its
   sha256 checked against the webhook's (or, without one, Meta's answer), sealed
   into the store under a fresh data key;
3. **records** READY (and publishes `messageUpdated` for its message), PENDING again
   with exponential backoff for a failure that may pass, or FAILED with a reason
   (too large, checksum mismatch, refused by Meta, gave up after
   `WEFLUX_MEDIA_DOWNLOAD_MAX_ATTEMPTS`), which `Media.downloadPath` shows as null and
   docs/inbox.md#media explains.

Nothing here logs a token, a URL Meta answered (it is a bearer capability) or content.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth import crossings
from weflux.auth.scoping import feed_values, lock_feed, use_workspace
from weflux.config import Settings
from weflux.crypto.fields import open_secret
from weflux.crypto.keyring import DecryptionError
from weflux.crypto.secret import Secret
from weflux.db import Database
from weflux.media import intents
from weflux.media.files import ChecksumMismatch, TooLarge, store_stream
from weflux.media.kinds import max_bytes, normal_mime_type
from weflux.media.store import MediaStore
from weflux.models import (
    Conversation,
    MediaFile,
    MediaOrigin,
    MediaStatus,
    Message,
    WhatsAppAccount,
    utcnow,
)
from weflux.realtime.events import EventName, publish_after_commit
from weflux.services.channels import SandboxRefused, Services
from weflux.whatsapp.client import CloudApiClient
from weflux.whatsapp.errors import ErrorKind, MetaApiError
from weflux.worker.delivery import backoff_delay
from weflux.worker.suspects import run_with_suspects

log = logging.getLogger(__name__)

_MAX_FAILURE = 500


@dataclass(frozen=True)
class Claimed:
    id: uuid.UUID
    org_id: uuid.UUID
    attempts: int


@dataclass(frozen=True)
class _Fetch:
    """What one download needs, read in a short transaction."""

    wa_media_id: str
    kind: str
    sha256: str | None
    token: Secret = field(repr=False)
    cloud: CloudApiClient = field(repr=False)


@dataclass(frozen=True)
class _Outcome:
    kind: str  # "ready", "retry", "fail"
    reason: str = ""
    row: MediaFile | None = None  # "ready": the row with its storage fields filled in
    mime_type: str | None = None


def _owned(row: MediaFile, claimed: Claimed) -> bool:
    return row.status == MediaStatus.DOWNLOADING and row.attempts == claimed.attempts


async def _publish(session: AsyncSession, services: Services, row: MediaFile) -> None:
    """`messageUpdated` for the row's message once the session commits.

    The file is kept beside the message, so the message takes a feed position of its own
    (as a reaction's does): `messageUpdated` reads the feed, and without a new position
    no subscriber would receive the message with its `downloadPath` or `failure`."""
    if row.message_id is None:
        return
    dialect = (await session.connection()).dialect.name
    found = (
        await session.exec(
            update(Message)
            .where(col(Message.id) == row.message_id)
            .values(**feed_values(dialect, row.org_id, touch=True))
            .returning(col(Message.id), col(Message.conversation_id))
            .execution_options(synchronize_session=False)
        )
    ).first()
    if found is None:
        return
    publish_after_commit(
        session,
        services.broker,
        row.org_id,
        EventName.MESSAGE_UPDATED,
        id=found[0],
        conversation_id=found[1],
    )


def _fail(row: MediaFile, reason: str) -> None:
    row.status = MediaStatus.FAILED
    row.failure = reason[:_MAX_FAILURE]
    row.next_attempt_at = None


async def claim_due_media(
    db: Database, services: Services, settings: Settings, *, batch_size: int, suspect: bool = False
) -> list[Claimed]:
    """Take the lease of up to `batch_size` due downloads (committed before returning).

    A download whose lease ran out is a suspect (its worker died, perhaps of it), claimed
    only alone, as delivery's are (`weflux.worker.delivery.claim_due_messages`): without
    `suspect` the claim reads due files that are not suspects, with it the first suspect.
    """
    claimed, _ = await _claim(db, services, settings, batch_size, suspect=suspect)
    return claimed


async def _claim(
    db: Database, services: Services, settings: Settings, batch_size: int, *, suspect: bool
) -> tuple[list[Claimed], bool]:
    """`claim_due_media`, and whether a suspect is due (for a suspect's claim: whether it
    read one, leased or ended here)."""
    now = utcnow()
    lease_until = now + settings.media_download_lease
    claimed: list[Claimed] = []
    async with db.session() as session:
        due = await crossings.due_media_downloads(
            session, now=now, batch=1 if suspect else batch_size, suspects=suspect
        )
        for org_id, ids in crossings.by_workspace(due.rows).items():
            await use_workspace(session, org_id)
            rows = (await session.exec(select(MediaFile).where(col(MediaFile.id).in_(ids)))).all()
            order = {file_id: position for position, file_id in enumerate(ids)}
            for row in sorted(rows, key=lambda r: order[r.id]):
                if row.attempts >= settings.media_download_max_attempts:
                    _fail(row, f"Download abandoned after {row.attempts} attempts")
                    await _publish(session, services, row)
                    continue
                row.status = MediaStatus.DOWNLOADING
                row.attempts += 1
                row.next_attempt_at = lease_until
                claimed.append(Claimed(id=row.id, org_id=row.org_id, attempts=row.attempts))
            await session.flush()
    return claimed, due.suspect_due


async def _prepare(db: Database, services: Services, claimed: Claimed) -> _Fetch | _Outcome | None:
    async with db.session(claimed.org_id) as session:
        row = await session.get(MediaFile, claimed.id)
        if row is None or not _owned(row, claimed):
            return None
        message = await session.get(Message, row.message_id) if row.message_id else None
        if message is None or row.wa_media_id is None:
            return _Outcome("fail", "The message or its media id is gone")
        conversation = await session.get(Conversation, message.conversation_id)
        account = (
            await session.get(WhatsAppAccount, conversation.account_id) if conversation else None
        )
        if account is None:
            return _Outcome("fail", "The WhatsApp number is gone")
        try:
            token = open_secret(services.keyring, account, "access_token_enc")
            cloud = services.cloud_for(account)
        except DecryptionError:
            return _Outcome("retry", "The number's stored credentials cannot be decrypted")
        except SandboxRefused as refused:
            return _Outcome("fail", refused.message)
        if token is None:
            return _Outcome("retry", "The WhatsApp number has no access token")
        return _Fetch(
            wa_media_id=row.wa_media_id,
            kind=row.kind,
            sha256=row.sha256,
            token=token,
            cloud=cloud,
        )


async def _download(
    db: Database, store: MediaStore, services: Services, claimed: Claimed, fetch: _Fetch
) -> _Outcome:
    limit = max_bytes(fetch.kind)
    # A detached copy: its storage fields are filled in here, recorded in _apply.
    row = MediaFile(
        id=claimed.id,
        org_id=claimed.org_id,
        origin=MediaOrigin.INBOUND,
        kind=fetch.kind,
        mime_type="",
        status=MediaStatus.DOWNLOADING,
    )
    token = fetch.token.reveal()
    try:
        info = await fetch.cloud.media_info(fetch.wa_media_id, token)
        if info.file_size is not None and info.file_size > limit:
            return _Outcome(
                "fail", f"Too large: over the {limit // 1024} KiB limit for {fetch.kind}"
            )
        async with fetch.cloud.media_stream(fetch.wa_media_id, info.url, token) as chunks:
            await store_stream(
                db,
                store,
                services.keyring,
                row,
                chunks,
                limit=limit,
                expected_sha256=fetch.sha256 or info.sha256,
            )
    except TooLarge:
        return _Outcome("fail", f"Too large: over the {limit // 1024} KiB limit for {fetch.kind}")
    except ChecksumMismatch:
        return _Outcome("fail", "Checksum mismatch: the file is not the one the webhook announced")
    except MetaApiError as error:
        if error.kind in (ErrorKind.PERMANENT,) and error.http_status not in (None, 429):
            return _Outcome("fail", f"Refused by WhatsApp: {error.title}")
        return _Outcome("retry", error.title or "Cloud API error")
    except ValueError as error:
        return _Outcome("fail", f"Not downloadable: {error}")
    except OSError as error:
        log.warning(
            "media store write failed",
            extra={"media_id": str(claimed.id), "error": type(error).__name__},
        )
        return _Outcome("retry", "The media store could not be written")
    return _Outcome("ready", row=row, mime_type=info.mime_type)


async def _apply(
    db: Database,
    store: MediaStore,
    services: Services,
    settings: Settings,
    claimed: Claimed,
    outcome: _Outcome,
) -> None:
    orphan: str | None = None
    async with db.session(claimed.org_id) as session:
        await lock_feed(session)  # before the row lock: the message may take a position
        row = (
            await session.exec(
                select(MediaFile).where(MediaFile.id == claimed.id).with_for_update()
            )
        ).first()
        owned = row is not None and _owned(row, claimed)
        if outcome.kind == "ready" and owned:
            assert outcome.row is not None
            assert outcome.row.storage_key is not None
            try:
                # The stored file is the row's from this commit (weflux.media.intents).
                await intents.fulfil(session, outcome.row.storage_key)
            except intents.Swept:
                orphan = outcome.row.storage_key  # deleted below, and by the sweep
                outcome = _Outcome("retry", "The media store could not be written")
        if row is None or not owned:
            # Erased, or another worker took over after our lease ran out.
            orphan = outcome.row.storage_key if outcome.row is not None else None
        elif outcome.kind == "ready":
            assert outcome.row is not None
            row.storage_key = outcome.row.storage_key
            row.size = outcome.row.size
            row.data_key_enc = outcome.row.data_key_enc
            if row.mime_type == "application/octet-stream" and outcome.mime_type:
                row.mime_type = normal_mime_type(outcome.mime_type)
            row.status = MediaStatus.READY
            row.failure = None
            row.next_attempt_at = None
            row.stored_at = utcnow()
        elif outcome.kind == "retry" and row.attempts < settings.media_download_max_attempts:
            row.status = MediaStatus.PENDING
            row.failure = outcome.reason[:_MAX_FAILURE]
            delay = backoff_delay(row.attempts, settings)  # as delivery's
            row.next_attempt_at = utcnow() + timedelta(seconds=delay)
        else:
            reason = outcome.reason
            if outcome.kind == "retry":
                reason = f"{reason} (gave up after {row.attempts} attempts)"
            _fail(row, reason)
        if row is not None and owned:
            await session.flush()
            if row.status in (MediaStatus.READY, MediaStatus.FAILED):
                await _publish(session, services, row)
    if orphan is not None:
        # No row takes it: its intent goes with it (or, the store failing, the sweep's).
        await intents.abandon(db, store, claimed.org_id, orphan)
    log.info(
        "media download %s",
        outcome.kind,
        extra={"media_id": str(claimed.id), "attempt": claimed.attempts},
    )


async def download_one(
    db: Database, store: MediaStore, services: Services, settings: Settings, claimed: Claimed
) -> str | None:
    """Download one claimed file and record the outcome; its kind, or None if skipped."""
    prepared = await _prepare(db, services, claimed)
    if prepared is None:
        return None
    if isinstance(prepared, _Fetch):
        outcome = await _download(db, store, services, claimed, prepared)
    else:
        outcome = prepared
    await _apply(db, store, services, settings, claimed, outcome)
    return outcome.kind


async def download_due_media(
    db: Database, store: MediaStore, services: Services, settings: Settings
) -> int:
    """Claim due inbound media and download them, several at once; how many were claimed.

    Then up to `SUSPECTS_PER_RUN` suspects (downloads whose lease ran out), each claimed
    and downloaded alone, so a file that kills its worker takes no other with it."""
    batch_size = settings.media_download_batch_size
    return await run_with_suspects(
        lambda suspect: _claim(db, services, settings, batch_size, suspect=suspect),
        lambda claimed: _download_claimed(db, store, services, settings, claimed),
    )


async def _download_claimed(
    db: Database,
    store: MediaStore,
    services: Services,
    settings: Settings,
    claimed: Sequence[Claimed],
) -> int:
    """Download these claimed files, several at once; how many."""
    if not claimed:
        return 0
    gate = asyncio.Semaphore(settings.media_download_concurrency)

    async def one(item: Claimed) -> None:
        async with gate:
            try:
                await download_one(db, store, services, settings, item)
            except Exception:
                log.exception(
                    "media download failed; retried when its lease expires",
                    extra={"media_id": str(item.id)},
                )

    await asyncio.gather(*(one(item) for item in claimed))
    return len(claimed)
