"""Two `weflux serve` processes sharing PostgreSQL and Redis: events and revocations cross."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url
from sqlmodel import col, select

from tests.fixtures.api import gql, token_for
from tests.fixtures.app import HTTP_TIMEOUT
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
# How long a frame that must come is waited for. Generous: on the loaded 2-core CI box a
# reconnection (its backoff reaches 5 s) and catch-up took past the 10 s once waited. A
# message that is lost does not wait this out: messages must come in the order of their
# ids (read from the database), so a gap fails at the next one (`expect_texts`).
FRAME = 30.0
PROBE_WAIT = 10.0  # one probe; `listening` sends another when it runs out


async def listening(
    on_a: httpx.AsyncClient, subscriptions: list[tuple[GraphQLSocket, str]]
) -> list[set[str]]:
    """Probe through process A until every subscription (on B) has received the same probe;
    for each, the probes it never received (sent before it listened).

    A `subscribe` frame has no answer: this is the event that shows a subscription on
    another process listens. From then on, each receives every later message.
    """
    sent: list[str] = []
    heard: list[set[str]] = [set() for _ in subscriptions]
    for n in range(20):
        probe = f"probe {n}"
        sent.append(probe)
        await inbound(on_a, probe, sender=PROBE)
        try:
            for (socket, operation), texts in zip(subscriptions, heard, strict=True):
                while probe not in texts:
                    texts.add(await _text(socket, operation, timeout=PROBE_WAIT))
        except TimeoutError:
            continue  # one was not listening yet: probe again
        return [set(sent) - texts for texts in heard]
    raise AssertionError("the subscriptions never received a probe")


async def _text(socket: GraphQLSocket, operation: str, timeout: float = FRAME) -> str:  # noqa: ASYNC109
    frame = await socket.next(operation, timeout=timeout)
    return str(frame["payload"]["data"]["messageAdded"]["text"])


async def expect_texts(
    socket: GraphQLSocket,
    operation: str,
    expected: list[str],
    *,
    also: frozenset[str] = frozenset(),
) -> None:
    """`messageAdded` brings `expected`, in this order, and nothing else but each of `also`
    at most once; fails naming the message it waited for, and what came instead."""
    received: list[str] = []
    for text in expected:
        while True:
            try:
                got = await _text(socket, operation)
            except TimeoutError:
                raise AssertionError(
                    f"waited {FRAME} s for {text!r} of {expected}; received {received}"
                ) from None
            received.append(got)
            if got == text:
                break
            if got not in also or received.count(got) > 1:
                raise AssertionError(f"waited for {text!r} of {expected}; received {received}")


async def until_stored(db: Database, actor: Actor, texts: list[str]) -> list[str]:
    """Wait until both processes have stored these inbound messages (Redis may be down);
    the texts in the order of their messages' ids: the order a replay delivers them."""
    async with asyncio.timeout(FRAME):
        while True:
            async with db.session(actor.org_id) as session:
                query = select(Message.text).where(col(Message.text).in_(texts))
                stored = [
                    str(text) for text in (await session.exec(query.order_by(col(Message.id))))
                ]
                if len(stored) == len(texts):
                    return stored
            await asyncio.sleep(0.05)


# A cold start (imports, the migration check, pools) took 30-50 s on the 2-core CI box
# under load: the wait is generous, and a server that exits fails at once instead.
STARTUP = 120.0
ADDRESS_IN_USE = "address already in use"  # the free port was taken in between: try another


@dataclass
class _Server:
    cwd: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return (self.cwd / "serve.log").read_text(errors="replace")


def _spawn(env: dict[str, str], cwd: Path) -> tuple[int, subprocess.Popen[bytes]]:
    port = free_port()
    with (cwd / "serve.log").open("wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "weflux", "serve", "--port", str(port)],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return port, process


def _start(env: dict[str, str], cwd: Path) -> _Server:
    return _Server(cwd, *_spawn(env, cwd))


async def _ready(env: dict[str, str], server: _Server) -> None:
    """Until `server` answers `/readyz` (started again if its port was taken meanwhile)."""
    async with asyncio.timeout(STARTUP), httpx.AsyncClient() as client:
        while True:
            if server.process.poll() is not None:
                if ADDRESS_IN_USE not in server.log.lower():
                    raise AssertionError(f"server {server.cwd.name} exited:\n{server.log}")
                server.port, server.process = _spawn(env, server.cwd)
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(f"{server.base}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.05)


async def _stop(server: _Server) -> None:
    server.process.send_signal(signal.SIGTERM)
    await asyncio.to_thread(server.process.wait, 20)
    # Shown by pytest for a failed test only: what each server did, and when.
    print(f"--- the log of server {server.cwd.name} ({server.base}) ---\n{server.log}")


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
        "WEFLUX_LOG_LEVEL": "INFO",
        **{f"WEFLUX_RATE_LIMIT_{name.upper()}": "10000/minute" for name in GENEROUS_LIMITS},
    }


@pytest.fixture
async def two(server_env: dict[str, str], tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """Processes A and B, started side by side (each cold start is slow under load)."""
    servers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        servers.append(_start(server_env, tmp_path / name))
    try:
        async with asyncio.TaskGroup() as starting:
            for server in servers:
                starting.create_task(_ready(server_env, server))
        yield servers[0].base, servers[1].base
    finally:
        await asyncio.gather(*(_stop(s) for s in servers))


async def test_a_webhook_on_one_process_reaches_a_subscriber_on_the_other(
    two: tuple[str, str], channel: object, admin: Actor, agent: Actor
) -> None:
    a, b = two
    async with (
        httpx.AsyncClient(base_url=a, timeout=HTTP_TIMEOUT) as on_a,
        httpx.AsyncClient(base_url=b, timeout=HTTP_TIMEOUT) as on_b,
    ):
        sockets = [
            await GraphQLSocket.connect(b, await token_for(on_b, admin)),
            await GraphQLSocket.connect(b, await token_for(on_b, agent)),
        ]
        operations = [await s.subscribe(ADDED) for s in sockets]
        await listening(on_a, list(zip(sockets, operations, strict=True)))
        await inbound(on_a, "through process A")
        for socket, operation in zip(sockets, operations, strict=True):
            frame = await socket.next(operation, timeout=FRAME)
            assert frame["payload"]["data"]["messageAdded"]["text"] == "through process A"
            await socket.close()


async def test_revoking_through_one_process_closes_a_socket_on_the_other(
    two: tuple[str, str], agent: Actor
) -> None:
    a, b = two
    async with httpx.AsyncClient(base_url=a, timeout=HTTP_TIMEOUT) as on_a:
        token = await token_for(on_a, agent)
        socket = await GraphQLSocket.connect(b, token)
        response = await on_a.post("/auth/logout", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 204
        # Within a second when the machine is not starved (docs/realtime.md); how fast is
        # measured in bench/, not here.
        assert await closed_with(socket, within=FRAME) == 4401


async def test_after_a_redis_outage_a_resuming_subscriber_has_every_message_once(
    two: tuple[str, str], redis_proxy: TcpProxy, channel: object, admin: Actor, db: Database
) -> None:
    """Given an Admin following `messageAdded` on process B while webhooks arrive on A,
    when Redis goes away mid-stream and comes back with messages stored meanwhile,
    then B's subscriber receives each of them once, in the order of their ids (the
    catch-up's order), then live ones; and a client resuming `after` its first one
    receives each once, then live ones."""
    a, b = two
    async with (
        httpx.AsyncClient(base_url=a, timeout=HTTP_TIMEOUT) as on_a,
        httpx.AsyncClient(base_url=b, timeout=HTTP_TIMEOUT) as on_b,
    ):
        token = await token_for(on_b, admin)
        socket = await GraphQLSocket.connect(b, token)
        operation = await socket.subscribe(ADDED)
        # Probes sent before the subscription listened are stored but were never sent to
        # it: the catch-up after the outage may bring them (each once), as it brings any
        # message it did not deliver from up to 60 s before the newest it did.
        (unheard,) = await listening(on_a, [(socket, operation)])
        await inbound(on_a, "m0")
        first = (await socket.next(operation, timeout=FRAME))["payload"]["data"]["messageAdded"]
        assert first["text"] == "m0"

        await redis_proxy.cut()  # Redis goes away mid-stream
        for n in range(1, 4):
            await inbound(on_a, f"m{n}", sender=f"1650555{n:04d}")
        missed = await until_stored(db, admin, ["m1", "m2", "m3"])
        # The outage itself lasts a while: a blip shorter than the Redis client's own
        # retries goes unnoticed by the broker, and what was published meanwhile is not
        # caught up (no RESYNC); that case is not what this test is about.
        await asyncio.sleep(OUTAGE)
        await redis_proxy.restore()
        await inbound(on_a, "m4")  # after the missed ones, however it arrives
        await expect_texts(socket, operation, [*missed, "m4"], also=frozenset(unheard))
        await inbound(on_a, "m5")  # the next one, and nothing twice before it
        await expect_texts(socket, operation, ["m5"])
        await socket.close()

        # and a client that reconnects with `after` gets each message exactly once
        resumed_socket = await GraphQLSocket.connect(b, token)
        resumed = await resumed_socket.subscribe(ADDED, {"after": first["cursor"]})
        replayed = await until_stored(db, admin, ["m1", "m2", "m3", "m4", "m5"])
        await expect_texts(resumed_socket, resumed, replayed)
        await inbound(on_a, "m6")  # live again, and nothing replayed twice before it
        await expect_texts(resumed_socket, resumed, ["m6"])
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
    async with (
        httpx.AsyncClient(base_url=a, timeout=HTTP_TIMEOUT) as on_a,
        httpx.AsyncClient(base_url=b, timeout=HTTP_TIMEOUT) as on_b,
    ):
        sockets = [
            await GraphQLSocket.connect(b, await token_for(on_b, admin)),
            await GraphQLSocket.connect(b, await token_for(on_b, agent)),
        ]
        operations = [await s.subscribe(COUNTS) for s in sockets]
        pairs = list(zip(sockets, operations, strict=True))

        async def pushed() -> list[list[int]]:
            frames = [await s.next(o, timeout=FRAME) for s, o in pairs]
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
        assert await pushed() == [[0, 2, 2, 2]] * 2
        for socket in sockets:
            await socket.close()


FEED_START = encode_update_cursor(0)
CONVERSATIONS = """subscription($after: String) { conversationUpdated(after: $after) {
  updateCursor unreadCount contact { name } } }"""
STATUSES = """subscription($after: String) { messageUpdated(after: $after) {
  updateCursor status text } }"""


async def _next(socket: GraphQLSocket, operation: str, field: str) -> dict[str, Any]:
    frame = await socket.next(operation, timeout=FRAME)
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
    async with (
        httpx.AsyncClient(base_url=a, timeout=HTTP_TIMEOUT) as on_a,
        httpx.AsyncClient(base_url=b, timeout=HTTP_TIMEOUT) as on_b,
    ):
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
    async with (
        httpx.AsyncClient(base_url=a, timeout=HTTP_TIMEOUT) as on_a,
        httpx.AsyncClient(base_url=b, timeout=HTTP_TIMEOUT) as on_b,
    ):
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
        frame = await socket.next(removed, timeout=FRAME)
        assert frame["payload"]["data"]["conversationRemoved"] == conversation
        await socket.close()
