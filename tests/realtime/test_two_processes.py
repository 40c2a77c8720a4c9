"""Two `weflux serve` processes sharing PostgreSQL and Redis: events and revocations cross."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url
from sqlmodel import col, func, select

from tests.fixtures.api import gql, token_for
from tests.fixtures.databases import DatabaseUrls, postgres_only
from tests.fixtures.factories import Actor, create_message
from tests.fixtures.inbox import ASSIGN
from tests.fixtures.live import ADDED, SECRET, closed_with, free_port, inbound, status_update
from tests.fixtures.services import TEST_REDIS_URL
from tests.fixtures.settings import GENEROUS_LIMITS
from tests.fixtures.tcp_proxy import TcpProxy
from tests.fixtures.ws import GraphQLSocket
from weflux.config import Settings
from weflux.db import Database
from weflux.ids import encode_global_id
from weflux.models import Conversation, Message, MessageDirection, MessageStatus
from weflux.pagination import encode_update_cursor

pytestmark = [postgres_only, pytest.mark.usefixtures("require_redis")]

OUTAGE = 0.5  # seconds without Redis, once the messages sent meanwhile are stored
PROBE = "16505550000"  # a customer whose messages only show that subscribers listen


async def listening(
    on_a: httpx.AsyncClient, subscriptions: list[tuple[GraphQLSocket, str]]
) -> None:
    """Probe through process A until every subscription (on B) has received the same probe.

    A `subscribe` frame has no answer: this is the event that shows a subscription on
    another process listens. From then on, each receives every later message.
    """
    for n in range(20):
        probe = f"probe {n}"
        await inbound(on_a, probe, sender=PROBE)
        try:
            for socket, operation in subscriptions:
                while await _text(socket, operation) != probe:
                    pass
        except TimeoutError:
            continue  # one was not listening yet: probe again
        return
    raise AssertionError("the subscriptions never received a probe")


async def _text(socket: GraphQLSocket, operation: str, timeout: float = 10.0) -> str:  # noqa: ASYNC109
    frame = await socket.next(operation, timeout=timeout)
    return str(frame["payload"]["data"]["messageAdded"]["text"])


async def until_stored(db: Database, actor: Actor, texts: list[str]) -> None:
    """Wait until both processes have stored these inbound messages (Redis may be down)."""
    async with asyncio.timeout(10):
        while True:
            async with db.session(actor.org_id) as session:
                query = select(func.count()).where(col(Message.text).in_(texts))
                if (await session.exec(query)).one() == len(texts):
                    return
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def serve(env: dict[str, str], cwd: Path) -> AsyncIterator[str]:
    port = free_port()
    log = (cwd / "serve.log").open("wb")  # the process's log: the test waits on its lines
    process = subprocess.Popen(  # noqa: ASYNC220  (a second real process is the point)
        [sys.executable, "-m", "weflux", "serve", "--port", str(port)],
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base) as client:
            for _ in range(600):  # 30 s: a cold start on a loaded machine
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the server did not come up")
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 20)
        log.close()


@pytest.fixture
async def redis_proxy() -> AsyncIterator[TcpProxy]:
    url = make_url(TEST_REDIS_URL)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 6379)
    await proxy.start()
    yield proxy
    await proxy.close()


@pytest.fixture
def server_env(
    settings: Settings, database_urls: DatabaseUrls, redis_proxy: TcpProxy
) -> dict[str, str]:
    assert settings.jwt_secret is not None
    assert settings.encryption_keys is not None
    database = make_url(TEST_REDIS_URL).database or 0
    return {k: v for k, v in os.environ.items() if not k.startswith("WEFLUX_")} | {
        "WEFLUX_ENV": "test",
        "WEFLUX_DATABASE_URL": database_urls.app,
        "WEFLUX_REDIS_URL": f"redis://127.0.0.1:{redis_proxy.port}/{database}",
        "WEFLUX_JWT_SECRET": settings.jwt_secret.get_secret_value(),
        "WEFLUX_ENCRYPTION_KEYS": settings.encryption_keys.get_secret_value(),
        "WEFLUX_META_APP_SECRET": SECRET,
        "WEFLUX_LOG_LEVEL": "WARNING",
        **{f"WEFLUX_RATE_LIMIT_{name.upper()}": "10000/minute" for name in GENEROUS_LIMITS},
    }


@pytest.fixture
async def two(server_env: dict[str, str], tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with serve(server_env, tmp_path / "a") as a, serve(server_env, tmp_path / "b") as b:
        yield a, b


async def test_a_webhook_on_one_process_reaches_a_subscriber_on_the_other(
    two: tuple[str, str], channel: object, admin: Actor, agent: Actor
) -> None:
    a, b = two
    async with httpx.AsyncClient(base_url=a) as on_a, httpx.AsyncClient(base_url=b) as on_b:
        sockets = [
            await GraphQLSocket.connect(b, await token_for(on_b, admin)),
            await GraphQLSocket.connect(b, await token_for(on_b, agent)),
        ]
        operations = [await s.subscribe(ADDED) for s in sockets]
        await listening(on_a, list(zip(sockets, operations, strict=True)))
        await inbound(on_a, "through process A")
        for socket, operation in zip(sockets, operations, strict=True):
            frame = await socket.next(operation)
            assert frame["payload"]["data"]["messageAdded"]["text"] == "through process A"
            await socket.close()


async def test_revoking_through_one_process_closes_a_socket_on_the_other(
    two: tuple[str, str], agent: Actor
) -> None:
    a, b = two
    async with httpx.AsyncClient(base_url=a) as on_a:
        token = await token_for(on_a, agent)
        socket = await GraphQLSocket.connect(b, token)
        response = await on_a.post("/auth/logout", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 204
        assert await closed_with(socket, within=1.0) == 4401


async def test_after_a_redis_outage_a_resuming_subscriber_has_every_message_once(
    two: tuple[str, str], redis_proxy: TcpProxy, channel: object, admin: Actor, db: Database
) -> None:
    a, b = two
    async with httpx.AsyncClient(base_url=a) as on_a, httpx.AsyncClient(base_url=b) as on_b:
        token = await token_for(on_b, admin)
        socket = await GraphQLSocket.connect(b, token)
        operation = await socket.subscribe(ADDED)
        await listening(on_a, [(socket, operation)])
        await inbound(on_a, "m0")
        first = (await socket.next(operation, timeout=10))["payload"]["data"]["messageAdded"]
        assert first["text"] == "m0"

        await redis_proxy.cut()  # Redis goes away mid-stream
        for n in range(1, 4):
            await inbound(on_a, f"m{n}", sender=f"1650555{n:04d}")
        await until_stored(db, admin, ["m1", "m2", "m3"])
        # The outage itself lasts a while: a blip shorter than the Redis client's own
        # retries goes unnoticed by the broker, and what was published meanwhile is not
        # caught up (no RESYNC); that case is not what this test is about.
        await asyncio.sleep(OUTAGE)
        await redis_proxy.restore()

        received = []
        for _ in range(3):
            frame = await socket.next(operation, timeout=10)
            received.append(frame["payload"]["data"]["messageAdded"]["text"])
        await inbound(on_a, "m4")
        received.append(
            (await socket.next(operation, timeout=10))["payload"]["data"]["messageAdded"]["text"]
        )
        assert sorted(received) == ["m1", "m2", "m3", "m4"]
        await inbound(on_a, "m5")  # the next one, and nothing twice before it
        assert await _text(socket, operation, timeout=10) == "m5"
        await socket.close()

        # and a client that reconnects with `after` gets each message exactly once
        resumed_socket = await GraphQLSocket.connect(b, token)
        resumed = await resumed_socket.subscribe(ADDED, {"after": first["cursor"]})
        texts = [await _text(resumed_socket, resumed) for _ in range(5)]
        assert sorted(texts) == ["m1", "m2", "m3", "m4", "m5"]
        await inbound(on_a, "m6")  # live again, and nothing replayed twice before it
        assert await _text(resumed_socket, resumed, timeout=10) == "m6"
        await resumed_socket.close()


COUNTS = "subscription { inboxCountsUpdated { mine unassigned all unread } }"


async def test_counts_on_one_process_follow_changes_made_through_the_other(
    two: tuple[str, str],
    redis_proxy: TcpProxy,
    channel: object,
    admin: Actor,
    agent: Actor,
    db: Database,
) -> None:
    """Given an Admin and an Agent following their counts on process B,
    when a customer writes through process A, then both are pushed the new counts; and
    when another writes while Redis is away, both are pushed the final counts once it is
    back."""
    a, b = two
    async with httpx.AsyncClient(base_url=a) as on_a, httpx.AsyncClient(base_url=b) as on_b:
        sockets = [
            await GraphQLSocket.connect(b, await token_for(on_b, admin)),
            await GraphQLSocket.connect(b, await token_for(on_b, agent)),
        ]
        operations = [await s.subscribe(COUNTS) for s in sockets]
        pairs = list(zip(sockets, operations, strict=True))

        async def pushed(timeout: float = 5.0) -> list[list[int]]:  # noqa: ASYNC109
            frames = [await s.next(o, timeout=timeout) for s, o in pairs]
            return [list(f["payload"]["data"]["inboxCountsUpdated"].values()) for f in frames]

        # mine, unassigned, all, unread
        assert await pushed() == [[0, 0, 0, 0]] * 2
        await inbound(on_a, "through process A")
        assert await pushed() == [[0, 1, 1, 1]] * 2

        await redis_proxy.cut()
        await inbound(on_a, "while Redis is away", sender="16505550042")
        await until_stored(db, admin, ["while Redis is away"])
        await asyncio.sleep(OUTAGE)  # an outage, not a blip (see the test above)
        await redis_proxy.restore()
        assert await pushed(timeout=10) == [[0, 2, 2, 2]] * 2
        for socket in sockets:
            await socket.close()


FEED_START = encode_update_cursor(0)
CONVERSATIONS = """subscription($after: String) { conversationUpdated(after: $after) {
  updateCursor unreadCount contact { name } } }"""
STATUSES = """subscription($after: String) { messageUpdated(after: $after) {
  updateCursor status text } }"""


async def _next(socket: GraphQLSocket, operation: str, field: str) -> dict[str, Any]:
    frame = await socket.next(operation, timeout=10)
    assert frame["type"] == "next", frame
    data: dict[str, Any] = frame["payload"]["data"][field]
    return data


async def _names(socket: GraphQLSocket, operation: str, count: int) -> list[str]:
    return [
        str((await _next(socket, operation, "conversationUpdated"))["contact"]["name"])
        for _ in range(count)
    ]


async def _sent(db: Database, actor: Actor, text: str) -> str:
    """A sent outbound message in the first conversation (Customer 0001's); its wamid."""
    async with db.session(actor.org_id) as session:
        first = select(Conversation).order_by(col(Conversation.id))
        conversation = (await session.exec(first)).first()
        assert conversation is not None
        message = await create_message(
            session,
            conversation,
            text=text,
            direction=MessageDirection.OUTBOUND,
            status=MessageStatus.SENT,
        )
        assert message.wa_message_id is not None
        return message.wa_message_id


async def test_update_feeds_resume_across_a_redis_outage_and_onto_another_process(
    two: tuple[str, str], redis_proxy: TcpProxy, channel: object, admin: Actor, db: Database
) -> None:
    """Given an Admin following `conversationUpdated` and `messageUpdated` on process B
    while webhooks arrive on process A,
    when Redis goes away and comes back with changes made meanwhile, and then the client
    moves to process A with its last `updateCursor`s after more changes,
    then it receives every change exactly once: the missed ones after the outage, the
    missed ones on A's replay, then live ones."""
    a, b = two
    async with httpx.AsyncClient(base_url=a) as on_a, httpx.AsyncClient(base_url=b) as on_b:
        await inbound(on_a, "c1", sender="16505550001")
        await until_stored(db, admin, ["c1"])
        wamid = await _sent(db, admin, "out")
        socket = await GraphQLSocket.connect(b, await token_for(on_b, admin))
        conversations = await socket.subscribe(CONVERSATIONS, {"after": FEED_START})
        statuses = await socket.subscribe(STATUSES, {"after": FEED_START})
        assert await _names(socket, conversations, 1) == ["Customer 0001"]
        await status_update(on_a, wamid, "delivered")
        assert (await _next(socket, statuses, "messageUpdated"))["status"] == "DELIVERED"

        await redis_proxy.cut()
        await inbound(on_a, "c2", sender="16505550002")
        await inbound(on_a, "c3", sender="16505550003")
        await status_update(on_a, wamid, "read")
        await until_stored(db, admin, ["c2", "c3"])
        await asyncio.sleep(OUTAGE)  # an outage, not a blip (see the test above)
        await redis_proxy.restore()
        assert sorted(await _names(socket, conversations, 2)) == [
            "Customer 0002",
            "Customer 0003",
        ]
        last_status = await _next(socket, statuses, "messageUpdated")
        assert last_status["status"] == "READ"
        await inbound(on_a, "c4", sender="16505550004")
        last = await _next(socket, conversations, "conversationUpdated")
        assert last["contact"]["name"] == "Customer 0004"  # nothing twice before it
        await socket.close()

        await inbound(on_b, "c5", sender="16505550005")
        await until_stored(db, admin, ["c5"])
        socket = await GraphQLSocket.connect(a, await token_for(on_a, admin))
        conversations = await socket.subscribe(CONVERSATIONS, {"after": last["updateCursor"]})
        statuses = await socket.subscribe(STATUSES, {"after": last_status["updateCursor"]})
        assert await _names(socket, conversations, 1) == ["Customer 0005"]
        await inbound(on_b, "c6", sender="16505550006")
        assert await _names(socket, conversations, 1) == ["Customer 0006"]
        wamid_2 = await _sent(db, admin, "out 2")
        await status_update(on_b, wamid_2, "delivered")
        frame = await _next(socket, statuses, "messageUpdated")
        assert (frame["text"], frame["status"]) == ("out 2", "DELIVERED")
        await socket.close()


async def test_a_reassignment_through_one_process_removes_the_conversation_on_the_other(
    two: tuple[str, str], channel: object, admin: Actor, agent: Actor, db: Database
) -> None:
    """Given an Agent subscribed to `conversationRemoved` on process B and an unassigned
    conversation,
    when an Admin assigns it to themself through process A,
    then the Agent receives its global id on B."""
    a, b = two
    async with httpx.AsyncClient(base_url=a) as on_a, httpx.AsyncClient(base_url=b) as on_b:
        socket = await GraphQLSocket.connect(b, await token_for(on_b, agent))
        removed = await socket.subscribe("subscription { conversationRemoved }")
        added = await socket.subscribe(ADDED)
        await listening(on_a, [(socket, added)])
        async with db.session(agent.org_id) as session:
            probed = (await session.exec(select(Conversation))).one()
        conversation = encode_global_id("Conversation", probed.id)
        response = await gql(
            on_a,
            await token_for(on_a, admin),
            ASSIGN,
            {
                "input": {
                    "conversationId": conversation,
                    "assigneeId": encode_global_id("Member", admin.membership.id),
                }
            },
        )
        assert "errors" not in response.json(), response.text
        frame = await socket.next(removed, timeout=10)
        assert frame["payload"]["data"]["conversationRemoved"] == conversation
        await socket.close()
