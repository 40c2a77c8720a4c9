"""`updateCursor`: every change of a conversation's or message's visible state moves it
forward in the workspace's change feed."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tests.fixtures.factories import Actor, create_conversation, create_message
from tests.fixtures.inbox import ASSIGN, MARK_READ, UPDATE_STATUS, Api, gid, workspace
from tests.fixtures.outbound import record_events
from weflux.auth.scoping import see_erased
from weflux.db import Database
from weflux.models import Conversation, Organization, WhatsAppAccount, utcnow
from weflux.pagination import decode_update_cursor
from weflux.runtime import runtime_of

CURSOR = "query($id: ID!) { conversation(id: $id) { updateCursor } }"
CREATE_LABEL = "mutation($input: CreateLabelInput!) { createLabel(input: $input) { id } }"
SET_LABELS = """mutation($input: SetConversationLabelsInput!) {
  setConversationLabels(input: $input) { id updateCursor } }"""
SEND = """mutation($input: SendMessageInput!) {
  sendMessage(input: $input) { id updateCursor conversation { updateCursor } } }"""
ERASE = "mutation($id: ID!) { eraseContact(contactId: $id) { id } }"


async def _position(api: Api, actor: Actor, conversation_id: str) -> int:
    body = await api(actor, CURSOR, {"id": conversation_id})
    return decode_update_cursor(body["data"]["conversation"]["updateCursor"])


async def test_each_mutation_of_a_conversation_moves_its_update_cursor_forward(
    dialect: str, api: Api, db: Database, org: Organization, account: WhatsAppAccount, admin: Actor
) -> None:
    """Given a conversation the contact wrote to a minute ago,
    when an Admin assigns it, resolves it, reads it, labels it, replies and erases it,
    then after each its `updateCursor` is further on than before (the erased one, in the
    database), and a new outbound message has a position of its own."""
    async with workspace(db, org.id) as session:
        row = await create_conversation(
            session,
            account=account,
            unread_count=2,
            last_inbound_at=utcnow() - timedelta(minutes=1),
        )
    conversation = gid("Conversation", row.id)
    label = (await api(admin, CREATE_LABEL, {"input": {"name": "VIP", "color": "#112233"}}))[
        "data"
    ]["createLabel"]["id"]
    changes = [
        (
            ASSIGN,
            {"conversationId": conversation, "assigneeId": gid("Member", admin.membership.id)},
        ),
        (UPDATE_STATUS, {"conversationId": conversation, "status": "RESOLVED"}),
        (SET_LABELS, {"conversationId": conversation, "labelIds": [label]}),
    ]
    positions = [await _position(api, admin, conversation)]
    for document, variables in changes:
        body = await api(admin, document, {"input": variables})
        assert "errors" not in body, body
        positions.append(await _position(api, admin, conversation))
    body = await api(admin, MARK_READ, {"id": conversation})
    assert "errors" not in body, body
    positions.append(await _position(api, admin, conversation))
    sent = await api(admin, SEND, {"input": {"conversationId": conversation, "text": "Hi"}})
    assert "errors" not in sent, sent
    message = sent["data"]["sendMessage"]
    positions.append(decode_update_cursor(message["conversation"]["updateCursor"]))
    assert positions == sorted(set(positions)), positions
    assert decode_update_cursor(message["updateCursor"]) > positions[-2]

    erased = await api(admin, ERASE, {"id": gid("Contact", row.contact_id)})
    assert "errors" not in erased, erased
    async with db.session(org.id) as session:
        see_erased(session)
        stored = await session.get(Conversation, row.id)
    assert stored is not None
    assert stored.update_seq > positions[-1]


REACT = """mutation($input: ReactToMessageInput!) {
  reactToMessage(input: $input) { id updateCursor } }"""
MESSAGE_CURSOR = "query($id: ID!) { node(id: $id) { ... on Message { updateCursor } } }"


async def test_a_reaction_moves_its_message_forward_in_the_feed(
    dialect: str, api: Api, db: Database, org: Organization, account: WhatsAppAccount, admin: Actor
) -> None:
    """Given an inbound message,
    when an Admin reacts to it,
    then its `updateCursor` is further on (a reaction is kept beside the row, and still
    counts as a change of the message for `messageUpdated(after:)`)."""
    async with workspace(db, org.id) as session:
        row = await create_conversation(
            session, account=account, last_inbound_at=utcnow() - timedelta(minutes=1)
        )
        inbound = await create_message(session, row)
    message = gid("Message", inbound.id)
    before = (await api(admin, MESSAGE_CURSOR, {"id": message}))["data"]["node"]["updateCursor"]
    reacted = await api(admin, REACT, {"input": {"messageId": message, "emoji": "👍"}})
    assert "errors" not in reacted, reacted
    after = (await api(admin, MESSAGE_CURSOR, {"id": message}))["data"]["node"]["updateCursor"]
    assert decode_update_cursor(after) > decode_update_cursor(before)


UPDATE_LABEL = "mutation($input: UpdateLabelInput!) { updateLabel(input: $input) { id } }"
DELETE_LABEL = "mutation($id: ID!) { deleteLabel(id: $id) }"
LABELS = "query($id: ID!) { conversation(id: $id) { labels { name } } }"


async def test_renaming_or_deleting_a_label_moves_every_labelled_conversation_forward(
    dialect: str,
    app: Any,
    api: Api,
    db: Database,
    org: Organization,
    account: WhatsAppAccount,
    admin: Actor,
) -> None:
    """Given two conversations labelled VIP and one without,
    when an Admin renames the label, renames it to the same name, then deletes it,
    then after the rename and after the deletion both labelled conversations are further
    on in the feed and announced (`conversationUpdated`), showing the label as it is; the
    unlabelled one has not moved; a rename that changes nothing moves nothing."""
    async with workspace(db, org.id) as session:
        rows = [await create_conversation(session, account=account) for _ in range(3)]
    ids = [gid("Conversation", row.id) for row in rows]
    label = (await api(admin, CREATE_LABEL, {"input": {"name": "VIP", "color": "#112233"}}))[
        "data"
    ]["createLabel"]["id"]
    for conversation in ids[:2]:
        body = await api(
            admin, SET_LABELS, {"input": {"conversationId": conversation, "labelIds": [label]}}
        )
        assert "errors" not in body, body
    events = await record_events(runtime_of(app).channel_services, org.id)

    async def positions() -> list[int]:
        return [await _position(api, admin, conversation) for conversation in ids]

    before = await positions()
    renamed = await api(admin, UPDATE_LABEL, {"input": {"id": label, "name": "Gold"}})
    assert "errors" not in renamed, renamed
    after_rename = await positions()
    assert after_rename[0] > before[0]
    assert after_rename[1] > before[1]
    assert after_rename[2] == before[2]
    shown = await api(admin, LABELS, {"id": ids[0]})
    assert shown["data"]["conversation"]["labels"] == [{"name": "Gold"}]
    same = await api(admin, UPDATE_LABEL, {"input": {"id": label, "name": "Gold"}})
    assert "errors" not in same, same
    assert await positions() == after_rename

    deleted = await api(admin, DELETE_LABEL, {"id": label})
    assert "errors" not in deleted, deleted
    after_delete = await positions()
    assert after_delete[0] > after_rename[0]
    assert after_delete[1] > after_rename[1]
    assert after_delete[2] == before[2]
    shown = await api(admin, LABELS, {"id": ids[0]})
    assert shown["data"]["conversation"]["labels"] == []
    announced = [e["id"] for e in events if e["event"] == "conversationUpdated"]
    expected = sorted(str(row.id) for row in rows[:2])
    assert sorted(announced) == sorted(expected * 2)
