"""The login's second step and re-authentication over HTTP (CONTRACT §2 and §9).

Attacked as a client would: replayed codes, used, superseded, forged and expired
mfaTokens, an mfaToken presented as an access token, guessing codes after a right
password, and telling a two-factor account from an unknown email.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import col, select
from starlette.applications import Starlette

from tests.fixtures.api import gql, login, token_for
from tests.fixtures.app import ClientFactory
from tests.fixtures.factories import PASSWORD, Actor
from tests.fixtures.two_factor import AuthenticatorApp, enroll, mfa_login, wrong_code
from weflux.auth.tokens import TokenStamp
from weflux.db import Database
from weflux.models import AuditEvent, AuthSession, User, utcnow
from weflux.runtime import runtime_of
from weflux.services.audit import Action

VIEWER = "{ viewer { user { email twoFactorEnabled } } }"
INVITE = """mutation ($input: InviteMemberInput!) {
  inviteMember(input: $input) { token } }"""


@pytest.fixture
async def phone(client: httpx.AsyncClient, agent: Actor) -> AuthenticatorApp:
    """`agent` has two factors on; this is their authenticator app."""
    return await enroll(client, await token_for(client, agent))


async def password_step(client: httpx.AsyncClient, actor: Actor) -> str:
    response = await login(client, actor.user.email)
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["error"]["code"] == "MFA_REQUIRED"
    assert set(body) == {"error", "mfaToken"}
    return str(body["mfaToken"])


async def test_a_login_with_two_factors_asks_for_a_code_and_then_opens_a_session(
    client: httpx.AsyncClient, agent: Actor, phone: AuthenticatorApp
) -> None:
    """Given two factors on, when the password is right, then 401 MFA_REQUIRED with an
    mfaToken (no tokens), and the token with a code answers the token pair."""
    mfa_token = await password_step(client, agent)
    # The mfaToken is no access token.
    assert (await gql(client, mfa_token, VIEWER)).status_code == 401

    answer = await client.post("/auth/mfa", json={"mfaToken": mfa_token, "code": phone.code()})

    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    pair = answer.json()
    assert pair["member"]["id"]
    assert pair["tokenType"] == "Bearer"
    viewer = await gql(client, pair["accessToken"], VIEWER)
    assert viewer.json()["data"]["viewer"]["user"] == {
        "email": agent.user.email,
        "twoFactorEnabled": True,
    }


async def test_a_recovery_code_logs_in_once(
    client: httpx.AsyncClient, db: Database, agent: Actor, phone: AuthenticatorApp
) -> None:
    """Given ten recovery codes, when one logs in, then it works once and is audited."""
    code = phone.recovery_codes[3]
    first = await mfa_login(client, agent.user.email, PASSWORD, recoveryCode=code.upper())
    again = await mfa_login(client, agent.user.email, PASSWORD, recoveryCode=code)

    assert first.status_code == 200, first.text
    assert again.status_code == 401
    assert again.json()["error"]["code"] == "INVALID_MFA_CODE"
    other = await mfa_login(
        client, agent.user.email, PASSWORD, recoveryCode=phone.recovery_codes[4]
    )
    assert other.status_code == 200
    async with db.session(agent.org_id) as session:
        used = (
            await session.exec(
                select(AuditEvent).where(AuditEvent.action == Action.RECOVERY_CODE_USED)
            )
        ).all()
    assert sorted(e.details["remaining"] for e in used) == [8, 9]


async def test_a_code_is_accepted_once(
    client: httpx.AsyncClient, agent: Actor, phone: AuthenticatorApp
) -> None:
    """Given a code that opened a session, when it is sent again, then it is refused."""
    assert (
        await mfa_login(client, agent.user.email, PASSWORD, code=phone.code())
    ).status_code == 200

    replay = await mfa_login(client, agent.user.email, PASSWORD, code=phone.used_code())

    assert replay.status_code == 401
    assert replay.json()["error"]["code"] == "INVALID_MFA_CODE"


async def test_the_mfa_token_is_single_use_and_only_the_latest_counts(
    client: httpx.AsyncClient, agent: Actor, phone: AuthenticatorApp
) -> None:
    """Given a spent mfaToken and one superseded by a later password step, when either is
    sent with a right code, then 401 UNAUTHENTICATED (log in again)."""
    spent = await password_step(client, agent)
    ok = await client.post("/auth/mfa", json={"mfaToken": spent, "code": phone.code()})
    assert ok.status_code == 200
    reused = await client.post("/auth/mfa", json={"mfaToken": spent, "code": phone.peek()})
    assert reused.status_code == 401
    assert reused.json()["error"]["code"] == "UNAUTHENTICATED"

    older = await password_step(client, agent)
    newer = await password_step(client, agent)
    superseded = await client.post("/auth/mfa", json={"mfaToken": older, "code": phone.peek()})
    assert superseded.json()["error"]["code"] == "UNAUTHENTICATED"
    assert (
        await client.post("/auth/mfa", json={"mfaToken": newer, "code": phone.code()})
    ).status_code == 200


async def test_an_expired_forged_or_foreign_mfa_token_is_refused(
    app: Starlette,
    client: httpx.AsyncClient,
    agent: Actor,
    admin: Actor,
    phone: AuthenticatorApp,
) -> None:
    """Given an mfaToken past its 5 minutes, a tampered one and an access token, when each
    is sent to /auth/mfa with a right code, then 401 UNAUTHENTICATED each time."""
    codec = runtime_of(app).codec
    now = int(utcnow().timestamp())
    expired = codec.reissue(
        "mfa",
        TokenStamp(jti="x" * 22, issued_at=now - 600, expires_at=now - 300),
        user_id=agent.user.id,
        org_id=agent.org_id,
        session_id=uuid.uuid4(),
    ).token
    header, payload, signature = (await password_step(client, agent)).split(".")
    tampered = f"{header}.{payload}.{signature[::-1]}"
    access = await token_for(client, admin)

    for token in (expired, tampered, access, "not-a-token"):
        answer = await client.post("/auth/mfa", json={"mfaToken": token, "code": phone.peek()})
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "UNAUTHENTICATED"


async def test_wrong_codes_are_throttled_like_passwords_and_a_right_password_does_not_reset_it(
    make_client: ClientFactory, agent: Actor
) -> None:
    """Given 3 failures an hour per account and IP, when 3 wrong codes follow a right
    password, then each is 401 INVALID_MFA_CODE, and the next attempt (a right code, after
    a new right password step) is 429 RATE_LIMITED with Retry-After."""
    async with make_client(rate_limit_login_account_ip="3/hour") as client:
        phone = await enroll(client, await token_for(client, agent))
        mfa_token = await password_step(client, agent)
        wrong = wrong_code(phone)
        for _ in range(3):
            answer = await client.post("/auth/mfa", json={"mfaToken": mfa_token, "code": wrong})
            assert answer.status_code == 401
            assert answer.json()["error"]["code"] == "INVALID_MFA_CODE"

        fresh = await password_step(client, agent)
        throttled = await client.post("/auth/mfa", json={"mfaToken": fresh, "code": phone.peek()})

    assert throttled.status_code == 429
    assert throttled.json()["error"]["code"] == "RATE_LIMITED"
    assert int(throttled.headers["retry-after"]) > 0


async def test_the_password_step_tells_no_two_factor_account_from_an_unknown_email(
    client: httpx.AsyncClient, agent: Actor, phone: AuthenticatorApp
) -> None:
    """Given a user with two factors, when the password is wrong, then the answer is the
    one an unknown email gets, byte for byte."""
    wrong = await login(client, agent.user.email, "Not-the-password-42")
    unknown = await login(client, "nobody@acme.example", "Not-the-password-42")

    assert wrong.status_code == unknown.status_code == 401
    assert wrong.content == unknown.content
    assert wrong.json()["error"]["code"] == "INVALID_CREDENTIALS"
    assert "mfaToken" not in wrong.json()


async def test_mfa_wants_exactly_one_of_code_and_recovery_code(
    client: httpx.AsyncClient, agent: Actor, phone: AuthenticatorApp
) -> None:
    mfa_token = await password_step(client, agent)
    for body in ({}, {"code": "123456", "recoveryCode": "abcde-fghij"}):
        answer = await client.post("/auth/mfa", json={"mfaToken": mfa_token, **body})
        assert answer.status_code == 422, answer.text


async def stale(db: Database, actor: Actor) -> None:
    """Every session of `actor` last authenticated 11 minutes ago."""
    async with db.session(actor.org_id) as session:
        await session.exec(
            update(AuthSession)
            .where(col(AuthSession.user_id) == actor.user.id)
            .values(authenticated_at=utcnow() - timedelta(minutes=11))
        )


async def authenticated_at(db: Database, actor: Actor) -> list[object]:
    async with db.session(actor.org_id) as session:
        rows = (
            await session.exec(
                select(AuthSession)
                .where(AuthSession.user_id == actor.user.id)
                .order_by(col(AuthSession.created_at))
            )
        ).all()
    return [row.authenticated_at for row in rows]


async def test_reauthentication_checks_the_password_and_renews_only_this_session(
    client: httpx.AsyncClient, db: Database, admin: Actor
) -> None:
    """Given two stale sessions, when one re-authenticates (a wrong password first), then
    only that one is fresh again; a refresh renews nothing."""
    first = await token_for(client, admin)
    await token_for(client, admin)
    await stale(db, admin)
    before = await authenticated_at(db, admin)

    wrong = await client.post(
        "/auth/reauthenticate",
        json={"password": "Not-the-password-42"},
        headers={"Authorization": f"Bearer {first}"},
    )
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "INVALID_CREDENTIALS"
    assert await authenticated_at(db, admin) == before
    right = await client.post(
        "/auth/reauthenticate",
        json={"password": PASSWORD},
        headers={"Authorization": f"Bearer {first}"},
    )

    assert right.status_code == 204
    after = await authenticated_at(db, admin)
    assert after[0] != before[0]
    assert after[1] == before[1]
    anonymous = await client.post("/auth/reauthenticate", json={"password": PASSWORD})
    assert anonymous.status_code == 401


async def test_password_guesses_through_reauthentication_are_limited_per_ip_like_logins(
    make_client: ClientFactory, admin: Actor, agent: Actor
) -> None:
    """Given stolen access tokens of several accounts, when one IP guesses their passwords
    at /auth/reauthenticate, then the per-IP login limit counts them as it counts logins
    (429 once spent), not only each account's own guard."""
    async with make_client(rate_limit_login_ip="4/hour") as client:
        tokens = [await token_for(client, admin), await token_for(client, agent)]  # 2 of 4

        def guess(token: str) -> dict[str, object]:
            return {
                "json": {"password": "Not-the-password-42"},
                "headers": {"Authorization": f"Bearer {token}"},
            }

        first = [await client.post("/auth/reauthenticate", **guess(t)) for t in tokens]  # type: ignore[arg-type]
        throttled = await client.post("/auth/reauthenticate", **guess(tokens[0]))  # type: ignore[arg-type]

    assert [r.json()["error"]["code"] for r in first] == ["INVALID_CREDENTIALS"] * 2
    assert throttled.status_code == 429, throttled.json()
    assert throttled.json()["error"]["code"] == "RATE_LIMITED"
    assert int(throttled.headers["retry-after"]) >= 1


async def test_reauthentication_with_two_factors_wants_a_fresh_code(
    client: httpx.AsyncClient, db: Database, agent: Actor, phone: AuthenticatorApp
) -> None:
    """Given two factors on, when re-authenticating without a code, with a used one, then
    with a fresh one: 422, 401 INVALID_MFA_CODE, 204."""
    answer = await mfa_login(client, agent.user.email, PASSWORD, code=phone.code())
    headers = {"Authorization": f"Bearer {answer.json()['accessToken']}"}
    await stale(db, agent)

    missing = await client.post(
        "/auth/reauthenticate", json={"password": PASSWORD}, headers=headers
    )
    replay = await client.post(
        "/auth/reauthenticate",
        json={"password": PASSWORD, "code": phone.used_code()},
        headers=headers,
    )
    fresh = await client.post(
        "/auth/reauthenticate", json={"password": PASSWORD, "code": phone.code()}, headers=headers
    )

    assert missing.status_code == 422
    assert replay.status_code == 401
    assert replay.json()["error"]["code"] == "INVALID_MFA_CODE"
    assert fresh.status_code == 204
    async with db.session(agent.org_id) as session:
        user = await session.get(User, agent.user.id)
        assert user is not None
        assert user.totp_last_step == phone.last_step


async def test_a_password_change_ends_a_login_half_done_with_the_old_password(
    client: httpx.AsyncClient, agent: Actor, phone: AuthenticatorApp
) -> None:
    """Given someone who passed the password step with the old password (an mfaToken in
    hand), when the owner changes the password, then that mfaToken opens nothing, even
    with a right code: it was proof of the old password."""
    owner = await mfa_login(client, agent.user.email, PASSWORD, code=phone.code())
    stolen = await client.post(
        "/auth/login", json={"email": agent.user.email, "password": PASSWORD}
    )
    assert stolen.json()["error"]["code"] == "MFA_REQUIRED"
    changed = await gql(
        client,
        owner.json()["accessToken"],
        "mutation ($input: ChangePasswordInput!) { changePassword(input: $input) }",
        {"input": {"currentPassword": PASSWORD, "newPassword": "a brand new passphrase, 2026!"}},
    )
    assert "errors" not in changed.json(), changed.json()["errors"]

    late = await client.post(
        "/auth/mfa", json={"mfaToken": stolen.json()["mfaToken"], "code": phone.code()}
    )

    assert late.status_code == 401, late.json()
    assert late.json()["error"]["code"] == "UNAUTHENTICATED"


async def test_joining_by_invitation_asks_an_account_with_two_factors_for_a_code(
    client: httpx.AsyncClient, agent: Actor, other_admin: Actor, phone: AuthenticatorApp
) -> None:
    """Given an account with two factors, and an attacker who knows only its password and
    invites it to a workspace of their own (the mutation answers the token),
    when the attacker accepts the invitation with the password alone,
    then MFA_REQUIRED (no mfaToken: send again with `code`) and nothing is joined, so the
    attacker, Admin there, cannot `resetMemberTwoFactor` the account; a wrong code is
    INVALID_MFA_CODE; the owner's right code joins."""
    attacker = await token_for(client, other_admin)
    invited = await gql(
        client,
        attacker,
        INVITE,
        {"input": {"email": agent.user.email, "name": "Victim", "role": "AGENT"}},
    )
    body = {
        "token": invited.json()["data"]["inviteMember"]["token"],
        "name": "Victim",
        "password": PASSWORD,
    }

    bare = await client.post("/auth/invitations/accept", json=body)
    wrong = await client.post("/auth/invitations/accept", json={**body, "code": wrong_code(phone)})
    members = await gql(client, attacker, "{ members { user { email } } }")

    assert bare.status_code == 401, bare.text
    assert bare.json() == {
        "error": {"code": "MFA_REQUIRED", "message": bare.json()["error"]["message"]}
    }
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "INVALID_MFA_CODE"
    emails = [member["user"]["email"] for member in members.json()["data"]["members"]]
    assert agent.user.email not in emails
    right = await client.post("/auth/invitations/accept", json={**body, "code": phone.code()})
    assert right.status_code == 200, right.text
