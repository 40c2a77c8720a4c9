"""A live event whose read fails (its PostgreSQL backend killed while it waits) is never
stepped over: instead of a `next` without data, the socket closes with 1013 (Try Again
Later, which graphql-ws retries), and a client that resumes from the last cursor it
received gets the event. A shared group's next leader reads the event again."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url
from sqlmodel import select, update
from starlette.applications import Starlette
from websockets.exceptions import ConnectionClosed

from tests.fixtures.api import token_for
from tests.fixtures.app import HTTP_TIMEOUT
from tests.fixtures.databases import DatabaseUrls, killed_while_waiting, postgres_only
from tests.fixtures.factories import (
    Actor,
    create_conversation,
    create_message,
    create_whatsapp_account,
)
from tests.fixtures.inbox import gid
from tests.fixtures.live import inbound, live_server, until_listening
from tests.fixtures.node import node_script
from tests.fixtures.settings import make_settings
from tests.fixtures.tcp_proxy import TcpProxy
from tests.fixtures.ws import GraphQLSocket
from weflux.app import create_app
from weflux.db import Database
from weflux.gql.socket import TRY_AGAIN_CLOSE
from weflux.models import Conversation, Message, MessageStatus, Organization, WhatsAppAccount
from weflux.pagination import encode_cursor, encode_update_cursor
from weflux.realtime.events import EventName, workspace_channel
from weflux.runtime import runtime_of

pytestmark = postgres_only

ADDED = """subscription($after: String) { messageAdded(after: $after) {
  id cursor text conversation { contact { name } } } }"""
FEEDS = {
    "conversationUpdated": (
        "subscription($after: String) { conversationUpdated(after: $after) { id updateCursor } }",
        "conversations",
    ),
    "messageUpdated": (
        "subscription($after: String) { messageUpdated(after: $after) { id updateCursor } }",
        "messages",
    ),
}


async def _publish(app: Starlette, org: Organization, event: EventName, **ids: uuid.UUID) -> None:
    """The event as a committed change publishes it (ids only)."""
    message = {"event": event, "eid": uuid.uuid4().hex, **{k: str(v) for k, v in ids.items()}}
    await runtime_of(app).broker.publish(workspace_channel(org.id), message)


async def _frame_or_close(socket: GraphQLSocket, operation: str) -> dict[str, Any] | None:
    """The next frame of `operation`, or None once the server closed the socket."""
    try:
        return await socket.next(operation, timeout=30)
    except ConnectionClosed:
        return None


ReadKilled = Callable[..., Awaitable[dict[str, Any] | None]]


@pytest.fixture
def read_killed(
    broker_app: Starlette, org: Organization, database_urls: DatabaseUrls, owner_db: Database
) -> ReadKilled:
    """`(socket, operation, table, event, kills=1, **ids)`: publish `event` while `table`
    is locked, kill the read that waits for it (`kills` times), and answer `operation`'s
    next frame (None: the socket closed first)."""

    async def read(
        socket: GraphQLSocket,
        operation: str,
        table: str,
        event: EventName,
        *,
        kills: int = 1,
        **ids: uuid.UUID,
    ) -> dict[str, Any] | None:
        async def publish_and_read() -> dict[str, Any] | None:
            await _publish(broker_app, org, event, **ids)
            return await _frame_or_close(socket, operation)

        return await killed_while_waiting(
            database_urls,
            owner_db,
            f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE",
            publish_and_read,
            kills=kills,
        )

    return read


def _closed_to_resume(frame: dict[str, Any] | None, socket: GraphQLSocket) -> None:
    """No frame for the event (nor `complete`): the socket closed with 1013."""
    assert frame is None, frame
    assert socket.connection.close_code == TRY_AGAIN_CLOSE


async def _first_data(base: str, token: str, query: str, after: str) -> dict[str, Any]:
    """What a client resuming with `after` receives first (a new socket)."""
    socket = await GraphQLSocket.connect(base, token)
    try:
        frame = await socket.next(await socket.subscribe(query, {"after": after}))
    finally:
        await socket.close()
    assert frame["type"] == "next", frame
    assert "errors" not in frame["payload"], frame
    data: dict[str, Any] = frame["payload"]["data"]
    return data


async def test_a_message_whose_frame_fails_to_load_closes_the_socket_and_is_resumed(
    broker_app: Starlette,
    read_killed: ReadKilled,
    db: Database,
    org: Organization,
    admin: Actor,
) -> None:
    """Given messageAdded resumed after a message, when the next message's frame cannot be
    loaded (its contact's read killed), then no frame without data is sent: the socket
    closes with 1013, and resuming after the same cursor delivers that message."""
    async with db.session(org.id) as session:
        conversation = await create_conversation(session)
        zero = await create_message(session, conversation, text="zero")
    async with live_server(broker_app) as base:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, base_url=base) as http:
            token = await token_for(http, admin)
        socket = await GraphQLSocket.connect(base, token)
        operation = await socket.subscribe(ADDED, {"after": encode_cursor(zero.id)})
        await until_listening(broker_app, 1)
        async with db.session(org.id) as session:
            first = await create_message(session, conversation, text="first")

        frame = await read_killed(
            socket,
            operation,
            "contacts",
            EventName.MESSAGE_ADDED,
            id=first.id,
            conversation_id=conversation.id,
        )

        _closed_to_resume(frame, socket)
        resumed = await _first_data(base, token, ADDED, encode_cursor(zero.id))
        assert resumed["messageAdded"]["text"] == "first"


async def test_a_shared_group_whose_leader_fails_hands_the_event_over(
    broker_app: Starlette,
    read_killed: ReadKilled,
    db: Database,
    org: Organization,
    admin: Actor,
    manager: Actor,
) -> None:
    """Given an Admin and a Manager sharing one live messageAdded, when the leader's frame
    cannot be loaded, then the leader's socket closes with 1013 and the other member
    receives the message, read again: neither steps over it."""
    async with db.session(org.id) as session:
        conversation = await create_conversation(session)
    async with live_server(broker_app) as base:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, base_url=base) as http:
            leader = await GraphQLSocket.connect(base, await token_for(http, admin))
            follower = await GraphQLSocket.connect(base, await token_for(http, manager))
        leading = await leader.subscribe(ADDED)
        await until_listening(broker_app, 1)
        following = await follower.subscribe(ADDED)
        await follower.ping()
        async with db.session(org.id) as session:
            first = await create_message(session, conversation, text="first")

        frame = await read_killed(
            leader,
            leading,
            "contacts",
            EventName.MESSAGE_ADDED,
            id=first.id,
            conversation_id=conversation.id,
        )

        _closed_to_resume(frame, leader)
        frame = await follower.next(following)
        assert frame is not None
        assert frame["type"] == "next", frame
        assert frame["payload"]["data"]["messageAdded"]["text"] == "first", frame
        await follower.close()


@pytest.mark.parametrize("name", list(FEEDS))
async def test_a_feed_whose_read_fails_closes_the_socket_and_is_resumed(
    broker_app: Starlette,
    read_killed: ReadKilled,
    db: Database,
    org: Organization,
    admin: Actor,
    name: str,
) -> None:
    """Given conversationUpdated (messageUpdated) resumed from a position, when the feed's
    read after an event is killed, then no frame without data (nor a `complete`) is
    sent: the socket closes with 1013, and resuming from the same cursor delivers the
    change."""
    query, table = FEEDS[name]
    async with db.session(org.id) as session:
        conversation = await create_conversation(session)
        message = await create_message(session, conversation, text="hello")
    after = encode_update_cursor(max(conversation.update_seq, message.update_seq))
    async with live_server(broker_app) as base:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, base_url=base) as http:
            token = await token_for(http, admin)
        socket = await GraphQLSocket.connect(base, token)
        operation = await socket.subscribe(query, {"after": after})
        await until_listening(broker_app, 1)
        async with db.session(org.id) as session:
            # a change of the conversation and of its message, each a new feed position
            await session.exec(
                update(Conversation).values(unread_count=Conversation.unread_count + 1)
            )
            await session.exec(update(Message).values(status=MessageStatus.DELIVERED))

        frame = await read_killed(
            socket,
            operation,
            table,
            EventName(name),
            id=message.id,
        )

        _closed_to_resume(frame, socket)
        resumed = await _first_data(base, token, query, after)
        expected = conversation if name == "conversationUpdated" else message
        assert resumed[name]["id"] == gid(type(expected).__name__, expected.id)


ACCOUNT = "subscription { whatsAppAccountUpdated { id displayPhoneNumber } }"


@pytest.mark.parametrize("kills", [1, 2])
async def test_a_followed_row_is_read_again_once_then_the_socket_closes(
    broker_app: Starlette,
    read_killed: ReadKilled,
    db: Database,
    org: Organization,
    admin: Actor,
    kills: int,
) -> None:
    """Given whatsAppAccountUpdated (an id-only event read by id, as noteAdded and
    securityEventAdded), when its row's read is killed once, then it is read again and
    delivered; when the read again is killed too, then no frame without data (nor a
    `complete`) is sent: the socket closes with 1013."""
    async with db.session(org.id) as session:
        account = await create_whatsapp_account(session)
    async with live_server(broker_app) as base:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, base_url=base) as http:
            socket = await GraphQLSocket.connect(base, await token_for(http, admin))
        operation = await socket.subscribe(ACCOUNT)
        await until_listening(broker_app, 1)

        frame = await read_killed(
            socket,
            operation,
            "whatsapp_accounts",
            EventName.WHATSAPP_ACCOUNT_UPDATED,
            kills=kills,
            id=account.id,
        )

        if kills == 1:
            assert frame is not None
            assert frame["payload"] == {
                "data": {
                    "whatsAppAccountUpdated": {
                        "id": gid("WhatsAppAccount", account.id),
                        "displayPhoneNumber": account.display_phone_number,
                    }
                }
            }
            await socket.close()
        else:
            _closed_to_resume(frame, socket)


async def test_a_removal_whose_read_fails_closes_the_socket(
    broker_app: Starlette,
    read_killed: ReadKilled,
    org: Organization,
    admin: Actor,
) -> None:
    """Given conversationRemoved, when the removals' read after an event is killed, then
    no frame without data (nor a `complete`) is sent: the socket closes with 1013."""
    async with live_server(broker_app) as base:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, base_url=base) as http:
            socket = await GraphQLSocket.connect(base, await token_for(http, admin))
        operation = await socket.subscribe("subscription { conversationRemoved }")
        await until_listening(broker_app, 1)
        await socket.ping()

        frame = await read_killed(
            socket,
            operation,
            "conversation_removals",
            EventName.CONVERSATION_REMOVED,
            id=uuid.uuid4(),
        )

        _closed_to_resume(frame, socket)


async def test_graphql_ws_retries_1013_and_receives_the_event_it_missed(
    live: str,
    http: httpx.AsyncClient,
    live_app: Starlette,
    database_urls: DatabaseUrls,
    owner_db: Database,
    db: Database,
    org: Organization,
    channel: WhatsAppAccount,
    admin: Actor,
) -> None:
    """Given graphql-ws's client (under Node) that received a message, keeping its cursor
    in the request (docs/realtime.md), when the next message cannot be read (its read and
    the read again killed), then the socket closes 1013, graphql-ws retries on its own, and
    the retry receives that message, once."""
    token = await token_for(http, admin)
    async with node_script("inbox_client.mjs", WEFLUX_URL=live) as script:
        await script.send("open", name="tab", token=token)
        await script.expect("tab", "connected")
        await until_listening(live_app, 1)
        await inbound(http, "first")
        assert (await script.expect("tab", "message"))["text"] == "first"
        async with db.session(org.id) as session:
            conversation = (await session.exec(select(Conversation))).one()
            second = await create_message(session, conversation, text="second")

        async def publish_and_close() -> dict[str, Any]:
            await _publish(
                live_app,
                org,
                EventName.MESSAGE_ADDED,
                id=second.id,
                conversation_id=conversation.id,
            )
            return await script.expect("tab", "closed")

        closed = await killed_while_waiting(
            database_urls,
            owner_db,
            "LOCK TABLE messages IN ACCESS EXCLUSIVE MODE",
            publish_and_close,
            kills=2,
        )

        assert closed["code"] == TRY_AGAIN_CLOSE
        await script.expect("tab", "retry-wait")
        await script.send("retry", name="tab")
        await script.expect("tab", "connected")
        assert (await script.expect("tab", "message"))["text"] == "second"
        await script.send("dispose", name="tab")
        await script.expect("tab", "disposed")
        assert script.of("tab") == [
            ("connected", None),
            ("message", "first"),
            ("closed", TRY_AGAIN_CLOSE),
            ("retry-wait", None),
            ("connected", None),
            ("message", "second"),
            ("disposed", None),
        ]


async def test_a_subscription_whose_start_fails_to_read_closes_the_socket(
    broker_app: Starlette,
    database_urls: DatabaseUrls,
    owner_db: Database,
    org: Organization,
    admin: Actor,
) -> None:
    """Given conversationUpdated without after (it reads the feed's head as it starts),
    when that read is killed, then the start's failure is no `next` without data and
    `complete` either: the socket closes with 1013, and the client subscribes again."""
    async with live_server(broker_app) as base:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, base_url=base) as http:
            socket = await GraphQLSocket.connect(base, await token_for(http, admin))

        async def subscribe_and_read() -> dict[str, Any] | None:
            query = "subscription { conversationUpdated { id } }"
            return await _frame_or_close(socket, await socket.subscribe(query))

        frame = await killed_while_waiting(
            database_urls,
            owner_db,
            "LOCK TABLE conversations IN ACCESS EXCLUSIVE MODE",
            subscribe_and_read,
        )

        _closed_to_resume(frame, socket)


async def test_a_socket_authenticating_while_the_database_is_away_closes_1013(
    database_urls: DatabaseUrls, tmp_path: Path, admin: Actor
) -> None:
    """Given a server whose PostgreSQL refuses connections, when a client's
    `connection_init` is checked, then the socket closes with 1013 (retried by graphql-ws),
    not dropped without a close frame (1006); once PostgreSQL is back it connects."""
    url = make_url(database_urls.app)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    behind = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    settings = make_settings(
        tmp_path,
        database_url=behind,
        database_migration_url=database_urls.owner,
        database_connect_timeout=1.0,
    )
    try:
        async with live_server(create_app(settings)) as base:
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, base_url=base) as http:
                token = await token_for(http, admin)
            await proxy.cut()
            with pytest.raises(ConnectionClosed) as closed:
                await GraphQLSocket.connect(base, token)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == TRY_AGAIN_CLOSE

            await proxy.restore()
            socket = await GraphQLSocket.connect(base, token)
            await socket.ping()
            await socket.close()
    finally:
        await proxy.close()
