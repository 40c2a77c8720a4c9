"""`weflux two-factor reset`: the operator's answer to the last Admin's lost phone."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import httpx
from sqlmodel import select

from tests.fixtures.api import gql, login, token_for
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import PASSWORD, Actor, create_membership
from tests.fixtures.two_factor import enroll, mfa_login
from weflux.db import Database
from weflux.ids import encode_global_id
from weflux.models import AuditEvent, Role, User
from weflux.services.audit import Action
from weflux.services.two_factor import operator_reset

REPO_ROOT = Path(__file__).resolve().parents[2]


async def test_the_operator_resets_a_users_two_factors_in_every_workspace(
    client: httpx.AsyncClient,
    db: Database,
    owner_db: Database,
    admin: Actor,
) -> None:
    """Given the only Admin with two factors and a session, when the operator resets them,
    then the session ends, the password alone logs in, and the reset with its reason is
    in the workspace's audit trail; an unknown email changes nothing."""
    app = await enroll(client, await token_for(client, admin))
    session_token = (await mfa_login(client, admin.user.email, PASSWORD, code=app.code())).json()[
        "accessToken"
    ]

    assert await operator_reset(owner_db, email="nobody@acme.example", reason="x") is None
    done = await operator_reset(owner_db, email=admin.user.email.upper(), reason="ticket 4821")

    assert done is not None
    assert (done.user_id, done.workspaces) == (admin.user.id, 1)
    assert done.sessions_ended >= 2
    assert (await gql(client, session_token, "{ viewer { role } }")).status_code == 401
    assert (await login(client, admin.user.email)).status_code == 200
    async with db.session(admin.org_id) as session:
        user = await session.get(User, admin.user.id)
        event = (
            await session.exec(
                select(AuditEvent).where(AuditEvent.action == Action.TWO_FACTOR_RESET)
            )
        ).one()
    assert user is not None
    assert user.two_factor_enabled_at is None
    assert user.totp_secret_enc is None
    assert event.details["by"] == "operator"
    assert event.details["reason"] == "ticket 4821"


async def test_the_operator_reset_clears_a_user_of_several_workspaces_in_all(
    client: httpx.AsyncClient,
    db: Database,
    owner_db: Database,
    agent: Actor,
    other_admin: Actor,
) -> None:
    """Given a user with two factors in two workspaces, whose reset no workspace Admin may
    do (resetMemberTwoFactor answers FORBIDDEN), when the operator resets them, then the
    password alone logs in to either workspace, and each has the reset in its trail."""
    app = await enroll(client, await token_for(client, agent))
    session_token = (await mfa_login(client, agent.user.email, PASSWORD, code=app.code())).json()[
        "accessToken"
    ]
    async with db.session(other_admin.org_id) as session:
        await create_membership(session, user=agent.user, role=Role.AGENT)

    done = await operator_reset(owner_db, email=agent.user.email, reason="ticket 4822")

    assert done is not None
    assert done.workspaces == 2
    assert (await gql(client, session_token, "{ viewer { role } }")).status_code == 401
    for org_id in (agent.org_id, other_admin.org_id):
        workspace = encode_global_id("Organization", org_id)
        assert (await login(client, agent.user.email, organizationId=workspace)).status_code == 200
        async with db.session(org_id) as session:
            event = (
                await session.exec(
                    select(AuditEvent).where(AuditEvent.action == Action.TWO_FACTOR_RESET)
                )
            ).one()
        assert (event.details["by"], event.details["reason"]) == ("operator", "ticket 4822")


async def test_the_command_line(database_urls: DatabaseUrls, admin: Actor, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEFLUX_")} | {
        "WEFLUX_ENV": "test",
        "WEFLUX_DATABASE_URL": database_urls.app,
        "WEFLUX_DATABASE_MIGRATION_URL": database_urls.owner,
        "WEFLUX_VAR_DIR": str(tmp_path / "var"),
        "PYTHONPATH": str(REPO_ROOT),
    }
    results = []
    for email in (admin.user.email, "nobody@acme.example"):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "weflux",
            "two-factor",
            "reset",
            "--email",
            email,
            "--reason",
            "ticket 4821",
            env=env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        results.append((process.returncode, out.decode(), err.decode()))

    assert results[0][0] == 0, results[0]
    assert str(admin.user.id) in results[0][1]
    assert results[1][0] == 1
    assert "no user has that email" in results[1][2]


async def test_the_operators_email_is_no_pattern(
    client: httpx.AsyncClient, db: Database, owner_db: Database, admin: Actor
) -> None:
    """Given a user with two factors, when the operator types an address that only matches
    theirs as a LIKE pattern (`_` or `%`), then nobody's two factors are touched."""
    await enroll(client, await token_for(client, admin))
    local, _, domain = admin.user.email.partition("@")
    lookalikes = [f"{local[:-1]}_@{domain}", "%", f"%@{domain}", f"{local}@%"]

    outcomes = [await operator_reset(owner_db, email=e, reason="typo") for e in lookalikes]

    assert outcomes == [None] * len(lookalikes)
    async with db.session(admin.org_id) as session:
        user = await session.get(User, admin.user.id)
    assert user is not None
    assert user.two_factor_enabled_at is not None
