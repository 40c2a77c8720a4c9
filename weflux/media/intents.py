"""No file in the media store without a row that deletes it.

A write to the store (an upload, an inbound download) first commits an intent naming the
file's key (`announce`, its own small transaction), then puts the file; the transaction
that records the file on its owning row (`media_files.storage_key`) deletes the intent
(`fulfil`). So whatever happens between the put and that commit (the store's answer
lost after the file landed, the process killed, the transaction rolled back) leaves an
intent behind, and `sweep` (the lifecycle worker, every `WEFLUX_LIFECYCLE_INTERVAL`)
deletes the file of every intent older than `STALE_AFTER`, then the intent. The store's
bucket is never listed.

An intent is claimed before its file is deleted (`claimed_at`, committed), and `fulfil`
only deletes an unclaimed one, so a file is either its row's or the sweep's, never both:
on PostgreSQL the claim locks the rows it marks and skips those an owning transaction
holds (`FOR UPDATE SKIP LOCKED`), and `fulfil`'s `DELETE … WHERE claimed_at IS NULL` waits
for a claim under way and then finds nothing; on SQLite each transaction holds the write
lock from its start. A write that finds its intent claimed (it took over an hour) deletes
its file and fails, as if the store had failed. Deleting a file already gone is a no-op;
a store that fails leaves the intent for the next sweep (one warning naming the store and
the error's class, never its message: boto3's carry the endpoint).
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth import crossings
from weflux.db import Database
from weflux.media.store import MediaStore, store_name
from weflux.models import StoredObjectIntent, utcnow

log = logging.getLogger(__name__)

# A write's intent younger than this is a write under way: its put and commit take
# seconds (each S3 call times out after WEFLUX_MEDIA_S3_TIMEOUT, 10 s by default).
STALE_AFTER = timedelta(hours=1)
SWEEP_BATCH = 100


class Swept(Exception):
    """The write's intent was claimed by the sweep: its file is being deleted, and no row
    may take it."""


class StoreUnavailable(Exception):
    """The store failed to delete a file (already logged, by class only)."""


async def announce(db: Database, org_id: uuid.UUID, storage_key: str) -> None:
    """Record, and commit, that `storage_key` is about to be written for the workspace."""
    async with db.session(org_id) as session:
        session.add(StoredObjectIntent(org_id=org_id, storage_key=storage_key))


async def fulfil(session: AsyncSession, storage_key: str) -> None:
    """In the transaction that records `storage_key` on its owning row: the file is the
    row's from its commit. Swept when the sweep claimed the intent first."""
    result = await session.exec(
        delete(StoredObjectIntent).where(
            col(StoredObjectIntent.storage_key) == storage_key,
            col(StoredObjectIntent.claimed_at).is_(None),
        )
    )
    if int(result.rowcount) != 1:
        raise Swept("the stored file was abandoned and is being deleted")


async def abandon(db: Database, store: MediaStore, org_id: uuid.UUID, storage_key: str) -> bool:
    """Delete now a written file no row will take, then its intent; False when the store
    failed (the sweep deletes it later)."""
    if not await _delete_object(store, storage_key):
        return False
    async with db.session(org_id) as session:
        await session.exec(
            delete(StoredObjectIntent).where(col(StoredObjectIntent.storage_key) == storage_key)
        )
    return True


async def sweep(
    db: Database, store: MediaStore | None, *, now: datetime | None = None, batch: int = SWEEP_BATCH
) -> int:
    """Delete the files of intents older than `STALE_AFTER`, then the intents; how many.

    Stops at the first failure of the store (the rest wait for the next sweep)."""
    if store is None:
        return 0
    before = (now or utcnow()) - STALE_AFTER
    total = 0
    while True:
        async with db.session() as session:
            stale = await crossings.stale_object_intents(
                session, created_before=before, batch=batch
            )
        gone_now = 0
        complete = True
        for org_id, ids in crossings.by_workspace(stale).items():
            where = col(StoredObjectIntent.id).in_(ids) & (
                col(StoredObjectIntent.created_at) < before
            )
            gone, complete = await _delete_claimed(db, store, org_id, where, batch)
            gone_now += gone
            if not complete:
                break
        total += gone_now
        # Done, the store failing, or only intents an owning transaction holds: next sweep.
        if len(stale) < batch or not complete or gone_now == 0:
            if total:
                log.info("deleted media files no row took", extra={"count": total})
            return total


async def purge_workspace_intents(
    db: Database, store: MediaStore | None, org_id: uuid.UUID, batch: int
) -> int:
    """Workspace deletion: every intent of the workspace and its file, young or old (a
    write under way then finds its intent gone, and deletes its file). Raises when the
    store fails, so the deletion is retried."""
    total = 0
    while True:
        if store is None:
            async with db.session(org_id) as session:
                doomed = select(StoredObjectIntent.id).limit(batch)
                result = await session.exec(
                    delete(StoredObjectIntent).where(col(StoredObjectIntent.id).in_(doomed))
                )
                gone = int(result.rowcount)
        else:
            gone, complete = await _delete_claimed(db, store, org_id, None, batch, wait=True)
            if not complete:
                raise StoreUnavailable("the media store failed; the deletion is retried")
        total += gone
        if gone < batch:
            return total


async def _delete_claimed(
    db: Database,
    store: MediaStore,
    org_id: uuid.UUID,
    where: Any,
    batch: int,
    *,
    wait: bool = False,
) -> tuple[int, bool]:
    """Claim up to `batch` intents matching `where` (None: any), delete their files, then
    them; (how many went, whether the store deleted every file)."""
    async with db.session(org_id) as session:
        query = select(StoredObjectIntent.id).limit(batch)
        if where is not None:
            query = query.where(where)
        locked = (
            await session.exec(query.with_for_update(skip_locked=not wait, of=StoredObjectIntent))
        ).all()
        rows: list[tuple[uuid.UUID, str]] = []
        if locked:
            rows = [
                (row[0], row[1])
                for row in (
                    await session.exec(
                        select(StoredObjectIntent.id, StoredObjectIntent.storage_key).where(
                            col(StoredObjectIntent.id).in_(locked)
                        )
                    )
                ).all()
            ]
            await session.exec(
                update(StoredObjectIntent)
                .where(col(StoredObjectIntent.id).in_([row[0] for row in rows]))
                .values(claimed_at=utcnow())
            )
    done: list[uuid.UUID] = []
    complete = True
    for intent_id, key in rows:
        if not await _delete_object(store, key):
            complete = False
            break
        done.append(intent_id)
    if done:
        async with db.session(org_id) as session:
            await session.exec(
                delete(StoredObjectIntent).where(col(StoredObjectIntent.id).in_(done))
            )
    return len(done), complete


async def discard(store: MediaStore, key: str) -> bool:
    """Delete a written file whose intent the sweep claimed (`Swept`), with no database
    work: the caller's transaction may hold SQLite's write lock. False when the store
    failed (logged)."""
    return await _delete_object(store, key)


async def _delete_object(store: MediaStore, key: str) -> bool:
    """Delete `key` from the store (gone already: fine); False, with a warning naming the
    store and the error's class, when the store fails."""
    try:
        await store.delete(key)
    except Exception as error:
        log.warning(
            "the media store could not delete an abandoned file; retried next sweep",
            extra={"store": store_name(store), "error": type(error).__name__},
        )
        return False
    return True
