"""Revocation bites at once: on this process, on another process, and with the broker down."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import col

from tests.fixtures.api import gql, token_for
from tests.fixtures.app import counting, lifespan
from tests.fixtures.databases import DatabaseUrls, postgres_only
from tests.fixtures.factories import Actor
from tests.fixtures.principals import principal_of
from tests.fixtures.services import TEST_REDIS_URL
from tests.fixtures.settings import make_settings
from weflux.app import create_app
from weflux.auth.authenticator import Authenticator
from weflux.auth.principal import Principal
from weflux.auth.tokens import TokenCodec
from weflux.db import Database
from weflux.models import AuthSession, Membership, Role, utcnow
from weflux.realtime.broker import InProcessBroker, RedisBroker
from weflux.realtime.sockets import REVOKED_CLOSE, SocketRegistry
from weflux.runtime import runtime_of

VIEWER = "{ viewer { id role } }"


@contextlib.asynccontextmanager
async def _process(settings_path: Path, urls: DatabaseUrls) -> AsyncIterator[httpx.AsyncClient]:
    """One app instance with its own cache and broker connection: a stand-in for a process."""
    settings = make_settings(
        settings_path,
        database_url=urls.app,
        database_migration_url=urls.owner,
        redis_url=TEST_REDIS_URL,
    )
    app = create_app(settings)
    async with lifespan(app) as manager:
        broker = runtime_of(app).broker
        assert isinstance(broker, RedisBroker)
        await broker.wait_connected()
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def _until_status(client: httpx.AsyncClient, token: str, expected: int) -> None:
    """Wait until `token` gets `expected` on /graphql: the revocation has reached that
    process (a safety timeout only: how fast is for bench/, not for a test)."""
    async with asyncio.timeout(10):
        while (await gql(client, token, VIEWER)).status_code != expected:  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # (another process's state)


async def _role(client: httpx.AsyncClient, token: str) -> str:
    return str((await gql(client, token, VIEWER)).json()["data"]["viewer"]["role"])


@postgres_only
async def test_logout_on_one_process_closes_the_session_on_another(
    database_urls: DatabaseUrls, tmp_path: Path, require_redis: None, agent: Actor
) -> None:
    async with (
        _process(tmp_path / "a", database_urls) as a,
        _process(tmp_path / "b", database_urls) as b,
    ):
        token = await token_for(a, agent)
        assert (await gql(b, token, VIEWER)).status_code == 200  # B has cached the session

        response = await a.post("/auth/logout", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 204

        await _until_status(b, token, 401)


@postgres_only
async def test_role_change_on_one_process_applies_on_another(
    database_urls: DatabaseUrls, tmp_path: Path, require_redis: None, admin: Actor, manager: Actor
) -> None:
    async with (
        _process(tmp_path / "a", database_urls) as a,
        _process(tmp_path / "b", database_urls) as b,
    ):
        admin_token = await token_for(a, admin)
        manager_token = await token_for(b, manager)
        assert (await gql(b, manager_token, VIEWER)).json()["data"]["viewer"]["role"] == "MANAGER"

        demote = await gql(
            a,
            admin_token,
            "mutation($id: ID!) { updateMemberRole(input: {memberId: $id, role: AGENT}) { role } }",
            {"id": (await gql(b, manager_token, VIEWER)).json()["data"]["viewer"]["id"]},
        )
        assert demote.json()["data"]["updateMemberRole"]["role"] == "AGENT"

        async with asyncio.timeout(10):  # the role change reaches process B
            while await _role(b, manager_token) != "AGENT":  # noqa: ASYNC110
                await asyncio.sleep(0.02)  # (another process's state)


class _DisconnectedBroker(InProcessBroker):
    @property
    def connected(self) -> bool:
        return False


def _codec() -> TokenCodec:
    return TokenCodec("s" * 40, access_ttl=timedelta(days=7), refresh_ttl=timedelta(days=30))


async def _live_session(db: Database, codec: TokenCodec, agent: Actor) -> tuple[AuthSession, str]:
    """A live login session of `agent`'s, written directly, and an access token of it."""
    async with db.session(agent.org_id) as session:
        auth_session = AuthSession(
            user_id=agent.user.id,
            membership_id=agent.membership.id,
            refresh_token_hash=secrets.token_hex(32),
            expires_at=utcnow() + codec.refresh_ttl,
        )
        session.add(auth_session)
    token = codec.issue(
        "access", user_id=agent.user.id, org_id=agent.org_id, session_id=auth_session.id
    ).token
    return auth_session, token


async def _revoke_in_database(db: Database, agent: Actor, auth_session: AuthSession) -> None:
    """Revoke the session's row only: no process is told."""
    async with db.session(agent.org_id) as session:
        await session.exec(
            update(AuthSession)
            .where(col(AuthSession.id) == auth_session.id)
            .values(revoked_at=utcnow())
        )


async def test_with_the_broker_down_every_request_checks_the_database(
    db: Database, agent: Actor
) -> None:
    """A revocation this process was never told about still bites: no stale cache."""
    codec = _codec()
    authenticator = Authenticator(codec, db, _DisconnectedBroker())
    auth_session, token = await _live_session(db, codec, agent)
    assert await authenticator.authenticate(token) is not None

    await _revoke_in_database(db, agent, auth_session)  # behind the broker's back
    assert await authenticator.authenticate(token) is None


async def test_a_failing_recheck_logs_one_traceback_per_run_of_failures(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a process whose Redis and database are both away (the re-check of every
    socket runs each second and fails each time),
    when it fails three times, succeeds, then fails again,
    then only the first failure of each run logs a traceback, the others one line each:
    before, every second logged a traceback for as long as the outage lasted."""
    authenticator = Authenticator(_codec(), db, _DisconnectedBroker())
    outcomes = iter([False, False, False, True, False])

    async def listener(sessions: set[uuid.UUID], memberships: set[uuid.UUID]) -> None:
        if not next(outcomes):
            raise ConnectionRefusedError("database away")

    authenticator.add_revocation_listener(listener)
    with caplog.at_level("WARNING", logger="weflux.auth.authenticator"):
        for _ in range(5):
            await authenticator._recheck_everyone()
    records = [r for r in caplog.records if r.name == "weflux.auth.authenticator"]
    assert [r.exc_info is not None for r in records] == [True, False, False, True]
    assert records[1].getMessage() == (
        "re-checking the open sockets failed again: ConnectionRefusedError"
    )


async def test_a_failing_recheck_beside_a_listener_that_succeeds_logs_one_traceback(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a process whose Redis and database are both away, whose socket registry's
    re-check fails each second and whose counts feed's (the next listener: it reads
    nothing then) succeeds,
    when every socket is re-checked three times,
    then one traceback is logged, then one line a pass: before, the counts feed's success
    reset the registry's run of failures, and every pass logged a traceback again."""
    authenticator = Authenticator(_codec(), db, _DisconnectedBroker())

    async def failing(sessions: set[uuid.UUID], memberships: set[uuid.UUID]) -> None:
        raise ConnectionRefusedError("database away")

    async def fine(sessions: set[uuid.UUID], memberships: set[uuid.UUID]) -> None:
        return None

    authenticator.add_revocation_listener(failing)
    authenticator.add_revocation_listener(fine)
    with caplog.at_level("WARNING", logger="weflux.auth.authenticator"):
        for _ in range(3):
            await authenticator._recheck_everyone()
    records = [r for r in caplog.records if r.name == "weflux.auth.authenticator"]
    assert [r.exc_info is not None for r in records] == [True, False, False]


async def test_reconnection_empties_the_cache(db: Database, agent: Actor) -> None:
    codec = _codec()
    broker = InProcessBroker()
    authenticator = Authenticator(codec, db, broker)
    await authenticator.start()
    auth_session, token = await _live_session(db, codec, agent)
    assert await authenticator.authenticate(token) is not None
    await _revoke_in_database(db, agent, auth_session)
    assert await authenticator.authenticate(token) is not None  # cached, as designed
    await broker._notify_reconnected()  # messages may have been missed meanwhile
    assert await authenticator.authenticate(token) is None
    await authenticator.stop()


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_revoking_a_session_bites_on_the_very_next_request(
    client: httpx.AsyncClient, agent: Actor
) -> None:
    token = await token_for(client, agent)
    sessions = await gql(client, token, "{ sessions { id current } }")
    current = next(s for s in sessions.json()["data"]["sessions"] if s["current"])
    revoked = await gql(
        client,
        token,
        "mutation($id: ID!) { revokeSession(id: $id) { revokedAt } }",
        {"id": current["id"]},
    )
    assert revoked.json()["data"]["revokeSession"]["revokedAt"] is not None
    assert (await gql(client, token, VIEWER)).status_code == 401


async def test_a_revocation_that_lands_during_a_look_up_is_not_cached_away(
    db: Database, agent: Actor
) -> None:
    """Given a look-up that read the session just before its revocation committed, and
    the revocation's message arriving before that look-up stored its answer, when the
    token is used again, then it is refused: the stale answer was not cached for 30 s."""
    codec = _codec()
    broker = InProcessBroker()
    authenticator = Authenticator(codec, db, broker)
    await authenticator.start()
    auth_session, token = await _live_session(db, codec, agent)
    read = authenticator._load

    async def read_then_revoked(org_id: uuid.UUID, session_ids: set[uuid.UUID]) -> object:
        entry = await read(org_id, session_ids)  # read live: the revocation commits next
        await _revoke_in_database(db, agent, auth_session)
        await authenticator.publish_revocation(session_ids=[auth_session.id])
        return entry

    authenticator._load = read_then_revoked  # type: ignore[method-assign,assignment]
    await authenticator.authenticate(token)  # in flight across the revocation
    authenticator._load = read  # type: ignore[method-assign]

    assert await authenticator.authenticate(token) is None
    await authenticator.stop()


@dataclass(eq=False)
class _Tab:
    """An open socket as the registry sees it (its context): a token, what it was told."""

    principal: Principal | None
    connection_params: dict[str, object] | None
    closed: list[int] = field(default_factory=list)

    @property
    def actor(self) -> Principal:
        assert self.principal is not None
        return self.principal

    async def close_socket(self, code: int, _reason: str) -> None:
        self.closed.append(code)


async def _tab(db: Database, codec: TokenCodec, actor: Actor) -> _Tab:
    auth_session, token = await _live_session(db, codec, actor)
    principal = replace(principal_of(actor), session_id=auth_session.id)
    return _Tab(principal, {"authorization": f"Bearer {token}"})


async def test_a_recheck_of_every_socket_reads_each_workspace_once(
    db: Database, agent: Actor, other_org_agent: Actor
) -> None:
    """Given sockets of twelve sessions in two workspaces on a process whose broker is
    away, one session revoked and one member made Manager behind its back, when every
    socket is re-checked (each second while the broker is away), then the revoked one
    closes, the Manager's see the new role, the others stay, and the database is read
    once per workspace, not once per session (a session read costs about 3 ms on
    PostgreSQL: past a few hundred sessions a pass took longer than the second promised)."""
    codec = _codec()
    registry = SocketRegistry(Authenticator(codec, db, _DisconnectedBroker()))
    tabs = [await _tab(db, codec, actor) for actor in [agent] * 6 + [other_org_agent] * 6]
    for tab in tabs:
        registry.register(tab)
    await registry.on_revocation(set(), set())  # every session touched (once a minute)
    revoked = tabs[0].actor.session_id
    async with db.session(agent.org_id) as session:
        await session.exec(
            update(AuthSession).where(col(AuthSession.id) == revoked).values(revoked_at=utcnow())
        )
    async with db.session(other_org_agent.org_id) as session:
        await session.exec(
            update(Membership)
            .where(col(Membership.id) == other_org_agent.membership.id)
            .values(role=Role.MANAGER)
        )

    with counting(db) as statements:
        await registry.on_revocation(set(), set())

    assert [tab.closed for tab in tabs] == [[REVOKED_CLOSE]] + [[]] * 11
    assert [tab.actor.role for tab in tabs[1:]] == [Role.AGENT] * 5 + [Role.MANAGER] * 6
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(reads) <= 2 * 2, statements  # a workspace's sessions, and the workspace


async def test_a_recheck_of_everyone_does_not_undo_a_role_change_that_lands_during_its_read(
    db: Database, agent: Actor
) -> None:
    """Given a socket of an Agent and a re-check of every socket (the broker reconnected)
    whose read of the workspace's sessions answers, and then the member is made Manager
    (committed, and told: that change's own re-check runs and sets the new role) before
    the re-check of everyone applies what it read,
    when the re-check of everyone finishes,
    then the socket carries the new role: before, the pass applied the role it had read,
    and the socket kept the old one until the next change (a demoted Admin kept an
    Admin's view of live events)."""
    codec = _codec()
    authenticator = Authenticator(codec, db, InProcessBroker())
    registry = SocketRegistry(authenticator)
    tab = await _tab(db, codec, agent)
    registry.register(tab)
    read = authenticator._load
    changed = False

    async def read_then_promoted(org_id: uuid.UUID, session_ids: set[uuid.UUID]) -> object:
        nonlocal changed
        entries = await read(org_id, session_ids)
        if not changed:  # the re-check of everyone read the Agent: the change lands now
            changed = True
            async with db.session(agent.org_id) as session:
                await session.exec(
                    update(Membership)
                    .where(col(Membership.id) == agent.membership.id)
                    .values(role=Role.MANAGER)
                )
            await authenticator.publish_revocation(membership_ids=[agent.membership.id])
            assert tab.actor.role == Role.MANAGER  # the change's own re-check applied it
        return entries

    authenticator._load = read_then_promoted  # type: ignore[method-assign,assignment]
    await registry.on_revocation(set(), set())

    assert tab.closed == []
    assert tab.actor.role == Role.MANAGER


async def test_a_token_naming_another_workspace_s_session_reads_nothing_of_it(
    db: Database, agent: Actor, other_org_agent: Actor
) -> None:
    """Given a token signed with the server's key (a leak, a bug) whose claims name
    workspace A and a live session of workspace B,
    when it is checked one at a time and in a re-check of every socket (one read of A's
    sessions),
    then it is refused, the read under A's scope finds nothing of B, and B's own token
    still passes with B's own flags (what was cached for the forged one is A's)."""
    codec = _codec()
    authenticator = Authenticator(codec, db, InProcessBroker())
    b_session, b_token = await _live_session(db, codec, other_org_agent)
    forged = codec.issue(
        "access", user_id=agent.user.id, org_id=agent.org_id, session_id=b_session.id
    ).token
    _, a_token = await _live_session(db, codec, agent)

    assert await authenticator.authenticate(forged) is None
    answers = await authenticator.authenticate_all([forged, a_token])
    assert answers[forged] is None
    assert answers[a_token] is not None
    assert await authenticator._load(agent.org_id, {b_session.id}) == {}

    principal = await authenticator.authenticate(b_token)
    assert principal is not None
    assert (principal.org_id, principal.session_id) == (other_org_agent.org_id, b_session.id)
