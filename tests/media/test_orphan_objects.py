"""No file in the media store without a row that deletes it (weflux/media/intents.py).

A write whose owning row never comes (its transaction rolled back, its process killed
between the put and the commit, its download's recording failed) leaves an intent; the
worker's sweep deletes the file an hour later, then the intent. A file its row takes is
never deleted, whichever of the row's transaction and the sweep comes first. On the disk
store, on both engines (tests/media/test_store_outage.py plays S3's answer lost)."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import Actor
from tests.fixtures.media import JPEG, MediaInbox, media_rows
from tests.fixtures.principals import principal_of
from weflux.config import Settings
from weflux.errors import Unavailable
from weflux.lifecycle import erasure
from weflux.lifecycle.worker import sweep_abandoned_files
from weflux.media import download, intents
from weflux.media.files import store_stream
from weflux.media.sealed import Reader
from weflux.media.store import MediaStore
from weflux.models import MediaFile, MediaOrigin, MediaStatus, StoredObjectIntent, utcnow
from weflux.services import media as media_service

GUARD = 30  # seconds; far above anything here
STARTUP_GUARD = 180  # a child's imports alone take 20 s on a loaded machine
_REPOSITORY = str(Path(__file__).resolve().parents[2])


def _files(settings: Settings) -> set[Path]:
    """Every stored file (scratch files being sealed aside)."""
    root = settings.media_directory
    return {p for p in root.rglob("*") if p.is_file() and ".partial" not in p.parts}


async def _intents(inbox: MediaInbox) -> list[StoredObjectIntent]:
    async with inbox.db.session(inbox.account.org_id) as session:
        return list((await session.exec(select(StoredObjectIntent))).all())


def _later() -> datetime:
    return utcnow() + timedelta(hours=2)


async def _rolled_back_upload(inbox: MediaInbox, agent: Actor) -> None:
    """An upload whose transaction fails after the file was written: never committed."""
    with pytest.raises(RuntimeError):
        await _upload_then_fail(inbox, agent)


async def _upload_then_fail(inbox: MediaInbox, agent: Actor) -> None:
    async with inbox.runtime.db.session(agent.org_id) as session:
        await _upload(inbox, agent, session)
        raise RuntimeError("the commit fails")


async def _upload(inbox: MediaInbox, agent: Actor, session: AsyncSession) -> MediaFile:
    runtime = inbox.runtime
    return await media_service.upload_media(
        runtime.db,
        session,
        principal_of(agent),
        runtime.keyring,
        runtime.media,
        file=io.BytesIO(JPEG),
        filename="a.jpg",
        limiter=runtime.limiter,
    )


async def test_an_upload_whose_transaction_rolls_back_leaves_a_file_the_sweep_deletes(
    media_inbox: MediaInbox, agent: Actor, settings: Settings
) -> None:
    """Given an upload written to the disk store whose transaction then fails (the
    commit never happens), when the worker sweeps, then it leaves the file while it may
    be a write under way, and an hour later deletes it and its intent; a file whose row
    was committed stays."""
    runtime = media_inbox.runtime
    async with runtime.db.session(agent.org_id) as session:
        kept = await _upload(media_inbox, agent, session)
    owned = _files(settings)
    assert len(owned) == 1
    await _rolled_back_upload(media_inbox, agent)
    assert await media_rows(media_inbox) == {kept.id}
    [orphan] = _files(settings) - owned
    [intent] = await _intents(media_inbox)
    assert orphan.name == intent.storage_key.split("/")[1]

    lifecycle = media_inbox.lifecycle()
    assert await sweep_abandoned_files(lifecycle) == 0
    assert orphan.exists()
    assert await sweep_abandoned_files(lifecycle, now=_later()) == 1

    assert _files(settings) == owned
    assert await _intents(media_inbox) == []
    assert await sweep_abandoned_files(lifecycle, now=_later()) == 0
    assert _files(settings) == owned


# A process killed (SIGKILL) after its file landed in the store, before the transaction
# recording it committed.
_KILLED_AFTER_PUT = """
import asyncio, sys, uuid
from pathlib import Path
from tests.fixtures.settings import make_settings
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.media.files import store_stream
from weflux.media.store import DiskStore
from weflux.models import MediaFile, MediaOrigin, MediaStatus

async def main(url: str, media_dir: str, var: str, org_id: str) -> None:
    store = DiskStore(Path(media_dir))
    put = store.put

    async def put_then_hang(key, path):
        await put(key, path)
        print("PUT", flush=True)
        await asyncio.sleep(3600)

    store.put = put_then_hang
    db = Database(url)
    keyring = KeyRing.from_settings(make_settings(Path(var), database_url=url))
    row = MediaFile(org_id=uuid.UUID(org_id), origin=MediaOrigin.UPLOAD, kind="image",
                    mime_type="image/jpeg", status=MediaStatus.READY)

    async def chunks():
        yield b"\\xff\\xd8\\xff" + bytes(1000)

    async with db.session(row.org_id) as session:
        await store_stream(db, store, keyring, row, chunks(), limit=10**6)
        session.add(row)

asyncio.run(main(*sys.argv[1:]))
"""


async def test_a_process_killed_between_the_put_and_the_commit_leaves_nothing_for_long(
    media_inbox: MediaInbox,
    database_urls: DatabaseUrls,
    settings: Settings,
    tmp_path: Path,
) -> None:
    """Given a process that wrote a file to the disk store, when it is killed (SIGKILL)
    before the transaction recording it commits, then no row names the file, and the
    worker's sweep an hour later deletes it and its intent."""
    org_id = media_inbox.account.org_id
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _KILLED_AFTER_PUT,
        database_urls.app,
        str(settings.media_directory),
        str(tmp_path / "child"),
        str(org_id),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": _REPOSITORY},
    )
    try:
        assert child.stdout is not None
        async with asyncio.timeout(STARTUP_GUARD):
            assert (await child.stdout.readline()).strip() == b"PUT"
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    [orphan] = _files(settings)
    assert await media_rows(media_inbox) == set()
    assert len(await _intents(media_inbox)) == 1

    lifecycle = media_inbox.lifecycle()
    assert await sweep_abandoned_files(lifecycle, now=_later()) == 1
    assert not orphan.exists()
    assert await _intents(media_inbox) == []


class _Hooked:
    """The app's store, running `before_put` / `before_delete` first."""

    def __init__(self, store: MediaStore) -> None:
        self.store = store
        self.before_put: Callable[[str], Awaitable[None]] | None = None
        self.before_delete: Callable[[str], Awaitable[None]] | None = None

    @property
    def scratch(self) -> Path:
        return self.store.scratch

    async def put(self, key: str, path: Path) -> None:
        if self.before_put is not None:
            await self.before_put(key)
        await self.store.put(key, path)

    def open(self, key: str, offset: int) -> Reader:
        return self.store.open(key, offset)

    async def delete(self, key: str) -> None:
        if self.before_delete is not None:
            await self.before_delete(key)
        await self.store.delete(key)


async def test_a_file_its_row_takes_while_the_sweep_runs_is_never_deleted(
    media_inbox: MediaInbox, agent: Actor, settings: Settings
) -> None:
    """Given an upload whose transaction has taken its file (the intent deleted, not yet
    committed), when the sweep runs meanwhile (an hour later, as if the upload were that
    old), then it leaves the file: on PostgreSQL it skips the intent the transaction holds,
    on SQLite it waits for the commit and then finds nothing; the row's file stays."""
    runtime = media_inbox.runtime
    async with runtime.db.session(agent.org_id) as session:
        row = await _upload(media_inbox, agent, session)
        sweeping = asyncio.create_task(intents.sweep(runtime.db, runtime.media, now=_later()))
        await asyncio.sleep(0.5)
    async with asyncio.timeout(GUARD):
        assert await sweeping == 0
    [stored] = _files(settings)
    assert row.storage_key is not None
    assert stored.name == row.storage_key.split("/")[1]
    assert await _intents(media_inbox) == []
    assert await sweep_abandoned_files(media_inbox.lifecycle(), now=_later()) == 0
    assert _files(settings) == {stored}


async def test_a_row_cannot_take_a_file_the_sweep_claimed(
    media_inbox: MediaInbox, agent: Actor, settings: Settings
) -> None:
    """Given an upload whose put is so slow that the sweep claims its intent before the
    file lands (the sweep deletes a file not there yet, the put then lands), when the
    upload's transaction tries to take the file, then it finds the intent gone: the upload
    is UPSTREAM_UNAVAILABLE, deletes the file it wrote, and no row names a deleted file."""
    runtime = media_inbox.runtime
    hooked = _Hooked(runtime.media)

    async def sweep_first(key: str) -> None:
        assert await intents.sweep(runtime.db, hooked, now=_later()) == 1

    hooked.before_put = sweep_first
    with pytest.raises(Unavailable):
        async with runtime.db.session(agent.org_id) as session:
            await media_service.upload_media(
                runtime.db,
                session,
                principal_of(agent),
                runtime.keyring,
                hooked,
                file=io.BytesIO(JPEG),
                filename="a.jpg",
                limiter=runtime.limiter,
            )
    assert _files(settings) == set()
    assert await media_rows(media_inbox) == set()
    assert await _intents(media_inbox) == []


async def test_the_row_s_transaction_waits_for_a_claim_under_way_then_gives_the_file_up(
    media_inbox: MediaInbox, agent: Actor, settings: Settings
) -> None:
    """Given a file written an hour ago whose intent the sweep has claimed and is deleting,
    when its row's transaction tries to take it then, then `fulfil` refuses (Swept): the
    sweep's claim is committed before any file is deleted."""
    runtime = media_inbox.runtime
    hooked = _Hooked(runtime.media)
    row = MediaFile(
        org_id=agent.org_id,
        origin=MediaOrigin.UPLOAD,
        kind="image",
        mime_type="image/jpeg",
        status=MediaStatus.READY,
    )

    async def chunks() -> AsyncIterator[bytes]:
        yield JPEG

    await store_stream(runtime.db, runtime.media, runtime.keyring, row, chunks(), limit=10**6)
    assert row.storage_key is not None
    refused: list[bool] = []

    async def owner_comes_now(key: str) -> None:
        async with runtime.db.session(agent.org_id) as session:
            with pytest.raises(intents.Swept):
                await intents.fulfil(session, key)
            refused.append(True)

    hooked.before_delete = owner_comes_now
    assert await intents.sweep(runtime.db, hooked, now=_later()) == 1
    assert refused == [True]
    assert _files(settings) == set()
    assert await _intents(media_inbox) == []


async def test_a_download_whose_recording_fails_leaves_a_file_the_sweep_deletes(
    media_inbox: MediaInbox, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given an inbound image the worker downloads into the store, when the transaction
    recording it fails, then no row names the file, and the sweep an hour later deletes it;
    the download is tried again and its own file stays."""
    message_id = await media_inbox.receive("image", JPEG, mime_type="image/jpeg")

    async def failing(*_: object) -> None:
        raise RuntimeError("the recording transaction fails")

    monkeypatch.setattr(download, "_publish", failing)
    await media_inbox.download()
    assert len(_files(settings)) == 1
    assert (await media_inbox.media_of(message_id)).storage_key is None
    monkeypatch.undo()

    assert await sweep_abandoned_files(media_inbox.lifecycle(), now=_later()) == 1
    assert _files(settings) == set()
    async with media_inbox.db.session(media_inbox.account.org_id) as session:
        row = await session.get(MediaFile, (await media_inbox.media_of(message_id)).id)
        assert row is not None
        row.attempts += 1  # its lease taken over, as once it expires
        row.status = MediaStatus.PENDING
        row.next_attempt_at = utcnow()
        session.add(row)
    await media_inbox.download()
    stored = await media_inbox.media_of(message_id)
    assert stored.status == MediaStatus.READY
    assert stored.storage_key is not None
    assert {p.name for p in _files(settings)} == {stored.storage_key.split("/")[1]}
    assert await _intents(media_inbox) == []


async def test_workspace_deletion_deletes_the_files_of_its_intents(
    media_inbox: MediaInbox, agent: Actor, settings: Settings
) -> None:
    """Given a workspace with a file no row took (its upload's transaction rolled back a
    moment ago: a young intent), when the workspace is deleted, then its file and intent
    go with it."""
    runtime = media_inbox.runtime
    await _rolled_back_upload(media_inbox, agent)
    assert len(_files(settings)) == 1
    org_id = uuid.UUID(str(agent.org_id))

    assert await erasure.purge_workspace(runtime.db, org_id, batch=1, media=runtime.media)

    assert _files(settings) == set()
    async with runtime.db.session(org_id) as session:
        assert (await session.exec(select(StoredObjectIntent))).all() == []
