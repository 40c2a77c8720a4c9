"""Refresh (issue 9, items 8 and 9): a session's absolute lifetime, and the reuse interval
that lets browser tabs refresh at once without tripping reuse detection."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import update
from sqlmodel import col, select

from tests.fixtures.api import gql, tokens_for
from tests.fixtures.app import ClientFactory
from tests.fixtures.factories import Actor
from weflux.db import Database
from weflux.models import AuditEvent, AuthSession, utcnow


async def refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/auth/refresh", json={"refreshToken": token})


def expiry(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def session_id_of(pair: dict[str, Any]) -> uuid.UUID:

    claims = jwt.decode(pair["refreshToken"], options={"verify_signature": False})
    return uuid.UUID(claims["sid"])


async def alive(client: httpx.AsyncClient, pair: dict[str, Any]) -> bool:
    response = await gql(client, pair["accessToken"], "{ viewer { id } }")
    assert response.status_code in (200, 401), response.text
    return response.status_code == 200


async def set_session(db: Database, admin: Actor, session_id: uuid.UUID, **values: Any) -> None:
    async with db.session(admin.org_id) as session:
        await session.exec(
            update(AuthSession).where(col(AuthSession.id) == session_id).values(**values)
        )


def assert_error(response: httpx.Response, code: str) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == code
    assert "accessToken" not in response.text


# --- absolute lifetime -----------------------------------------------------------------


async def test_a_session_older_than_its_maximum_age_cannot_refresh(
    client: httpx.AsyncClient, db: Database, admin: Actor
) -> None:
    """Given a session logged in 400 days ago and refreshed ever since (its refresh
    token still valid), when it refreshes, then 401: the default maximum age is 90
    days (today a 400-day-old session still refreshed)."""
    pair = await tokens_for(client, admin)
    await set_session(db, admin, session_id_of(pair), created_at=utcnow() - timedelta(days=400))

    response = await refresh(client, pair["refreshToken"])

    assert_error(response, "UNAUTHENTICATED")
    assert "maximum age" in response.json()["error"]["message"]


async def test_no_token_of_a_refresh_reaches_past_the_maximum_age(
    client: httpx.AsyncClient, db: Database, admin: Actor
) -> None:
    """Given a session logged in 88 days ago, when it refreshes, then both new tokens and
    the session itself expire 90 days after the login (in 2 days), not 30 and 7 days on."""
    pair = await tokens_for(client, admin)
    started = utcnow() - timedelta(days=88)
    session_id = session_id_of(pair)
    await set_session(db, admin, session_id, created_at=started)

    response = await refresh(client, pair["refreshToken"])

    assert response.status_code == 200, response.text
    body = response.json()
    end = started + timedelta(days=90)
    assert abs(expiry(body["refreshTokenExpiresAt"]) - end) < timedelta(seconds=2)
    assert abs(expiry(body["accessTokenExpiresAt"]) - end) < timedelta(seconds=2)
    async with db.session(admin.org_id) as session:
        row = await session.get(AuthSession, session_id)
        assert row is not None
        assert abs(row.expires_at - end) < timedelta(seconds=2)


async def test_a_maximum_age_shorter_than_the_refresh_lifetime_caps_the_first_pair(
    make_client: ClientFactory, admin: Actor
) -> None:
    """Given WEFLUX_SESSION_MAX_AGE=1d, then a login's refresh token expires in a day."""
    async with make_client(session_max_age="1d") as client:
        pair = await tokens_for(client, admin)

    in_a_day = datetime.now(UTC) + timedelta(days=1)
    assert abs(expiry(pair["refreshTokenExpiresAt"]) - in_a_day) < timedelta(minutes=1)


# --- the reuse interval ------------------------------------------------------------------


async def test_the_token_just_rotated_answers_the_same_pair_within_the_interval(
    client: httpx.AsyncClient, admin: Actor
) -> None:
    """Given two tabs holding one refresh token, when the first refreshes and the second
    presents the same token a moment later, then the second gets the very pair the
    first got (today: TOKEN_REUSED and the session revoked); the session lives on."""
    first = await tokens_for(client, admin)
    tab_one = await refresh(client, first["refreshToken"])
    assert tab_one.status_code == 200, tab_one.text

    tab_two = await refresh(client, first["refreshToken"])
    again = await refresh(client, first["refreshToken"])

    assert tab_two.status_code == 200, tab_two.text
    assert tab_two.json() == tab_one.json() == again.json()
    assert await alive(client, tab_two.json())
    assert await alive(client, first)
    following = await refresh(client, tab_two.json()["refreshToken"])
    assert following.status_code == 200, following.text
    assert following.json()["refreshToken"] != tab_one.json()["refreshToken"]


async def test_outside_the_interval_a_spent_token_still_revokes_the_session(
    client: httpx.AsyncClient, db: Database, admin: Actor
) -> None:
    """Given a token rotated 11 seconds ago (the interval is 10 s), when it is presented
    again, then reuse detection stands: 401 TOKEN_REUSED, every token of the session
    dead, and a high-severity audit event."""
    first = await tokens_for(client, admin)
    second = (await refresh(client, first["refreshToken"])).json()
    await set_session(db, admin, session_id_of(first), rotated_at=utcnow() - timedelta(seconds=11))

    reused = await refresh(client, first["refreshToken"])

    assert_error(reused, "TOKEN_REUSED")
    assert not await alive(client, second)
    assert (await refresh(client, second["refreshToken"])).status_code == 401
    async with db.session(admin.org_id) as session:
        actions = (await session.exec(select(AuditEvent.action))).all()
    assert "auth.refresh.reused" in actions


async def test_a_third_presentation_after_the_successor_was_rotated_is_reuse(
    client: httpx.AsyncClient, admin: Actor
) -> None:
    """Given T1 rotated to T2 and T2 rotated to T3 (within seconds), when T1 comes back,
    then it is no longer the token rotated last: TOKEN_REUSED, the session revoked."""
    first = await tokens_for(client, admin)
    second = (await refresh(client, first["refreshToken"])).json()
    third = (await refresh(client, second["refreshToken"])).json()

    reused = await refresh(client, first["refreshToken"])

    assert_error(reused, "TOKEN_REUSED")
    assert not await alive(client, third)


async def test_a_revoked_session_gets_no_grace(client: httpx.AsyncClient, admin: Actor) -> None:
    """Given a session that rotated and then logged out, when the rotated token comes
    back within the interval, then 401: a dead session is never revived."""
    first = await tokens_for(client, admin)
    second = (await refresh(client, first["refreshToken"])).json()
    out = await client.post(
        "/auth/logout", headers={"Authorization": f"Bearer {second['accessToken']}"}
    )
    assert out.status_code == 204

    assert_error(await refresh(client, first["refreshToken"]), "UNAUTHENTICATED")


async def test_the_successor_pair_is_never_stored_usable(
    client: httpx.AsyncClient, db: Database, admin: Actor
) -> None:
    """The session row keeps hashes and stamps (jti, iat, exp) only: neither token of
    the successor pair, nor any of its three parts, appears in any column."""
    first = await tokens_for(client, admin)
    second = (await refresh(client, first["refreshToken"])).json()

    async with db.session(admin.org_id) as session:
        row = await session.get(AuthSession, session_id_of(first))
    assert row is not None
    stored = " ".join(str(value) for value in row.model_dump().values())

    for token in (second["accessToken"], second["refreshToken"], first["refreshToken"]):
        for part in token.split("."):
            assert part not in stored
    assert row.refresh_token_hash == hashlib.sha256(second["refreshToken"].encode()).hexdigest()
    assert (
        row.previous_refresh_token_hash
        == hashlib.sha256(first["refreshToken"].encode()).hexdigest()
    )
    assert row.successor_stamps is not None
    assert set(row.successor_stamps) == {"access", "refresh"}
    assert all(set(stamp) == {"jti", "iat", "exp"} for stamp in row.successor_stamps.values())


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_an_interval_of_zero_turns_the_grace_off(
    make_client: ClientFactory, admin: Actor
) -> None:
    async with make_client(refresh_reuse_interval="0") as client:
        first = await tokens_for(client, admin)
        assert (await refresh(client, first["refreshToken"])).status_code == 200
        assert_error(await refresh(client, first["refreshToken"]), "TOKEN_REUSED")
