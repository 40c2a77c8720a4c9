"""Seal a media file into the store as it streams, and open it again by range."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from weflux.crypto.fields import open_secret, seal
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.media import intents
from weflux.media.kinds import digest_matches
from weflux.media.sealed import (
    MediaIntegrityError,
    SealingWriter,
    new_data_key,
)
from weflux.media.store import MediaStore, new_storage_key
from weflux.models import MediaFile


class TooLarge(Exception):
    """The file is larger than its kind allows; nothing was stored."""


class ChecksumMismatch(Exception):
    """The file's sha256 is not the one announced; nothing was stored."""


@dataclass(frozen=True)
class Stored:
    size: int
    sha256: bytes


async def store_stream(
    db: Database,
    store: MediaStore,
    keyring: KeyRing,
    row: MediaFile,
    chunks: AsyncIterator[bytes],
    *,
    limit: int,
    expected_sha256: str | None = None,
) -> Stored:
    """Encrypt `chunks` under a fresh data key into the store; fill in the row's key.

    `expected_sha256` (hex or base64) is checked before anything is stored (else
    ChecksumMismatch). Memory stays flat (a chunk at a time, through a scratch file).
    Stops reading and raises TooLarge past `limit` bytes. The row gets `storage_key`,
    `size` and its data key sealed by the key ring, bound to the row (`data_key_enc`);
    the caller commits, and in that transaction `intents.fulfil(session, row.storage_key)`:
    the file's intent, committed here before the put, makes sure the file is deleted if
    the row never takes it (weflux.media.intents).
    """
    key = new_data_key()
    await asyncio.to_thread(store.scratch.mkdir, mode=0o700, parents=True, exist_ok=True)
    partial = store.scratch / f"{uuid.uuid4()}.part"
    hasher = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            writer = SealingWriter(out, key, row.id)
            async for chunk in chunks:
                if writer.size + len(chunk) > limit:
                    raise TooLarge(f"larger than {limit} bytes")
                hasher.update(chunk)
                writer.write(chunk)  # 64 KiB at a time: brief, like the exports' writer
            writer.close()
        digest = hasher.digest()
        if expected_sha256 is not None and not digest_matches(expected_sha256, digest):
            raise ChecksumMismatch("the file's sha256 is not the one announced")
        name = new_storage_key(row.org_id)
        await intents.announce(db, row.org_id, name)
        await store.put(name, partial)
    finally:
        partial.unlink(missing_ok=True)
    row.storage_key = name
    row.size = writer.size
    seal(keyring, row, "data_key_enc", base64.b64encode(key).decode("ascii"))
    return Stored(size=writer.size, sha256=digest)


def data_key(keyring: KeyRing, row: MediaFile) -> bytes:
    """The file's data key, opened with the key ring."""
    secret = open_secret(keyring, row, "data_key_enc")
    if secret is None:
        raise MediaIntegrityError("the media file has no key")
    return base64.b64decode(secret.reveal())
