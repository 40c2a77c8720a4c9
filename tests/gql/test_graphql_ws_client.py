"""The socket as the frontends meet it: graphql-ws's `createClient` under Node.

docs/realtime.md tells frontends how to use it; these tests make its claims facts:
`messageAdded` is received and resumed with `after` (the missed message first, once);
4401 is never retried by graphql-ws (the script refreshes the pair, or logs in again, and
creates the client again, as the docs say), nor are 4400, 4406, 4409, 4429 and 1009;
4403 past the session's cap is retried, calling `connectionParams` again, and succeeds
once another socket of the session closes; 4408 and 4008 are retried, and a retry sends
the subscription's request object again, so an `after` kept current in it resumes after
the last message received; a handshake refused with HTTP 429 reaches graphql-ws as an
error, which it gives up on unless told to retry errors (`shouldRetry`).
The script, `tests/js/inbox_client.mjs`, prints what graphql-ws reports; its retry waits
for the test's word, so no test waits on graphql-ws's backoff.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from tests.fixtures import webhooks as wh
from tests.fixtures.api import token_for, tokens_for
from tests.fixtures.app import HTTP_TIMEOUT
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import Actor
from tests.fixtures.live import (
    SECRET,
    inbound,
    listeners,
    live_server,
    serve_settings,
    signed_webhook,
    until_listening,
)
from tests.fixtures.node import NodeScript, node_script, require_node
from tests.fixtures.ws import WAIT
from weflux.gql import view
from weflux.models import WhatsAppAccount, utcnow
from weflux.realtime import hub
from weflux.runtime import runtime_of

pytestmark = pytest.mark.parametrize("dialect", ["sqlite"])  # the client's side is the subject

SCRIPT = "inbox_client.mjs"


@pytest.fixture(autouse=True)
def _node() -> None:
    """Without Node the tests skip (fail under CI=true) before a server starts."""
    require_node()


async def received(script: NodeScript, name: str, text: str) -> dict[str, object]:
    """The next message of client `name`, which must be `text`."""
    message = await script.expect(name, "message")
    assert message["text"] == text, script.events
    return message


async def sockets_closed(app: Starlette) -> None:
    """Wait until `app` holds no socket and no subscription listens."""
    runtime = runtime_of(app)
    async with asyncio.timeout(WAIT):
        while listeners(app) or len(runtime.sockets) or len(runtime.socket_caps):  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_graphql_ws_receives_message_added_and_resumes_after_the_last_cursor(
    broker_app: Starlette, channel: WhatsAppAccount, admin: Actor
) -> None:
    live_app = broker_app  # on the in-process broker, and on Redis
    async with (
        live_server(live_app) as live,
        httpx.AsyncClient(timeout=HTTP_TIMEOUT, base_url=live) as http,
        node_script(SCRIPT, WEFLUX_URL=live) as script,
    ):
        token = await token_for(http, admin)
        # Given a frontend subscribed to messageAdded with graphql-ws
        await script.send("open", name="tab", token=token)
        await script.expect("tab", "connected")
        await until_listening(live_app, 1)
        # When a customer writes, then it receives the message
        await inbound(http, "one")
        first = await received(script, "tab", "one")
        # When its client is gone while another message arrives
        await script.send("dispose", name="tab")
        await script.expect("tab", "disposed")
        await sockets_closed(live_app)
        await inbound(http, "two")
        # Then a new client resuming after the last cursor gets the missed one first,
        # then the live ones, each once
        await script.send("open", name="resumed", token=token, after=first["cursor"])
        await received(script, "resumed", "two")
        await until_listening(live_app, 1)
        await inbound(http, "three")
        await received(script, "resumed", "three")
        await script.send("dispose", name="resumed")
        await script.expect("resumed", "disposed")
        assert script.of("resumed") == [
            ("connected", None),
            ("message", "two"),
            ("message", "three"),
            ("disposed", None),
        ]


async def test_graphql_ws_never_retries_4401_and_the_client_is_created_again(
    live: str, http: httpx.AsyncClient, live_app: Starlette, channel: WhatsAppAccount, admin: Actor
) -> None:
    pair = await tokens_for(http, admin)
    codec = runtime_of(live_app).codec
    claims = codec.verify(pair["accessToken"], "access")
    async with node_script(SCRIPT, WEFLUX_URL=live) as script:
        # Given a frontend whose socket carries an access token of the session that
        # expires within seconds
        short = codec.issue(
            "access",
            user_id=claims.user_id,
            org_id=claims.org_id,
            session_id=claims.session_id,
            not_after=utcnow() + timedelta(seconds=3),
        )
        await script.send("open", name="tab", token=short.token, refreshToken=pair["refreshToken"])
        await script.expect("tab", "connected")
        # When the token expires, then the socket is closed 4401 and graphql-ws gives up
        # (the subscription errs with the close: no retry)
        assert (await script.expect("tab", "closed"))["code"] == 4401
        assert (await script.expect("tab", "error"))["code"] == 4401
        # And the script refreshes the pair and creates the client again, which receives
        assert (await script.expect("tab", "refreshed"))["status"] == 200
        await script.expect("tab", "connected")
        await until_listening(live_app, 1)
        await inbound(http, "after refresh")
        await received(script, "tab", "after refresh")

        # When the session is revoked (logout), then 4401 again, not retried; the
        # refresh fails, and after a new login the client is created again and receives
        logout = await http.post(
            "/auth/logout", headers={"Authorization": f"Bearer {pair['accessToken']}"}
        )
        assert logout.status_code == 204
        assert (await script.expect("tab", "closed"))["code"] == 4401
        assert (await script.expect("tab", "error"))["code"] == 4401
        assert (await script.expect("tab", "refreshed"))["status"] == 401
        await script.expect("tab", "login-needed")
        await sockets_closed(live_app)
        again = await tokens_for(http, admin)
        await script.send(
            "login", name="tab", token=again["accessToken"], refreshToken=again["refreshToken"]
        )
        await script.expect("tab", "connected")
        await until_listening(live_app, 1)
        await inbound(http, "after login")
        await received(script, "tab", "after login")
        assert script.of("tab") == [
            ("connected", None),
            ("closed", 4401),
            ("error", 4401),
            ("refreshed", None),
            ("connected", None),
            ("message", "after refresh"),
            ("closed", 4401),
            ("error", 4401),
            ("refreshed", None),
            ("login-needed", None),
            ("connected", None),
            ("message", "after login"),
        ]


async def test_graphql_ws_retries_4403_past_the_session_cap_until_a_socket_closes(
    database_urls: DatabaseUrls, tmp_path: Path, channel: WhatsAppAccount, admin: Actor
) -> None:
    async with (
        serve_settings(
            database_urls, tmp_path, meta_app_secret=SECRET, websocket_max_per_session=1
        ) as (app, base_url),
        httpx.AsyncClient(timeout=HTTP_TIMEOUT, base_url=base_url) as http,
        node_script(SCRIPT, WEFLUX_URL=base_url) as script,
    ):
        token = await token_for(http, admin)
        # Given a session at its cap of 1 socket (one tab)
        await script.send("open", name="first", token=token)
        await script.expect("first", "connected")
        # When a second tab of the session connects, then it is closed 4403, saying why,
        # and graphql-ws retries it
        await script.send("open", name="second", token=token)
        closed = await script.expect("second", "closed")
        assert (closed["code"], closed["reason"]) == (
            4403,
            "Too many open sockets for this session",
        )
        assert (await script.expect("second", "retry-wait"))["retries"] == 0
        # And each retry calls connectionParams again, refused while the first is open
        await script.send("retry", name="second")
        assert (await script.expect("second", "params"))["calls"] == 2
        assert (await script.expect("second", "closed"))["code"] == 4403
        assert (await script.expect("second", "retry-wait"))["retries"] == 1
        # When the first tab closes, then the next retry connects and receives
        await script.send("dispose", name="first")
        await script.expect("first", "disposed")
        await sockets_closed(app)
        await script.send("retry", name="second")
        assert (await script.expect("second", "params"))["calls"] == 3
        await script.expect("second", "connected")
        await until_listening(app, 1)
        await inbound(http, "past the cap")
        await received(script, "second", "past the cap")
        assert script.of("second") == [
            ("closed", 4403),
            ("retry-wait", None),
            ("closed", 4403),
            ("retry-wait", None),
            ("connected", None),
            ("message", "past the cap"),
        ]


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("no-subprotocol", 4406),
        ("malformed", 4400),
        ("id-twice", 4409),
        ("init-twice", 4429),
        ("oversize", 1009),
    ],
)
async def test_graphql_ws_never_retries_a_protocol_error_or_an_oversized_frame(
    live: str, http: httpx.AsyncClient, live_app: Starlette, admin: Actor, fault: str, code: int
) -> None:
    token = await token_for(http, admin)
    async with node_script(SCRIPT, WEFLUX_URL=live) as script:
        # Given a client whose WebSocket breaks the protocol (no subprotocol, a malformed
        # frame, an operation id twice, a second connection_init) or sends a frame over
        # 64 KiB
        await script.send("open", name="tab", token=token, fault=fault)
        # When the server closes it with the protocol's code, then graphql-ws gives up:
        # the subscription errs with the close, without waiting to retry
        assert (await script.expect("tab", "error"))["code"] == code
        assert [event for event in script.of("tab") if event[0] != "connected"] == [
            ("closed", code),
            ("error", code),
        ]
        await sockets_closed(live_app)


@pytest.fixture
def quick_init_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sockets of the apps built from now on wait 0.2 s for connection_init, not 10 s."""
    monkeypatch.setattr(view, "CONNECTION_INIT_TIMEOUT", 0.2)


async def test_graphql_ws_retries_4408_a_socket_without_connection_init(
    quick_init_timeout: None,  # first: before the app is built
    live: str,
    http: httpx.AsyncClient,
    admin: Actor,
) -> None:
    token = await token_for(http, admin)
    async with node_script(SCRIPT, WEFLUX_URL=live) as script:
        # Given a client whose WebSocket never sends connection_init
        await script.send("open", name="tab", token=token, fault="no-init")
        # When the server closes it 4408, then graphql-ws waits to retry
        assert (await script.expect("tab", "closed"))["code"] == 4408
        assert (await script.expect("tab", "retry-wait"))["retries"] == 0
        assert script.of("tab") == [("closed", 4408), ("retry-wait", None)]


async def test_graphql_ws_retries_4008_and_resumes_after_the_last_message_received(
    live: str,
    http: httpx.AsyncClient,
    live_app: Starlette,
    channel: WhatsAppAccount,
    admin: Actor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hub, "QUEUE_LIMIT", 2)
    token = await token_for(http, admin)
    burst = [f"burst {n}" for n in range(20)]
    async with node_script(SCRIPT, WEFLUX_URL=live) as script:
        # Given a frontend that received a message, keeping its cursor in the request's
        # variables (docs/realtime.md)
        await script.send("open", name="tab", token=token)
        await script.expect("tab", "connected")
        await until_listening(live_app, 1)
        await inbound(http, "first")
        await received(script, "tab", "first")
        # When more messages come at once than its subscription may queue (here 2),
        # then the socket is closed 4008 and graphql-ws waits to retry
        await signed_webhook(
            http,
            wh.webhook_body(
                wh.messages_change(
                    messages=[
                        wh.text_message(body=text, from_wa_id=f"1650777{n:04d}")
                        for n, text in enumerate(burst)
                    ],
                    contacts=[wh.contact()],
                )
            ),
        )
        assert (await script.expect("tab", "closed"))["code"] == 4008
        await script.expect("tab", "retry-wait")
        # When it retries, then every message after the last one received arrives, in
        # order, each once
        await script.send("retry", name="tab")
        await script.expect("tab", "connected")
        while sum(event == "message" for event, _ in script.of("tab")) < 1 + len(burst):
            await script.expect("tab", "message")
        await script.send("dispose", name="tab")
        await script.expect("tab", "disposed")
        events = script.of("tab")[:-1]
        assert [text for event, text in events if event == "message"] == ["first", *burst]
        assert [event for event in events if event[0] != "message"] == [
            ("connected", None),
            ("closed", 4008),
            ("retry-wait", None),
            ("connected", None),
        ]


async def test_graphql_ws_gives_up_on_a_handshake_refused_429_unless_told_to_retry_errors(
    database_urls: DatabaseUrls, tmp_path: Path, admin: Actor
) -> None:
    async with (
        serve_settings(database_urls, tmp_path, websocket_max_per_ip=1) as (app, base_url),
        httpx.AsyncClient(timeout=HTTP_TIMEOUT, base_url=base_url) as http,
        node_script(SCRIPT, WEFLUX_URL=base_url) as script,
    ):
        token = await token_for(http, admin)
        # Given an address at its cap of 1 socket
        await script.send("open", name="first", token=token)
        await script.expect("first", "connected")
        # When another client of it connects, then the handshake is refused (429), which
        # graphql-ws sees as an error (then a close 1006), and by default gives up on
        await script.send("open", name="default", token=token)
        refused = await script.expect("default", "error")
        assert (refused["code"], "429" in refused["reason"]) == (None, True), script.events
        assert script.of("default") == [("closed", 1006), ("error", None)]
        # And a client told to retry errors too (shouldRetry) waits to retry instead
        await script.send("open", name="retrying", token=token, retryErrors=True)
        await script.expect("retrying", "retry-wait")
        # When the address's socket closes, then its retry connects
        await script.send("dispose", name="first")
        await script.expect("first", "disposed")
        await sockets_closed(app)
        await script.send("retry", name="retrying")
        await script.expect("retrying", "connected")
        assert [event for event in script.of("retrying") if event[0] != "closed"] == [
            ("retry-wait", None),
            ("connected", None),
        ]
