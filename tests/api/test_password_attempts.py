"""Every password check goes through one limiter (issue 9, items 6 and 7).

Login, `changePassword` over HTTP and over the WebSocket, and accepting an invitation
with an existing account share the per-account limits: failures counted per account
and IP (and per account across IPs), successes never counted, throttled attempts
answered 429 / `RATE_LIMITED` without bcrypt, the owner never locked out by an attacker
on another network.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
from starlette.applications import Starlette

from tests.fixtures.api import error_codes, gql, login, token_for
from tests.fixtures.app import HTTP_TIMEOUT, client_of, lifespan
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import PASSWORD, Actor
from tests.fixtures.live import live_server
from tests.fixtures.settings import make_settings
from tests.fixtures.ws import GraphQLSocket
from weflux.app import create_app

ATTACKER = "198.51.100.66"
OWNER = "203.0.113.7"
ELSEWHERE = "192.0.2.200"
WRONG = "guess-Attempt-0000"
NEW_PASSWORD = "Another-lilac-Ferry-2741"
CHANGE_PASSWORD = "mutation ($input: ChangePasswordInput!) { changePassword(input: $input) }"
INVITE = """mutation ($input: InviteMemberInput!) {
  inviteMember(input: $input) { token } }"""


def change(current: str) -> dict[str, Any]:
    return {"input": {"currentPassword": current, "newPassword": NEW_PASSWORD}}


class BcryptCount:
    def __init__(self) -> None:
        self.calls = 0

    def wrap(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def counting(password: bytes, hashed: bytes) -> Any:
            self.calls += 1
            return real(password, hashed)

        return counting


@pytest.fixture
def bcrypt_count(monkeypatch: pytest.MonkeyPatch) -> BcryptCount:
    count = BcryptCount()
    monkeypatch.setattr(bcrypt, "checkpw", count.wrap(bcrypt.checkpw))
    return count


@asynccontextmanager
async def running_app(
    database_urls: DatabaseUrls, tmp_path: Path, **overrides: Any
) -> AsyncIterator[Starlette]:
    application = create_app(
        make_settings(
            tmp_path,
            database_url=database_urls.app,
            database_migration_url=database_urls.owner,
            **overrides,
        )
    )
    async with lifespan(application) as manager:
        yield manager.app  # type: ignore[misc]


def assert_throttled(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.json() == {
        "error": {"code": "RATE_LIMITED", "message": "Too many attempts; try again later"}
    }
    assert 1 <= int(response.headers["retry-after"]) <= 3600
    assert "accessToken" not in response.text


# --- login -----------------------------------------------------------------------------


async def test_successful_logins_never_count(
    database_urls: DatabaseUrls, tmp_path: Path, admin: Actor
) -> None:
    """Given 3 failures allowed per account and IP and 5 per account, when the owner
    logs in 10 times in a row (several tabs, devices, scripts), then every login
    succeeds (today the sixth answered 429)."""
    async with (
        running_app(
            database_urls,
            tmp_path,
            rate_limit_login_account_ip="3/hour",
            rate_limit_login_account="5/hour",
        ) as app,
        client_of(app, OWNER) as owner,
    ):
        statuses = [(await login(owner, admin.user.email)).status_code for _ in range(10)]

    assert statuses == [200] * 10


async def test_the_owner_gets_in_from_a_fresh_ip_while_an_attacker_hammers(
    database_urls: DatabaseUrls, tmp_path: Path, admin: Actor, bcrypt_count: BcryptCount
) -> None:
    """Given the default limits (10 failures per account and IP), when an attacker
    guesses 30 times from one IP, then 10 guesses are checked (401) and the rest are
    429 with Retry-After, without bcrypt, the right password included; and the owner
    on another network logs in (today 6 guesses from anyone locked the owner out)."""
    async with (
        running_app(
            database_urls,
            tmp_path,
            rate_limit_login_account_ip="10/hour",
            rate_limit_login_account="100/hour",
        ) as app,
        client_of(app, ATTACKER) as attacker,
        client_of(app, ELSEWHERE) as owner,
    ):
        answers = [await login(attacker, admin.user.email, f"{WRONG}{n}") for n in range(30)]
        checked = bcrypt_count.calls
        right_but_throttled = await login(attacker, admin.user.email, PASSWORD)
        assert bcrypt_count.calls == checked

        owner_in = await login(owner, admin.user.email)

    assert [a.status_code for a in answers] == [401] * 10 + [429] * 20
    for answer in answers[10:]:
        assert_throttled(answer)
    assert_throttled(right_but_throttled)
    assert owner_in.status_code == 200, owner_in.text


async def test_an_unknown_email_is_throttled_exactly_like_a_known_one(
    database_urls: DatabaseUrls, tmp_path: Path, admin: Actor
) -> None:
    """Same statuses, bodies and headers for an account that exists and one that does not."""
    async with (
        running_app(database_urls, tmp_path, rate_limit_login_account_ip="2/hour") as app,
        client_of(app, ATTACKER) as attacker,
    ):
        known = [await login(attacker, admin.user.email, WRONG) for _ in range(3)]
        unknown = [await login(attacker, "nobody@acme.example", WRONG) for _ in range(3)]

    assert [r.status_code for r in known] == [r.status_code for r in unknown] == [401, 401, 429]
    for ours, theirs in zip(known, unknown, strict=True):
        assert ours.content == theirs.content
        for header in ("content-type", "cache-control", "www-authenticate"):
            assert ours.headers.get(header) == theirs.headers.get(header)


# --- changePassword --------------------------------------------------------------------


async def test_change_password_guesses_share_the_login_limit(
    database_urls: DatabaseUrls, tmp_path: Path, admin: Actor, bcrypt_count: BcryptCount
) -> None:
    """Given 3 failures allowed per account and IP, when a stolen access token is used
    to guess the current password, then 3 guesses are checked and the 4th, even right,
    is RATE_LIMITED (with retryAfter) without bcrypt; logging in from that IP is
    throttled too (one limiter), the password is unchanged, and the owner logs in
    from elsewhere (today changePassword took unlimited guesses)."""
    async with (
        running_app(database_urls, tmp_path, rate_limit_login_account_ip="3/hour") as app,
        client_of(app, ATTACKER) as attacker,
        client_of(app, ELSEWHERE) as owner,
    ):
        token = await token_for(attacker, admin)
        guesses = [await gql(attacker, token, CHANGE_PASSWORD, change(WRONG)) for _ in range(3)]
        checked = bcrypt_count.calls
        right = await gql(attacker, token, CHANGE_PASSWORD, change(PASSWORD))
        login_there = await login(attacker, admin.user.email)
        assert bcrypt_count.calls == checked

        assert [error_codes(g) for g in guesses] == [["BAD_USER_INPUT"]] * 3
        assert error_codes(right) == ["RATE_LIMITED"]
        [error] = right.json()["errors"]
        assert 1 <= error["extensions"]["retryAfter"] <= 3600
        assert PASSWORD not in right.text
        assert_throttled(login_there)
        assert (await login(owner, admin.user.email)).status_code == 200
        assert (await login(owner, admin.user.email, NEW_PASSWORD)).status_code == 401


async def test_sixty_concurrent_change_password_guesses_run_ten_bcrypt_checks_at_most(
    database_urls: DatabaseUrls,
    tmp_path: Path,
    admin: Actor,
    manager: Actor,
    bcrypt_count: BcryptCount,
) -> None:
    """Given the default limits, when 60 changePassword guesses arrive at once with one
    token while someone else logs in, then 10 are checked and 50 refused before bcrypt
    (the attempt is counted before hashing), and the other login succeeds."""
    async with (
        running_app(
            database_urls,
            tmp_path,
            rate_limit_login_account_ip="10/hour",
            rate_limit_login_account="100/hour",
        ) as app,
        client_of(app, ATTACKER) as attacker,
        client_of(app, ELSEWHERE) as colleague,
    ):
        token = await token_for(attacker, admin)
        before = bcrypt_count.calls

        *guesses, other = await asyncio.gather(
            *(gql(attacker, token, CHANGE_PASSWORD, change(f"{WRONG}{n}")) for n in range(60)),
            login(colleague, manager.user.email),
        )

    codes = sorted(code for guess in guesses for code in error_codes(guess))
    assert codes == ["BAD_USER_INPUT"] * 10 + ["RATE_LIMITED"] * 50
    assert other.status_code == 200, other.text
    assert bcrypt_count.calls - before == 10 + 1


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_change_password_over_the_websocket_is_limited_the_same(
    database_urls: DatabaseUrls, tmp_path: Path, admin: Actor
) -> None:
    """The limit lives in the service, so a socket's changePassword guesses count and are
    refused exactly like HTTP ones (shared with HTTP: 2 over HTTP, then 1 over WS)."""
    settings = make_settings(
        tmp_path,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        # An hour, not a minute: the sliding window forgives a share of the previous
        # window's hits once a new one starts, which a slow run could straddle.
        rate_limit_login_account_ip="3/hour",
    )
    async with (
        live_server(create_app(settings)) as base_url,
        httpx.AsyncClient(timeout=HTTP_TIMEOUT, base_url=base_url) as client,
    ):
        token = await token_for(client, admin)
        for _ in range(2):
            response = await gql(client, token, CHANGE_PASSWORD, change(WRONG))
            assert error_codes(response) == ["BAD_USER_INPUT"]
        socket = await GraphQLSocket.connect(base_url, token)
        try:
            codes = []
            for current in (WRONG, WRONG, PASSWORD):
                operation = await socket.subscribe(CHANGE_PASSWORD, change(current))
                frame = await socket.next(operation)
                codes.append([e["extensions"]["code"] for e in frame["payload"]["errors"]])
        finally:
            await socket.close()

    assert codes == [["BAD_USER_INPUT"], ["RATE_LIMITED"], ["RATE_LIMITED"]]


# --- invitations -----------------------------------------------------------------------


async def test_accepting_an_invitation_with_an_existing_account_is_limited(
    database_urls: DatabaseUrls, tmp_path: Path, admin: Actor, other_admin: Actor
) -> None:
    """Given an invitation to Acme for Globex's admin, when someone guesses that
    account's password through the invitation, then 3 guesses are checked (401) and the
    4th, even right, is 429; the owner accepts from their own network."""
    async with (
        running_app(database_urls, tmp_path, rate_limit_login_account_ip="3/hour") as app,
        client_of(app, ATTACKER) as attacker,
        client_of(app, ELSEWHERE) as owner,
    ):
        admin_token = await token_for(owner, admin)
        invited = await gql(
            owner,
            admin_token,
            INVITE,
            {"input": {"email": other_admin.user.email, "name": "Ada", "role": "AGENT"}},
        )
        token = invited.json()["data"]["inviteMember"]["token"]

        def body(password: str) -> dict[str, str]:
            return {"token": token, "name": "Mallory", "password": password}

        guesses = [
            await attacker.post("/auth/invitations/accept", json=body(WRONG)) for _ in range(3)
        ]
        right = await attacker.post("/auth/invitations/accept", json=body(PASSWORD))
        joined = await owner.post("/auth/invitations/accept", json=body(PASSWORD))

    assert [g.status_code for g in guesses] == [401] * 3
    assert_throttled(right)
    assert joined.status_code == 200, joined.text
    assert joined.json()["organization"]["name"] == "Acme"
