"""Two-factor mutations, the workspace policy and Admin resets, over GraphQL (CONTRACT §9).

Attacked from other roles and workspaces: a Manager setting the policy, an Admin of
another workspace resetting a member, a member who must enroll doing anything else.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy import text
from sqlmodel import select

from tests.fixtures.api import error_codes, gql, login, token_for
from tests.fixtures.databases import postgres_only
from tests.fixtures.factories import PASSWORD, Actor, create_membership
from tests.fixtures.secops import events_of
from tests.fixtures.two_factor import (
    BEGIN,
    CONFIRM,
    REQUIRE,
    AuthenticatorApp,
    enroll,
    mfa_login,
    require_two_factors,
    wrong_code,
)
from weflux.db import Database
from weflux.ids import encode_global_id
from weflux.models import AuditEvent, Role, User
from weflux.secops.events import SecurityKind
from weflux.services.audit import Action

VIEWER = "{ viewer { user { twoFactorEnabled } organization { requireTwoFactor } } }"
MEMBERS = "{ members { role user { email twoFactorEnabled } } }"
REGENERATE = "mutation ($code: String!) { regenerateRecoveryCodes(code: $code) }"
DISABLE = """mutation ($password: String!, $code: String!) {
  disableTwoFactor(input: {password: $password, code: $code}) }"""
RESET = "mutation ($id: ID!) { resetMemberTwoFactor(memberId: $id) { id } }"


async def test_enrollment_shows_the_secret_once_and_turns_on_with_a_first_code(
    client: httpx.AsyncClient, db: Database, agent: Actor
) -> None:
    """Given a member, when they begin enrolling, then they get the secret, its otpauth URI
    and an SVG QR code; a wrong code does not confirm; the first right code answers ten
    distinct recovery codes; and the secret is stored sealed, never shown again."""
    token = await token_for(client, agent)
    begun = (await gql(client, token, BEGIN)).json()["data"]["beginTwoFactorEnrollment"]
    app = AuthenticatorApp(begun["secret"])
    assert begun["otpauthUri"].startswith("otpauth://totp/Weflux:")
    assert f"secret={app.secret}" in begun["otpauthUri"]
    assert begun["qrCodeSvg"].startswith("<svg")
    # Not on yet: the password alone still logs in.
    assert (await login(client, agent.user.email)).status_code == 200

    wrong = await gql(client, token, CONFIRM, {"code": wrong_code(app)})
    assert error_codes(wrong) == ["INVALID_MFA_CODE"]
    confirmed = await gql(client, token, CONFIRM, {"code": app.code()})

    codes = confirmed.json()["data"]["confirmTwoFactorEnrollment"]
    assert len(codes) == len(set(codes)) == 10
    viewer = (await gql(client, token, VIEWER)).json()["data"]["viewer"]
    assert viewer["user"]["twoFactorEnabled"] is True
    assert error_codes(await gql(client, token, BEGIN)) == ["CONFLICT"]
    async with db.session(agent.org_id) as session:
        user = await session.get(User, agent.user.id)
    assert user is not None
    assert user.totp_secret_enc is not None
    assert user.totp_secret_enc.startswith("v1.")
    assert app.secret not in user.totp_secret_enc
    assert user.recovery_code_hashes is not None
    assert not any(code in user.recovery_code_hashes for code in codes)


async def test_regenerated_recovery_codes_replace_the_old_ones(
    client: httpx.AsyncClient, agent: Actor
) -> None:
    """Given recovery codes, when new ones are made with a code, then only the new work."""
    token = await token_for(client, agent)
    app = await enroll(client, token)
    assert error_codes(await gql(client, token, REGENERATE, {"code": wrong_code(app)})) == [
        "INVALID_MFA_CODE"
    ]

    fresh = (await gql(client, token, REGENERATE, {"code": app.code()})).json()["data"]
    new_codes = fresh["regenerateRecoveryCodes"]

    old = await mfa_login(client, agent.user.email, PASSWORD, recoveryCode=app.recovery_codes[0])
    new = await mfa_login(client, agent.user.email, PASSWORD, recoveryCode=new_codes[0])
    assert old.json()["error"]["code"] == "INVALID_MFA_CODE"
    assert new.status_code == 200


async def test_disabling_needs_the_password_and_a_code(
    client: httpx.AsyncClient, db: Database, agent: Actor
) -> None:
    """Given two factors on, when disabled with a wrong password, then nothing changes;
    with the password and a code, then the password alone logs in again (audited)."""
    token = await token_for(client, agent)
    app = await enroll(client, token)

    wrong = await gql(client, token, DISABLE, {"password": "Not-it-at-all-42", "code": app.peek()})
    assert error_codes(wrong) == ["BAD_USER_INPUT"]
    done = await gql(client, token, DISABLE, {"password": PASSWORD, "code": app.code()})

    assert done.json()["data"] == {"disableTwoFactor": True}
    assert (await login(client, agent.user.email)).status_code == 200
    async with db.session(agent.org_id) as session:
        user = await session.get(User, agent.user.id)
        actions = (await session.exec(select(AuditEvent.action))).all()
    assert user is not None
    assert user.totp_secret_enc is None
    assert user.recovery_code_hashes is None
    assert Action.TWO_FACTOR_ENABLED in actions
    [disabled] = await events_of(db, agent.org_id, SecurityKind.MFA_DISABLED)
    assert disabled.actor_membership_id == agent.membership.id
    assert Action.TWO_FACTOR_DISABLED in actions


async def test_a_required_workspace_lets_members_without_two_factors_only_enroll(
    client: httpx.AsyncClient, admin: Actor, agent: Actor, manager: Actor
) -> None:
    """Given an Admin requiring two factors, when a member without them logs in, then
    everything but enrolling answers TWO_FACTOR_REQUIRED until they enroll; a member with
    them answers a code at the next login; a Manager cannot change the policy."""
    manager_token = await token_for(client, manager)
    assert error_codes(await gql(client, manager_token, REQUIRE, {"on": True})) == ["FORBIDDEN"]
    agent_app = await enroll(client, await token_for(client, agent))
    admin_token = await token_for(client, admin)

    on = await gql(client, admin_token, REQUIRE, {"on": True})
    assert on.json()["data"] == {"updateOrganizationSecurity": {"requireTwoFactor": True}}

    # The Admin (no two factors) is held at enrollment, in the session they already had.
    for query in (VIEWER, MEMBERS, 'mutation { revokeSession(id: "x") { id } }'):
        assert error_codes(await gql(client, admin_token, query)) == ["TWO_FACTOR_REQUIRED"]
    manager_token = await token_for(client, manager)  # logs in with the password alone
    assert error_codes(await gql(client, manager_token, MEMBERS)) == ["TWO_FACTOR_REQUIRED"]
    assert (
        await client.post("/auth/logout", headers={"Authorization": f"Bearer {manager_token}"})
    ).status_code == 204
    # The Agent (two factors on) is asked for a code.
    assert (await login(client, agent.user.email)).json()["error"]["code"] == "MFA_REQUIRED"
    assert (
        await mfa_login(client, agent.user.email, PASSWORD, code=agent_app.code())
    ).status_code == 200

    await enroll(client, admin_token)
    members = (await gql(client, admin_token, MEMBERS)).json()["data"]["members"]
    assert {m["user"]["email"]: m["user"]["twoFactorEnabled"] for m in members} == {
        admin.user.email: True,
        agent.user.email: True,
        manager.user.email: False,
    }


async def test_an_admin_resets_a_members_two_factors_and_their_sessions_end(
    client: httpx.AsyncClient,
    db: Database,
    admin: Actor,
    agent: Actor,
    manager: Actor,
    other_admin: Actor,
) -> None:
    """Given an Agent with two factors and a session, when an Admin resets them, then the
    session ends, the password alone logs in, and it is audited; a Manager cannot, an
    Admin of another workspace finds no such member, and nobody resets their own."""
    agent_app = await enroll(client, await token_for(client, agent))
    agent_session = (
        await mfa_login(client, agent.user.email, PASSWORD, code=agent_app.code())
    ).json()["accessToken"]
    member_id = encode_global_id("Member", agent.membership.id)

    as_manager = await gql(client, await token_for(client, manager), RESET, {"id": member_id})
    as_stranger = await gql(client, await token_for(client, other_admin), RESET, {"id": member_id})
    admin_token = await token_for(client, admin)
    own = await gql(
        client, admin_token, RESET, {"id": encode_global_id("Member", admin.membership.id)}
    )
    reset = await gql(client, admin_token, RESET, {"id": member_id})

    assert error_codes(as_manager) == ["FORBIDDEN"]
    assert error_codes(as_stranger) == ["NOT_FOUND"]
    assert error_codes(own) == ["BAD_USER_INPUT"]
    assert reset.json()["data"] == {"resetMemberTwoFactor": {"id": member_id}}
    assert (await gql(client, agent_session, VIEWER)).status_code == 401
    assert (await login(client, agent.user.email)).status_code == 200
    async with db.session(agent.org_id) as session:
        event = (
            await session.exec(
                select(AuditEvent).where(AuditEvent.action == Action.TWO_FACTOR_RESET)
            )
        ).one()
    assert event.actor_membership_id == admin.membership.id
    assert event.details["sessions_ended"] >= 1
    [security_event] = await events_of(db, agent.org_id, SecurityKind.MFA_DISABLED)
    assert security_event.actor_membership_id == agent.membership.id


async def test_no_admin_resets_a_member_who_also_belongs_to_another_workspace(
    client: httpx.AsyncClient, db: Database, admin: Actor, agent: Actor, other_admin: Actor
) -> None:
    """Given an Agent of Acme with two factors, also a member of Globex (say a client's
    workspace, or a malicious one) whose Admin knows or phished their password,
    when Globex's Admin resets their two factors there, then FORBIDDEN, naming the
    operator's procedure, and nothing changes: the Agent's session lives on, and the
    password alone opens neither workspace (before, the reset cleared the factors of the
    user, so the password alone then opened Acme too). Acme's Admin is refused alike."""
    agent_app = await enroll(client, await token_for(client, agent))
    agent_session = (
        await mfa_login(client, agent.user.email, PASSWORD, code=agent_app.code())
    ).json()["accessToken"]
    async with db.session(other_admin.org_id) as session:
        globex_member = await create_membership(session, user=agent.user, role=Role.AGENT)

    by_globex = await gql(
        client,
        await token_for(client, other_admin),
        RESET,
        {"id": encode_global_id("Member", globex_member.id)},
    )
    by_acme = await gql(
        client,
        await token_for(client, admin),
        RESET,
        {"id": encode_global_id("Member", agent.membership.id)},
    )

    for refused in (by_globex, by_acme):
        assert error_codes(refused) == ["FORBIDDEN"], refused.text
        assert "weflux two-factor reset" in refused.json()["errors"][0]["message"]
    viewer = (await gql(client, agent_session, VIEWER)).json()["data"]["viewer"]
    assert viewer["user"] == {"twoFactorEnabled": True}
    for org_id in (agent.org_id, other_admin.org_id):
        attempt = await login(
            client, agent.user.email, organizationId=encode_global_id("Organization", org_id)
        )
        assert attempt.status_code == 401, attempt.text
        assert attempt.json()["error"]["code"] == "MFA_REQUIRED"
        async with db.session(org_id) as session:
            resets = (
                await session.exec(
                    select(AuditEvent).where(AuditEvent.action == Action.TWO_FACTOR_RESET)
                )
            ).all()
        assert resets == []
        assert await events_of(db, org_id, SecurityKind.MFA_DISABLED) == []


@postgres_only
async def test_a_reset_racing_the_members_join_of_another_workspace_sees_the_join(
    client: httpx.AsyncClient,
    db: Database,
    admin: Actor,
    agent: Actor,
    other_admin: Actor,
) -> None:
    """Given an Agent with two factors joining Globex (the membership written, the user's
    row locked as accepting an invitation locks it, not yet committed), when Acme's Admin
    resets the Agent meanwhile, then the reset waits for the join and is refused: it
    never clears factors that now also guard Globex (without the lock it checked the
    memberships before the join committed, then cleared them)."""
    agent_app = await enroll(client, await token_for(client, agent))
    admin_token = await token_for(client, admin)
    member_id = encode_global_id("Member", agent.membership.id)
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE wait_event_type = 'Lock' AND datname = current_database()"
    )

    async with db.session(other_admin.org_id) as joining:
        await create_membership(joining, user=agent.user, role=Role.AGENT)
        await joining.get(User, agent.user.id, populate_existing=True, with_for_update=True)
        reset = asyncio.create_task(gql(client, admin_token, RESET, {"id": member_id}))
        async with asyncio.timeout(30), db.engine.connect() as watcher:
            while not (await watcher.execute(waiting)).scalar_one():
                assert not reset.done(), reset.result().text
                await asyncio.sleep(0.01)  # (the state of another connection)

    assert error_codes(await reset) == ["FORBIDDEN"]
    assert (await login(client, agent.user.email)).json()["error"]["code"] == "MFA_REQUIRED"
    assert (
        await mfa_login(client, agent.user.email, PASSWORD, code=agent_app.code())
    ).status_code == 200


async def test_a_member_of_one_workspace_recovers_with_an_admins_reset_end_to_end(
    client: httpx.AsyncClient, db: Database, admin: Actor, agent: Actor
) -> None:
    """Given a workspace that requires two factors and an Agent of it alone who lost their
    phone and codes, when its Admin resets them, then the password alone logs in, where
    the session can only enroll; once enrolled on a new phone, the next login asks for
    its code, and the lost phone's codes no longer work."""
    admin_token = await token_for(client, admin)
    await enroll(client, admin_token)
    lost_phone = await enroll(client, await token_for(client, agent))
    await require_two_factors(db, agent.org_id)

    reset = await gql(
        client, admin_token, RESET, {"id": encode_global_id("Member", agent.membership.id)}
    )
    assert "errors" not in reset.json(), reset.text
    password_only = await login(client, agent.user.email)
    assert password_only.status_code == 200, password_only.text
    token = password_only.json()["accessToken"]
    assert error_codes(await gql(client, token, MEMBERS)) == ["TWO_FACTOR_REQUIRED"]
    new_phone = await enroll(client, token)

    stale = await mfa_login(client, agent.user.email, PASSWORD, code=lost_phone.code())
    assert stale.status_code == 401
    assert stale.json()["error"]["code"] == "INVALID_MFA_CODE"
    fresh = await mfa_login(client, agent.user.email, PASSWORD, code=new_phone.code())
    assert fresh.status_code == 200, fresh.text
    viewer = (await gql(client, fresh.json()["accessToken"], VIEWER)).json()["data"]["viewer"]
    assert viewer["user"] == {"twoFactorEnabled": True}


@pytest.mark.parametrize("code", ["", "12345", "1234567", "abcdef"])
async def test_malformed_codes_are_wrong_codes(
    client: httpx.AsyncClient, agent: Actor, code: str
) -> None:
    token = await token_for(client, agent)
    await gql(client, token, BEGIN)
    assert error_codes(await gql(client, token, CONFIRM, {"code": code})) == ["INVALID_MFA_CODE"]
