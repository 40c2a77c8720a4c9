"""Uploads: a member's file, checked by its content, sealed into the media store."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import BinaryIO

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth.permissions import Permission
from weflux.auth.principal import Principal
from weflux.auth.scoping import past_erasure, workspace_wide
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.errors import BadUserInput, Forbidden, NotFound, RateLimited, Unavailable
from weflux.media import intents
from weflux.media.detect import HEAD_BYTES, detect
from weflux.media.files import TooLarge, store_stream
from weflux.media.kinds import max_bytes, safe_filename
from weflux.media.store import UNAVAILABLE_MESSAGE, MediaStore, unavailable
from weflux.models import MediaFile, MediaOrigin, MediaStatus, Message, utcnow
from weflux.throttle.ratelimit import RateLimiter

READ_CHUNK = 64 * 1024
# Megabytes a workspace may upload an hour and a day (WEFLUX_RATE_LIMIT_MEDIA_UPLOAD_MB_WORKSPACE):
# uploads are kept up to WEFLUX_MEDIA_UPLOAD_RETENTION unsent, and any member may upload.
UPLOAD_LIMIT = "media_upload_mb_workspace"
MB = 1024 * 1024


def _refused(message: str) -> BadUserInput:
    return BadUserInput(message, details=[{"field": "file", "message": message}])


async def _chunks(file: BinaryIO, head: bytes) -> AsyncIterator[bytes]:
    yield head
    while chunk := await asyncio.to_thread(file.read, READ_CHUNK):
        yield chunk


async def visible(session: AsyncSession, principal: Principal, row: MediaFile) -> bool:
    """Whether the caller may see the file: through a message they may see (the one it
    came with, or one that sent it on), or (an upload no message carries yet) as its
    uploader. `session` carries the caller's visibility.

    Once sent, an upload is its messages': its uploader loses it with them (a
    conversation assigned to someone else, an erased contact, whose erasure deletes it)."""
    if row.message_id is not None and await session.get(Message, row.message_id) is not None:
        return True
    carrying = select(Message.id).where(col(Message.media_file_id) == row.id).limit(1)
    if (await session.exec(carrying)).first() is not None:
        return True
    if row.origin != MediaOrigin.UPLOAD or row.uploaded_by_membership_id != principal.membership_id:
        return False
    with workspace_wide(session), past_erasure(session):  # any message, seen or not
        return (await session.exec(carrying)).first() is None


async def claim_for_sending(
    session: AsyncSession, principal: Principal, media_id: uuid.UUID
) -> MediaFile:
    """The READY file sendMedia is about to send, locked until the caller's transaction ends.

    The purges that delete files no message carries (an upload's expiry, an erasure,
    retention: `weflux.lifecycle.erasure.purge_media`) claim a file in a transaction of
    their own before deleting it. With the row locked here (PostgreSQL; on SQLite the
    request's transaction holds the write lock), either the purge claimed it first and
    the status read here is no longer READY, or the message this transaction inserts is
    committed before the purge asks again whether anything carries the file. So a message
    never carries a deleted file. NOT_FOUND otherwise, as for a file the caller may not see.
    """
    media = (
        await session.exec(
            select(MediaFile)
            .where(col(MediaFile.id) == media_id)
            .with_for_update(of=MediaFile)
            .execution_options(populate_existing=True)
        )
    ).first()
    if media is None or not await visible(session, principal, media):
        raise NotFound("Media not found")
    if media.status != MediaStatus.READY:
        raise NotFound(
            "This file can no longer be sent: it was deleted (an upload no message carries "
            "expires after a few days) or never arrived; upload it again"
        )
    return media


def _remaining_bytes(file: BinaryIO) -> int:
    """The bytes of `file` from where it stands (it is left there)."""
    start = file.tell()
    end = file.seek(0, os.SEEK_END)
    file.seek(start)
    return end - start


async def upload_media(
    db: Database,
    session: AsyncSession,
    principal: Principal,
    keyring: KeyRing,
    store: MediaStore,
    *,
    file: BinaryIO,
    filename: str | None,
    limiter: RateLimiter,
) -> MediaFile:
    """Store an uploaded file for sendMedia: READY, the uploader's until it is sent.

    BAD_USER_INPUT when its content is not a kind WhatsApp sends (the name and declared
    type are ignored), when it is empty, or larger than WhatsApp allows for its kind.
    RATE_LIMITED, before anything is stored, when the workspace has uploaded its
    megabytes of the hour or day (`UPLOAD_LIMIT`).
    The row takes the stored file in `session`'s transaction (`intents.fulfil`): if that
    transaction never commits, the lifecycle worker deletes the file.
    """
    if not principal.can(Permission.REPLY):
        raise Forbidden("Your role does not allow sending messages")
    size = await asyncio.to_thread(_remaining_bytes, file)
    spent = await limiter.hit(UPLOAD_LIMIT, str(principal.org_id), cost=max(1, -(-size // MB)))
    if not spent.allowed:
        raise RateLimited(
            "The workspace has uploaded too much for now; try again later",
            retry_after=spent.retry_after,
        )
    head = await asyncio.to_thread(file.read, HEAD_BYTES)
    if not head:
        raise _refused("The file is empty")
    detected = detect(head, filename)
    if detected is None:
        raise _refused(
            "WhatsApp cannot send this kind of file: send a JPEG or PNG image, an MP4 or "
            "3GPP video, AAC, AMR, MP3, MP4 or OGG audio, a WebP sticker, or a PDF, Office "
            "or .txt document"
        )
    row = MediaFile(
        org_id=principal.org_id,
        origin=MediaOrigin.UPLOAD,
        uploaded_by_membership_id=principal.membership_id,
        kind=detected.kind,
        mime_type=detected.mime_type,
        filename=safe_filename(filename, "") or None if detected.kind == "document" else None,
        status=MediaStatus.READY,
    )
    limit = max_bytes(detected.kind)
    try:
        stored = await store_stream(db, store, keyring, row, _chunks(file, head), limit=limit)
    except TooLarge:
        raise _refused(
            f"The file is larger than WhatsApp allows for a {detected.kind} "
            f"({limit // (1024 * 1024) or limit // 1024} "
            f"{'MB' if limit >= 1024 * 1024 else 'KB'})"
        ) from None
    except Exception as error:
        # The store failed (S3 down, the disk): UPSTREAM_UNAVAILABLE, and no row is
        # added, so nothing points at a file that did not land.
        if (outage := unavailable(store, error)) is None:
            raise
        raise outage from None
    row.sha256 = stored.sha256.hex()
    row.stored_at = utcnow()
    assert row.storage_key is not None
    try:
        await intents.fulfil(session, row.storage_key)
    except intents.Swept:
        # The write took so long that the sweep gave its file up: not this row's. Its
        # put may have landed after the sweep's delete: deleted again here.
        await intents.discard(store, row.storage_key)
        raise Unavailable(UNAVAILABLE_MESSAGE) from None
    session.add(row)
    await session.flush()
    return row
