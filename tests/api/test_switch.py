"""`POST /auth/switch` (issue 17, item 5): another workspace of the same user, no password.

A new session, apart from the source; never freshly authenticated; the user's second
factor asked as at login, whatever the source session proved (one opened by accepting an
invitation included).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import col, select

from tests.fixtures.api import error_codes, gql, token_for, tokens_for
from tests.fixtures.app import ClientFactory, client_of, lifespan
from tests.fixtures.databases import DatabaseUrls, postgres_only
from tests.fixtures.factories import PASSWORD, Actor, create_membership
from tests.fixtures.services import TEST_REDIS_URL
from tests.fixtures.settings import make_settings
from tests.fixtures.two_factor import enroll, wrong_code
from weflux.app import create_app
from weflux.db import Database
from weflux.ids import decode_global_id, encode_global_id
from weflux.models import AuditEvent, AuthSession, Organization, Role
from weflux.realtime.broker import RedisBroker
from weflux.runtime import runtime_of
from weflux.services.audit import Action

VIEWER = "{ viewer { id role organization { id } } }"
SESSIONS = "{ sessions { id current revokedAt } }"
REVOKE = "mutation ($id: ID!) { revokeSession(id: $id) { id revokedAt } }"
INVITE = """mutation ($input: InviteMemberInput!) {
  inviteMember(input: $input) { token } }"""


def org_gid(org_id: uuid.UUID) -> str:
    return encode_global_id("Organization", org_id)


async def switch(
    client: httpx.AsyncClient, token: str, org_id: uuid.UUID, **extra: Any
) -> httpx.Response:
    return await client.post(
        "/auth/switch",
        json={"organizationId": org_gid(org_id), **extra},
        headers={"Authorization": f"Bearer {token}"},
    )


@pytest.fixture
async def twice(db: Database, admin: Actor, other_org: Organization) -> Actor:
    """`admin` (Admin of Acme) is also an Agent of Globex: that membership."""
    async with db.session(other_org.id) as session:
        membership = await create_membership(session, user=admin.user, role=Role.AGENT)
    return Actor(user=admin.user, membership=membership)


async def session_row(db: Database, org_id: uuid.UUID, session_id: str) -> AuthSession:
    async with db.session(org_id) as session:
        row = await session.get(AuthSession, decode_global_id(session_id, "Session"))
        assert row is not None
        return row


async def test_a_switch_opens_a_separate_session_in_the_other_workspace(
    client: httpx.AsyncClient, db: Database, admin: Actor, twice: Actor
) -> None:
    """Given a user in two workspaces, when they switch, then a token pair of a new
    session in the other workspace (their role there), listed in `sessions` there; each
    session is revoked apart from the other; the new one is not freshly authenticated."""
    source = await tokens_for(client, admin)

    answer = await switch(client, source["accessToken"], twice.org_id)

    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    pair = answer.json()
    assert pair["organization"]["id"] == org_gid(twice.org_id)
    assert pair["member"] == {
        "id": encode_global_id("Member", twice.membership.id),
        "role": "AGENT",
    }
    assert {o["id"] for o in pair["organizations"]} == {
        org_gid(admin.org_id),
        org_gid(twice.org_id),
    }
    viewer = (await gql(client, pair["accessToken"], VIEWER)).json()["data"]["viewer"]
    assert viewer["organization"]["id"] == org_gid(twice.org_id)
    listed = (await gql(client, pair["accessToken"], SESSIONS)).json()["data"]["sessions"]
    [current] = [s for s in listed if s["current"]]
    assert len(listed) == 1
    row = await session_row(db, twice.org_id, current["id"])
    assert row.authenticated_at is None
    async with db.session(twice.org_id) as session:
        audited = (
            await session.exec(
                select(AuditEvent).where(AuditEvent.action == Action.SESSION_SWITCHED)
            )
        ).all()
    assert [e.target_id for e in audited] == [str(row.id)]

    # Revoking the new session leaves the source alive, and the other way round.
    revoked = await gql(client, pair["accessToken"], REVOKE, {"id": current["id"]})
    assert revoked.json()["data"]["revokeSession"]["revokedAt"]
    assert (await gql(client, pair["accessToken"], VIEWER)).status_code == 401
    assert (await gql(client, source["accessToken"], VIEWER)).status_code == 200
    second = (await switch(client, source["accessToken"], twice.org_id)).json()
    assert (
        await client.post(
            "/auth/logout", headers={"Authorization": f"Bearer {source['accessToken']}"}
        )
    ).status_code == 204
    assert (await gql(client, source["accessToken"], VIEWER)).status_code == 401
    assert (await gql(client, second["accessToken"], VIEWER)).status_code == 200
    refreshed = await client.post("/auth/refresh", json={"refreshToken": second["refreshToken"]})
    assert refreshed.status_code == 200


async def test_a_revoked_source_session_cannot_switch(
    client: httpx.AsyncClient, admin: Actor, twice: Actor
) -> None:
    token = await token_for(client, admin)
    await client.post("/auth/logout", headers={"Authorization": f"Bearer {token}"})

    answer = await switch(client, token, twice.org_id)

    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "UNAUTHENTICATED"
    nobody = await client.post("/auth/switch", json={"organizationId": org_gid(twice.org_id)})
    assert nobody.status_code == 401


async def test_a_workspace_the_user_is_not_in_is_refused(
    client: httpx.AsyncClient, admin: Actor, other_org: Organization, db: Database
) -> None:
    """Given a user of Acme only, a switch to Globex, to an unknown workspace or to a
    malformed id is refused with a code, and no session is opened there."""
    token = await token_for(client, admin)

    foreign = await switch(client, token, other_org.id)
    unknown = await switch(client, token, uuid.uuid4())
    same = await switch(client, token, admin.org_id)
    malformed = await client.post(
        "/auth/switch",
        json={"organizationId": "nope"},
        headers={"Authorization": f"Bearer {token}"},
    )

    assert foreign.status_code == 403
    assert foreign.json()["error"]["code"] == "FORBIDDEN"
    assert unknown.json() == foreign.json()
    assert same.status_code == 409
    assert same.json()["error"]["code"] == "CONFLICT"
    assert malformed.status_code == 404
    async with db.session(other_org.id) as session:
        assert (await session.exec(select(AuthSession))).all() == []


async def test_two_factors_are_asked_even_from_a_session_opened_by_an_invitation(
    client: httpx.AsyncClient,
    db: Database,
    admin: Actor,
    other_admin: Actor,
) -> None:
    """Given a user with two factors in Acme who accepts an invitation to Globex (with a
    code: a session opened so proved it once), when that session switches back to Acme,
    then MFA_REQUIRED without a code, INVALID_MFA_CODE with a wrong one, and a right code
    opens a session that still is not freshly authenticated (sensitive operations ask
    again)."""
    phone = await enroll(client, await token_for(client, admin))
    invited = await gql(
        client,
        await token_for(client, other_admin),
        INVITE,
        {"input": {"email": admin.user.email, "name": "Twice", "role": "AGENT"}},
    )
    accepted = await client.post(
        "/auth/invitations/accept",
        json={
            "token": invited.json()["data"]["inviteMember"]["token"],
            "name": "Twice",
            "password": PASSWORD,
            "code": phone.code(),
        },
    )
    assert accepted.status_code == 200, accepted.text
    hopping = accepted.json()["accessToken"]

    bare = await switch(client, hopping, admin.org_id)
    wrong = await switch(client, hopping, admin.org_id, code=wrong_code(phone))
    right = await switch(client, hopping, admin.org_id, code=phone.code())

    assert bare.status_code == 401
    assert bare.json() == {
        "error": {"code": "MFA_REQUIRED", "message": bare.json()["error"]["message"]}
    }
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "INVALID_MFA_CODE"
    assert right.status_code == 200, right.text
    pair = right.json()
    assert pair["organization"]["id"] == org_gid(admin.org_id)
    sensitive = await gql(
        client, pair["accessToken"], "mutation { beginTwoFactorEnrollment { secret } }"
    )
    assert error_codes(sensitive) == ["REAUTHENTICATION_REQUIRED"]
    replay = await switch(client, hopping, admin.org_id, code=phone.used_code())
    assert replay.json()["error"]["code"] == "INVALID_MFA_CODE"


async def test_a_workspace_requiring_two_factors_holds_a_user_without_them(
    client: httpx.AsyncClient, db: Database, admin: Actor, twice: Actor
) -> None:
    """Given Globex requires two factors and the user has none, a switch there gives a
    session that may only enroll, as a login would."""
    async with db.session(twice.org_id) as session:
        await session.exec(
            update(Organization)
            .where(col(Organization.id) == twice.org_id)
            .values(require_two_factor=True)
        )
    token = await token_for(client, admin)

    answer = await switch(client, token, twice.org_id)

    assert answer.status_code == 200, answer.text
    held = await gql(client, answer.json()["accessToken"], VIEWER)
    assert error_codes(held) == ["TWO_FACTOR_REQUIRED"]


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_switching_is_rate_limited_per_ip(
    make_client: ClientFactory, db: Database, admin: Actor, twice: Actor
) -> None:
    async with make_client(rate_limit_switch_ip="1/hour") as client:
        token = await token_for(client, admin)
        first = await switch(client, token, twice.org_id)
        second = await switch(client, token, twice.org_id)

    assert first.status_code == 200
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "RATE_LIMITED"
    assert int(second.headers["retry-after"]) > 0


@contextlib.asynccontextmanager
async def _process(settings_path: Path, urls: DatabaseUrls) -> AsyncIterator[httpx.AsyncClient]:
    """One app instance with its own session cache and a Redis broker connection."""
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
        async with client_of(manager.app) as client:
            yield client


@postgres_only
async def test_across_processes_ending_the_source_leaves_the_switched_session(
    database_urls: DatabaseUrls,
    tmp_path: Path,
    require_redis: None,
    admin: Actor,
    twice: Actor,
) -> None:
    """Given a switch on process A, both sessions cached on A and B, when the source
    session logs out on B, then A refuses the source at once (Redis), and the switched
    session keeps working on both."""
    async with (
        _process(tmp_path / "a", database_urls) as a,
        _process(tmp_path / "b", database_urls) as b,
    ):
        source = await token_for(a, admin)
        switched = (await switch(a, source, twice.org_id)).json()["accessToken"]
        for client in (a, b):
            for token in (source, switched):
                assert (await gql(client, token, VIEWER)).status_code == 200

        await b.post("/auth/logout", headers={"Authorization": f"Bearer {source}"})

        async with asyncio.timeout(10):
            while (await gql(a, source, VIEWER)).status_code != 401:  # noqa: ASYNC110
                await asyncio.sleep(0.02)  # (another process's state)
        assert (await gql(a, switched, VIEWER)).status_code == 200
        assert (await gql(b, switched, VIEWER)).status_code == 200
