"""Conversations: the inbox list, one conversation, its history, status and read state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.fixtures.factories import Actor, create_contact, create_conversation, create_message
from tests.fixtures.inbox import (
    CONVERSATION,
    CONVERSATIONS,
    MESSAGES,
    Api,
    codes,
    gid,
    ids_of,
    newest_first,
    node_ids,
    workspace,
)
from weflux.db import Database
from weflux.models import (
    Conversation,
    ConversationStatus,
    MessageDirection,
    Organization,
    WhatsAppAccount,
)

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


async def _seed_timeline(db: Database, org: Organization, account: WhatsAppAccount) -> list[Any]:
    """Conversations with distinct, tied and missing last_message_at values."""
    rows = []
    async with workspace(db, org.id) as session:
        for i in range(23):
            if i % 7 == 6:
                at = None  # no message yet: sorted last
            elif i % 5 == 0:
                at = T0  # ties on the timestamp, broken by id
            else:
                at = T0 + timedelta(minutes=i, microseconds=i)
            rows.append(await create_conversation(session, account=account, last_message_at=at))
    return rows


async def test_pages_forwards_without_duplicates_or_gaps_while_new_ones_arrive(
    api: Api, db: Database, org: Organization, account: WhatsAppAccount, admin: Actor
) -> None:
    # given conversations with ties and conversations without messages
    rows = await _seed_timeline(db, org, account)
    expected = newest_first(rows)

    # when paging by 4 while new conversations keep arriving
    seen: list[str] = []
    arrived: list[str] = []
    after = None
    pages = 0
    while True:
        body = await api(admin, CONVERSATIONS, {"first": 4, "after": after})
        seen += node_ids(body, "conversations")
        page = body["data"]["conversations"]["pageInfo"]
        assert page["hasPreviousPage"] is (after is not None)
        pages += 1
        async with workspace(db, org.id) as session:
            fresh = await create_conversation(
                session, account=account, last_message_at=T0 + timedelta(days=1, seconds=pages)
            )
            arrived.append(gid("Conversation", fresh.id))
        if not page["hasNextPage"]:
            break
        assert page["endCursor"] == body["data"]["conversations"]["edges"][-1]["cursor"]
        after = page["endCursor"]

    # then every original conversation came once, in order, and no newcomer slipped in
    assert pages == 6
    assert seen == expected
    assert not set(seen) & set(arrived)

    # and a fresh first page starts with the newcomers, newest first
    body = await api(admin, CONVERSATIONS, {"first": 6})
    assert node_ids(body, "conversations") == arrived[::-1]


@pytest.mark.parametrize(
    "variables",
    [{"first": 101}, {"first": 0}, {"first": -1}, {"after": "not-a-cursor"}],
)
async def test_page_size_and_cursor_are_checked(
    api: Api, admin: Actor, variables: dict[str, Any]
) -> None:
    body = await api(admin, CONVERSATIONS, variables)
    assert codes(body) == ["BAD_USER_INPUT"]
    assert body["data"] is None


async def test_a_hundred_is_the_largest_page(
    api: Api, db: Database, org: Organization, account: WhatsAppAccount, admin: Actor
) -> None:
    async with workspace(db, org.id) as session:
        for _ in range(101):
            await create_conversation(session, account=account)
    body = await api(admin, CONVERSATIONS, {"first": 100})
    assert len(node_ids(body, "conversations")) == 100
    assert body["data"]["conversations"]["pageInfo"]["hasNextPage"] is True
    default = await api(admin, CONVERSATIONS)
    assert len(node_ids(default, "conversations")) == 50


async def test_filters_by_status_and_assignee(
    api: Api,
    db: Database,
    org: Organization,
    account: WhatsAppAccount,
    admin: Actor,
    agent: Actor,
) -> None:
    # given conversations of each status, assigned to the admin, the agent or nobody
    made: dict[tuple[str, str], Conversation] = {}
    async with workspace(db, org.id) as session:
        for status in ConversationStatus:
            for who, membership_id in (
                ("admin", admin.membership.id),
                ("agent", agent.membership.id),
                ("nobody", None),
            ):
                made[(status.value, who)] = await create_conversation(
                    session, account=account, status=status, assignee_membership_id=membership_id
                )

    def expect(*keys: tuple[str, str]) -> set[str]:
        return {gid("Conversation", made[key].id) for key in keys}

    statuses = [s.value for s in ConversationStatus]

    # then each filter selects exactly its conversations
    assert set(await api.all_conversation_ids(admin)) == expect(*made)
    assert set(await api.all_conversation_ids(admin, assignee="ANY")) == expect(*made)
    assert set(await api.all_conversation_ids(admin, assignee=None)) == expect(*made)
    assert set(await api.all_conversation_ids(admin, assignee="ME")) == expect(
        *[(s, "admin") for s in statuses]
    )
    assert set(await api.all_conversation_ids(admin, assignee="UNASSIGNED")) == expect(
        *[(s, "nobody") for s in statuses]
    )
    assert set(await api.all_conversation_ids(admin, status="PENDING")) == expect(
        ("PENDING", "admin"), ("PENDING", "agent"), ("PENDING", "nobody")
    )
    assert set(
        await api.all_conversation_ids(admin, status="RESOLVED", assignee="UNASSIGNED")
    ) == expect(("RESOLVED", "nobody"))
    # and an agent's ME and ANY are their own (plus unassigned ones for ANY)
    assert set(await api.all_conversation_ids(agent, assignee="ME")) == expect(
        *[(s, "agent") for s in statuses]
    )
    assert set(await api.all_conversation_ids(agent)) == expect(
        *[(s, who) for s in statuses for who in ("agent", "nobody")]
    )


async def test_search_matches_name_phone_and_wa_id_literally(
    api: Api, db: Database, org: Organization, account: WhatsAppAccount, admin: Actor
) -> None:
    # given contacts whose names hold LIKE wildcards
    names = {
        "percent": ("Ana 100% Real", "4915110000001"),
        "hundred": ("Ana 1000 Real", "4915110000002"),
        "underscore": ("ana_b", "4915110000003"),
        "wildcard_victim": ("anaXb", "4915110000004"),
        "bob": ("Bob", "4477009001234"),
    }
    made: dict[str, str] = {}
    async with workspace(db, org.id) as session:
        for key, (name, wa_id) in names.items():
            contact = await create_contact(
                session, name=name, wa_id=wa_id, phone_number=f"+{wa_id}"
            )
            row = await create_conversation(session, contact=contact, account=account)
            made[key] = gid("Conversation", row.id)

    async def search(term: str) -> set[str]:
        return set(await api.all_conversation_ids(admin, search=term))

    # then matching is case-insensitive and `%` and `_` are plain characters
    assert await search("ANA") == {
        made["percent"],
        made["hundred"],
        made["underscore"],
        made["wildcard_victim"],
    }
    assert await search("100%") == {made["percent"]}
    assert await search("a_b") == {made["underscore"]}
    assert await search("%") == {made["percent"]}
    assert await search("_") == {made["underscore"]}
    # and phone numbers match as stored, as typed with punctuation, or as digits
    assert await search("+44770") == {made["bob"]}
    assert await search("+44 (770) 09-001") == {made["bob"]}
    assert await search("7700900") == {made["bob"]}
    assert await search("nobody-has-this") == set()
    assert len(await search("  ")) == len(names)
    too_long = await api(admin, CONVERSATIONS, {"search": "x" * 101})
    assert codes(too_long) == ["BAD_USER_INPUT"]


async def test_a_conversation_with_its_related_objects(
    api: Api,
    db: Database,
    org: Organization,
    account: WhatsAppAccount,
    admin: Actor,
    agent: Actor,
) -> None:
    # given a conversation assigned to the agent with an inbound then an outbound message
    async with workspace(db, org.id) as session:
        contact = await create_contact(session, name="Dana", user_id="US.123")
        conversation = await create_conversation(
            session,
            contact=contact,
            account=account,
            assignee_membership_id=agent.membership.id,
            unread_count=2,
        )
        inbound = await create_message(session, conversation, created_at=T0)
        outbound = await create_message(
            session,
            conversation,
            direction=MessageDirection.OUTBOUND,
            sent_by_membership_id=agent.membership.id,
            created_at=T0 + timedelta(hours=1),
        )

    # when the admin reads it
    body = await api(admin, CONVERSATION, {"id": gid("Conversation", conversation.id)})

    # then every field is there
    assert "errors" not in body, body
    found = body["data"]["conversation"]
    assert found["id"] == gid("Conversation", conversation.id)
    assert found["status"] == "OPEN"
    assert found["unreadCount"] == 2
    assert datetime.fromisoformat(found["lastMessageAt"]) == T0 + timedelta(hours=1)
    assert datetime.fromisoformat(found["serviceWindowExpiresAt"]) == T0 + timedelta(hours=24)
    assert found["contact"] == {
        "id": gid("Contact", contact.id),
        "name": "Dana",
        "phoneNumber": contact.phone_number,
        "waId": contact.wa_id,
        "userId": "US.123",
        "optedOut": False,
    }
    assert found["whatsAppAccount"] == {
        "id": gid("WhatsAppAccount", account.id),
        "phoneNumberId": account.phone_number_id,
    }
    assert found["assignee"] == {"id": gid("Member", agent.membership.id), "role": "AGENT"}
    assert found["lastMessage"] == {"id": gid("Message", outbound.id), "text": outbound.text}

    messages = await api(
        admin,
        """query($id: ID!) { conversation(id: $id) { messages { edges { node {
            id direction type text status errorCode errorTitle createdAt waMessageId
            sentBy { id } conversation { id } } } } } }""",
        {"id": gid("Conversation", conversation.id)},
    )
    assert "errors" not in messages, messages
    first, second = (e["node"] for e in messages["data"]["conversation"]["messages"]["edges"])
    assert first["id"] == gid("Message", inbound.id)
    assert first["direction"] == "INBOUND"
    assert first["status"] == "RECEIVED"
    assert first["sentBy"] is None
    assert first["conversation"] == {"id": gid("Conversation", conversation.id)}
    assert second["direction"] == "OUTBOUND"
    assert second["status"] == "SENT"
    assert second["type"] == "TEXT"
    assert second["waMessageId"] == outbound.wa_message_id
    assert second["sentBy"] == {"id": gid("Member", agent.membership.id)}


async def test_a_conversation_without_messages_has_no_window(
    api: Api, db: Database, org: Organization, account: WhatsAppAccount, admin: Actor
) -> None:
    async with workspace(db, org.id) as session:
        conversation = await create_conversation(session, account=account)
    body = await api(admin, CONVERSATION, {"id": gid("Conversation", conversation.id)})
    found = body["data"]["conversation"]
    assert found["lastMessage"] is None
    assert found["lastMessageAt"] is None
    assert found["serviceWindowExpiresAt"] is None
    assert found["assignee"] is None


async def test_messages_scroll_back_with_last_and_before_and_forward_with_first_and_after(
    api: Api, db: Database, org: Organization, account: WhatsAppAccount, admin: Actor
) -> None:
    # given twelve messages
    async with workspace(db, org.id) as session:
        conversation = await create_conversation(session, account=account)
        rows = [
            await create_message(session, conversation, created_at=T0 + timedelta(seconds=i))
            for i in range(12)
        ]
    history = ids_of("Message", sorted(rows, key=lambda row: row.id))
    conversation_id = gid("Conversation", conversation.id)

    async def window(**variables: Any) -> tuple[list[str], dict[str, Any]]:
        body = await api(admin, MESSAGES, {"id": conversation_id, **variables})
        assert "errors" not in body, body
        connection = body["data"]["conversation"]["messages"]
        for edge in connection["edges"]:
            assert edge["cursor"] == edge["node"]["cursor"]
        return [edge["node"]["id"] for edge in connection["edges"]], connection["pageInfo"]

    # when the opening view shows the latest, newest last
    ids, page = await window()
    assert ids == history
    assert page["hasPreviousPage"] is False

    ids, page = await window(last=5)
    assert ids == history[7:]
    assert page["hasPreviousPage"] is True
    assert page["hasNextPage"] is False

    # then scrolling back walks the older ones without overlap
    ids, page = await window(last=5, before=page["startCursor"])
    assert ids == history[2:7]
    assert page["hasPreviousPage"] is True
    assert page["hasNextPage"] is True
    ids, page = await window(last=5, before=page["startCursor"])
    assert ids == history[:2]
    assert page["hasPreviousPage"] is False

    # and reading forwards from the oldest walks the rest
    ids, page = await window(first=5)
    assert ids == history[:5]
    assert page["hasNextPage"] is True
    assert page["hasPreviousPage"] is False
    ids, page = await window(first=5, after=page["endCursor"])
    assert ids == history[5:10]
    ids, page = await window(first=5, after=page["endCursor"])
    assert ids == history[10:]
    assert page["hasNextPage"] is False
    assert page["hasPreviousPage"] is True

    # and the bounds and the mix of directions are checked
    for bad in ({"first": 101}, {"last": 101}, {"last": 0}, {"first": 2, "last": 2}):
        body = await api(admin, MESSAGES, {"id": conversation_id, **bad})
        assert codes(body) == ["BAD_USER_INPUT"], bad
    body = await api(admin, MESSAGES, {"id": conversation_id, "before": "%%%"})
    assert codes(body) == ["BAD_USER_INPUT"]
