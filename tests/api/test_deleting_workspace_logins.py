"""A workspace in its deletion grace period opens sessions for Admins only, by every route;
work in flight when the deletion is requested keeps no session and no credential.

docs/lifecycle.md: "logins by non-Admins are refused (`FORBIDDEN`, "This workspace is
being deleted")". The password step of `/auth/login` always held; the other routes that
open a session (the login's second factor, a workspace switch, an invitation accepted
before the deletion was asked) must hold too.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import select
from starlette.applications import Starlette

from tests.fixtures.api import gql, token_for
from tests.fixtures.databases import postgres_only
from tests.fixtures.deletion import schedule_deletion
from tests.fixtures.factories import PASSWORD, Actor, create_membership
from tests.fixtures.principals import principal_of
from tests.fixtures.two_factor import enroll, mfa_login
from weflux.db import Database
from weflux.errors import Forbidden
from weflux.ids import encode_global_id
from weflux.models import AuthSession, Membership, Organization, Role, SmtpSettings
from weflux.runtime import runtime_of
from weflux.services import sessions as session_service
from weflux.services import smtp as smtp_service
from weflux.services.audit import RequestMeta

INVITE = """mutation ($input: InviteMemberInput!) { inviteMember(input: $input) { token } }"""
DELETING = {"code": "FORBIDDEN", "message": "This workspace is being deleted"}


async def test_the_second_factor_opens_no_agent_session_in_a_deleting_workspace(
    client: httpx.AsyncClient, db: Database, agent: Actor
) -> None:
    """Given an Agent with two factors, when their workspace is being deleted, then the
    right password and the right code still open no session: FORBIDDEN, as a login."""
    phone = await enroll(client, await token_for(client, agent))
    await schedule_deletion(db, agent.org_id)

    answer = await mfa_login(client, agent.user.email, PASSWORD, code=phone.code())

    assert answer.status_code == 403, answer.text
    assert answer.json() == {"error": DELETING}


async def test_a_switch_opens_no_agent_session_in_a_deleting_workspace(
    client: httpx.AsyncClient, db: Database, admin: Actor, other_org: Organization
) -> None:
    """Given an Admin of Acme who is an Agent of Globex, when Globex is being deleted,
    then switching there is FORBIDDEN; an Admin of a deleting workspace still may."""
    async with db.session(other_org.id) as session:
        await create_membership(session, user=admin.user, role=Role.AGENT)
    token = await token_for(client, admin)
    await schedule_deletion(db, other_org.id)
    target = encode_global_id("Organization", other_org.id)
    auth = {"Authorization": f"Bearer {token}"}

    answer = await client.post("/auth/switch", json={"organizationId": target}, headers=auth)

    assert answer.status_code == 403, answer.text
    assert answer.json() == {"error": DELETING}
    async with db.session(other_org.id) as session:
        await session.exec(update(Organization).values(deletion_scheduled_at=None))
        await session.exec(update(type(admin.membership)).values(role=Role.ADMIN))
    await schedule_deletion(db, other_org.id)
    as_admin = await client.post("/auth/switch", json={"organizationId": target}, headers=auth)
    assert as_admin.status_code == 200, as_admin.text


@pytest.mark.parametrize("role", ["AGENT", "ADMIN"])
async def test_an_invitation_opens_no_session_in_a_deleting_workspace(
    client: httpx.AsyncClient, db: Database, admin: Actor, role: str
) -> None:
    """Given an invitation made before the deletion was asked, when it is accepted during
    the grace period, then FORBIDDEN and nobody joined: an Admin's too (joining changes
    the workspace, and the newcomer could cancel the deletion; the ADMIN case failed
    before)."""
    invited = await gql(
        client,
        await token_for(client, admin),
        INVITE,
        {"input": {"email": "late@example.com", "name": "Late", "role": role}},
    )
    token = invited.json()["data"]["inviteMember"]["token"]
    await schedule_deletion(db, admin.org_id)

    answer = await client.post(
        "/auth/invitations/accept",
        json={"token": token, "name": "Late", "password": "correct horse battery staple 9"},
    )

    assert answer.status_code == 403, answer.text
    assert answer.json() == {"error": DELETING}
    login = await client.post(
        "/auth/login",
        json={"email": "late@example.com", "password": "correct horse battery staple 9"},
    )
    assert login.status_code == 401  # no account was created


def request_deletion(client: httpx.AsyncClient, token: str) -> asyncio.Task[httpx.Response]:
    """requestWorkspaceDeletion of Acme, started beside the test's own transaction."""
    return asyncio.create_task(
        gql(
            client,
            token,
            'mutation { requestWorkspaceDeletion(confirmOrganizationName: "Acme") { id } }',
        )
    )


@postgres_only
async def test_a_login_in_flight_when_the_deletion_is_requested_keeps_no_session(
    app: Starlette, client: httpx.AsyncClient, admin: Actor, agent: Actor
) -> None:
    """Given an Agent's login that read the workspace before its deletion was requested
    and commits its session after the request listed the sessions to end, then that
    session ends too: the request waits for the login (which locks the workspace's row
    while it opens a session) and revokes it; the Agent's token is refused (PostgreSQL:
    SQLite writes one transaction at a time)."""
    runtime = runtime_of(app)
    admin_token = await token_for(client, admin)
    async with runtime.db.session(agent.org_id) as session:
        organization = await session.get(Organization, agent.org_id)
        membership = await session.get(Membership, agent.membership.id)
        assert organization is not None
        assert membership is not None
        pair = await session_service.open_session(
            session,
            runtime.codec,
            membership=membership,
            organization=organization,
            meta=RequestMeta(),
            authenticated=True,
        )
        deletion = request_deletion(client, admin_token)
        await asyncio.wait({deletion}, timeout=1)
    requested = await deletion

    assert "errors" not in requested.json(), requested.text
    async with runtime.db.session(agent.org_id) as session:
        opened = await session.get(AuthSession, pair.session_id)
        assert opened is not None
        assert opened.revoked_at is not None
    read = await gql(client, pair.access.token, "{ organization { name } }")
    assert read.status_code == 401, read.text


def smtp_settings(admin: Actor) -> dict[str, Any]:
    return {
        "principal": principal_of(admin),
        "meta": RequestMeta(),
        "host": "127.0.0.1",
        "port": 2525,
        "username": "mailer",
        "password": "smtp secret",
        "from_address": "support@acme.example",
        "security": "STARTTLS",
        "allow_private": True,
    }


@postgres_only
async def test_an_smtp_password_stored_in_flight_when_the_deletion_is_requested_is_destroyed(
    app: Starlette, client: httpx.AsyncClient, admin: Actor
) -> None:
    """Given updateSmtpSettings past its checks (its DNS lookup can take seconds) before
    the deletion was requested, storing a password the request cannot see yet, then the
    request waits for it and destroys it (the update holds the workspace's row); the
    same with the order reversed answers FORBIDDEN (connectWhatsAppAccount and
    updateWhatsAppCredentials, past Meta's check, hold it alike)."""
    runtime = runtime_of(app)
    admin_token = await token_for(client, admin)
    async with runtime.db.session(admin.org_id) as session:
        await smtp_service.update(session, runtime.keyring, **smtp_settings(admin))
        deletion = request_deletion(client, admin_token)
        await asyncio.wait({deletion}, timeout=1)
    requested = await deletion

    assert "errors" not in requested.json(), requested.text
    async with runtime.db.session(admin.org_id) as session:
        stored = (await session.exec(select(SmtpSettings))).one()
        assert stored.password_enc is None
    with pytest.raises(Forbidden):
        async with runtime.db.session(admin.org_id) as session:
            await smtp_service.update(session, runtime.keyring, **smtp_settings(admin))
