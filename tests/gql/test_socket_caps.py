"""Caps on the WebSockets one process holds, and the handshake rate per client IP.

A real uvicorn serves the app; independent `websockets` clients open sockets to it, as a
careless frontend (a reconnect loop, one token everywhere) or an attacker would.
Per session and per member: closed 4403 at `connection_init` (the contract's code for a
failed `connection_init`, never graphql-transport-ws's 4429, a second `connection_init`);
per client IP (in all, and not yet past `connection_init`) and over the handshake rate:
HTTP 429 before the socket is accepted. Every way a socket ends gives its place back.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from starlette.applications import Starlette
from starlette.types import Message
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from tests.fixtures.api import token_for
from tests.fixtures.app import HTTP_TIMEOUT
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import Actor
from tests.fixtures.live import serve_settings
from tests.fixtures.logs import capture_logs
from tests.fixtures.secops import fresh_ip
from tests.fixtures.services import TEST_REDIS_URL
from tests.fixtures.ws import WAIT
from weflux.gql import view
from weflux.runtime import runtime_of

pytestmark = pytest.mark.parametrize("dialect", ["sqlite"])  # counts live in the process

EXPECTED_HEADERS = {"x-content-type-options": "nosniff", "cache-control": "no-store"}


class Served:
    """One app under uvicorn: its base URL, an HTTP client, and its counts."""

    def __init__(self, app: Starlette, base_url: str, http: httpx.AsyncClient) -> None:
        self.app = app
        self.base_url = base_url
        self.http = http

    @property
    def url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/graphql"

    def counts(self) -> dict[str, int]:
        """Everything the process counts for its sockets; all 0 once none is open."""
        runtime = runtime_of(self.app)
        caps, registry = runtime.socket_caps, runtime.sockets
        return {
            "open": len(caps),
            "pending": sum(caps._pending.values()),
            "registered": len(registry),
            "members": sum(registry._members.values()),
            "sessions": len(registry._sockets) + len(registry._member_of),
        }

    async def settled(self, **expected: int) -> None:
        """Wait until the counts named are as expected (closes end on the server's time)."""
        async with asyncio.timeout(WAIT):
            while {k: v for k, v in self.counts().items() if k in expected} != expected:  # noqa: ASYNC110
                await asyncio.sleep(0.01)


Serve = Callable[..., AbstractAsyncContextManager[Served]]


@pytest.fixture
def serve(database_urls: DatabaseUrls, tmp_path: Path) -> Serve:
    """`async with serve(**settings) as served:` the app under uvicorn, on the test's DB."""

    @asynccontextmanager
    async def server(**overrides: Any) -> AsyncIterator[Served]:
        async with (
            serve_settings(database_urls, tmp_path, **overrides) as (app, base_url),
            httpx.AsyncClient(timeout=HTTP_TIMEOUT, base_url=base_url) as http,
        ):
            yield Served(app, base_url, http)

    return server


async def handshake(served: Served, ip: str | None = None) -> ClientConnection:
    """An accepted socket (from `ip`, through the trusted proxy), before `connection_init`."""
    headers = {"X-Forwarded-For": ip} if ip else None
    return await websockets.connect(
        served.url,
        subprotocols=[Subprotocol("graphql-transport-ws")],
        compression=None,
        additional_headers=headers,
    )


async def refused(served: Served, ip: str | None = None) -> websockets.InvalidStatus:
    """The refusal of a handshake (it must be refused)."""
    with pytest.raises(websockets.InvalidStatus) as refusal:
        await handshake(served, ip)
    return refusal.value


async def initialise(connection: ClientConnection, token: str | None) -> int | None:
    """Send `connection_init`: None once acknowledged, else the close code."""
    payload = {"authorization": f"Bearer {token}"} if token else {}
    await connection.send(json.dumps({"type": "connection_init", "payload": payload}))
    try:
        frame = json.loads(await asyncio.wait_for(connection.recv(), WAIT))
    except websockets.ConnectionClosed:
        return connection.close_code
    assert frame["type"] == "connection_ack", frame
    return None


async def socket_of(served: Served, token: str, ip: str | None = None) -> ClientConnection:
    """An acknowledged socket of `token`."""
    connection = await handshake(served, ip)
    assert await initialise(connection, token) is None
    return connection


def assert_refused_429(refusal: websockets.InvalidStatus, message: str) -> None:
    response = refusal.response
    assert response.status_code == 429
    for name, value in EXPECTED_HEADERS.items():
        assert response.headers.get(name) == value, name
    assert "content-security-policy" in response.headers
    [error] = json.loads(response.body or b"{}")["errors"]
    assert error["extensions"]["code"] == "RATE_LIMITED"
    assert message in error["message"]


async def test_a_session_past_its_cap_is_closed_4403_until_one_of_its_sockets_ends(
    serve: Serve, admin: Actor
) -> None:
    async with serve(websocket_max_per_session=2) as served:
        # Given a session holding its cap of 2 sockets
        token = await token_for(served.http, admin)
        first, second = await socket_of(served, token), await socket_of(served, token)
        # When it opens a third
        third = await handshake(served)
        # Then it is closed 4403 at connection_init, saying why
        assert await initialise(third, token) == 4403
        assert third.close_reason == "Too many open sockets for this session"
        # And another session of the same member is not refused
        other = await socket_of(served, await token_for(served.http, admin))
        # When one of the session's sockets closes, then a new one is accepted
        await first.close()
        await served.settled(registered=2)
        again = await socket_of(served, token)
        for connection in (second, other, again):
            await connection.close()
        await served.settled(open=0, registered=0, members=0, sessions=0)


async def test_a_member_past_its_cap_across_sessions_is_closed_4403(
    serve: Serve, admin: Actor, agent: Actor
) -> None:
    async with serve(websocket_max_per_session=10, websocket_max_per_member=3) as served:
        # Given a member with 3 sockets over two sessions
        one, two = await token_for(served.http, admin), await token_for(served.http, admin)
        held = [await socket_of(served, one), await socket_of(served, one)]
        held.append(await socket_of(served, two))
        # When a fourth opens on either session, or on a new one
        for token in (one, two, await token_for(served.http, admin)):
            connection = await handshake(served)
            # Then it is closed 4403
            assert await initialise(connection, token) == 4403
            assert connection.close_reason == "Too many open sockets for this member"
        # And another member of the workspace is not refused
        held.append(await socket_of(served, await token_for(served.http, agent)))
        for connection in held:
            await connection.close()
        await served.settled(open=0, registered=0, members=0, sessions=0)


async def test_an_address_past_its_cap_is_refused_429_before_the_socket_is_accepted(
    serve: Serve, admin: Actor
) -> None:
    async with serve(websocket_max_per_ip=2, trusted_proxies="127.0.0.1") as served:
        token = await token_for(served.http, admin)
        # Given a client IP behind the trusted proxy holding 2 sockets, one of them
        # authenticated
        ip, other_ip = fresh_ip(), fresh_ip()
        held = [await socket_of(served, token, ip), await handshake(served, ip)]
        # When it opens a third, then the handshake is refused 429, with the headers of
        # every HTTP answer, and the socket never opens
        assert_refused_429(await refused(served, ip), "Too many open sockets from this address")
        assert served.counts()["open"] == 2
        # And another address behind the same proxy is not refused
        held.append(await socket_of(served, token, other_ip))
        # When one of the address's sockets closes, then it may open one again
        await held[1].close()
        await served.settled(open=2)
        held.append(await socket_of(served, token, ip))
        for connection in held:
            await connection.close()
        await served.settled(open=0, pending=0, registered=0)


async def test_a_refused_handshake_logs_its_status_and_no_more(serve: Serve) -> None:
    async with serve(websocket_max_pending_per_ip=1) as served:
        waiting = await handshake(served)
        with capture_logs() as logs:
            # Given an address at its cap, when its handshake is refused
            await refused(served)
            async with asyncio.timeout(WAIT):
                while '"msg": "WS /graphql"' not in logs.text:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
        # Then the socket's access line says 429, and nothing else is logged of it
        lines = [json.loads(line) for line in logs.lines]
        [access] = [line for line in lines if line["msg"] == "WS /graphql"]
        assert access["status"] == 429
        assert [line for line in lines if line["level"] not in ("debug", "info")] == []
        await waiting.close()


async def test_sockets_waiting_for_connection_init_are_capped_per_address(
    serve: Serve, admin: Actor
) -> None:
    async with serve(websocket_max_pending_per_ip=2) as served:
        token = await token_for(served.http, admin)
        # Given 2 sockets of an address that sent no connection_init
        first, second = await handshake(served), await handshake(served)
        # When a third opens, then it is refused 429 before it is accepted
        assert_refused_429(await refused(served), "Too many sockets waiting for connection_init")
        # When one authenticates and the other sends an invalid token (4403),
        # then neither waits any more: two more may open
        assert await initialise(first, token) is None
        assert await initialise(second, "not-a-token") == 4403
        third, fourth = await handshake(served), await handshake(served)
        assert served.counts()["pending"] == 2
        for connection in (first, third, fourth):
            await connection.close()
        await served.settled(open=0, pending=0, registered=0)


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_handshakes_count_against_the_rate_of_their_address_in_every_process(
    serve: Serve, request: pytest.FixtureRequest, store: str
) -> None:
    extra: dict[str, Any] = {"rate_limit_websocket_ip": "3/hour", "trusted_proxies": "127.0.0.1"}
    if store == "redis":
        request.getfixturevalue("require_redis")
        extra["redis_url"] = TEST_REDIS_URL
    ip, other_ip = fresh_ip(), fresh_ip()
    async with serve(**extra) as served, serve(**extra) as second_process:
        # Given an address allowed 3 handshakes an hour, that made 3 (closed at once)
        for _ in range(3):
            await (await handshake(served, ip)).close()
        # When it makes a fourth, then it is refused 429 with the seconds to wait
        refusal = await refused(served, ip)
        assert_refused_429(refusal, "Too many requests")
        assert 1 <= int(refusal.response.headers["retry-after"]) <= 3600
        # And with Redis another process refuses it too; in memory each process counts
        # its own handshakes
        if store == "redis":
            assert_refused_429(await refused(second_process, ip), "Too many requests")
        else:
            await (await handshake(second_process, ip)).close()
        # And another address is not refused
        await (await handshake(served, other_ip)).close()
        await served.settled(open=0, pending=0)


async def test_no_way_a_socket_ends_leaves_it_counted(
    serve: Serve, admin: Actor, agent: Actor
) -> None:
    """Given caps of 3 a session, 4 a member, 6 an address, 2 pending,
    when an attacker's and a careless client's sockets end in every way, over and over,
    more often than any cap, then nothing stays counted: each cap admits as many again."""
    caps = {
        "websocket_max_per_session": 3,
        "websocket_max_per_member": 4,
        "websocket_max_per_ip": 6,
        "websocket_max_pending_per_ip": 2,
    }
    async with serve(**caps) as served:
        token = await token_for(served.http, agent)
        for _ in range(8):
            # The attacker: a handshake closed before connection_init; an invalid token
            # (4403); a malformed frame (4400); a second connection_init (4429); a peer
            # that drops the TCP connection without a close frame
            await (await handshake(served)).close()
            assert await initialise(await handshake(served), "forged") == 4403
            malformed = await socket_of(served, token)
            await malformed.send("[]")
            await malformed.wait_closed()
            assert malformed.close_code == 4400
            twice = await socket_of(served, token)
            assert await initialise(twice, token) == 4429
            dropped = await socket_of(served, token)
            dropped.transport.abort()
            # The careless client: sockets closed by the client, and a session's sockets
            # closed by the server (logout: 4401)
            await (await socket_of(served, token)).close()
            pair = await token_for(served.http, admin)
            revoked = [await socket_of(served, pair), await socket_of(served, pair)]
            logout = await served.http.post(
                "/auth/logout", headers={"Authorization": f"Bearer {pair}"}
            )
            assert logout.status_code == 204
            for connection in revoked:
                await connection.wait_closed()
                assert connection.close_code == 4401
            await served.settled(open=0, pending=0, registered=0, members=0, sessions=0)
        # Then every cap admits its full count again
        held = [await socket_of(served, token) for _ in range(3)]
        assert await initialise(await handshake(served), token) == 4403
        for connection in held:
            await connection.close()
        await served.settled(open=0, pending=0, registered=0, members=0, sessions=0)


async def test_a_socket_that_never_sends_connection_init_gives_its_place_back(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(view, "CONNECTION_INIT_TIMEOUT", 0.2)
    async with serve(websocket_max_pending_per_ip=1) as served:
        # Given an address whose one pending socket never sends connection_init
        silent = await handshake(served)
        # When it times out (4408), then the address may open another
        await silent.wait_closed()
        assert silent.close_code == 4408
        await served.settled(open=0, pending=0)
        await (await handshake(served)).close()


async def test_a_socket_whose_task_is_cancelled_gives_its_place_back(
    app: Starlette, client: httpx.AsyncClient, admin: Actor
) -> None:
    """Given an authenticated socket and one waiting for connection_init, served in
    process, when their tasks are cancelled mid-socket (as a server that stops does),
    then nothing stays counted."""
    token = await token_for(client, admin)
    runtime = runtime_of(app)
    tasks = []
    for payload in ({"authorization": f"Bearer {token}"}, None):
        frames: asyncio.Queue[Message] = asyncio.Queue()
        answers: asyncio.Queue[Message] = asyncio.Queue()
        await frames.put({"type": "websocket.connect"})
        scope = {
            "type": "websocket",
            "asgi": {"version": "3.0"},
            "path": "/graphql",
            "raw_path": b"/graphql",
            "root_path": "",
            "query_string": b"",
            "scheme": "ws",
            "headers": [(b"host", b"testserver")],
            "subprotocols": ["graphql-transport-ws"],
            "client": ("203.0.113.7", 50000),
            "server": ("testserver", 80),
        }
        tasks.append(asyncio.create_task(app(scope, frames.get, answers.put)))
        assert (await asyncio.wait_for(answers.get(), WAIT))["type"] == "websocket.accept"
        if payload is not None:
            init = {"type": "connection_init", "payload": payload}
            await frames.put({"type": "websocket.receive", "text": json.dumps(init)})
            ack = await asyncio.wait_for(answers.get(), WAIT)
            assert json.loads(ack["text"])["type"] == "connection_ack"
    assert (len(runtime.socket_caps), len(runtime.sockets)) == (2, 1)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert (len(runtime.socket_caps), len(runtime.sockets)) == (0, 0)
    assert runtime.socket_caps.pending_from("203.0.113.7") == 0
