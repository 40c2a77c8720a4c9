"""Outbound media end to end: uploadMedia (a multipart request), sendMedia, and the
delivery worker uploading the file to the fake Cloud API and sending it."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
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
from weflux.config import Settings
from weflux.ids import decode_global_id, encode_global_id
from weflux.lifecycle import erasure
from weflux.lifecycle.worker import run_retention
from weflux.models import (
    Conversation,
    MediaFile,
    Message,
    MessageStatus,
    Organization,
    utcnow,
)
from weflux.worker.delivery import deliver_due_messages


async def test_an_uploaded_photo_is_sent_end_to_end(media_inbox: MediaInbox, agent: Actor) -> None:
    """Given an Agent in an unassigned conversation whose customer wrote a minute ago,
    when they upload a JPEG named .gif (multipart), send it with a caption, and the
    delivery worker runs,
    then the upload is an image/jpeg (by content), the fake Cloud API received exactly
    that file on the number and a message naming its id with the caption, and the
    message is SENT; a retry with the same clientMessageId answers the same message."""
    client = media_inbox.client
    conversation, _ = await first_conversation(media_inbox)
    token = await token_for(client, agent)

    uploaded = await upload_media(client, token, JPEG, "holiday.gif", "image/gif")
    assert uploaded.status_code == 200, uploaded.text
    media = uploaded.json()["data"]["uploadMedia"]
    assert media["mimeType"] == "image/jpeg"
    assert media["size"] == len(JPEG)
    fetched = await client.get(media["downloadPath"], headers={"Authorization": f"Bearer {token}"})
    assert fetched.content == JPEG

    sent = await send_media(
        client, token, conversation, media["id"], caption="Here", clientMessageId="m1"
    )
    message = sent.json()["data"]["sendMedia"]
    assert message["type"] == "IMAGE"
    assert message["status"] == "QUEUED"
    assert message["text"] == "Here"
    assert message["media"]["id"] == media["id"]
    again = await send_media(
        client, token, conversation, media["id"], caption="Here", clientMessageId="m1"
    )
    assert again.json()["data"]["sendMedia"]["id"] == message["id"]

    runtime = media_inbox.runtime
    assert await deliver_due_messages(runtime.db, runtime.channel_services, runtime.settings) == 1

    fake = media_inbox.fake
    assert len(fake.sent) == 1
    payload = fake.sent[0].payload
    assert payload["type"] == "image"
    assert payload["image"]["caption"] == "Here"
    stored = fake.media[payload["image"]["id"]]
    assert stored.content == JPEG
    assert stored.phone_number_id == media_inbox.account.phone_number_id
    assert stored.mime_type == "image/jpeg"
    status = await gql(
        client,
        token,
        "query($id: ID!) { node(id: $id) { ... on Message { status } } }",
        {"id": message["id"]},
    )
    assert status.json()["data"]["node"]["status"] == MessageStatus.SENT.value


async def test_each_message_s_media_carries_the_caption_it_was_sent_with(
    media_inbox: MediaInbox, agent: Actor
) -> None:
    """Given one upload
    when it is sent twice with different captions, and once without
    then each message's `media.caption` is its own caption (as its `text`), null for the
    one without, when sent and when read again: the file is shared, its caption is not."""
    client = media_inbox.client
    conversation, _ = await first_conversation(media_inbox)
    token = await token_for(client, agent)
    uploaded = await upload_media(client, token, JPEG, "photo.jpg", "image/jpeg")
    media = uploaded.json()["data"]["uploadMedia"]["id"]
    query = (
        "mutation($input: SendMediaInput!) { sendMedia(input: $input) "
        "{ id text media { id caption } } }"
    )

    sent = []
    for caption in ("First", "Second", None):
        answer = await gql(
            client,
            token,
            query,
            {"input": {"conversationId": conversation, "mediaId": media, "caption": caption}},
        )
        message = answer.json()["data"]["sendMedia"]
        assert message["media"] == {"id": media, "caption": caption}
        assert message["text"] == caption
        sent.append(message["id"])

    read = await gql(
        client,
        token,
        "query($c: ID!) { conversation(id: $c) { messages(last: 3) { edges { node { "
        "id media { caption } } } } } }",
        {"c": conversation},
    )
    captions = {
        edge["node"]["id"]: edge["node"]["media"]["caption"]
        for edge in read.json()["data"]["conversation"]["messages"]["edges"]
    }
    assert captions == dict(zip(sent, ["First", "Second", None], strict=True))


async def test_a_file_is_judged_by_its_content_and_size(
    media_inbox: MediaInbox, admin: Actor
) -> None:
    """Given uploads of an HTML page named photo.jpg, an executable named report.pdf, an
    empty file and a JPEG over WhatsApp's 5 MB image limit,
    when each is uploaded,
    then each is BAD_USER_INPUT and nothing is stored; a PDF is accepted as a document
    with its (cleaned) name."""
    client = media_inbox.client
    token = await token_for(client, admin)
    for content, name in [
        (b"<html><script>alert(1)</script></html>", "photo.jpg"),
        (b"MZ\x90\x00" + b"\x00" * 100, "report.pdf"),
        (b"", "empty.png"),
        (b"\xff\xd8\xff" + b"\x00" * (5 * 1024 * 1024), "big.jpg"),
    ]:
        response = await upload_media(client, token, content, name, "image/jpeg")
        assert error_codes(response) == ["BAD_USER_INPUT"], name
    assert [p for p in media_inbox.runtime.settings.media_directory.rglob("*") if p.is_file()] == []

    pdf = await upload_media(client, token, b"%PDF-1.7\n" + b"x" * 100, "../Q3 report.pdf", "x/y")
    assert pdf.json()["data"]["uploadMedia"]["mimeType"] == "application/pdf"


async def test_only_the_uploader_may_send_or_fetch_an_unsent_upload(
    media_inbox: MediaInbox, agent: Actor, other_agent: Actor, other_admin: Actor
) -> None:
    """Given an Agent's upload, not sent yet,
    when another Agent of the workspace or an Admin of another workspace fetches it or
    sends it in a conversation,
    then each gets NOT_FOUND (404 for the file)."""
    client = media_inbox.client
    conversation, _ = await first_conversation(media_inbox)
    token = await token_for(client, agent)
    media = (await upload_media(client, token, JPEG, "a.jpg", "image/jpeg")).json()["data"][
        "uploadMedia"
    ]
    for member in (other_agent, other_admin):
        theirs = await token_for(client, member)
        fetched = await client.get(
            media["downloadPath"], headers={"Authorization": f"Bearer {theirs}"}
        )
        assert fetched.status_code == 404
        assert error_codes(await send_media(client, theirs, conversation, media["id"])) == [
            "NOT_FOUND"
        ]


async def test_a_sent_upload_follows_its_messages_not_its_uploader(
    media_inbox: MediaInbox, admin: Actor, agent: Actor, other_agent: Actor
) -> None:
    """Given an upload an Agent sent in an unassigned conversation and one an Admin sent
    in the same conversation,
    when the conversation is assigned to another Agent, and then its contact is erased
    (before the worker purges),
    then the Agent who uploaded gets 404 for their file and NOT_FOUND to send it again,
    as whoever may not see its message (only an unsent upload is its uploader's); the
    new assignee gets it; after the erasure the Admin who uploaded gets 404 and
    NOT_FOUND too (re-sent elsewhere, the file would outlive the contact's erasure)."""
    client = media_inbox.client
    conversation, conversation_id = await first_conversation(media_inbox)
    elsewhere, _ = await second_contact(media_inbox)
    agent_token = await token_for(client, agent)
    admin_token = await token_for(client, admin)
    sent: dict[str, str] = {}
    for member, token in ((agent, agent_token), (admin, admin_token)):
        media = (await upload_media(client, token, JPEG, "a.jpg", "image/jpeg")).json()
        sent[member.user.email] = media["data"]["uploadMedia"]["id"]
        queued = await send_media(client, token, conversation, sent[member.user.email])
        assert "errors" not in queued.json(), queued.text
    agents, admins = sent[agent.user.email], sent[admin.user.email]
    org_id = media_inbox.account.org_id
    async with media_inbox.db.session(org_id) as session:
        await session.exec(
            update(Conversation)
            .where(col(Conversation.id) == conversation_id)
            .values(assignee_membership_id=other_agent.membership.id)
        )
        row = await session.get(Conversation, conversation_id)
        assert row is not None
        contact = encode_global_id("Contact", row.contact_id)

    async def fetched(token: str, media: str) -> int:
        path = f"/media/{media}"
        return (await client.get(path, headers={"Authorization": f"Bearer {token}"})).status_code

    assert await fetched(agent_token, agents) == 404
    assert error_codes(await send_media(client, agent_token, elsewhere, agents)) == ["NOT_FOUND"]
    assert await fetched(await token_for(client, other_agent), agents) == 200

    erase = "mutation($id: ID!) { eraseContact(contactId: $id) { id } }"
    erased = await gql(client, admin_token, erase, {"id": contact})
    assert "errors" not in erased.json(), erased.text
    assert await fetched(admin_token, admins) == 404
    assert error_codes(await send_media(client, admin_token, elsewhere, admins)) == ["NOT_FOUND"]


async def test_send_media_obeys_the_service_window(media_inbox: MediaInbox, admin: Actor) -> None:
    """Given a conversation whose customer last wrote two days ago,
    when an upload is sent in it,
    then the answer is OUTSIDE_SERVICE_WINDOW and nothing is queued."""
    client = media_inbox.client
    conversation, conversation_id = await first_conversation(media_inbox)
    async with media_inbox.db.session(media_inbox.account.org_id) as session:
        await session.exec(
            update(Conversation)
            .where(col(Conversation.id) == conversation_id)
            .values(last_inbound_at=utcnow() - timedelta(days=2))
        )
    token = await token_for(client, admin)
    media = (await upload_media(client, token, JPEG, "a.jpg", "image/jpeg")).json()["data"][
        "uploadMedia"
    ]
    response = await send_media(client, token, conversation, media["id"])
    assert error_codes(response) == ["OUTSIDE_SERVICE_WINDOW"]


def _files(settings: Settings) -> list[bytes]:
    return stored_blobs(settings, None, None)


def decode_id(global_id: str) -> uuid.UUID:
    return decode_global_id(global_id, "Media")


def _blobs(settings: Settings, media_bucket: str | None, request: pytest.FixtureRequest) -> int:
    s3 = request.getfixturevalue("s3_server") if media_bucket is not None else None
    return len(stored_blobs(settings, s3, media_bucket))


@pytest.mark.parametrize("media_store_kind", ["disk", "s3"])
async def test_erasing_the_contact_deletes_the_files_sent_to_them(
    media_inbox: MediaInbox,
    admin: Actor,
    settings: Settings,
    media_bucket: str | None,
    request: pytest.FixtureRequest,
) -> None:
    """Given a contact who sent an image and was sent a photo (uploaded, sent, delivered),
    and another upload not sent,
    when the contact is erased and purged,
    then both files of the conversation are gone from the store (disk or bucket) and the
    database; the unsent upload stays."""
    client = media_inbox.client
    conversation, conversation_id = await first_conversation(media_inbox)
    await media_inbox.download()
    token = await token_for(client, admin)
    sent = (await upload_media(client, token, JPEG, "a.jpg", "image/jpeg")).json()["data"][
        "uploadMedia"
    ]
    kept = (await upload_media(client, token, JPEG, "b.jpg", "image/jpeg")).json()["data"][
        "uploadMedia"
    ]
    assert "errors" not in (await send_media(client, token, conversation, sent["id"])).json()
    runtime = media_inbox.runtime
    assert await deliver_due_messages(runtime.db, runtime.channel_services, runtime.settings) == 1
    assert _blobs(settings, media_bucket, request) == 3
    org_id = media_inbox.account.org_id
    async with media_inbox.db.session(org_id) as session:
        conversation_row = await session.get(Conversation, conversation_id)
        assert conversation_row is not None

    assert await erasure.purge_contact(
        runtime.db, org_id, conversation_row.contact_id, batch=1, media=runtime.media
    )

    assert _blobs(settings, media_bucket, request) == 1
    assert await media_rows(media_inbox) == {decode_id(kept["id"])}


async def test_uploads_never_sent_expire_with_the_daily_retention(
    media_inbox: MediaInbox, admin: Actor, settings: Settings
) -> None:
    """Given three uploads eight days old, one of them sent, and a fresh one,
    when the daily retention runs (uploads kept 7 days, one row per batch),
    then the two old unsent uploads are gone (file and row); the sent one and the fresh
    one stay."""
    client = media_inbox.client
    conversation, _ = await first_conversation(media_inbox)
    await media_inbox.download()
    token = await token_for(client, admin)
    ids = []
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        uploaded = await upload_media(client, token, JPEG, name, "image/jpeg")
        ids.append(decode_id(uploaded.json()["data"]["uploadMedia"]["id"]))
    old, sent, fresh = ids[:2], ids[2], ids[3]
    assert (
        "errors"
        not in (
            await send_media(client, token, conversation, encode_global_id("Media", sent))
        ).json()
    )
    org_id = media_inbox.account.org_id
    async with media_inbox.db.session(org_id) as session:
        await session.exec(
            update(MediaFile)
            .where(col(MediaFile.id).in_([*old, sent]))
            .values(created_at=utcnow() - timedelta(days=8))
        )
    inbound = await media_rows(media_inbox) - set(ids)
    assert len(_files(settings)) == 5
    lifecycle = media_inbox.lifecycle()

    await run_retention(lifecycle)

    assert await media_rows(media_inbox) == {sent, fresh, *inbound}
    assert len(_files(settings)) == 3


async def test_message_retention_deletes_sent_files_but_not_one_sent_again_since(
    media_inbox: MediaInbox, admin: Actor, settings: Settings
) -> None:
    """Given a workspace keeping messages 30 days, an upload sent 40 days ago only, and
    another sent 40 days ago and again today,
    when the daily retention runs,
    then the first file is gone with its old message (file and row); the second stays
    with today's message."""
    client = media_inbox.client
    conversation, _ = await first_conversation(media_inbox)
    token = await token_for(client, admin)
    ids = []
    for name in ("old.jpg", "again.jpg"):
        uploaded = await upload_media(client, token, JPEG, name, "image/jpeg")
        ids.append(uploaded.json()["data"]["uploadMedia"]["id"])
    for media in (ids[0], ids[1]):
        assert "errors" not in (await send_media(client, token, conversation, media)).json()
    org_id = media_inbox.account.org_id
    async with media_inbox.db.session(org_id) as session:
        await session.exec(update(Message).values(created_at=utcnow() - timedelta(days=40)))
        organization = await session.get(Organization, org_id)
        assert organization is not None
        organization.message_retention_days = 30
        session.add(organization)
    assert "errors" not in (await send_media(client, token, conversation, ids[1])).json()
    lifecycle = media_inbox.lifecycle()

    await run_retention(lifecycle)

    assert await media_rows(media_inbox) == {decode_id(ids[1])}
    assert len(_files(settings)) == 1


async def _carried_by(inbox: MediaInbox, media_id: uuid.UUID) -> int:
    async with inbox.db.session(inbox.account.org_id) as session:
        query = select(Message.id).where(Message.media_file_id == media_id)
        return len((await session.exec(query)).all())


@pytest.mark.parametrize("media_store_kind", ["disk", "s3"])
async def test_an_upload_sent_to_two_contacts_goes_with_the_last_of_them(
    media_inbox: MediaInbox,
    admin: Actor,
    settings: Settings,
    media_bucket: str | None,
    request: pytest.FixtureRequest,
) -> None:
    """Given one upload (8 days old) sent to two contacts,
    when the first contact is erased and purged, and the daily retention runs (unsent
    uploads kept 7 days),
    then the file (stored and row) stays, still carried by the second contact's message;
    when the second contact is erased and purged too,
    then the file is gone from the store and the database."""
    client = media_inbox.client
    first, first_id = await first_conversation(media_inbox)
    await media_inbox.download()
    second, second_id = await second_contact(media_inbox)
    token = await token_for(client, admin)
    shared = (await upload_media(client, token, JPEG, "a.jpg", "image/jpeg")).json()["data"]
    media_id = decode_id(shared["uploadMedia"]["id"])
    for conversation in (first, second):
        sent = await send_media(client, token, conversation, shared["uploadMedia"]["id"])
        assert "errors" not in sent.json(), sent.json()
    org_id = media_inbox.account.org_id
    async with media_inbox.db.session(org_id) as session:
        await session.exec(
            update(MediaFile)
            .where(col(MediaFile.id) == media_id)
            .values(created_at=utcnow() - timedelta(days=8))
        )
    stored = _blobs(settings, media_bucket, request)
    lifecycle = media_inbox.lifecycle()

    await erase_contact_of(media_inbox, first_id)
    await run_retention(lifecycle)

    assert media_id in await media_rows(media_inbox)
    assert _blobs(settings, media_bucket, request) == stored - 1  # the first's inbound image
    assert await _carried_by(media_inbox, media_id) == 1

    await erase_contact_of(media_inbox, second_id)

    assert media_id not in await media_rows(media_inbox)
    assert _blobs(settings, media_bucket, request) == stored - 2


async def test_message_retention_keeps_an_upload_a_newer_message_to_another_contact_carries(
    media_inbox: MediaInbox, admin: Actor, settings: Settings
) -> None:
    """Given a workspace keeping messages 30 days and an upload sent to one contact 40 days
    ago and to another today,
    when the daily retention runs,
    then the old message goes and the file stays (stored and row) with today's message."""
    client = media_inbox.client
    first, _ = await first_conversation(media_inbox)
    token = await token_for(client, admin)
    shared = (await upload_media(client, token, JPEG, "a.jpg", "image/jpeg")).json()["data"]
    media_id = decode_id(shared["uploadMedia"]["id"])
    assert (
        "errors" not in (await send_media(client, token, first, shared["uploadMedia"]["id"])).json()
    )
    org_id = media_inbox.account.org_id
    async with media_inbox.db.session(org_id) as session:
        await session.exec(update(Message).values(created_at=utcnow() - timedelta(days=40)))
        organization = await session.get(Organization, org_id)
        assert organization is not None
        organization.message_retention_days = 30
        session.add(organization)
    second, _ = await second_contact(media_inbox)
    assert (
        "errors"
        not in (await send_media(client, token, second, shared["uploadMedia"]["id"])).json()
    )
    lifecycle = media_inbox.lifecycle()

    await run_retention(lifecycle)

    assert await media_rows(media_inbox) == {media_id}
    assert len(_files(settings)) == 1
    assert await _carried_by(media_inbox, media_id) == 1
