"""Exports: a zip of JSON Lines per table with a manifest, encrypted at rest, streamed.

The worker reads each table a page at a time and writes each row as one JSON line into
a zip entry, the zip into `_SealingWriter`, which encrypts 64 KiB chunks with
AES-256-GCM under a data key of the export's own; the data key is sealed with the key
ring, bound to the request's row (`file_key_enc`). Memory stays flat whatever the size:
a page of rows, a chunk, and the zip's per-entry bookkeeping. Secrets and token hashes
(columns ending in `_enc`, `_hash` or `_hashes`) are never exported. Format: docs/lifecycle.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import struct
import uuid
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import and_, or_, text, update
from sqlmodel import SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.crypto.fields import open_secret, seal
from weflux.crypto.keyring import KeyRing
from weflux.db import Database, begin_read_only
from weflux.models import (
    OPEN_STATUSES,
    AuthSession,
    Contact,
    Conversation,
    ConversationLabel,
    DataRequest,
    DataRequestKind,
    DataRequestStatus,
    MediaFile,
    Membership,
    Message,
    MessageReaction,
    Note,
    Organization,
    StoredObjectIntent,
    User,
    utcnow,
    workspace_models,
)

FORMAT = "weflux-export"
FORMAT_VERSION = 1
EXPORT_TTL = timedelta(hours=24)
PAGE = 500
CHUNK = 64 * 1024
MAGIC = b"WFXEXP1\n"
_LENGTH = struct.Struct(">I")
# Sealed secrets, and hashes of passwords, tokens and recovery codes (a recovery code
# has 50 bits: its plain SHA-256 falls to an offline search).
EXCLUDED_SUFFIXES = ("_enc", "_hash", "_hashes")
# A second factor's state (the time step of the last code accepted): security state,
# like the sessions, not the workspace's data.
EXCLUDED_COLUMNS = frozenset({"totp_last_step"})
# Not exported: login sessions (the workspace's own security state, not its data), and
# the media store's write intents (storage keys of files being written: plumbing).
NOT_EXPORTED: tuple[type[SQLModel], ...] = (AuthSession, StoredObjectIntent)

Progress = Callable[[float], Awaitable[None]]


class ExportError(Exception):
    """An export file that does not decrypt: tampered, truncated, or another row's."""


def _aad(request_id: uuid.UUID, index: int, final: bool) -> bytes:
    return request_id.bytes + struct.pack(">Q?", index, final)


class _SealingWriter(io.RawIOBase):
    """A write-only stream that encrypts what it is given, chunk by chunk, into `out`."""

    def __init__(self, out: BinaryIO, key: bytes, request_id: uuid.UUID) -> None:
        super().__init__()
        self._out = out
        self._cipher = AESGCM(key)
        self._request_id = request_id
        self._buffer = bytearray()
        self._index = 0
        self._written = 0
        out.write(MAGIC)

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._written

    def write(self, data: Any) -> int:
        view = bytes(data)
        self._buffer += view
        self._written += len(view)
        while len(self._buffer) > CHUNK:
            self._seal(bytes(self._buffer[:CHUNK]), final=False)
            del self._buffer[:CHUNK]
        return len(view)

    def _seal(self, chunk: bytes, *, final: bool) -> None:
        nonce = os.urandom(12)
        sealed = self._cipher.encrypt(nonce, chunk, _aad(self._request_id, self._index, final))
        self._out.write(_LENGTH.pack(len(sealed)) + struct.pack(">?", final) + nonce + sealed)
        self._index += 1

    def close(self) -> None:
        if not self.closed:
            self._seal(bytes(self._buffer), final=True)
            self._buffer.clear()
        super().close()


def open_sealed(path: Path, key: bytes, request_id: uuid.UUID) -> Iterator[bytes]:
    """The plaintext of an export file, chunk by chunk; ExportError if it was altered."""
    cipher = AESGCM(key)
    with path.open("rb") as source:
        if source.read(len(MAGIC)) != MAGIC:
            raise ExportError("not an export file")
        index = 0
        while True:
            head = source.read(_LENGTH.size + 1 + 12)
            if len(head) < _LENGTH.size + 1 + 12:
                raise ExportError("the file is truncated")
            (length,) = _LENGTH.unpack(head[: _LENGTH.size])
            final = head[_LENGTH.size] == 1
            nonce = head[_LENGTH.size + 1 :]
            sealed = source.read(length)
            try:
                chunk = cipher.decrypt(nonce, sealed, _aad(request_id, index, final))
            except InvalidTag:
                raise ExportError("the file was altered") from None
            yield chunk
            index += 1
            if final:
                if source.read(1):
                    raise ExportError("data after the last chunk")
                return


def row_json(row: SQLModel) -> dict[str, Any]:
    """A row as exported: every column but secrets and token hashes."""
    data = row.model_dump(mode="json")
    return {k: v for k, v in data.items() if not excluded(k)}


def excluded(column: str) -> bool:
    """Whether a column is left out of every export (secrets, hashes, security state)."""
    return column.endswith(EXCLUDED_SUFFIXES) or column in EXCLUDED_COLUMNS


async def _pages(
    db: Database, org_id: uuid.UUID, model: type[SQLModel], where: Any
) -> AsyncIterator[SQLModel]:
    key = col(model.id)  # type: ignore[attr-defined]
    last: uuid.UUID | None = None
    while True:
        async with db.session(org_id) as session:
            await begin_read_only(session)
            query = select(model).order_by(key).limit(PAGE)
            if where is not None:
                query = query.where(where)
            if last is not None:
                query = query.where(key > last)
            rows = list((await session.exec(query)).all())
        for row in rows:
            yield row
        if len(rows) < PAGE:
            return
        last = rows[-1].id  # type: ignore[attr-defined]


def _tables(
    kind: DataRequestKind, subject_id: uuid.UUID | None
) -> list[tuple[str, type[SQLModel], Any]]:
    if kind == DataRequestKind.CONTACT_EXPORT:
        conversations = select(col(Conversation.id)).where(Conversation.contact_id == subject_id)
        messages = select(col(Message.id)).where(col(Message.conversation_id).in_(conversations))
        return [
            ("contacts", Contact, col(Contact.id) == subject_id),
            ("conversations", Conversation, col(Conversation.contact_id) == subject_id),
            ("messages", Message, col(Message.id).in_(messages)),
            (
                "message_reactions",
                MessageReaction,
                col(MessageReaction.conversation_id).in_(conversations),
            ),
            # The team's private notes and labels on them: data about the person too.
            ("notes", Note, col(Note.conversation_id).in_(conversations)),
            (
                "conversation_labels",
                ConversationLabel,
                col(ConversationLabel.conversation_id).in_(conversations),
            ),
            # The files' rows (caption, name, type, size): what they sent, what they got.
            (
                "media_files",
                MediaFile,
                or_(
                    col(MediaFile.sender_contact_id) == subject_id,
                    col(MediaFile.message_id).in_(messages),
                    col(MediaFile.id).in_(
                        select(col(Message.media_file_id)).where(col(Message.id).in_(messages))
                    ),
                ),
            ),
        ]
    members = select(col(Membership.user_id))
    tables: list[tuple[str, type[SQLModel], Any]] = [
        ("organizations", Organization, None),
        ("users", User, col(User.id).in_(members)),
    ]
    for model in workspace_models():
        if model not in NOT_EXPORTED:
            tables.append((str(model.__tablename__), model, None))
    return tables


async def _schema_revision(db: Database) -> str | None:
    async with db.engine.connect() as conn:
        row = (await conn.execute(text("SELECT version_num FROM alembic_version"))).first()
    return str(row[0]) if row else None


def _may_hold(contact_id: uuid.UUID) -> Any:
    """The export requests whose file may hold a contact: every workspace export, and
    the contact's own."""
    return or_(
        col(DataRequest.kind) == DataRequestKind.WORKSPACE_EXPORT,
        and_(
            col(DataRequest.kind) == DataRequestKind.CONTACT_EXPORT,
            col(DataRequest.subject_id) == contact_id,
        ),
    )


async def withdraw_holding(session: AsyncSession, contact_id: uuid.UUID, *, now: datetime) -> None:
    """A contact is being erased: no export may hand its data out from this commit.

    A built file that may hold it loses its key and expires now (the worker's next sweep
    deletes the bytes, `destroy`); a build under way is told by a new `run_after`, and
    `build_export` discards what it wrote and starts again. The build's last transaction
    locks the request's row, so either it sees this change or this sees its file.
    """
    await session.exec(
        update(DataRequest)
        .where(_may_hold(contact_id), col(DataRequest.status).in_(OPEN_STATUSES))
        .values(run_after=now)
    )
    await session.exec(
        update(DataRequest)
        .where(_may_hold(contact_id), col(DataRequest.file_name).is_not(None))
        .values(file_key_enc=None, expires_at=now)
    )


async def build_export(
    db: Database,
    keyring: KeyRing,
    directory: Path,
    org_id: uuid.UUID,
    request_id: uuid.UUID,
    *,
    progress: Progress,
) -> None:
    """Write the request's export file and mark the request COMPLETED (24 hours to live)."""
    async with db.session(org_id) as session:
        request = await session.get(DataRequest, request_id)
        if request is None:
            return
        kind, subject_id, run_after = request.kind, request.subject_id, request.run_after
    # Only the server's user may read them, whatever the umask (as media files).
    await asyncio.to_thread(directory.mkdir, mode=0o700, parents=True, exist_ok=True)
    name = f"{request_id}.wfx"
    partial = directory / f"{name}.part"
    key = AESGCM.generate_key(bit_length=256)
    tables = _tables(kind, subject_id)
    files: list[dict[str, Any]] = []
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a part left by a killed attempt keeps its mode otherwise
        with os.fdopen(fd, "wb") as out:
            sealing = _SealingWriter(out, key, request_id)
            with zipfile.ZipFile(sealing, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for done, (table, model, where) in enumerate(tables):
                    count = 0
                    with archive.open(f"{table}.jsonl", "w", force_zip64=True) as entry:
                        async for row in _pages(db, org_id, model, where):
                            line = json.dumps(row_json(row), ensure_ascii=False)
                            entry.write(line.encode() + b"\n")
                            count += 1
                    files.append({"name": f"{table}.jsonl", "table": table, "rows": count})
                    await progress(0.95 * (done + 1) / len(tables))
                manifest = {
                    "format": FORMAT,
                    "formatVersion": FORMAT_VERSION,
                    "schemaRevision": await _schema_revision(db),
                    "kind": kind.value,
                    "dataRequestId": str(request_id),
                    "organizationId": str(org_id),
                    "subjectId": str(subject_id) if subject_id else None,
                    "createdAt": utcnow().isoformat(),
                    "files": files,
                }
                archive.writestr("manifest.json", json.dumps(manifest, indent=2))
            sealing.close()
    except BaseException:
        # Its key dies with this call: the bytes are useless, and go now.
        partial.unlink(missing_ok=True)
        raise
    partial.replace(directory / name)
    async with db.session(org_id) as session:
        request = await session.get(DataRequest, request_id, with_for_update=True)
        if request is None or request.run_after != run_after:
            # Gone, or a contact it may hold was erased meanwhile (`withdraw_holding`):
            # the file goes, and a request still there is built again on the next sweep.
            (directory / name).unlink(missing_ok=True)
            if request is not None:
                request.progress = 0.0
                session.add(request)
            return
        now = utcnow()
        request.file_name = name
        seal(keyring, request, "file_key_enc", base64.b64encode(key).decode())
        request.expires_at = now + EXPORT_TTL
        request.status = DataRequestStatus.COMPLETED
        request.progress = 1.0
        request.completed_at = now
        session.add(request)


def data_key(keyring: KeyRing, request: DataRequest) -> bytes:
    """The export file's data key, opened with the key ring."""
    secret = open_secret(keyring, request, "file_key_enc")
    if secret is None:
        raise ExportError("the export's key is gone")
    return base64.b64decode(secret.reveal())


def discard_files(directory: Path, request_id: uuid.UUID) -> None:
    """Delete whatever a build of the request may have left, by the names it writes: the
    request's row is the files' intent, so a file whose commit never came (the process
    killed between writing and recording it) goes with its request too."""
    for name in (f"{request_id}.wfx", f"{request_id}.wfx.part"):
        with contextlib.suppress(NotADirectoryError):  # no directory: no file either
            (directory / name).unlink(missing_ok=True)


async def destroy(db: Database, directory: Path, org_id: uuid.UUID, request_id: uuid.UUID) -> None:
    """Delete an export's file and its key (at `expiresAt`)."""
    async with db.session(org_id) as session:
        request = await session.get(DataRequest, request_id)
        discard_files(directory, request_id)
        if request is None or request.file_name is None:
            return
        (directory / request.file_name).unlink(missing_ok=True)
        request.file_name = None
        request.file_key_enc = None
        session.add(request)


def expired(request: DataRequest, now: datetime) -> bool:
    """Whether an export's file is past its `expiresAt` (or has none)."""
    return request.expires_at is None or request.expires_at <= now
