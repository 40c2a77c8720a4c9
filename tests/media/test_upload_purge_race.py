"""sendMedia racing the purges that delete a file no message carries (the daily expiry of
uploads never sent, a contact's erasure): after any interleaving either the new message
carries a file that exists (row and stored bytes) and is sent, or sendMedia fails with a
coded error and nothing is queued or sent to Meta.

Each test forces one interleaving: the purge's store deletion (between the purge choosing
its files and deleting their rows) or sendMedia's recipient check (between its reading of
the file and its INSERT) runs the other side to its end.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from tests.fixtures.api import error_codes, token_for
from tests.fixtures.databases import postgres_only
from tests.fixtures.factories import Actor
from tests.fixtures.media import (
    JPEG,
    MediaInbox,
    erase_contact_of,
    first_conversation,
    second_contact,
    send_media,
    upload_media,
)
from weflux.ids import decode_global_id
from weflux.lifecycle.worker import run_retention
from weflux.media.sealed import Reader
from weflux.media.store import MediaStore
from weflux.models import Conversation, MediaFile, Message, utcnow
from weflux.services import outbound
from weflux.worker.delivery import deliver_due_messages


@dataclass
class InterruptedStore:
    """The app's media store, whose first deletion of `key` first runs `meanwhile`."""

    inner: MediaStore
    key: str
    meanwhile: Callable[[], Awaitable[None]]
    ran: list[str] = field(default_factory=list)

    async def put(self, key: str, path: Path) -> None:
        await self.inner.put(key, path)

    def open(self, key: str, offset: int) -> Reader:
        return self.inner.open(key, offset)

    async def delete(self, key: str) -> None:
        if key == self.key and not self.ran:
            self.ran.append(key)
            await self.meanwhile()
        await self.inner.delete(key)

    @property
    def scratch(self) -> Path:
        return self.inner.scratch


async def _upload(inbox: MediaInbox, token: str, *, age: timedelta) -> tuple[str, MediaFile]:
    """An upload made `age` ago: its global id and row."""
    response = await upload_media(inbox.client, token, JPEG, "a.jpg", "image/jpeg")
    media = response.json()["data"]["uploadMedia"]["id"]
    media_id = decode_global_id(media, "Media")
    async with inbox.db.session(inbox.account.org_id) as session:
        await session.exec(
            update(MediaFile).where(col(MediaFile.id) == media_id).values(created_at=utcnow() - age)
        )
        row = await session.get(MediaFile, media_id)
    assert row is not None
    assert row.storage_key is not None
    return media, row


async def _messages_carrying(session: AsyncSession, media_id: uuid.UUID) -> list[Message]:
    query = select(Message).where(Message.media_file_id == media_id)
    return list((await session.exec(query)).all())


async def _settled(inbox: MediaInbox, sent: httpx.Response, media_id: uuid.UUID) -> bool:
    """The invariant after the race, whoever won; whether sendMedia's message was sent.

    Either sendMedia answered a message that carries the file, the file's row is READY
    and its bytes readable, and the worker sends exactly that file; or it answered a coded
    error (NOT_FOUND: the file was deleted), no message carries the file and the worker
    sends nothing.
    """
    runtime = inbox.runtime
    async with inbox.db.session(inbox.account.org_id) as session:
        row = await session.get(MediaFile, media_id)
        carrying = await _messages_carrying(session, media_id)
    delivered = await deliver_due_messages(runtime.db, runtime.channel_services, runtime.settings)
    if "errors" in sent.json():
        assert error_codes(sent) == ["NOT_FOUND"], sent.json()
        assert carrying == []
        assert delivered == 0
        assert inbox.fake.sent == []
        return False
    message = sent.json()["data"]["sendMedia"]
    assert message["media"] is not None, "the message carries a deleted file"
    assert row is not None, "the message carries a deleted file"
    assert [m.id for m in carrying] == [decode_global_id(message["id"], "Message")]
    assert row.storage_key is not None
    runtime.media.open(row.storage_key, 0).close()  # the bytes are there
    assert delivered == 1
    [payload] = [sent.payload for sent in inbox.fake.sent]
    assert inbox.fake.media[payload["image"]["id"]].content == JPEG
    return True


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
async def test_send_media_while_the_expiry_deletes_the_upload(
    media_inbox: MediaInbox, admin: Actor
) -> None:
    """Given an upload eight days old, never sent (uploads expire after 7 days),
    when the daily retention has chosen it and, before its row goes, sendMedia sends it,
    then sendMedia is NOT_FOUND and nothing is queued or sent; the file is gone."""
    conversation, _ = await first_conversation(media_inbox)
    await media_inbox.download()
    token = await token_for(media_inbox.client, admin)
    media, row = await _upload(media_inbox, token, age=timedelta(days=8))
    answers: list[httpx.Response] = []

    async def send() -> None:
        answers.append(await send_media(media_inbox.client, token, conversation, media))

    assert row.storage_key is not None
    store = InterruptedStore(media_inbox.runtime.media, row.storage_key, send)
    await run_retention(replace(media_inbox.lifecycle(), media=store))

    assert store.ran, "the retention never deleted the upload"
    assert not await _settled(media_inbox, answers[0], row.id)
    assert row.id not in {m.id for m in await _rows(media_inbox)}


@postgres_only
async def test_the_expiry_while_send_media_holds_the_upload(
    media_inbox: MediaInbox, admin: Actor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given an upload eight days old, never sent,
    when sendMedia has read the file and, before its INSERT, the daily retention runs
    to its end (PostgreSQL: on SQLite a request's transaction holds the write lock from
    its first statement, so nothing runs in between),
    then the retention leaves the file, and the message carries it and is sent."""
    conversation, _ = await first_conversation(media_inbox)
    await media_inbox.download()
    token = await token_for(media_inbox.client, admin)
    media, row = await _upload(media_inbox, token, age=timedelta(days=8))
    check_recipient = outbound.check_recipient
    ran: list[int] = []

    async def retention_first(session: AsyncSession, conversation: Conversation) -> object:
        if not ran:
            ran.append(await run_retention(media_inbox.lifecycle()))
        return await check_recipient(session, conversation)

    monkeypatch.setattr(outbound, "check_recipient", retention_first)

    sent = await send_media(media_inbox.client, token, conversation, media)

    assert ran, "the retention did not run inside sendMedia"
    assert await _settled(media_inbox, sent, row.id)


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
async def test_send_media_while_the_erasure_of_its_only_recipient_deletes_the_upload(
    media_inbox: MediaInbox, admin: Actor
) -> None:
    """Given a fresh upload sent to one contact only, and a second contact,
    when the first contact's erasure has chosen the upload (no surviving message carries
    it) and, before its row goes, sendMedia sends it to the second contact,
    then sendMedia is NOT_FOUND and nothing is queued or sent; the file is gone."""
    first, first_id = await first_conversation(media_inbox)
    await media_inbox.download()
    second, _ = await second_contact(media_inbox)
    token = await token_for(media_inbox.client, admin)
    media, row = await _upload(media_inbox, token, age=timedelta(0))
    assert "errors" not in (await send_media(media_inbox.client, token, first, media)).json()
    async with media_inbox.db.session(media_inbox.account.org_id) as session:
        # Never delivered: the erasure fails it, the worker sends nothing of the first.
        assert len(await _messages_carrying(session, row.id)) == 1
    answers: list[httpx.Response] = []

    async def send() -> None:
        answers.append(await send_media(media_inbox.client, token, second, media))

    assert row.storage_key is not None
    store = InterruptedStore(media_inbox.runtime.media, row.storage_key, send)
    await erase_contact_of(media_inbox, first_id, media=store)

    assert store.ran, "the erasure never deleted the upload"
    assert not await _settled(media_inbox, answers[0], row.id)
    assert row.id not in {m.id for m in await _rows(media_inbox)}


@postgres_only
async def test_the_erasure_of_one_recipient_while_send_media_holds_the_upload(
    media_inbox: MediaInbox, admin: Actor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a fresh upload sent to one contact only, and a second contact,
    when sendMedia to the second contact has read the file and, before its INSERT, the
    first contact's erasure runs to its end (PostgreSQL, as above),
    then the erasure leaves the file (a send holds it), and the second contact's message
    carries it and is sent: a shared upload goes with the last contact."""
    first, first_id = await first_conversation(media_inbox)
    await media_inbox.download()
    second, _ = await second_contact(media_inbox)
    token = await token_for(media_inbox.client, admin)
    media, row = await _upload(media_inbox, token, age=timedelta(0))
    assert "errors" not in (await send_media(media_inbox.client, token, first, media)).json()
    check_recipient = outbound.check_recipient
    erased: list[bool] = []

    async def erasure_first(session: AsyncSession, conversation: Conversation) -> object:
        if not erased:
            await erase_contact_of(media_inbox, first_id)
            erased.append(True)
        return await check_recipient(session, conversation)

    monkeypatch.setattr(outbound, "check_recipient", erasure_first)

    sent = await send_media(media_inbox.client, token, second, media)

    assert erased, "the erasure did not run inside sendMedia"
    assert await _settled(media_inbox, sent, row.id)


async def _rows(inbox: MediaInbox) -> list[MediaFile]:
    async with inbox.db.session(inbox.account.org_id) as session:
        return list((await session.exec(select(MediaFile))).all())
