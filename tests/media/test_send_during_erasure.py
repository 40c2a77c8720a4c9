"""The delivery worker sending a file while an erasure runs: from the erasure's commit
nothing more goes to Meta for the erased contact, a send that finds its message or file
erased stops for good (no retry, no warning), and a message to another contact whose file
was deleted fails with FILE_DELETED.

Each test forces one interleaving with a hook, not a sleep: the throttle (after the
worker read what it sends, before the upload) or the upload to Meta (before the send)
runs the erasure first.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from sqlmodel import col, select

from tests.fixtures.api import token_for
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
from tests.fixtures.meta import ACCESS_TOKEN
from weflux.ids import decode_global_id, encode_global_id
from weflux.lifecycle import erasure
from weflux.models import Contact, Conversation, MediaFile, Message, MessageStatus, utcnow
from weflux.worker import delivery
from weflux.worker.delivery import FILE_DELETED, deliver_due_messages


@dataclass
class HookThrottle:
    """A throttle that lets every send through, running `meanwhile` before the first."""

    meanwhile: Callable[[], Awaitable[None]]
    ran: list[str] = field(default_factory=list)

    async def acquire(self, key: str, rate: int) -> None:
        if not self.ran:
            self.ran.append(key)
            await self.meanwhile()


async def _tombstone(inbox: MediaInbox, conversation_id: uuid.UUID) -> None:
    """eraseContact's own transaction: the contact is erased from its commit on."""
    async with inbox.db.session(inbox.account.org_id) as session:
        conversation = await session.get(Conversation, conversation_id)
        assert conversation is not None
        contact = await session.get(Contact, conversation.contact_id)
        assert contact is not None
        await erasure.tombstone_contact(session, contact, now=utcnow())


async def _contact_of(inbox: MediaInbox, conversation_id: uuid.UUID) -> uuid.UUID:
    async with inbox.db.session(inbox.account.org_id) as session:
        conversation = await session.get(Conversation, conversation_id)
        assert conversation is not None
    return conversation.contact_id


async def _purge(inbox: MediaInbox, contact_id: uuid.UUID) -> None:
    """The lifecycle worker's hard deletion of an erased contact, its files included."""
    runtime = inbox.runtime
    assert await erasure.purge_contact(
        runtime.db, inbox.account.org_id, contact_id, batch=1, media=runtime.media
    )


async def _queued_upload(inbox: MediaInbox, token: str, conversation: str) -> uuid.UUID:
    """An upload sent (queued) in `conversation`; the message's id."""
    uploaded = await upload_media(inbox.client, token, JPEG, "a.jpg", "image/jpeg")
    media = uploaded.json()["data"]["uploadMedia"]["id"]
    sent = await send_media(inbox.client, token, conversation, media)
    assert "errors" not in sent.json(), sent.json()
    async with inbox.db.session(inbox.account.org_id) as session:
        message = (
            await session.exec(select(Message).where(col(Message.media_file_id).is_not(None)))
        ).all()
    return [m for m in message if m.direction == "OUTBOUND"][-1].id


def _noise(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Warnings and errors logged, and any record naming the access token."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.WARNING or ACCESS_TOKEN in record.getMessage()
    ]


async def _deliver(inbox: MediaInbox, throttle: HookThrottle | None = None) -> int:
    runtime = inbox.runtime
    return await deliver_due_messages(
        runtime.db, runtime.channel_services, runtime.settings, throttle=throttle
    )


async def _message(inbox: MediaInbox, message_id: uuid.UUID) -> Message | None:
    async with inbox.db.session(inbox.account.org_id) as session:
        return await session.get(Message, message_id)


@pytest.mark.parametrize("purged", [False, True], ids=["tombstoned", "purged"])
async def test_an_erasure_committed_before_the_upload_stops_the_send(
    media_inbox: MediaInbox, admin: Actor, caplog: pytest.LogCaptureFixture, purged: bool
) -> None:
    """Given a photo queued to a contact, which the worker has claimed and read,
    when, before it uploads the file, the contact's erasure commits (and, in one case,
    the worker's purge deletes the file too),
    then nothing is uploaded to or sent through Meta, the message is not queued again,
    and nothing is logged above INFO."""
    conversation, conversation_id = await first_conversation(media_inbox)
    await media_inbox.download()
    token = await token_for(media_inbox.client, admin)
    message_id = await _queued_upload(media_inbox, token, conversation)
    uploaded_before = len(media_inbox.fake.media)
    contact_id = await _contact_of(media_inbox, conversation_id)

    async def erase() -> None:
        await _tombstone(media_inbox, conversation_id)
        if purged:
            await _purge(media_inbox, contact_id)

    caplog.set_level(logging.INFO)
    throttle = HookThrottle(erase)
    assert await _deliver(media_inbox, throttle) == 1

    assert throttle.ran
    assert media_inbox.fake.sent == []
    assert len(media_inbox.fake.media) == uploaded_before
    assert _noise(caplog) == []
    assert await _deliver(media_inbox) == 0
    assert media_inbox.fake.sent == []
    if not purged:
        await _purge(media_inbox, contact_id)
    assert await _message(media_inbox, message_id) is None


async def test_an_erasure_committed_during_the_upload_stops_the_send(
    media_inbox: MediaInbox,
    admin: Actor,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Given a photo queued to a contact,
    when the worker has uploaded the file to Meta and, before it sends the message, the
    contact's erasure commits,
    then the message is never sent, not queued again, and nothing is logged above INFO."""
    conversation, conversation_id = await first_conversation(media_inbox)
    await media_inbox.download()
    token = await token_for(media_inbox.client, admin)
    await _queued_upload(media_inbox, token, conversation)
    upload_file = delivery._upload_file
    erased: list[bool] = []

    async def upload_then_erase(send: delivery._Send) -> dict[str, object]:
        payload = await upload_file(send)
        await _tombstone(media_inbox, conversation_id)
        erased.append(True)
        return payload

    monkeypatch.setattr(delivery, "_upload_file", upload_then_erase)
    caplog.set_level(logging.INFO)

    assert await _deliver(media_inbox) == 1

    assert erased
    assert media_inbox.fake.sent == []
    assert _noise(caplog) == []
    assert await _deliver(media_inbox) == 0


async def test_a_text_queued_behind_the_throttle_is_not_sent_once_its_contact_is_erased(
    media_inbox: MediaInbox, admin: Actor, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a text reply queued to a contact and claimed by the worker,
    when the contact's erasure commits while the send waits for the number's throughput,
    then nothing is sent and nothing is logged above INFO."""
    conversation, conversation_id = await first_conversation(media_inbox)
    token = await token_for(media_inbox.client, admin)
    sent = await media_inbox.client.post(
        "/graphql",
        headers={"Authorization": f"Bearer {token}"},
        json={
            "query": "mutation($input: SendMessageInput!) { sendMessage(input: $input) { id } }",
            "variables": {"input": {"conversationId": conversation, "text": "hello"}},
        },
    )
    assert "errors" not in sent.json(), sent.json()
    caplog.set_level(logging.INFO)

    async def erase() -> None:
        await _tombstone(media_inbox, conversation_id)

    assert await _deliver(media_inbox, HookThrottle(erase)) == 1

    assert media_inbox.fake.sent == []
    assert _noise(caplog) == []


async def test_a_file_erased_with_its_sender_fails_the_message_to_another_contact(
    media_inbox: MediaInbox, admin: Actor, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a photo contact A sent, sent on by the team to contact B, and claimed by the
    worker,
    when, before the worker uploads it, A is erased and purged (their photo goes),
    then B's message is FAILED with FILE_DELETED at once (not queued again), nothing is
    sent, and no log names the access token."""
    _, first_id = await first_conversation(media_inbox)
    await media_inbox.download()
    second, _ = await second_contact(media_inbox)
    token = await token_for(media_inbox.client, admin)
    async with media_inbox.db.session(media_inbox.account.org_id) as session:
        photo = (await session.exec(select(MediaFile))).one()
    sent = await send_media(media_inbox.client, token, second, encode_global_id("Media", photo.id))
    assert "errors" not in sent.json(), sent.json()
    message_id = decode_global_id(sent.json()["data"]["sendMedia"]["id"], "Message")
    caplog.set_level(logging.INFO)

    async def erase() -> None:
        await erase_contact_of(media_inbox, first_id)

    assert await _deliver(media_inbox, HookThrottle(erase)) == 1

    assert media_inbox.fake.sent == []
    message = await _message(media_inbox, message_id)
    assert message is not None
    assert message.status == MessageStatus.FAILED
    assert message.error_title == FILE_DELETED
    assert message.next_attempt_at is None
    assert not [r for r in caplog.records if ACCESS_TOKEN in r.getMessage()]
    assert await _deliver(media_inbox) == 0
