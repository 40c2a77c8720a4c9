"""Every way a session ends closes its open sockets (4401) within a second.

docs/security/authentication.md#revocation: "every session revocable at once, sockets
included". Each trigger, with the in-process broker and with Redis: a socket
authenticated before it must not outlive it.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import websockets
from starlette.applications import Starlette

from tests.fixtures.api import gql, token_for
from tests.fixtures.app import HTTP_TIMEOUT
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import PASSWORD, Actor
from tests.fixtures.live import SECRET, closed_with, live_server
from tests.fixtures.services import TEST_REDIS_URL
from tests.fixtures.settings import make_settings
from tests.fixtures.two_factor import REQUIRE, enroll
from tests.fixtures.ws import GraphQLSocket
from weflux.app import create_app
from weflux.cli import _reset_two_factor
from weflux.db import Database
from weflux.ids import encode_global_id
from weflux.runtime import runtime_of
from weflux.services.sessions import revoke

NEW_PASSWORD = "a brand new passphrase, 2026!"
Trigger = Callable[[httpx.AsyncClient, str, Actor], Awaitable[None]]


async def _ok(response: httpx.Response) -> None:
    assert response.status_code == 200, response.status_code
    assert "errors" not in response.json(), response.json()["errors"]


async def password_changed(http: httpx.AsyncClient, admin: str, agent: Actor) -> None:
    """The agent changes their password in another session."""
    await _ok(
        await gql(
            http,
            await token_for(http, agent),
            "mutation ($input: ChangePasswordInput!) { changePassword(input: $input) }",
            {"input": {"currentPassword": PASSWORD, "newPassword": NEW_PASSWORD}},
        )
    )


async def two_factor_reset(http: httpx.AsyncClient, admin: str, agent: Actor) -> None:
    """An Admin resets the agent's two factors."""
    await _ok(
        await gql(
            http,
            admin,
            "mutation ($id: ID!) { resetMemberTwoFactor(memberId: $id) { id } }",
            {"id": encode_global_id("Member", agent.membership.id)},
        )
    )


async def workspace_deletion(http: httpx.AsyncClient, admin: str, agent: Actor) -> None:
    """An Admin asks for the workspace's deletion."""
    await _ok(
        await gql(
            http,
            admin,
            'mutation { requestWorkspaceDeletion(confirmOrganizationName: "Acme") { id } }',
        )
    )


async def member_removed(http: httpx.AsyncClient, admin: str, agent: Actor) -> None:
    await _ok(
        await gql(
            http,
            admin,
            "mutation ($id: ID!) { removeMember(memberId: $id) }",
            {"id": encode_global_id("Member", agent.membership.id)},
        )
    )


async def two_factors_required(http: httpx.AsyncClient, admin: str, agent: Actor) -> None:
    """The workspace now requires two factors: the agent, without, is held at enrollment."""
    await _ok(await gql(http, admin, REQUIRE, {"on": True}))


TRIGGERS = [password_changed, two_factor_reset, workspace_deletion, member_removed]


@pytest.mark.parametrize("trigger", TRIGGERS, ids=lambda t: t.__name__)
async def test_each_trigger_closes_the_sockets_within_a_second(
    served: httpx.AsyncClient, admin: Actor, agent: Actor, trigger: Trigger
) -> None:
    admin_token, agent_token = await token_for(served, admin), await token_for(served, agent)
    if trigger is two_factor_reset:
        await enroll(served, agent_token)
    socket = await GraphQLSocket.connect(str(served.base_url), agent_token)

    await trigger(served, admin_token, agent)

    assert await closed_with(socket, within=1.0) == 4401


async def test_requiring_two_factors_closes_the_sockets_of_members_without(
    served: httpx.AsyncClient, admin: Actor, agent: Actor
) -> None:
    socket = await GraphQLSocket.connect(str(served.base_url), await token_for(served, agent))
    admin_token = await token_for(served, admin)
    await enroll(served, admin_token)  # so that the Admin may require it

    await two_factors_required(served, admin_token, agent)

    assert await closed_with(socket, within=1.0) == 4401


@pytest.fixture
def redis_app(
    require_redis: None, database_urls: DatabaseUrls, tmp_path: Path
) -> tuple[Starlette, Path]:
    settings = make_settings(
        tmp_path,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        meta_app_secret=SECRET,
        redis_url=TEST_REDIS_URL,
    )
    return create_app(settings), tmp_path


async def test_the_operators_reset_closes_the_users_sockets_through_redis(
    redis_app: tuple[Starlette, Path], database_urls: DatabaseUrls, agent: Actor
) -> None:
    """Given a server on Redis and a socket of a user, when the operator runs
    `weflux two-factor reset` (another process), then the socket closes within a second,
    not when its access token expires days later."""
    app, tmp_path = redis_app
    async with (
        live_server(app) as base,
        httpx.AsyncClient(timeout=HTTP_TIMEOUT, base_url=base) as http,
    ):
        token = await token_for(http, agent)
        await enroll(http, token)
        socket = await GraphQLSocket.connect(base, token)
        operator = make_settings(
            tmp_path,
            database_url=database_urls.app,
            database_migration_url=database_urls.owner,
            redis_url=TEST_REDIS_URL,
        )

        assert await _reset_two_factor(operator, email=agent.user.email, reason="ticket 1") == 0

        assert await closed_with(socket, within=1.0) == 4401


async def test_a_socket_authenticating_while_its_session_is_revoked_does_not_stay_open(
    served: httpx.AsyncClient, broker_app: Starlette, db: Database, agent: Actor
) -> None:
    """Given a socket whose `connection_init` reads its session just before a logout
    commits, and the logout's message arriving before the socket is registered (so it
    closes nothing), then the socket is refused or closed all the same, not left open
    until its token expires."""
    token = await token_for(served, agent)
    authenticator = runtime_of(broker_app).authenticator
    read = authenticator._load

    async def read_then_logged_out(org_id: uuid.UUID, session_ids: set[uuid.UUID]) -> object:
        entry = await read(org_id, session_ids)
        async with db.session(org_id) as session:
            await revoke(session, authenticator, list(session_ids), reason="logout")
        return entry

    authenticator._load = read_then_logged_out  # type: ignore[method-assign,assignment]
    try:
        socket = await GraphQLSocket.connect(str(served.base_url), token)
    except (AssertionError, websockets.ConnectionClosed):
        return  # refused at connection_init: fine
    finally:
        authenticator._load = read  # type: ignore[method-assign]
    assert await closed_with(socket, within=1.0) in (4401, 4403)
