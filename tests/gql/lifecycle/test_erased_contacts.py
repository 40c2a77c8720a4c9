"""An erased contact is gone at once from queries, `node`, subscriptions and replay."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlmodel import col, select
from starlette.applications import Starlette

from tests.fixtures.api import token_for
from tests.fixtures.factories import Actor
from tests.fixtures.inbox import Api, gid
from tests.fixtures.live import ADDED, inbound
from tests.fixtures.ws import GraphQLSocket
from weflux.db import Database
from weflux.models import Contact, Message, Organization, WhatsAppAccount
from weflux.pagination import encode_cursor
from weflux.realtime.events import EventName, publish_after_commit
from weflux.runtime import runtime_of

ERASED = "4915100000001"
KEPT = "4915100000002"
ERASE = "mutation($id: ID!) { eraseContact(contactId: $id) { id status } }"
NODE = "query($id: ID!) { node(id: $id) { id } }"
CONTACTS = "{ contacts(first: 50) { edges { node { id } } } }"
REQUESTS = """{ dataRequests { edges { node { id kind status dueAt progress
  requestedBy { id } } } } }"""


async def _messages(db: Database, org: Organization, count: int) -> list[Message]:
    for _ in range(200):  # processing runs just after Meta's 200
        async with db.session(org.id) as session:
            rows = list((await session.exec(select(Message).order_by(col(Message.id)))).all())
        if len(rows) >= count:
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError("the webhooks were not processed")


async def _contact(db: Database, org: Organization, wa_id: str) -> Contact:
    async with db.session(org.id) as session:
        return (await session.exec(select(Contact).where(Contact.wa_id == wa_id))).one()


async def test_subscriptions_and_their_replay_never_show_an_erased_contact(
    live: str,
    live_app: Starlette,
    http: httpx.AsyncClient,
    db: Database,
    org: Organization,
    channel: WhatsAppAccount,
    admin: Actor,
) -> None:
    """Given messages of two contacts, one of them erased,
    when a client resumes `messageAdded` from before them all, and an event of the erased
    contact's message is published afterwards,
    then the replay and the live stream carry only the other contact's messages; `node`
    and `contacts` do not find the erased one; `dataRequests` lists the erasure."""
    await inbound(http, "first", sender=KEPT)
    first = (await _messages(db, org, 1))[0]
    await inbound(http, "secret", sender=ERASED)
    await inbound(http, "kept", sender=KEPT)
    rows = await _messages(db, org, 3)
    secret = next(row for row in rows if row.text == "secret")
    erased = await _contact(db, org, ERASED)
    api = Api(http)
    assert "errors" not in await api(admin, ERASE, {"id": gid("Contact", erased.id)})

    for global_id in (gid("Contact", erased.id), gid("Message", secret.id)):
        found = await api(admin, NODE, {"id": global_id})
        assert [e["extensions"]["code"] for e in found["errors"]] == ["NOT_FOUND"]
    listed = await api(admin, CONTACTS)
    names = [edge["node"]["id"] for edge in listed["data"]["contacts"]["edges"]]
    assert names == [gid("Contact", (await _contact(db, org, KEPT)).id)]
    requests: dict[str, Any] = (await api(admin, REQUESTS))["data"]["dataRequests"]
    assert [(e["node"]["kind"], e["node"]["status"]) for e in requests["edges"]] == [
        ("CONTACT_ERASURE", "PENDING")
    ]
    assert requests["edges"][0]["node"]["requestedBy"]["id"] == gid("Member", admin.membership.id)

    socket = await GraphQLSocket.connect(live, await token_for(http, admin))
    operation = await socket.subscribe(ADDED, {"after": encode_cursor(first.id)})
    replayed = await socket.next(operation, timeout=10)
    assert replayed["payload"]["data"]["messageAdded"]["text"] == "kept"

    async with db.session(org.id) as session:  # an event of the erased contact's message
        publish_after_commit(
            session,
            runtime_of(live_app).broker,
            org.id,
            EventName.MESSAGE_ADDED,
            id=secret.id,
            conversation_id=secret.conversation_id,
        )
    await inbound(http, "after", sender=KEPT)
    following = await socket.next(operation, timeout=10)
    assert following["payload"]["data"]["messageAdded"]["text"] == "after"
    await socket.close()
