"""Labels, private notes and canned replies under the role matrix and across workspaces.

ADMIN and MANAGER manage labels and canned replies; every member lists them, labels
the conversations they see and writes notes there. An Agent sees the notes and labels
of visible conversations only; another workspace's ids are NOT_FOUND.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlmodel import col, select

from tests.fixtures.factories import Actor, create_conversation
from tests.fixtures.inbox import Api, codes, gid, node_ids, workspace
from weflux.db import Database
from weflux.ids import decode_global_id
from weflux.models import (
    AuditEvent,
    Conversation,
    ConversationLabel,
    Label,
    Note,
    Organization,
    WhatsAppAccount,
)

CREATE_LABEL = (
    """mutation($input: CreateLabelInput!) { createLabel(input: $input) { id name color } }"""
)
UPDATE_LABEL = (
    """mutation($input: UpdateLabelInput!) { updateLabel(input: $input) { id name color } }"""
)
DELETE_LABEL = "mutation($id: ID!) { deleteLabel(id: $id) }"
LABELS = "{ labels { id name color } }"
SET_LABELS = """mutation($input: SetConversationLabelsInput!) {
  setConversationLabels(input: $input) { id labels { id name } } }"""
BY_LABEL = """query($labelId: ID) { conversations(first: 10, labelId: $labelId) {
  edges { node { id labels { name } } } } }"""
ADD_NOTE = """mutation($input: AddNoteInput!) {
  addNote(input: $input) { id text createdAt author { id role } } }"""
NOTES = """query($id: ID!, $first: Int, $after: String) { conversation(id: $id) {
  notes(first: $first, after: $after) {
    edges { cursor node { id text author { id } } } pageInfo { hasNextPage endCursor } } } }"""
NODE_NOTE = "query($id: ID!) { node(id: $id) { id ... on Note { text } } }"
CREATE_REPLY = """mutation($input: CreateCannedReplyInput!) {
  createCannedReply(input: $input) { id shortcut text } }"""
UPDATE_REPLY = """mutation($input: UpdateCannedReplyInput!) {
  updateCannedReply(input: $input) { id shortcut text } }"""
DELETE_REPLY = "mutation($id: ID!) { deleteCannedReply(id: $id) }"
REPLIES = "query($search: String) { cannedReplies(search: $search) { id shortcut text } }"


def _data(body: dict[str, Any], field: str) -> Any:
    assert "errors" not in body, body
    return body["data"][field]


async def _label(api: Api, actor: Actor, name: str = "VIP", color: str = "#FF0000") -> str:
    body = await api(actor, CREATE_LABEL, {"input": {"name": name, "color": color}})
    return str(_data(body, "createLabel")["id"])


async def _audited(db: Database, org: Organization, target_type: str) -> list[tuple[Any, ...]]:
    """The workspace's audit events about `target_type`: (action, target id, details), by action."""
    async with workspace(db, org.id) as session:
        query = select(AuditEvent).where(col(AuditEvent.target_type) == target_type)
        events = (await session.exec(query)).all()
    return sorted((e.action, e.target_id, e.details) for e in events)


async def _conversation(
    db: Database, org: Organization, account: WhatsAppAccount, assignee: Actor | None = None
) -> Conversation:
    async with workspace(db, org.id) as session:
        return await create_conversation(
            session,
            account=account,
            assignee_membership_id=assignee.membership.id if assignee else None,
        )


# --- labels ------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["admin", "manager"])
async def test_admins_and_managers_manage_labels_and_it_is_audited(
    api: Api,
    db: Database,
    org: Organization,
    role: str,
    admin: Actor,
    manager: Actor,
) -> None:
    actor = {"admin": admin, "manager": manager}[role]
    created = _data(
        await api(actor, CREATE_LABEL, {"input": {"name": " Urgent ", "color": "#FFAA00"}}),
        "createLabel",
    )
    assert created["name"] == "Urgent"
    assert created["color"] == "#ffaa00"
    updated = _data(
        await api(actor, UPDATE_LABEL, {"input": {"id": created["id"], "color": "#00aa00"}}),
        "updateLabel",
    )
    assert updated == {**created, "color": "#00aa00"}
    assert _data(await api(actor, LABELS), "labels") == [updated]
    assert (
        _data(await api(actor, DELETE_LABEL, {"id": created["id"]}), "deleteLabel")
        == (created["id"])
    )
    assert _data(await api(actor, LABELS), "labels") == []
    label_id = str(decode_global_id(created["id"], "Label"))
    assert await _audited(db, org, "Label") == [
        ("label.created", label_id, {"name": "Urgent", "color": "#ffaa00"}),
        ("label.deleted", label_id, {"name": "Urgent"}),
        ("label.updated", label_id, {"name": "Urgent", "color": "#00aa00"}),
    ]


async def test_agents_use_labels_but_cannot_manage_them(
    api: Api,
    db: Database,
    org: Organization,
    account: WhatsAppAccount,
    admin: Actor,
    agent: Actor,
) -> None:
    label = await _label(api, admin)
    assert codes(await api(agent, CREATE_LABEL, {"input": {"name": "x", "color": "#000000"}})) == [
        "FORBIDDEN"
    ]
    assert codes(await api(agent, UPDATE_LABEL, {"input": {"id": label, "name": "y"}})) == [
        "FORBIDDEN"
    ]
    assert codes(await api(agent, DELETE_LABEL, {"id": label})) == ["FORBIDDEN"]
    # but they list labels and label the conversations they see
    assert [row["id"] for row in _data(await api(agent, LABELS), "labels")] == [label]
    conversation = await _conversation(db, org, account, agent)
    conversation_id = gid("Conversation", conversation.id)
    body = await api(
        agent, SET_LABELS, {"input": {"conversationId": conversation_id, "labelIds": [label]}}
    )
    assert _data(body, "setConversationLabels")["labels"] == [{"id": label, "name": "VIP"}]


async def test_labels_filter_the_inbox_and_go_with_a_deleted_label(
    api: Api,
    db: Database,
    org: Organization,
    account: WhatsAppAccount,
    admin: Actor,
    agent: Actor,
    other_agent: Actor,
) -> None:
    vip = await _label(api, admin, "VIP")
    billing = await _label(api, admin, "Billing", "#0000ff")
    free = gid("Conversation", (await _conversation(db, org, account)).id)
    theirs = gid("Conversation", (await _conversation(db, org, account, other_agent)).id)
    plain = gid("Conversation", (await _conversation(db, org, account)).id)
    for conversation, labels in ((free, [vip, billing, vip]), (theirs, [vip])):
        body = await api(
            admin, SET_LABELS, {"input": {"conversationId": conversation, "labelIds": labels}}
        )
        names = [row["name"] for row in _data(body, "setConversationLabels")["labels"]]
        assert names == sorted({"VIP", "Billing"} if conversation == free else {"VIP"})

    assert node_ids(await api(admin, BY_LABEL, {"labelId": vip}), "conversations") == [
        theirs,
        free,
    ]
    assert node_ids(await api(admin, BY_LABEL, {"labelId": billing}), "conversations") == [free]
    # an Agent's filter only ever shows what they may see
    assert node_ids(await api(agent, BY_LABEL, {"labelId": vip}), "conversations") == [free]
    assert plain in node_ids(await api(admin, BY_LABEL, {"labelId": None}), "conversations")

    # an Agent cannot label someone else's conversation: NOT_FOUND, as if it did not exist
    body = await api(agent, SET_LABELS, {"input": {"conversationId": theirs, "labelIds": []}})
    assert codes(body) == ["NOT_FOUND"]

    # removing all labels, then deleting a label, takes it off every conversation
    body = await api(admin, SET_LABELS, {"input": {"conversationId": free, "labelIds": [vip]}})
    assert _data(body, "setConversationLabels")["labels"] == [{"id": vip, "name": "VIP"}]
    await api(admin, DELETE_LABEL, {"id": vip})
    async with workspace(db, org.id) as session:
        assert (await session.exec(select(ConversationLabel))).all() == []
    assert node_ids(await api(admin, BY_LABEL, {"labelId": vip}), "conversations") == []


@pytest.mark.parametrize(
    ("name", "color"),
    [
        ("", "#000000"),
        ("   ", "#000000"),
        ("x" * 65, "#000000"),
        ("ok", "red"),
        ("ok", "#12345"),
        ("ok", "#1234567"),
        ("ok", "#12345g"),
        ("ok", "000000"),
    ],
)
async def test_label_validation_is_coded(api: Api, admin: Actor, name: str, color: str) -> None:
    body = await api(admin, CREATE_LABEL, {"input": {"name": name, "color": color}})
    assert codes(body) == ["BAD_USER_INPUT"]
    field = "name" if color == "#000000" else "color"
    assert body["errors"][0]["extensions"]["details"][0]["field"] == field


async def test_another_workspaces_labels_are_not_found(
    api: Api,
    db: Database,
    org: Organization,
    account: WhatsAppAccount,
    admin: Actor,
    other_admin: Actor,
) -> None:
    theirs = await _label(api, other_admin, "Theirs")
    conversation = gid("Conversation", (await _conversation(db, org, account)).id)
    assert _data(await api(admin, LABELS), "labels") == []
    assert codes(await api(admin, UPDATE_LABEL, {"input": {"id": theirs, "name": "x"}})) == [
        "NOT_FOUND"
    ]
    assert codes(await api(admin, DELETE_LABEL, {"id": theirs})) == ["NOT_FOUND"]
    body = await api(
        admin, SET_LABELS, {"input": {"conversationId": conversation, "labelIds": [theirs]}}
    )
    assert codes(body) == ["NOT_FOUND"]
    assert codes(await api(admin, "query($id: ID!) { node(id: $id) { id } }", {"id": theirs})) == [
        "NOT_FOUND"
    ]
    # and the other workspace cannot label ours
    body = await api(
        other_admin, SET_LABELS, {"input": {"conversationId": conversation, "labelIds": []}}
    )
    assert codes(body) == ["NOT_FOUND"]
    assert [row["name"] for row in _data(await api(other_admin, LABELS), "labels")] == ["Theirs"]


# --- notes -------------------------------------------------------------------------


async def test_notes_are_written_and_read_by_whoever_sees_the_conversation(
    api: Api,
    db: Database,
    org: Organization,
    account: WhatsAppAccount,
    admin: Actor,
    manager: Actor,
    agent: Actor,
) -> None:
    conversation = await _conversation(db, org, account, agent)
    conversation_id = gid("Conversation", conversation.id)
    written = []
    for actor, text in ((agent, "called them back"), (manager, "VIP"), (admin, " done ")):
        body = await api(
            actor, ADD_NOTE, {"input": {"conversationId": conversation_id, "text": text}}
        )
        note = _data(body, "addNote")
        assert note["text"] == text.strip()
        assert note["author"] == {
            "id": gid("Member", actor.membership.id),
            "role": actor.membership.role,
        }
        written.append(note["id"])
    for actor in (admin, manager, agent):
        page = _data(await api(actor, NOTES, {"id": conversation_id, "first": 2}), "conversation")
        first = [edge["node"]["id"] for edge in page["notes"]["edges"]]
        assert page["notes"]["pageInfo"]["hasNextPage"]
        after = page["notes"]["pageInfo"]["endCursor"]
        rest = _data(
            await api(actor, NOTES, {"id": conversation_id, "after": after}), "conversation"
        )
        assert first + [edge["node"]["id"] for edge in rest["notes"]["edges"]] == written
    # notes are never messages: nothing is queued for WhatsApp
    async with workspace(db, org.id) as session:
        assert (await session.get(Conversation, conversation.id)).last_message_id is None  # type: ignore[union-attr]


async def test_an_agent_cannot_see_or_write_notes_of_a_conversation_not_visible_to_them(
    api: Api,
    db: Database,
    org: Organization,
    account: WhatsAppAccount,
    admin: Actor,
    agent: Actor,
    other_agent: Actor,
) -> None:
    theirs = gid("Conversation", (await _conversation(db, org, account, other_agent)).id)
    body = await api(admin, ADD_NOTE, {"input": {"conversationId": theirs, "text": "secret"}})
    note = _data(body, "addNote")["id"]
    body = await api(agent, ADD_NOTE, {"input": {"conversationId": theirs, "text": "mine"}})
    assert codes(body) == ["NOT_FOUND"]
    body = await api(agent, NOTES, {"id": theirs})
    assert codes(body) == ["NOT_FOUND"] or body["data"]["conversation"] is None
    assert codes(await api(agent, NODE_NOTE, {"id": note})) == ["NOT_FOUND"]
    # the other agent, whose conversation it is, sees it
    assert _data(await api(other_agent, NODE_NOTE, {"id": note}), "node")["text"] == "secret"


async def test_another_workspace_neither_reads_nor_writes_our_notes(
    api: Api,
    db: Database,
    org: Organization,
    account: WhatsAppAccount,
    admin: Actor,
    other_admin: Actor,
) -> None:
    ours = gid("Conversation", (await _conversation(db, org, account)).id)
    note = _data(
        await api(admin, ADD_NOTE, {"input": {"conversationId": ours, "text": "ours"}}), "addNote"
    )["id"]
    body = await api(other_admin, ADD_NOTE, {"input": {"conversationId": ours, "text": "x"}})
    assert codes(body) == ["NOT_FOUND"]
    assert codes(await api(other_admin, NODE_NOTE, {"id": note})) == ["NOT_FOUND"]


@pytest.mark.parametrize("text", ["", "   ", "x" * 10_001])
async def test_note_validation_is_coded(
    api: Api, db: Database, org: Organization, account: WhatsAppAccount, admin: Actor, text: str
) -> None:
    conversation = gid("Conversation", (await _conversation(db, org, account)).id)
    body = await api(admin, ADD_NOTE, {"input": {"conversationId": conversation, "text": text}})
    assert codes(body) == ["BAD_USER_INPUT"]
    assert body["errors"][0]["extensions"]["details"][0]["field"] == "text"


async def test_notes_and_labellings_go_with_their_conversation(
    api: Api, db: Database, org: Organization, account: WhatsAppAccount, admin: Actor
) -> None:
    conversation = await _conversation(db, org, account)
    conversation_id = gid("Conversation", conversation.id)
    label = await _label(api, admin)
    await api(admin, ADD_NOTE, {"input": {"conversationId": conversation_id, "text": "a"}})
    await api(
        admin, SET_LABELS, {"input": {"conversationId": conversation_id, "labelIds": [label]}}
    )
    async with workspace(db, org.id) as session:
        row = await session.get(Conversation, conversation.id)
        await session.delete(row)
    async with workspace(db, org.id) as session:
        assert (await session.exec(select(Note))).all() == []
        assert (await session.exec(select(ConversationLabel))).all() == []
        assert len((await session.exec(select(Label))).all()) == 1


# --- canned replies ----------------------------------------------------------------


@pytest.mark.parametrize("role", ["admin", "manager"])
async def test_admins_and_managers_manage_canned_replies(
    api: Api,
    db: Database,
    org: Organization,
    role: str,
    admin: Actor,
    manager: Actor,
) -> None:
    actor = {"admin": admin, "manager": manager}[role]
    created = _data(
        await api(actor, CREATE_REPLY, {"input": {"shortcut": "thanks", "text": "Thank you!"}}),
        "createCannedReply",
    )
    updated = _data(
        await api(actor, UPDATE_REPLY, {"input": {"id": created["id"], "text": "Many thanks!"}}),
        "updateCannedReply",
    )
    assert updated == {**created, "text": "Many thanks!"}
    assert (
        _data(await api(actor, DELETE_REPLY, {"id": created["id"]}), "deleteCannedReply")
        == (created["id"])
    )
    assert _data(await api(actor, REPLIES), "cannedReplies") == []
    reply_id = str(decode_global_id(created["id"], "CannedReply"))
    assert await _audited(db, org, "CannedReply") == [
        ("canned_reply.created", reply_id, {"shortcut": "thanks"}),
        ("canned_reply.deleted", reply_id, {"shortcut": "thanks"}),
        ("canned_reply.updated", reply_id, {"shortcut": "thanks"}),
    ]


async def test_agents_search_canned_replies_but_cannot_manage_them(
    api: Api, admin: Actor, agent: Actor
) -> None:
    for shortcut, text in (
        ("greeting", "Hello, how can we help?"),
        ("greeting-fr", "Bonjour"),
        ("refund", "Your refund is on its way"),
        ("hours", "We open at nine"),
    ):
        await api(admin, CREATE_REPLY, {"input": {"shortcut": shortcut, "text": text}})

    async def shortcuts(search: str | None) -> list[str]:
        body = await api(agent, REPLIES, {"search": search})
        return [row["shortcut"] for row in _data(body, "cannedReplies")]

    assert await shortcuts(None) == ["greeting", "greeting-fr", "hours", "refund"]
    assert await shortcuts("gree") == ["greeting", "greeting-fr"]
    assert await shortcuts("/ref") == ["refund"]
    assert await shortcuts("REFUND way") == ["refund"]  # words of the text, any case
    assert await shortcuts("help how") == ["greeting"]
    assert await shortcuts("eting") == []  # a shortcut matches by its prefix only
    assert await shortcuts("%") == []

    reply = _data(await api(agent, REPLIES, {"search": "hours"}), "cannedReplies")[0]["id"]
    for query, variables in (
        (CREATE_REPLY, {"input": {"shortcut": "x", "text": "y"}}),
        (UPDATE_REPLY, {"input": {"id": reply, "text": "y"}}),
        (DELETE_REPLY, {"id": reply}),
    ):
        assert codes(await api(agent, query, variables)) == ["FORBIDDEN"]


async def test_shortcuts_are_unique_per_workspace_and_validated(
    api: Api, admin: Actor, manager: Actor, other_admin: Actor
) -> None:
    first = _data(
        await api(admin, CREATE_REPLY, {"input": {"shortcut": "bye", "text": "Bye"}}),
        "createCannedReply",
    )
    second = _data(
        await api(admin, CREATE_REPLY, {"input": {"shortcut": "later", "text": "Later"}}),
        "createCannedReply",
    )
    body = await api(manager, CREATE_REPLY, {"input": {"shortcut": "bye", "text": "again"}})
    assert codes(body) == ["CONFLICT"]
    body = await api(manager, UPDATE_REPLY, {"input": {"id": second["id"], "shortcut": "bye"}})
    assert codes(body) == ["CONFLICT"]
    # renaming to itself is no conflict
    body = await api(manager, UPDATE_REPLY, {"input": {"id": first["id"], "shortcut": "bye"}})
    assert codes(body) == []
    # another workspace has its own shortcuts, and cannot touch ours
    body = await api(other_admin, CREATE_REPLY, {"input": {"shortcut": "bye", "text": "Ciao"}})
    assert codes(body) == []
    assert codes(await api(other_admin, DELETE_REPLY, {"id": first["id"]})) == ["NOT_FOUND"]
    body = await api(other_admin, UPDATE_REPLY, {"input": {"id": first["id"], "text": "x"}})
    assert codes(body) == ["NOT_FOUND"]
    assert [r["text"] for r in _data(await api(other_admin, REPLIES), "cannedReplies")] == ["Ciao"]

    for shortcut in ("", "two words", "slash/", "é", "x" * 65):
        body = await api(admin, CREATE_REPLY, {"input": {"shortcut": shortcut, "text": "t"}})
        assert codes(body) == ["BAD_USER_INPUT"], shortcut
        assert body["errors"][0]["extensions"]["details"][0]["field"] == "shortcut"
    body = await api(admin, CREATE_REPLY, {"input": {"shortcut": "ok_1-A", "text": "  "}})
    assert codes(body) == ["BAD_USER_INPUT"]


async def test_a_label_id_that_is_no_label_is_not_found(api: Api, admin: Actor) -> None:
    stranger = gid("Label", uuid.uuid4())
    assert codes(await api(admin, DELETE_LABEL, {"id": stranger})) == ["NOT_FOUND"]
    assert codes(await api(admin, DELETE_REPLY, {"id": stranger})) == ["NOT_FOUND"]
