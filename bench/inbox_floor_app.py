"""The floor of `bench.inbox_page`: the inbox page's statements and JSON, nothing else.

    WEFLUX_DATABASE_URL=... WEFLUX_BENCH_ORG_ID=<uuid> \\
    .venv/bin/python -m uvicorn --factory bench.inbox_floor_app:app_from_env --port 8001

`POST /inbox` with `{"first": N}` runs, in one transaction, the statements weflux runs for
`bench.query_cost.INBOX` as an Admin (on PostgreSQL first the `set_config` handing the
workspace to row-level security, as weflux does): the page of conversations, then their
contacts, assignees' memberships, those members' users and the last messages, each one
`IN (...)` statement, with the same workspace and erasure conditions. It answers the
same `data` JSON (global ids, cursors and all), serialised by orjson. No GraphQL, no
authentication, no ORM: SQLAlchemy Core on the same driver.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Table, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from weflux.ids import encode_global_id
from weflux.models import Contact, Conversation, Membership, Message, User
from weflux.pagination import encode_keyset
from weflux.sqlite_driver import driver_options

CONVERSATIONS: Table = Conversation.__table__  # type: ignore[attr-defined]
CONTACTS: Table = Contact.__table__  # type: ignore[attr-defined]
MEMBERSHIPS: Table = Membership.__table__  # type: ignore[attr-defined]
USERS: Table = User.__table__  # type: ignore[attr-defined]
MESSAGES: Table = Message.__table__  # type: ignore[attr-defined]
SCOPE_SQL = text(
    "SELECT set_config('app.org_id', :org_id, true), "
    "set_config('app.webhook_event_id', :webhook_event_id, true)"
)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


async def _by_id(connection: AsyncConnection, table: Table, ids: Iterable[Any], *where: Any) -> Any:
    wanted = list(set(ids))
    if not wanted:
        return {}
    rows = await connection.execute(select(table).where(table.c.id.in_(wanted), *where))
    return {row.id: row for row in rows}


async def page(connection: AsyncConnection, org_id: uuid.UUID, first: int) -> dict[str, Any]:
    """The inbox page's `data`, as weflux answers it to an Admin of `org_id`."""
    if connection.dialect.name == "postgresql":
        await connection.execute(SCOPE_SQL, {"org_id": str(org_id), "webhook_event_id": ""})
    c = CONVERSATIONS.c
    rows = list(
        await connection.execute(
            select(CONVERSATIONS)
            .where(c.org_id == org_id, c.erased_at.is_(None))
            .order_by(c.last_message_at.desc().nulls_last(), c.id.desc())
            .limit(first + 1)
        )
    )
    more, rows = len(rows) > first, rows[:first]
    contacts = await _by_id(
        connection,
        CONTACTS,
        (row.contact_id for row in rows),
        CONTACTS.c.org_id == org_id,
        CONTACTS.c.erased_at.is_(None),
    )
    members = await _by_id(
        connection,
        MEMBERSHIPS,
        (row.assignee_membership_id for row in rows if row.assignee_membership_id),
        MEMBERSHIPS.c.org_id == org_id,
    )
    users = await _by_id(connection, USERS, (member.user_id for member in members.values()))
    erased = select(c.id).where(c.org_id == org_id, c.erased_at.is_not(None))
    messages = await _by_id(
        connection,
        MESSAGES,
        (row.last_message_id for row in rows if row.last_message_id),
        MESSAGES.c.org_id == org_id,
        MESSAGES.c.conversation_id.not_in(erased),
    )
    edges = []
    for row in rows:
        contact = contacts[row.contact_id]
        member = members.get(row.assignee_membership_id)
        message = messages.get(row.last_message_id)
        cursor = encode_keyset("conversation", _iso(row.last_message_at), row.id)
        edges.append(
            {
                "cursor": cursor,
                "node": {
                    "id": encode_global_id("Conversation", row.id),
                    "status": row.status,
                    "unreadCount": row.unread_count,
                    "lastMessageAt": _iso(row.last_message_at),
                    "contact": {
                        "id": encode_global_id("Contact", contact.id),
                        "name": contact.name,
                        "phoneNumber": contact.phone_number,
                    },
                    "assignee": None
                    if member is None
                    else {
                        "id": encode_global_id("Member", member.id),
                        "role": member.role,
                        "user": {"name": users[member.user_id].name},
                    },
                    "lastMessage": None
                    if message is None
                    else {
                        "id": encode_global_id("Message", message.id),
                        "text": message.text,
                        "direction": message.direction,
                        "createdAt": _iso(message.created_at),
                    },
                },
            }
        )
    end = edges[-1]["cursor"] if edges else None
    return {"conversations": {"edges": edges, "pageInfo": {"hasNextPage": more, "endCursor": end}}}


def create_floor(url: str, org_id: uuid.UUID) -> Starlette:
    """The floor app reading the inbox of workspace `org_id` from `url`."""
    # weflux's own SQLite driver (one thread hand-off per statement), as weflux.db uses it.
    engine = create_async_engine(url, pool_size=10, **driver_options(url))

    async def inbox(request: Request) -> Response:
        body = orjson.loads(await request.body())
        async with engine.begin() as connection:
            data = await page(connection, org_id, int(body["first"]))
        return Response(orjson.dumps({"data": data}), media_type="application/json")

    app = Starlette(routes=[Route("/inbox", inbox, methods=["POST"])])
    app.state.engine = engine
    return app


def app_from_env() -> Starlette:
    """uvicorn's factory: WEFLUX_DATABASE_URL and WEFLUX_BENCH_ORG_ID say what to read."""
    return create_floor(
        os.environ["WEFLUX_DATABASE_URL"], uuid.UUID(os.environ["WEFLUX_BENCH_ORG_ID"])
    )
