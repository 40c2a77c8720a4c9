"""Which media files go when (docs/lifecycle.md#which-files-go-when): a received file the
team sent on with sendMedia, under message retention, the expiry of files no message
carries, and the erasure of the contact who sent it or of one it was sent to."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import update
from sqlmodel import col, select

from tests.fixtures.api import error_codes, gql, token_for
from tests.fixtures.factories import Actor
from tests.fixtures.media import (
    JPEG,
    MediaInbox,
    erase_contact_of,
    first_conversation,
    media_rows,
    second_contact,
    send_media,
    stored_blobs,
    upload_media,
)
from weflux.ids import encode_global_id
from weflux.lifecycle import erasure
from weflux.lifecycle.worker import run_retention
from weflux.models import (
    Conversation,
    MediaFile,
    MediaOrigin,
    Message,
    MessageStatus,
    Organization,
    utcnow,
)
from weflux.worker.delivery import FILE_DELETED, deliver_due_messages

MEDIA_OF = "query($id: ID!) { node(id: $id) { ... on Message { status errorTitle media { id } } } }"


async def _received_file(inbox: MediaInbox, conversation_id: uuid.UUID) -> MediaFile:
    """The file the contact of `conversation_id` sent (downloaded)."""
    async with inbox.db.session(inbox.account.org_id) as session:
        row = (
            await session.exec(
                select(MediaFile)
                .join(Message, col(Message.id) == col(MediaFile.message_id))
                .where(Message.conversation_id == conversation_id)
            )
        ).one()
    assert row.origin == MediaOrigin.INBOUND
    return row


async def _send_on(
    inbox: MediaInbox, token: str, conversation: str, media_id: uuid.UUID
) -> uuid.UUID:
    """sendMedia of a stored file in `conversation`; the queued message's id."""
    sent = await send_media(inbox.client, token, conversation, encode_global_id("Media", media_id))
    assert "errors" not in sent.json(), sent.json()
    async with inbox.db.session(inbox.account.org_id) as session:
        message = (
            await session.exec(
                select(Message)
                .where(Message.media_file_id == media_id)
                .order_by(col(Message.created_at).desc())
            )
        ).first()
    assert message is not None
    return message.id


@dataclass(frozen=True)
class _SentOn:
    """A photo the first contact sent, which an Admin sent on to a second contact."""

    first_id: uuid.UUID  # the first contact's conversation
    second: str  # the second contact's conversation (global id)
    second_id: uuid.UUID
    photo: MediaFile
    message: uuid.UUID  # the sendMedia message
    token: str  # the Admin's


async def _photo_sent_on(inbox: MediaInbox, admin: Actor) -> _SentOn:
    """The first contact's photo (downloaded), sent on to a second contact by an Admin."""
    _, first_id = await first_conversation(inbox)
    await inbox.download()
    photo = await _received_file(inbox, first_id)
    second, second_id = await second_contact(inbox)
    token = await token_for(inbox.client, admin)
    message = await _send_on(inbox, token, second, photo.id)
    return _SentOn(first_id, second, second_id, photo, message, token)


async def _keep_messages(inbox: MediaInbox, days: int, *, age: timedelta) -> None:
    """The workspace keeps messages `days` days; every message so far is `age` old."""
    async with inbox.db.session(inbox.account.org_id) as session:
        await session.exec(update(Message).values(created_at=utcnow() - age))
        organization = await session.get(Organization, inbox.account.org_id)
        assert organization is not None
        organization.message_retention_days = days
        organization.retention_ran_at = None
        session.add(organization)


async def _media_of(inbox: MediaInbox, token: str, message_id: uuid.UUID) -> object:
    answer = await gql(
        inbox.client, token, MEDIA_OF, {"id": encode_global_id("Message", message_id)}
    )
    assert "errors" not in answer.json(), answer.json()
    return answer.json()["data"]["node"]["media"]


def _blobs(inbox: MediaInbox) -> int:
    return len(stored_blobs(inbox.runtime.settings, None, None))


async def test_retention_keeps_a_received_file_a_newer_message_sends_on(
    media_inbox: MediaInbox, admin: Actor
) -> None:
    """Given a workspace keeping messages 30 days, a photo a contact sent 40 days ago,
    and the team sending that photo on to another contact today (sendMedia),
    when the daily retention runs,
    then the old message goes, but the photo (stored and row) stays, detached from it
    (`message_id` null), and today's message still shows and fetches it;
    when today's message expires too (40 days later),
    then the photo goes with it, file and row."""
    client = media_inbox.client
    _, first_id = await first_conversation(media_inbox)
    await media_inbox.download()
    photo = await _received_file(media_inbox, first_id)
    await _keep_messages(media_inbox, 30, age=timedelta(days=40))
    second, _ = await second_contact(media_inbox)
    token = await token_for(client, admin)
    forwarded = await _send_on(media_inbox, token, second, photo.id)
    lifecycle = media_inbox.lifecycle()

    await run_retention(lifecycle)

    assert await media_rows(media_inbox) == {photo.id}
    assert _blobs(media_inbox) == 1
    async with media_inbox.db.session(media_inbox.account.org_id) as session:
        row = await session.get(MediaFile, photo.id)
        assert row is not None
        assert row.message_id is None
        assert await session.get(Message, forwarded) is not None
    media = await _media_of(media_inbox, token, forwarded)
    assert media == {"id": encode_global_id("Media", photo.id)}
    fetched = await client.get(
        f"/media/{encode_global_id('Media', photo.id)}",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert fetched.status_code == 200

    await run_retention(lifecycle, now=utcnow() + timedelta(days=40))

    assert await media_rows(media_inbox) == set()
    assert _blobs(media_inbox) == 0


async def test_a_received_file_no_message_carries_expires_like_an_unsent_upload(
    media_inbox: MediaInbox,
) -> None:
    """Given a received photo (eight days old) that no message carries any more (its
    own message went and nothing sent it on), and one received today in the same state,
    when the daily retention runs (files no message carries kept 7 days),
    then the old photo is gone, file and row; today's stays."""
    _, first_id = await first_conversation(media_inbox)
    await media_inbox.download()
    old = await _received_file(media_inbox, first_id)
    await media_inbox.receive("image", b"\xff\xd8\xffnew" * 10, mime_type="image/jpeg")
    await media_inbox.download()
    org_id = media_inbox.account.org_id
    async with media_inbox.db.session(org_id) as session:
        await session.exec(update(MediaFile).values(message_id=None))
        await session.exec(update(Message).values(media_file_id=None))
        await session.exec(
            update(MediaFile)
            .where(col(MediaFile.id) == old.id)
            .values(created_at=utcnow() - timedelta(days=8))
        )
    fresh = await media_rows(media_inbox) - {old.id}
    assert len(fresh) == 1

    await run_retention(media_inbox.lifecycle())

    assert await media_rows(media_inbox) == fresh
    assert _blobs(media_inbox) == 1


async def test_erasure_deletes_the_contacts_own_file_even_when_sent_on(
    media_inbox: MediaInbox, admin: Actor
) -> None:
    """Given a photo a contact sent, which the team sent on to another contact (queued,
    not delivered yet), and a second photo sent on and delivered,
    when the first contact is erased and purged,
    then both of their photos are gone from the store and the database (the contact's
    media, CONTRACT §7); the other contact's messages stay and show `media: null`; the
    queued one fails with FILE_DELETED when the worker gets to it, sending nothing."""
    sent_on = await _photo_sent_on(media_inbox, admin)
    first_id, second, token = sent_on.first_id, sent_on.second, sent_on.token
    delivered_photo, delivered = sent_on.photo, sent_on.message
    runtime = media_inbox.runtime
    assert await deliver_due_messages(runtime.db, runtime.channel_services, runtime.settings) == 1
    sent_before = len(media_inbox.fake.sent)
    await media_inbox.receive("image", b"\xff\xd8\xffmore" * 10, mime_type="image/jpeg")
    await media_inbox.download()
    queued_photo = (await media_rows(media_inbox)) - {delivered_photo.id}
    [queued_photo_id] = queued_photo
    queued = await _send_on(media_inbox, token, second, queued_photo_id)

    await erase_contact_of(media_inbox, first_id)

    assert await media_rows(media_inbox) == set()
    assert _blobs(media_inbox) == 0
    assert await _media_of(media_inbox, token, delivered) is None
    assert await _media_of(media_inbox, token, queued) is None
    assert await deliver_due_messages(runtime.db, runtime.channel_services, runtime.settings) == 1
    assert len(media_inbox.fake.sent) == sent_before
    async with media_inbox.db.session(media_inbox.account.org_id) as session:
        row = await session.get(Message, queued)
        assert row is not None
    assert row.status == MessageStatus.FAILED
    assert row.error_title == FILE_DELETED
    assert row.next_attempt_at is None


async def test_erasing_a_contact_a_received_file_was_sent_to_keeps_it_for_its_sender(
    media_inbox: MediaInbox, admin: Actor
) -> None:
    """Given a photo contact A sent, which the team sent on to contact B,
    when B is erased and purged,
    then A's photo stays (file and row, still A's message's), and A's message shows it."""
    sent_on = await _photo_sent_on(media_inbox, admin)
    second_id, photo, token = sent_on.second_id, sent_on.photo, sent_on.token

    await erase_contact_of(media_inbox, second_id)

    assert await media_rows(media_inbox) == {photo.id}
    assert _blobs(media_inbox) == 1
    assert photo.message_id is not None
    assert await _media_of(media_inbox, token, photo.message_id) == {
        "id": encode_global_id("Media", photo.id)
    }


async def test_retention_deletes_a_received_file_nothing_newer_carries(
    media_inbox: MediaInbox, admin: Actor
) -> None:
    """Given an upload sent to contact A (40 days ago) and to contact B (today), and
    A's own photo (40 days ago), in a workspace keeping messages 30 days,
    when the daily retention runs,
    then A's photo goes with its message (nothing newer carries it), the upload stays
    with B's message; when B is erased, the upload goes too."""
    client = media_inbox.client
    first, first_id = await first_conversation(media_inbox)
    await media_inbox.download()
    photo = await _received_file(media_inbox, first_id)
    token = await token_for(client, admin)
    uploaded = await upload_media(client, token, JPEG, "a.jpg", "image/jpeg")
    upload_global = uploaded.json()["data"]["uploadMedia"]["id"]
    assert "errors" not in (await send_media(client, token, first, upload_global)).json()
    await _keep_messages(media_inbox, 30, age=timedelta(days=40))
    second, second_id = await second_contact(media_inbox)
    assert "errors" not in (await send_media(client, token, second, upload_global)).json()

    await run_retention(media_inbox.lifecycle())

    remaining = await media_rows(media_inbox)
    assert photo.id not in remaining
    assert len(remaining) == 1
    assert _blobs(media_inbox) == 1

    await erase_contact_of(media_inbox, second_id)

    assert await media_rows(media_inbox) == set()
    assert _blobs(media_inbox) == 0


ERASE = "mutation($id: ID!) { eraseContact(contactId: $id) { id status } }"


async def test_an_erased_contacts_file_sent_on_is_hidden_from_the_erasures_commit(
    media_inbox: MediaInbox, admin: Actor
) -> None:
    """Given a photo contact A sent, which the team sent on to contact B (queued),
    when an Admin erases A (eraseContact: the tombstone, before the worker purges),
    then at once B's message shows `media: null`, the photo answers 404 and sendMedia of
    it NOT_FOUND, and the worker fails B's message with FILE_DELETED, sending nothing."""
    client = media_inbox.client
    sent_on = await _photo_sent_on(media_inbox, admin)
    first_id, second, photo, forwarded, token = (
        sent_on.first_id,
        sent_on.second,
        sent_on.photo,
        sent_on.message,
        sent_on.token,
    )
    async with media_inbox.db.session(media_inbox.account.org_id) as session:
        conversation = await session.get(Conversation, first_id)
        assert conversation is not None

    erased = await gql(
        client, token, ERASE, {"id": encode_global_id("Contact", conversation.contact_id)}
    )

    assert "errors" not in erased.json(), erased.json()
    assert await _media_of(media_inbox, token, forwarded) is None
    photo_id = encode_global_id("Media", photo.id)
    fetched = await client.get(f"/media/{photo_id}", headers={"Authorization": f"Bearer {token}"})
    assert fetched.status_code == 404
    assert error_codes(await send_media(client, token, second, photo_id)) == ["NOT_FOUND"]
    runtime = media_inbox.runtime
    assert await deliver_due_messages(runtime.db, runtime.channel_services, runtime.settings) == 1
    assert media_inbox.fake.sent == []
    async with media_inbox.db.session(media_inbox.account.org_id) as session:
        message = await session.get(Message, forwarded)
        assert message is not None
    assert (message.status, message.error_title) == (MessageStatus.FAILED, FILE_DELETED)


async def test_erasing_the_sender_of_a_file_retention_detached_deletes_it(
    media_inbox: MediaInbox, admin: Actor
) -> None:
    """Given a photo contact A sent 40 days ago, which the team sent on to contact B
    today, and the daily retention (30 days) that took A's message and detached the photo
    (`message_id` null, its sender kept),
    when an Admin erases A (eraseContact: the tombstone),
    then at once B's message shows `media: null` and the photo answers 404;
    when the worker purges A,
    then the photo is gone, row and stored file (A's media, CONTRACT §7), and B's message
    stays, still showing `media: null`."""
    client = media_inbox.client
    org_id = media_inbox.account.org_id
    _, first_id = await first_conversation(media_inbox)
    await media_inbox.download()
    photo = await _received_file(media_inbox, first_id)
    async with media_inbox.db.session(org_id) as session:
        conversation = await session.get(Conversation, first_id)
        assert conversation is not None
    sender = conversation.contact_id
    assert photo.sender_contact_id == sender
    await _keep_messages(media_inbox, 30, age=timedelta(days=40))
    second, _ = await second_contact(media_inbox)
    token = await token_for(client, admin)
    forwarded = await _send_on(media_inbox, token, second, photo.id)
    await run_retention(media_inbox.lifecycle())
    async with media_inbox.db.session(org_id) as session:
        detached = await session.get(MediaFile, photo.id)
        assert detached is not None
    assert (detached.message_id, detached.sender_contact_id) == (None, sender)
    photo_url = f"/media/{encode_global_id('Media', photo.id)}"
    auth = {"Authorization": f"Bearer {token}"}

    erased = await gql(client, token, ERASE, {"id": encode_global_id("Contact", sender)})

    assert "errors" not in erased.json(), erased.json()
    assert await _media_of(media_inbox, token, forwarded) is None
    assert (await client.get(photo_url, headers=auth)).status_code == 404
    assert _blobs(media_inbox) == 1

    runtime = media_inbox.runtime
    assert await erasure.purge_contact(runtime.db, org_id, sender, batch=1, media=runtime.media)

    assert await media_rows(media_inbox) == set()
    assert _blobs(media_inbox) == 0
    async with media_inbox.db.session(org_id) as session:
        assert await session.get(Message, forwarded) is not None
    assert await _media_of(media_inbox, token, forwarded) is None
    assert (await client.get(photo_url, headers=auth)).status_code == 404


async def test_an_upload_names_no_sender_and_stays_when_a_contact_it_was_sent_to_is_erased(
    media_inbox: MediaInbox, admin: Actor
) -> None:
    """Given an upload sent to contact A and to contact B,
    when A is erased and purged,
    then the upload (no sender: a member's) stays for B, row and stored file."""
    client = media_inbox.client
    first, first_id = await first_conversation(media_inbox)
    await media_inbox.download()
    token = await token_for(client, admin)
    uploaded = await upload_media(client, token, JPEG, "a.jpg", "image/jpeg")
    upload_global = uploaded.json()["data"]["uploadMedia"]["id"]
    second, _ = await second_contact(media_inbox)
    for conversation in (first, second):
        assert "errors" not in (await send_media(client, token, conversation, upload_global)).json()
    photo = await _received_file(media_inbox, first_id)
    [upload_id] = await media_rows(media_inbox) - {photo.id}
    async with media_inbox.db.session(media_inbox.account.org_id) as session:
        upload = await session.get(MediaFile, upload_id)
        assert upload is not None
    assert (upload.origin, upload.sender_contact_id) == (MediaOrigin.UPLOAD, None)

    await erase_contact_of(media_inbox, first_id)

    assert await media_rows(media_inbox) == {upload_id}
    assert _blobs(media_inbox) == 1


async def test_an_agent_who_sees_only_the_conversation_a_file_was_sent_on_to_may_fetch_it(
    media_inbox: MediaInbox, admin: Actor, agent: Actor, other_agent: Actor
) -> None:
    """Given a photo contact A sent (A's conversation assigned to another Agent), which
    the team sent on to contact B (unassigned),
    when the Agent who sees B's conversation only fetches the photo,
    then they get it (it is B's message's file too); the other Agent, who sees A's
    conversation, still gets it; a file of neither stays 404 for the Agent."""
    client = media_inbox.client
    sent_on = await _photo_sent_on(media_inbox, admin)
    first_id, photo = sent_on.first_id, sent_on.photo
    await media_inbox.receive("image", b"\xff\xd8\xffmine" * 10, mime_type="image/jpeg")
    await media_inbox.download()
    async with media_inbox.db.session(media_inbox.account.org_id) as session:
        await session.exec(
            update(Conversation)
            .where(col(Conversation.id) == first_id)
            .values(assignee_membership_id=other_agent.membership.id)
        )
    others = (await media_rows(media_inbox)) - {photo.id}

    for member in (agent, other_agent):
        theirs = await token_for(client, member)
        fetched = await client.get(
            f"/media/{encode_global_id('Media', photo.id)}",
            headers={"Authorization": f"Bearer {theirs}"},
        )
        assert fetched.status_code == 200, member
    mine = await token_for(client, agent)
    for other in others:
        fetched = await client.get(
            f"/media/{encode_global_id('Media', other)}",
            headers={"Authorization": f"Bearer {mine}"},
        )
        assert fetched.status_code == 404
