"""Detectors (issue 13, item 1): each attack crosses its threshold once and raises exactly
one event; staying under it raises none. On SQLite and PostgreSQL, counting in memory
and in Redis."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from tests.fixtures import webhooks as wh
from tests.fixtures.api import gql, login, token_for, tokens_for
from tests.fixtures.app import client_of
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import PASSWORD, Actor, create_actor, create_whatsapp_account
from tests.fixtures.secops import (
    alerts,
    events_of,
    fresh_email,
    fresh_ip,
    platform_events,
    secops_app,
)
from tests.fixtures.two_factor import enroll, mfa_login, wrong_code
from weflux.crypto.fields import seal
from weflux.db import Database
from weflux.ids import encode_global_id
from weflux.models import AlertChannel, Organization, Role, SecuritySeverity
from weflux.runtime import runtime_of
from weflux.secops.detectors import BRUTE_FORCE
from weflux.secops.events import SecurityKind
from weflux.throttle.ratelimit import per_ip

WRONG = "wrong-Password-0000"


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        request.getfixturevalue("require_redis")
    return str(request.param)


@pytest.fixture
async def app(database_urls: DatabaseUrls, tmp_path: Path, store: str) -> AsyncIterator[Starlette]:
    async with secops_app(database_urls, tmp_path, store) as application:
        yield application


async def member(db: Database, org: Organization, role: Role = Role.AGENT) -> Actor:
    async with db.session(org.id) as session:
        return await create_actor(session, role, email=fresh_email())


async def wrong_logins(app: Starlette, email: str, ip: str, count: int) -> None:
    async with client_of(app, ip) as client:
        for _ in range(count):
            response = await login(client, email, WRONG)
            assert response.status_code in (401, 429), response.text


async def test_ten_wrong_passwords_for_one_account_from_one_ip_raise_one_brute_force_event(
    app: Starlette, db: Database, org: Organization
) -> None:
    """Given a member
    When one IP tries 12 wrong passwords for the account (the 10th crosses the threshold)
    Then exactly one HIGH auth.brute_force event is in the workspace, queued for alerts."""
    target = await member(db, org)
    ip = fresh_ip()
    await wrong_logins(app, target.user.email, ip, 12)
    events = await events_of(db, org.id, SecurityKind.BRUTE_FORCE)
    assert len(events) == 1
    assert events[0].severity == SecuritySeverity.HIGH
    assert events[0].ip_address == ip
    assert events[0].actor_membership_id == target.membership.id
    assert WRONG not in repr(events[0].details) + events[0].summary
    queued = {a.channel for a in await alerts(db) if a.event_id == events[0].id}
    assert queued == {AlertChannel.ADMIN_MAIL, AlertChannel.WEBHOOK}


async def test_nine_wrong_passwords_raise_no_event(
    app: Starlette, db: Database, org: Organization
) -> None:
    target = await member(db, org)
    await wrong_logins(app, target.user.email, fresh_ip(), 9)
    assert await events_of(db, org.id) == []


async def test_throttled_attempts_count_and_still_raise_one_event(
    database_urls: DatabaseUrls, tmp_path: Path, store: str, db: Database, org: Organization
) -> None:
    """Given the guard's per-account-and-IP limit at 5 an hour
    When one IP tries 15 wrong passwords (10 of them refused with 429)
    Then the refused ones count too: one brute-force event."""
    target = await member(db, org)
    async with secops_app(
        database_urls, tmp_path, store, rate_limit_login_account_ip="5/hour"
    ) as application:
        await wrong_logins(application, target.user.email, fresh_ip(), 15)
    assert len(await events_of(db, org.id, SecurityKind.BRUTE_FORCE)) == 1


async def test_thirty_failures_over_fifteen_accounts_from_one_ip_raise_one_stuffing_event(
    app: Starlette, db: Database, owner_db: Database, org: Organization
) -> None:
    """Given one IP
    When it fails 32 logins over 16 accounts (known or not)
    Then exactly one CRITICAL platform auth.credential_stuffing event, posted to the on-call."""
    ip = fresh_ip()
    known = await member(db, org)
    emails = [known.user.email] + [fresh_email() for _ in range(15)]
    for email in emails:
        await wrong_logins(app, email, ip, 2)
    found = await platform_events(owner_db, ip)
    assert [e.kind for e in found] == [SecurityKind.CREDENTIAL_STUFFING]
    assert found[0].severity == SecuritySeverity.CRITICAL
    assert any(
        a.event_id == found[0].id and a.channel == AlertChannel.WEBHOOK for a in await alerts(db)
    )
    assert all(email not in repr(found[0].details) for email in emails)


async def test_logins_refused_per_ip_still_count_as_stuffing(
    database_urls: DatabaseUrls, tmp_path: Path, store: str, owner_db: Database
) -> None:
    """Given the per-IP login limit at 5 an hour
    When one IP makes 32 attempts over 16 accounts (27 of them refused with 429)
    Then the refused ones count: one credential-stuffing event."""
    ip = fresh_ip()
    async with secops_app(
        database_urls, tmp_path, store, rate_limit_login_ip="5/hour"
    ) as application:
        for email in [fresh_email() for _ in range(16)]:
            await wrong_logins(application, email, ip, 2)
    assert [e.kind for e in await platform_events(owner_db, ip)] == [
        SecurityKind.CREDENTIAL_STUFFING
    ]


async def test_stuffing_from_a_new_ipv6_address_each_time_is_counted_by_its_64(
    app: Starlette, owner_db: Database
) -> None:
    """Given a client that holds a /64 and sends each attempt from another of its addresses
    When it fails 32 logins over 16 accounts
    Then they count together: one credential-stuffing event."""
    network = ipaddress.ip_network(f"{fresh_ip()}/64", strict=False)
    addresses = [str(network[n + 1]) for n in range(32)]
    emails = [fresh_email() for _ in range(16)]
    for n, address in enumerate(addresses):
        await wrong_logins(app, emails[n // 2], address, 1)
    found = [e for address in addresses for e in await platform_events(owner_db, address)]
    assert [e.kind for e in found] == [SecurityKind.CREDENTIAL_STUFFING]


async def test_many_failures_over_few_accounts_are_no_stuffing(
    app: Starlette, owner_db: Database
) -> None:
    ip = fresh_ip()
    for email in [fresh_email() for _ in range(5)]:
        await wrong_logins(app, email, ip, 8)
    assert await platform_events(owner_db, ip) == []


async def test_a_reused_refresh_token_raises_one_event_and_a_normal_refresh_none(
    app: Starlette, db: Database, org: Organization
) -> None:
    target = await member(db, org)
    async with client_of(app, fresh_ip()) as client:
        first = (await tokens_for(client, target))["refreshToken"]
        second = await client.post("/auth/refresh", json={"refreshToken": first})
        assert second.status_code == 200
        third = await client.post(
            "/auth/refresh", json={"refreshToken": second.json()["refreshToken"]}
        )
        assert third.status_code == 200
        assert await events_of(db, org.id, SecurityKind.REFRESH_REUSE) == []
        reused = await client.post("/auth/refresh", json={"refreshToken": first})
        assert reused.status_code == 401
    events = await events_of(db, org.id, SecurityKind.REFRESH_REUSE)
    assert len(events) == 1
    assert events[0].actor_membership_id == target.membership.id
    assert first not in repr(events[0].details) + events[0].summary


async def test_a_login_from_a_new_device_raises_one_event_and_mails_the_user(
    app: Starlette, db: Database, org: Organization
) -> None:
    """Given a member who logged in from one IP and browser
    When they log in again from there, then from another IP
    Then only the other IP raises auth.new_device, with a mail to that user queued."""
    target = await member(db, org)
    home, away = fresh_ip(), fresh_ip()
    async with client_of(app, home) as client:
        await token_for(client, target)
        await token_for(client, target)
    assert await events_of(db, org.id, SecurityKind.NEW_DEVICE) == []
    async with client_of(app, away) as client:
        await token_for(client, target)
    events = await events_of(db, org.id, SecurityKind.NEW_DEVICE)
    assert len(events) == 1
    assert events[0].ip_address == away
    mails = [a for a in await alerts(db) if a.event_id == events[0].id]
    assert [(a.channel, a.recipient_user_id) for a in mails] == [
        (AlertChannel.USER_MAIL, target.user.id)
    ]


async def test_a_login_finished_with_a_second_factor_is_watched_like_a_password_login(
    app: Starlette, db: Database, org: Organization
) -> None:
    """Given a member with two factors who logged in from one IP
    When they finish a login with a code from another IP, after a wrong code there
    Then the login raises auth.new_device once, and the wrong code counted as a failure."""
    target = await member(db, org)
    home, away = fresh_ip(), fresh_ip()
    async with client_of(app, home) as client:
        authenticator = await enroll(client, await token_for(client, target))
    async with client_of(app, away) as client:
        wrong = await mfa_login(client, target.user.email, PASSWORD, code=wrong_code(authenticator))
        assert wrong.status_code == 401, wrong.text
        right = await mfa_login(client, target.user.email, PASSWORD, code=authenticator.code())
        assert right.status_code == 200, right.text
    events = await events_of(db, org.id, SecurityKind.NEW_DEVICE)
    assert [event.ip_address for event in events] == [away]
    limiter = runtime_of(app).limiter
    assert await limiter.tallied(BRUTE_FORCE, f"{target.user.email.lower()}\n{per_ip(away)}") == 1


async def test_granting_admin_raises_one_event_and_other_roles_none(
    app: Starlette, db: Database, org: Organization, admin: Actor
) -> None:
    target = await member(db, org)
    query = (
        """mutation ($input: UpdateMemberRoleInput!) { updateMemberRole(input: $input) { role } }"""
    )
    target_id = encode_global_id("Member", target.membership.id)
    async with client_of(app, fresh_ip()) as client:
        token = await token_for(client, admin)
        for role in ("MANAGER", "ADMIN"):
            response = await gql(
                client, token, query, {"input": {"memberId": target_id, "role": role}}
            )
            assert response.json()["data"]["updateMemberRole"]["role"] == role
    events = await events_of(db, org.id, SecurityKind.ADMIN_GRANTED)
    assert len(events) == 1
    assert events[0].actor_membership_id == admin.membership.id


async def test_joining_as_admin_by_invitation_raises_one_event_and_as_agent_none(
    app: Starlette, db: Database, org: Organization, admin: Actor
) -> None:
    invite = """mutation ($input: InviteMemberInput!) { inviteMember(input: $input) { token } }"""
    async with client_of(app, fresh_ip()) as client:
        token = await token_for(client, admin)
        for role in ("AGENT", "ADMIN"):
            variables = {"input": {"email": fresh_email(), "name": "New", "role": role}}
            invited = await gql(client, token, invite, variables)
            accepted = await client.post(
                "/auth/invitations/accept",
                json={
                    "token": invited.json()["data"]["inviteMember"]["token"],
                    "name": "New Member",
                    "password": PASSWORD,
                },
            )
            assert accepted.status_code == 200, accepted.text
    events = await events_of(db, org.id, SecurityKind.ADMIN_GRANTED)
    assert len(events) == 1
    assert "invitation" in events[0].summary


async def test_changing_channel_credentials_raises_one_event(
    app: Starlette, db: Database, org: Organization, admin: Actor
) -> None:
    async with db.session(org.id) as session:
        account = await create_whatsapp_account(session)
    query = """mutation ($input: UpdateWhatsAppCredentialsInput!) {
      updateWhatsAppCredentials(input: $input) { id } }"""
    secret = "new-app-secret-0123456789"
    async with client_of(app, fresh_ip()) as client:
        token = await token_for(client, admin)
        response = await gql(
            client,
            token,
            query,
            {"input": {"id": encode_global_id("WhatsAppAccount", account.id), "appSecret": secret}},
        )
        assert "errors" not in response.json(), response.text
    events = await events_of(db, org.id, SecurityKind.CREDENTIALS_CHANGED)
    assert len(events) == 1
    assert secret not in repr(events[0].details) + events[0].summary


async def bad_signatures(app: Starlette, path: str, count: int) -> None:
    body = wh.encode(wh.webhook_body(wh.messages_change(messages=[wh.text_message()])))
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": "sha256=" + "0" * 64}
    async with client_of(app, fresh_ip()) as client:
        for _ in range(count):
            response = await client.post(path, content=body, headers=headers)
            assert response.status_code in (401, 429)


@pytest.fixture
async def channel_path(app: Starlette, db: Database, org: Organization) -> str:
    async with db.session(org.id) as session:
        account = await create_whatsapp_account(session)
        seal(runtime_of(app).keyring, account, "app_secret_enc", "channel-secret-0123456789")
    return f"/webhooks/whatsapp/{account.webhook_key}"


async def test_twenty_bad_webhook_signatures_raise_one_event(
    app: Starlette, db: Database, org: Organization, channel_path: str
) -> None:
    await bad_signatures(app, channel_path, 25)
    events = await events_of(db, org.id, SecurityKind.WEBHOOK_SIGNATURE_FAILURES)
    assert len(events) == 1
    assert events[0].severity == SecuritySeverity.MEDIUM
    assert [a for a in await alerts(db) if a.event_id == events[0].id] == []  # not alerted


async def test_nineteen_bad_webhook_signatures_raise_none(
    app: Starlette, db: Database, org: Organization, channel_path: str
) -> None:
    await bad_signatures(app, channel_path, 19)
    assert await events_of(db, org.id, SecurityKind.WEBHOOK_SIGNATURE_FAILURES) == []


async def test_normal_use_raises_no_event(
    app: Starlette, db: Database, org: Organization, admin: Actor
) -> None:
    """Given an Admin who logs in, mistypes once, logs in again and refreshes
    Then nothing is raised."""
    ip = fresh_ip()
    async with client_of(app, ip) as client:
        pair: dict[str, Any] = await tokens_for(client, admin)
        assert (await login(client, admin.user.email, WRONG)).status_code == 401
        await tokens_for(client, admin)
        response: httpx.Response = await client.post(
            "/auth/refresh", json={"refreshToken": pair["refreshToken"]}
        )
        assert response.status_code == 200
    assert await events_of(db, org.id) == []
