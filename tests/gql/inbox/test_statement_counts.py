"""An inbox page costs a constant number of SQL statements, whatever its size (no N+1).

Every statement the app's engine sends during the request is counted, and on SQLite the
BEGIN opening the transaction (`opening_statements`; on PostgreSQL the BEGIN, which
carries the scope's `set_config` handing the workspace to row-level security, is
transaction control). Authentication is warmed up first (its cache then answers without
the database).
"""

from __future__ import annotations

import pytest
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.applications import Starlette

from tests.fixtures.app import counting, opening_statements
from tests.fixtures.factories import (
    Actor,
    create_conversation,
    create_message,
    create_whatsapp_account,
)
from tests.fixtures.inbox import Api, workspace
from weflux.db import Database
from weflux.ids import encode_global_id
from weflux.models import (
    Conversation,
    ConversationLabel,
    Label,
    MediaFile,
    MediaOrigin,
    MediaStatus,
    Message,
    MessageDirection,
    MessageReaction,
    Organization,
    contact_reactor,
)

PAGE = """query($first: Int!) { conversations(first: $first) { edges { node {
  id contact { name } assignee { role } lastMessage { text } } } } }"""
PAGE_WITH_USERS = """query($first: Int!) { conversations(first: $first) { edges { node {
  id contact { name } assignee { role user { name } } lastMessage { text } } } } }"""
PAGE_WITH_EVERYTHING = """query($first: Int!) { conversations(first: $first) { edges { node {
  id status unreadCount serviceWindowExpiresAt
  contact { name phoneNumber } whatsAppAccount { phoneNumberId }
  assignee { role user { name } } lastMessage { text type createdAt } } } } }"""
PAGE_WITH_REACTIONS = """query($first: Int!) { conversations(first: $first) { edges { node {
  id contact { name } assignee { role }
  lastMessage { text reactions { emoji fromContact } replyTo { text } } } } } }"""
PAGE_WITH_MEDIA = """query($first: Int!) { conversations(first: $first) { edges { node {
  id contact { name } assignee { role }
  lastMessage { text media { id mimeType } reactions { emoji } } } } } }"""
PAGE_WITH_LABELS = """query($first: Int!) { conversations(first: $first) { edges { node {
  id contact { name } assignee { role } lastMessage { text } labels { name color } } } } }"""

# After the transaction's opening (see the module docstring), one each: the page,
# contacts, memberships (assignees), last messages.
PAGE_STATEMENTS = 4
USER_STATEMENTS = 1  # the assignees' users
ACCOUNT_STATEMENTS = 1  # the WhatsApp numbers
LABEL_STATEMENTS = 1  # the conversations' labels
REACTION_STATEMENTS = 2  # the last messages' reactions, and the messages they reply to
MEDIA_STATEMENTS = 1  # the messages' media files


async def _seed(
    db: Database, org: Organization, count: int, members: list[Actor], agent: Actor
) -> None:
    """`count` conversations visible to `agent`, each with a last message, and as many hidden."""
    async with workspace(db, org.id) as session:
        accounts = [await create_whatsapp_account(session) for _ in range(3)]
        labels = [Label(name=f"label {n}", color="#aabbcc") for n in range(2)]
        session.add_all(labels)
        await session.flush()
        for i in range(count * 2):
            visible = i % 2 == 0
            assignee = (
                (agent.membership.id if i % 4 == 0 else None)
                if visible
                else members[i % len(members)].membership.id
            )
            conversation = await create_conversation(
                session, account=accounts[i % 3], assignee_membership_id=assignee
            )
            quoted = await create_message(session, conversation)
            last = await create_message(
                session,
                conversation,
                direction=MessageDirection.OUTBOUND,
                sent_by_membership_id=members[i % len(members)].membership.id,
                reply_to_wa_message_id=quoted.wa_message_id,
            )
            await _decorate(session, conversation, last)
            for label in labels[: i % 3]:
                session.add(ConversationLabel(conversation_id=conversation.id, label_id=label.id))


async def _decorate(session: AsyncSession, conversation: Conversation, message: Message) -> None:
    """`message` carries an image and the contact's 👍."""
    assert message.wa_message_id is not None
    media = MediaFile(
        org_id=conversation.org_id,
        origin=MediaOrigin.INBOUND,
        message_id=message.id,
        sender_contact_id=conversation.contact_id,
        kind="image",
        mime_type="image/jpeg",
        status=MediaStatus.PENDING,
    )
    session.add(media)
    await session.flush()
    message.media_file_id = media.id
    session.add_all(
        [
            message,
            MessageReaction(
                conversation_id=conversation.id,
                target_wa_message_id=message.wa_message_id,
                reactor=contact_reactor(conversation.contact_id),
                contact_id=conversation.contact_id,
                emoji="👍",
            ),
        ]
    )


@pytest.mark.parametrize("size", [10, 50])
async def test_an_inbox_page_costs_a_constant_number_of_statements(
    api: Api,
    app: Starlette,
    db: Database,
    org: Organization,
    admin: Actor,
    manager: Actor,
    agent: Actor,
    size: int,
) -> None:
    # given twice `size` conversations with contacts, assignees and last messages
    await _seed(db, org, size, [admin, manager, agent], agent)

    for actor in (admin, agent):
        await api(actor, "{ viewer { id } }")  # authentication warm: no statement of its own
        for query, expected in (
            (PAGE, PAGE_STATEMENTS),
            (PAGE_WITH_USERS, PAGE_STATEMENTS + USER_STATEMENTS),
            (PAGE_WITH_EVERYTHING, PAGE_STATEMENTS + USER_STATEMENTS + ACCOUNT_STATEMENTS),
            (PAGE_WITH_LABELS, PAGE_STATEMENTS + LABEL_STATEMENTS),
            (PAGE_WITH_REACTIONS, PAGE_STATEMENTS + REACTION_STATEMENTS),
            (PAGE_WITH_MEDIA, PAGE_STATEMENTS + MEDIA_STATEMENTS + 1),  # + 1: reactions
        ):
            # when the actor reads a page
            with counting(app) as statements:
                body = await api(actor, query, {"first": size})

            # then it is full, and cost the same whatever its size
            assert "errors" not in body, body
            edges = body["data"]["conversations"]["edges"]
            assert len(edges) == size
            assert all(edge["node"]["contact"]["name"] for edge in edges)
            assert all(edge["node"]["lastMessage"]["text"] for edge in edges)
            assert any(edge["node"]["assignee"] for edge in edges)
            if query is PAGE_WITH_REACTIONS:
                last_messages = [edge["node"]["lastMessage"] for edge in edges]
                assert all(
                    m["reactions"] == [{"emoji": "👍", "fromContact": True}] for m in last_messages
                )
                assert all(m["replyTo"]["text"] for m in last_messages)
            if query is PAGE_WITH_MEDIA:
                last_messages = [edge["node"]["lastMessage"] for edge in edges]
                assert all(m["media"]["mimeType"] == "image/jpeg" for m in last_messages)
                assert all(m["reactions"] == [{"emoji": "👍"}] for m in last_messages)
            assert len(statements) == opening_statements(db) + expected, "\n".join(statements)


IDS_ONLY = """query($first: Int!) { conversations(first: $first) {
  edges { cursor node { id status } } pageInfo { hasNextPage endCursor } } }"""
SKIPPED = """query($first: Int!, $no: Boolean!) { conversations(first: $first) { edges {
  node { id contact @skip(if: true) { name } assignee @include(if: $no) { role }
  ... @include(if: false) { lastMessage { text } } } } } }"""
IN_FRAGMENTS = """query($first: Int!) { conversations(first: $first) { edges { node { ...Row } } } }
fragment Row on Conversation { id contact { name } ... on Conversation {
  assignee { role user { name } } } lastMessage { text } }"""


@pytest.mark.parametrize("size", [10, 50])
async def test_a_page_reads_only_the_related_rows_its_selection_asks_for(
    api: Api,
    app: Starlette,
    db: Database,
    org: Organization,
    admin: Actor,
    manager: Actor,
    agent: Actor,
    size: int,
) -> None:
    """Given twice `size` conversations, when a page asks for no related row, then it
    costs the page's statement alone, as when `@skip`/`@include` leave them out; when
    it asks for them through fragments, the same statements as written inline."""
    await _seed(db, org, size, [admin, manager, agent], agent)

    for actor in (admin, agent):
        await api(actor, "{ viewer { id } }")  # authentication warm: no statement of its own
        for query, expected in (
            (IDS_ONLY, 1),
            (SKIPPED, 1),
            (IN_FRAGMENTS, PAGE_STATEMENTS + USER_STATEMENTS),
        ):
            # when
            with counting(app) as statements:
                body = await api(actor, query, {"first": size, "no": False})

            # then
            assert "errors" not in body, body
            assert len(body["data"]["conversations"]["edges"]) == size
            assert len(statements) == opening_statements(db) + expected, "\n".join(statements)


HISTORY = """query($id: ID!, $last: Int!) { node(id: $id) { ... on Conversation {
  messages(last: $last) { edges { node { id text updateCursor location { name }
    contacts { name } interactiveReply { title }
    media { id mimeType } reactions { emoji } replyTo { text } } } } } } }"""
HISTORY_PLAIN = """query($id: ID!, $last: Int!, $media: Boolean!) {
  node(id: $id) { ... on Conversation {
  messages(last: $last) { edges { node { id text updateCursor
    media @include(if: $media) { id } reactions @skip(if: true) { emoji } } } } } } }"""
# After the transaction's opening, the conversation (node), the page of messages; then
# one each: media files, reactions, the quoted messages.
HISTORY_STATEMENTS = 2 + 3


@pytest.mark.parametrize("size", [10, 50])
async def test_a_conversations_message_page_costs_a_constant_number_of_statements(
    api: Api, app: Starlette, db: Database, org: Organization, admin: Actor, size: int
) -> None:
    """Given a conversation of twice `size` messages, each quoting the one before and
    carrying an image and a reaction, when its latest `size` are read with their media,
    reactions and quoted messages, then the page costs the same statements whatever its
    size; and a field that `@skip`/`@include` leaves out loads nothing."""
    async with workspace(db, org.id) as session:
        conversation = await create_conversation(session)
        quoted: str | None = None
        for _ in range(size * 2):
            message = await create_message(session, conversation, reply_to_wa_message_id=quoted)
            await _decorate(session, conversation, message)
            quoted = message.wa_message_id
        conversation_id = encode_global_id("Conversation", conversation.id)
    await api(admin, "{ viewer { id } }")  # authentication warm: no statement of its own

    # when
    with counting(app) as statements:
        body = await api(admin, HISTORY, {"id": conversation_id, "last": size})

    # then
    assert "errors" not in body, body
    nodes = [edge["node"] for edge in body["data"]["node"]["messages"]["edges"]]
    assert len(nodes) == size
    assert all(node["media"]["mimeType"] == "image/jpeg" for node in nodes)
    assert all(node["reactions"] == [{"emoji": "👍"}] for node in nodes)
    assert all(node["replyTo"]["text"] for node in nodes)
    assert all(node["location"] is None and node["updateCursor"] for node in nodes)
    assert len(statements) == opening_statements(db) + HISTORY_STATEMENTS, "\n".join(statements)

    for media, expected in ((False, 2), (True, 2 + 1)):
        # when the media are included or not, and the reactions skipped
        with counting(app) as statements:
            body = await api(
                admin, HISTORY_PLAIN, {"id": conversation_id, "last": size, "media": media}
            )

        # then only what is included is loaded
        assert "errors" not in body, body
        nodes = [edge["node"] for edge in body["data"]["node"]["messages"]["edges"]]
        assert len(nodes) == size
        assert all(("media" in node) is media and "reactions" not in node for node in nodes)
        assert len(statements) == opening_statements(db) + expected, "\n".join(statements)
