"""Accounts left without a workspace: an account with no membership and no invitation
still open is deleted, at once by the removal that leaves it so (as a workspace's
deletion does), and by the daily retention for any left over. An account still a member
anywhere, or invited somewhere, is never touched."""

from __future__ import annotations

import hashlib
import os
import uuid
from datetime import timedelta

import httpx
import sqlalchemy as sa
from sqlalchemy import text
from sqlmodel import col, select

from tests.fixtures.api import gql, login, token_for
from tests.fixtures.factories import Actor, create_membership, create_user
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.ids import encode_global_id
from weflux.lifecycle import erasure
from weflux.lifecycle.worker import ORPHAN_ACCOUNT_MIN_AGE, Lifecycle, run_retention
from weflux.models import (
    AuditEvent,
    AuthSession,
    Invitation,
    Organization,
    PendingSignup,
    Role,
    User,
    utcnow,
)

REMOVE = "mutation($id: ID!) { removeMember(memberId: $id) }"
DAY = timedelta(days=1)


def _lifecycle(db: Database) -> Lifecycle:
    return Lifecycle(db=db, keyring=KeyRing([("k", os.urandom(32))]), batch=2)


async def _remove(client: httpx.AsyncClient, admin: Actor, member: Actor) -> None:
    token = await token_for(client, admin)
    variables = {"id": encode_global_id("Member", member.membership.id)}
    response = await gql(client, token, REMOVE, variables)
    assert "errors" not in response.json(), response.text


async def _users(owner_db: Database) -> set[uuid.UUID]:
    async with owner_db.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT id FROM users"))).all()
    return {uuid.UUID(str(row[0])) for row in rows}


async def _sessions_of(owner_db: Database, user_id: uuid.UUID) -> int:
    async with owner_db.engine.connect() as conn:
        query = sa.select(sa.func.count()).where(col(AuthSession.user_id) == user_id)
        return int((await conn.execute(query)).scalar_one())


async def _invite(
    db: Database, org_id: uuid.UUID, email: str, *, expires_in: timedelta, accepted: bool = False
) -> uuid.UUID:
    async with db.session(org_id) as session:
        invitation = Invitation(
            email=email,
            name="Invited",
            role=Role.AGENT,
            token_hash=hashlib.sha256(os.urandom(16)).hexdigest(),
            expires_at=utcnow() + expires_in,
            accepted_at=utcnow() if accepted else None,
        )
        session.add(invitation)
    return invitation.id


async def test_a_member_removed_from_their_last_workspace_loses_their_account_at_once(
    client: httpx.AsyncClient, db: Database, owner_db: Database, admin: Actor, agent: Actor
) -> None:
    """Given an Agent of one workspace only, logged in (a session with their IP address),
    with a second factor's sealed secret and recovery codes on their account,
    when an Admin removes them,
    then their account goes in the removal's transaction, with its sessions and second
    factor; their email and password log in nowhere; the audit event says so."""
    async with db.session(agent.org_id) as session:
        user = await session.get(User, agent.user.id)
        assert user is not None
        user.totp_secret_enc = "sealed"
        user.recovery_code_hashes = "a b c"
        session.add(user)
    await token_for(client, agent)
    assert await _sessions_of(owner_db, agent.user.id) == 1

    await _remove(client, admin, agent)

    assert agent.user.id not in await _users(owner_db)
    assert admin.user.id in await _users(owner_db)
    assert await _sessions_of(owner_db, agent.user.id) == 0
    refused = await login(client, agent.user.email)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "INVALID_CREDENTIALS"
    async with db.session(admin.org_id) as session:
        event = (
            await session.exec(select(AuditEvent).where(AuditEvent.action == "member.removed"))
        ).one()
    assert event.details["account_deleted"] is True


async def test_a_member_of_another_workspace_keeps_their_account(
    client: httpx.AsyncClient,
    db: Database,
    owner_db: Database,
    admin: Actor,
    agent: Actor,
    other_org: Organization,
) -> None:
    """Given an Agent who is also a Manager of another workspace,
    when an Admin of the first removes them and the daily retention runs a day later,
    then their account stays and logs in to the other workspace."""
    async with db.session(other_org.id) as session:
        await create_membership(session, user=agent.user, role=Role.MANAGER)

    await _remove(client, admin, agent)
    await run_retention(_lifecycle(db), now=utcnow() + DAY)

    assert agent.user.id in await _users(owner_db)
    answer = await login(client, agent.user.email)
    assert answer.status_code == 200, answer.text
    assert answer.json()["organization"]["name"] == other_org.name


async def test_an_account_invited_elsewhere_is_kept_until_its_invitation_is_no_longer_open(
    client: httpx.AsyncClient,
    db: Database,
    owner_db: Database,
    admin: Actor,
    agent: Actor,
    other_org: Organization,
) -> None:
    """Given an Agent invited to another workspace (the invitation's email in other case;
    also an accepted and an expired invitation to that address, which admit nobody),
    when an Admin removes them from their only workspace,
    then their account stays (accepting joins with it), and the daily retention deletes
    it once the open invitation has expired."""
    email = agent.user.email.upper()
    await _invite(db, other_org.id, email, expires_in=7 * DAY)
    await _invite(db, other_org.id, email, expires_in=7 * DAY, accepted=True)
    await _invite(db, admin.org_id, email, expires_in=-DAY)

    await _remove(client, admin, agent)
    await run_retention(_lifecycle(db), now=utcnow() + 6 * DAY)
    assert agent.user.id in await _users(owner_db)

    await run_retention(_lifecycle(db), now=utcnow() + 8 * DAY)
    assert agent.user.id not in await _users(owner_db)


async def test_the_daily_retention_deletes_the_accounts_left_over(
    db: Database, owner_db: Database, admin: Actor
) -> None:
    """Given accounts without a membership (left by an earlier release, or by two removals
    racing in two workspaces), one of them made a moment ago, one with a sign-up for its
    address pending, and a member's account,
    when the daily retention runs,
    then the left-over accounts older than the margin go (the pending sign-up, no
    account, stays for its own expiry); the new one and the member's stay."""
    now = utcnow()
    old = now - ORPHAN_ACCOUNT_MIN_AGE - timedelta(minutes=1)
    async with db.session() as session:
        left = [await create_user(session, created_at=old) for _ in range(3)]
        recent = await create_user(session, created_at=now)
        signup = PendingSignup(
            email=left[0].email,
            name="Someone",
            organization_name="Their Co",
            password_hash="x",
            token_hash=hashlib.sha256(b"signup").hexdigest(),
            expires_at=now + DAY,
        )
        session.add(signup)

    assert await run_retention(_lifecycle(db), now=now) >= 3

    users = await _users(owner_db)
    assert not {user.id for user in left} & users
    assert {recent.id, admin.user.id} <= users
    async with owner_db.engine.connect() as conn:
        signups = (await conn.execute(text("SELECT id FROM pending_signups"))).all()
    assert [uuid.UUID(str(row[0])) for row in signups] == [signup.id]


async def test_a_workspace_deletion_keeps_the_accounts_invited_elsewhere(
    db: Database,
    owner_db: Database,
    admin: Actor,
    agent: Actor,
    other_org: Organization,
    other_admin: Actor,
) -> None:
    """Given a workspace whose Agent is invited to another workspace, and whose Admin is
    not,
    when the workspace's rows are deleted,
    then the Admin's account goes with it, the invited Agent's stays (as after a removal),
    and the other workspace's Admin is untouched."""
    await _invite(db, other_org.id, agent.user.email, expires_in=7 * DAY)

    assert await erasure.purge_workspace(db, admin.org_id, batch=1)

    users = await _users(owner_db)
    assert admin.user.id not in users
    assert {agent.user.id, other_admin.user.id} <= users
