"""`/auth/*` (CONTRACT §2): sign-up, login, throttling, refresh rotation, logout, invitations.

Attacked as a client would: duplicate and re-cased emails, weak and over-long
passwords, smuggled fields (a role, an organization), wrong content types, oversized
and broken bodies, credential stuffing, replayed and raced refresh tokens, tokens of
the wrong kind, replayed and expired invitations, and invitations aimed at somebody
else's account. Every answer must be `Cache-Control: no-store`, and no answer may
ever echo the password that was sent.

The apps of this module run with generous rate limits, so that a test making many
requests measures what it means to; the throttling tests build apps with tiny ones.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import col, select
from starlette.applications import Starlette

from tests.fixtures.api import error_codes, gql, login, token_for, tokens_for
from tests.fixtures.app import client_of, lifespan
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import PASSWORD, Actor, create_membership, create_user
from tests.fixtures.mail import body_of, confirmation_token, mails_to, sign_up
from tests.fixtures.secops import fresh_ip
from tests.fixtures.settings import make_settings
from weflux.app import create_app
from weflux.config import Settings
from weflux.db import Database
from weflux.ids import encode_global_id, parse_global_id
from weflux.models import AuditEvent, AuthSession, Invitation, Organization, Role, utcnow
from weflux.runtime import runtime_of
from weflux.services import auth as auth_service
from weflux.services.audit import RequestMeta

CLIENT_IP = "203.0.113.7"
STRONG = "quartz-Lantern-meadow-58"
PAIR_KEYS = {
    "tokenType",
    "accessToken",
    "accessTokenExpiresAt",
    "refreshToken",
    "refreshTokenExpiresAt",
    "organization",
    "member",
}
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
LENIENT_LIMITS = {
    "rate_limit_login_ip": "1000/minute",
    "rate_limit_login_account": "1000/minute",
    "rate_limit_signup_ip": "1000/hour",
    "rate_limit_invitation_ip": "1000/hour",
    "rate_limit_refresh_ip": "1000/minute",
}
INVITE = """mutation ($input: InviteMemberInput!) {
  inviteMember(input: $input) { invitation { id email role } token } }"""

# Storage-free checks (body format, policy, schema) run on SQLite only.
sqlite_only = pytest.mark.parametrize("dialect", ["sqlite"])


@pytest.fixture
def settings(database_urls: DatabaseUrls, tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        **LENIENT_LIMITS,
    )


@asynccontextmanager
async def running_app(
    database_urls: DatabaseUrls, tmp_path: Path, **overrides: Any
) -> AsyncIterator[Starlette]:
    """An app of the test's database with custom settings (tiny rate limits…)."""
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


def signup_body(**overrides: Any) -> dict[str, Any]:
    return {
        "organizationName": "Initech",
        "name": "Peter Gibbons",
        "email": "peter@initech.example",
        "password": STRONG,
    } | overrides


def assert_no_store(response: httpx.Response) -> None:
    assert response.headers.get("cache-control") == "no-store", (
        response.status_code,
        dict(response.headers),
    )


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert error["code"] == code, body
    assert isinstance(error["message"], str), body
    assert error["message"], body
    assert_no_store(response)
    return error


def fields_of(error: dict[str, Any]) -> set[str]:
    return {detail["field"] for detail in error.get("details", [])}


def parse_timestamp(value: str) -> datetime:
    assert TIMESTAMP.match(value), value
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def assert_token_pair(
    response: httpx.Response, *, status: int = 200, organization: str, role: str
) -> dict[str, Any]:
    """The exact token-pair body of CONTRACT §2 (plus the `organizations` list)."""
    assert response.status_code == status, response.text
    assert_no_store(response)
    body: dict[str, Any] = response.json()
    assert set(body) == PAIR_KEYS | {"organizations"}, set(body)
    assert body["tokenType"] == "Bearer"
    assert isinstance(body["accessToken"], str)
    assert body["accessToken"].count(".") == 2
    assert isinstance(body["refreshToken"], str)
    assert body["refreshToken"].count(".") == 2
    assert body["accessToken"] != body["refreshToken"]
    now = datetime.now(UTC)
    access_in = parse_timestamp(body["accessTokenExpiresAt"]) - now
    refresh_in = parse_timestamp(body["refreshTokenExpiresAt"]) - now
    assert abs(access_in - timedelta(days=7)) < timedelta(minutes=1), access_in
    assert abs(refresh_in - timedelta(days=30)) < timedelta(minutes=1), refresh_in
    assert set(body["organization"]) == {"id", "name"}
    assert body["organization"]["name"] == organization
    assert parse_global_id(body["organization"]["id"])[0] == "Organization"
    assert set(body["member"]) == {"id", "role"}
    assert body["member"]["role"] == role
    assert parse_global_id(body["member"]["id"])[0] == "Member"
    assert body["organization"] in body["organizations"]
    return body


async def viewer(client: httpx.AsyncClient, token: str) -> dict[str, Any]:
    response = await gql(client, token, "{ viewer { id role } organization { id name } }")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def audit_events(db: Database, org_id: uuid.UUID) -> list[AuditEvent]:
    async with db.session(org_id) as session:
        return list(
            (await session.exec(select(AuditEvent).order_by(col(AuditEvent.created_at)))).all()
        )


async def invite(client: httpx.AsyncClient, token: str, email: str, role: str = "AGENT") -> str:
    response = await gql(
        client, token, INVITE, {"input": {"email": email, "name": "Invitee", "role": role}}
    )
    assert response.status_code == 200, response.text
    payload = response.json()["data"]["inviteMember"]
    assert payload["invitation"]["role"] == role
    return str(payload["token"])


async def accept(
    client: httpx.AsyncClient, token: str, password: str = STRONG, name: str = "New Person"
) -> httpx.Response:
    return await client.post(
        "/auth/invitations/accept", json={"token": token, "name": name, "password": password}
    )


# --- sign-up -------------------------------------------------------------------------


async def test_signup_creates_a_workspace_and_answers_the_exact_token_pair(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """Given a new person, when they sign up, then 202 and a confirmation email; when they
    confirm, then 201 with the contract's token pair, an ADMIN membership of the new
    workspace, and an access token /graphql accepts."""
    response = await client.post("/auth/signup", json=signup_body())
    assert response.status_code == 202, response.text
    assert response.json() == {"status": "CONFIRMATION_SENT"}
    assert_no_store(response)
    [mail] = mails_to(settings, "peter@initech.example")

    confirmed = await client.post("/auth/signup/confirm", json={"token": confirmation_token(mail)})

    body = assert_token_pair(confirmed, status=201, organization="Initech", role="ADMIN")
    assert body["organizations"] == [body["organization"]]
    assert STRONG not in response.text + confirmed.text
    seen = await viewer(client, body["accessToken"])
    assert seen["viewer"] == {"id": body["member"]["id"], "role": "ADMIN"}
    assert seen["organization"] == body["organization"]


async def test_signup_stores_the_email_normalised_so_login_ignores_case(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    response = await sign_up(client, settings, signup_body(email="  Peter@Initech.EXAMPLE "))
    assert response.status_code == 201, response.text

    again = await login(client, "PETER@initech.example", STRONG)

    assert_token_pair(again, organization="Initech", role="ADMIN")


async def test_signup_with_an_email_that_has_an_account_in_any_case_changes_nothing(
    client: httpx.AsyncClient, settings: Settings, admin: Actor
) -> None:
    """Given admin@acme.example, when anyone signs up with that email in any case, then
    the same 202 as for a new address (issue 9: no more 409 oracle), the owner is
    emailed instead of a confirmation link; no workspace is added to the account and
    its password is unchanged."""
    for email in ("admin@acme.example", "ADMIN@Acme.Example", " Admin@ACME.example "):
        response = await client.post("/auth/signup", json=signup_body(email=email))
        assert response.status_code == 202, response.text
        assert response.json() == {"status": "CONFIRMATION_SENT"}
        assert STRONG not in response.text

    mails = mails_to(settings, "admin@acme.example")
    assert len(mails) == 3
    assert all("#token=" not in body_of(mail) for mail in mails)
    assert (await login(client, admin.user.email, STRONG)).status_code == 401
    still = await login(client, admin.user.email)
    body = assert_token_pair(still, organization="Acme", role="ADMIN")
    assert [o["name"] for o in body["organizations"]] == ["Acme"]


@sqlite_only
@pytest.mark.parametrize(
    ("case", "password", "reason"),
    [
        ("too short", "Tr7#kq", "at least 12"),
        ("guessable", "password1234", "too easy to guess"),
        ("repetitive", "aaaaaaaaaaaaaaaa", "too easy to guess"),
        ("over 72 bytes", "orchid-Tundra-velvet-Compass-" * 3, "bcrypt"),
        ("over 72 bytes in 50 characters", "é" * 26 + "quartz-Lantern-meadow-58", "bcrypt"),
        ("the email address", "zelda.fitzgerald@example.com", "email"),
        ("the email's local part inside", "xx-zelda.fitzgerald-2024", "email"),
        ("a NUL character", "quartz-Lantern\x00meadow-58", "NUL"),
    ],
)
async def test_signup_refuses_a_weak_password_with_a_reason_for_the_password_field(
    client: httpx.AsyncClient, case: str, password: str, reason: str
) -> None:
    response = await client.post(
        "/auth/signup",
        json=signup_body(email="zelda.fitzgerald@example.com", password=password),
    )

    error = assert_error(response, 422, "VALIDATION_FAILED")
    assert fields_of(error) == {"password"}, (case, error)
    assert reason.lower() in error["details"][0]["message"].lower(), (case, error)
    assert password not in response.text


@sqlite_only
async def test_the_over_72_bytes_message_explains_that_bcrypt_would_ignore_the_rest(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/auth/signup", json=signup_body(password="Ab3-" * 19))

    error = assert_error(response, 422, "VALIDATION_FAILED")
    message = error["details"][0]["message"]
    assert "72 bytes" in message
    assert "bcrypt" in message
    assert "ignored" in message


@sqlite_only
@pytest.mark.parametrize(
    ("case", "body", "fields"),
    [
        ("empty object", {}, {"organizationName", "name", "email", "password"}),
        ("no password", {k: v for k, v in signup_body().items() if k != "password"}, {"password"}),
        ("email is a number", signup_body(email=5), {"email"}),
        ("password is a list", signup_body(password=[STRONG]), {"password"}),
        ("password is null", signup_body(password=None), {"password"}),
        ("name is blank", signup_body(name="   "), {"name"}),
        (
            "organizationName is 201 characters",
            signup_body(organizationName="x" * 201),
            {"organizationName"},
        ),
        ("password is 2000 characters", signup_body(password="Zq9-" * 500), {"password"}),
        ("a smuggled role", signup_body(role="ADMIN"), {"role"}),
        (
            "a smuggled organization",
            signup_body(organizationId="T3JnYW5pemF0aW9uOjE"),
            {"organizationId"},
        ),
        (
            "snake_case instead of camelCase",
            {
                "organization_name": "Initech",
                "name": "P",
                "email": "p@i.example",
                "password": STRONG,
            },
            {"organizationName", "organization_name"},
        ),
        ("not an email", signup_body(email="peter-at-initech"), {"email"}),
        ("a JSON array", [signup_body()], {"body"}),
        ("a JSON string", "signup", {"body"}),
        ("JSON null", None, {"body"}),
    ],
)
async def test_signup_with_a_malformed_body_gets_422_naming_each_bad_field(
    client: httpx.AsyncClient, case: str, body: Any, fields: set[str]
) -> None:
    response = await client.post(
        "/auth/signup", content=json.dumps(body), headers={"content-type": "application/json"}
    )

    error = assert_error(response, 422, "VALIDATION_FAILED")
    assert fields_of(error) == fields, (case, error)
    assert all(d["message"] for d in error["details"])
    assert STRONG not in response.text
    assert "Zq9-Zq9-" not in response.text


@sqlite_only
@pytest.mark.parametrize(
    "route",
    [
        "/auth/signup",
        "/auth/signup/confirm",
        "/auth/login",
        "/auth/refresh",
        "/auth/invitations/accept",
    ],
)
async def test_auth_bodies_must_be_well_formed_json_under_the_size_cap(
    client: httpx.AsyncClient, settings: Settings, route: str
) -> None:
    """415 for anything but application/json, 400 for broken JSON, 413 over 16 KiB
    whether the size is declared or streamed; each with `no-store`."""
    raw = b'{"email": "a@b.example", "password": "' + STRONG.encode() + b'"}'
    for content_type in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        None,
    ):
        headers = {"content-type": content_type} if content_type else {}
        response = await client.post(route, content=raw, headers=headers)
        assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")
        assert STRONG not in response.text

    for broken in (b"{", b'{"email": }', b"", b"\xff\xfe{}", b'{"a": 1} trailing'):
        response = await client.post(
            route, content=broken, headers={"content-type": "application/json"}
        )
        assert_error(response, 400, "BAD_REQUEST")

    cap = settings.max_auth_body_bytes
    assert cap == 16 * 1024
    oversized = b'{"password": "' + b"x" * cap + b'"}'
    declared = await client.post(
        route, content=oversized, headers={"content-type": "application/json"}
    )
    assert_error(declared, 413, "PAYLOAD_TOO_LARGE")

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(oversized), 1024):
            yield oversized[start : start + 1024]

    streamed = await client.post(
        route, content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in streamed.request.headers
    assert_error(streamed, 413, "PAYLOAD_TOO_LARGE")


async def test_a_body_of_exactly_the_cap_is_read(
    client: httpx.AsyncClient, settings: Settings, admin: Actor
) -> None:
    """The cap is inclusive: padding a valid login to exactly 16 KiB still logs in,
    one byte more is 413."""
    raw = f'{{"email": "{admin.user.email}", "password": "{PASSWORD}"}}'.encode()
    cap = settings.max_auth_body_bytes
    exact = raw + b" " * (cap - len(raw))
    headers = {"content-type": "application/json; charset=utf-8"}

    fits = await client.post("/auth/login", content=exact, headers=headers)
    over = await client.post("/auth/login", content=exact + b" ", headers=headers)

    assert_token_pair(fits, organization="Acme", role="ADMIN")
    assert_error(over, 413, "PAYLOAD_TOO_LARGE")


# --- login ---------------------------------------------------------------------------


async def test_login_with_the_right_password_answers_a_token_pair_for_the_workspace(
    client: httpx.AsyncClient, admin: Actor
) -> None:
    response = await login(client, "  ADMIN@acme.EXAMPLE", PASSWORD)

    body = assert_token_pair(response, organization="Acme", role="ADMIN")
    assert body["member"]["id"] == encode_global_id("Member", admin.membership.id)
    assert body["organizations"] == [body["organization"]]
    assert PASSWORD not in response.text
    assert (await viewer(client, body["accessToken"]))["viewer"]["role"] == "ADMIN"


async def test_wrong_password_and_unknown_email_get_byte_identical_401s(
    client: httpx.AsyncClient, admin: Actor
) -> None:
    """No oracle for which emails have accounts: same status, body and headers."""
    wrong = await login(client, admin.user.email, "not-the-Password-4711")
    unknown = await login(client, "nobody@acme.example", "not-the-Password-4711")
    wrong_case = await login(client, admin.user.email, PASSWORD.upper())

    assert_error(wrong, 401, "INVALID_CREDENTIALS")
    assert wrong.content == unknown.content == wrong_case.content
    for header in ("content-type", "cache-control", "www-authenticate"):
        assert wrong.headers.get(header) == unknown.headers.get(header), header
    assert "not-the-Password-4711" not in wrong.text


async def test_a_password_that_only_matches_in_its_first_72_bytes_is_refused(
    client: httpx.AsyncClient, db: Database, org: Organization
) -> None:
    """bcrypt reads 72 bytes: a 72-byte password plus anything must not log in."""
    secret = "Kestrel-orbit-Wharf-lantern-Quiver-9317-marble-Fjord-cobalt-Sprocket-427"
    assert len(secret.encode()) == 72
    async with db.session(org.id) as session:
        user = await create_user(session, email="long@acme.example", password=secret)
        await create_membership(session, user=user, role=Role.AGENT)

    assert (await login(client, "long@acme.example", secret)).status_code == 200
    extended = await login(client, "long@acme.example", secret + "-anything")
    assert_error(extended, 401, "INVALID_CREDENTIALS")


async def test_a_person_in_two_workspaces_chooses_one_with_organization_id(
    client: httpx.AsyncClient,
    db: Database,
    admin: Actor,
    other_org: Organization,
    other_admin: Actor,
) -> None:
    """Given the Acme admin is also an AGENT of Globex, then login lists both
    workspaces, defaults to the first joined, and `organizationId` picks the other;
    each token acts in its own workspace with its own role."""
    async with db.session(other_org.id) as session:
        await create_membership(session, user=admin.user, role=Role.AGENT)
    acme = {"id": encode_global_id("Organization", admin.org_id), "name": "Acme"}
    globex = {"id": encode_global_id("Organization", other_org.id), "name": "Globex"}

    default = assert_token_pair(
        await login(client, admin.user.email), organization="Acme", role="ADMIN"
    )
    chosen = assert_token_pair(
        await login(client, admin.user.email, organizationId=globex["id"]),
        organization="Globex",
        role="AGENT",
    )

    assert default["organizations"] == [acme, globex]
    assert chosen["organizations"] == [acme, globex]
    assert chosen["organization"] == globex
    in_globex = await viewer(client, chosen["accessToken"])
    assert in_globex == {
        "viewer": {"id": chosen["member"]["id"], "role": "AGENT"},
        "organization": globex,
    }
    assert (await viewer(client, default["accessToken"]))["organization"] == acme
    audit = await gql(client, chosen["accessToken"], "{ auditEvents { edges { node { id } } } }")
    assert error_codes(audit) == ["FORBIDDEN"]


async def test_login_into_a_workspace_one_is_not_a_member_of_is_forbidden(
    client: httpx.AsyncClient, admin: Actor, other_admin: Actor
) -> None:
    """A foreign workspace and a workspace that does not exist answer alike (403), and
    only after the password is right: a wrong password still gets the plain 401."""
    foreign = encode_global_id("Organization", other_admin.org_id)
    missing = encode_global_id("Organization", uuid.uuid4())

    to_foreign = await login(client, admin.user.email, organizationId=foreign)
    to_missing = await login(client, admin.user.email, organizationId=missing)
    wrong_password = await login(
        client, admin.user.email, "guess-Again-1234", organizationId=foreign
    )

    assert_error(to_foreign, 403, "FORBIDDEN")
    assert to_foreign.content == to_missing.content
    assert "globex" not in to_foreign.text.lower()
    assert_error(wrong_password, 401, "INVALID_CREDENTIALS")


@sqlite_only
@pytest.mark.parametrize(
    "organization_id",
    [
        "!!!garbage!!!",
        "T3JnYW5pemF0aW9uOm5vdC1hLXV1aWQ",  # "Organization:not-a-uuid"
        "x" * 300,
        "' OR 1=1 --",
    ],
)
async def test_login_with_a_garbage_organization_id_is_404_not_a_crash(
    client: httpx.AsyncClient, admin: Actor, organization_id: str
) -> None:
    response = await login(client, admin.user.email, organizationId=organization_id)

    assert_error(response, 404, "NOT_FOUND")


async def test_login_with_another_types_id_as_organization_id_is_404(
    client: httpx.AsyncClient, admin: Actor
) -> None:
    """A Member id of the right uuid is still not an Organization id."""
    member_id = encode_global_id("Member", admin.membership.id)

    response = await login(client, admin.user.email, organizationId=member_id)

    assert_error(response, 404, "NOT_FOUND")
    mistyped = await login(client, admin.user.email, organizationId=5)
    assert fields_of(assert_error(mistyped, 422, "VALIDATION_FAILED")) == {"organizationId"}


async def test_login_success_and_failure_are_audited_with_the_client_ip(
    client: httpx.AsyncClient, db: Database, admin: Actor
) -> None:
    """Given a failed then a successful login, then both are in the workspace's audit
    trail with the client's IP, the failure as a warning, and no password anywhere."""
    assert (await login(client, admin.user.email, "Wrong-guess-8472")).status_code == 401
    pair = assert_token_pair(
        await login(client, admin.user.email), organization="Acme", role="ADMIN"
    )

    events = {e.action: e for e in await audit_events(db, admin.org_id)}
    failed, succeeded = events["auth.login.failed"], events["auth.login.succeeded"]
    assert failed.ip_address == CLIENT_IP
    assert failed.severity == "warning"
    assert failed.target_id == str(admin.user.id)
    assert succeeded.ip_address == CLIENT_IP
    assert succeeded.actor_membership_id == admin.membership.id
    assert "Wrong-guess-8472" not in repr(failed.details)

    listed = await gql(
        client,
        pair["accessToken"],
        "{ auditEvents(first: 20) { edges { node { action ipAddress actor { id } } } } }",
    )
    nodes = [edge["node"] for edge in listed.json()["data"]["auditEvents"]["edges"]]
    by_action = {node["action"]: node for node in nodes}
    assert by_action["auth.login.failed"]["ipAddress"] == CLIENT_IP
    assert by_action["auth.login.succeeded"]["ipAddress"] == CLIENT_IP
    assert by_action["auth.login.succeeded"]["actor"] == {"id": pair["member"]["id"]}


# --- brute force ---------------------------------------------------------------------


async def test_the_fourth_attempt_on_one_account_is_throttled_even_with_the_right_password(
    database_urls: DatabaseUrls, tmp_path: Path, admin: Actor, manager: Actor
) -> None:
    """Given `3/hour` per account, after three wrong guesses the right password (in
    any case of the email) gets 429 with `Retry-After`, while another account is fine."""
    async with (
        running_app(database_urls, tmp_path, rate_limit_login_account="3/hour") as app,
        client_of(app) as client,
    ):
        for guess in ("guess-One-1111", "guess-Two-2222", "guess-Three-3333"):
            assert_error(await login(client, admin.user.email, guess), 401, "INVALID_CREDENTIALS")

        for email in (admin.user.email, admin.user.email.upper(), f" {admin.user.email} "):
            throttled = await login(client, email, PASSWORD)
            assert_error(throttled, 429, "RATE_LIMITED")
            assert int(throttled.headers["retry-after"]) >= 1
            assert "accessToken" not in throttled.text

        assert_token_pair(
            await login(client, manager.user.email), organization="Acme", role="MANAGER"
        )


async def test_many_emails_from_one_ip_are_throttled_but_other_ips_are_not(
    database_urls: DatabaseUrls, tmp_path: Path, admin: Actor
) -> None:
    """Credential stuffing: `5/hour` per IP stops the sixth attempt from that IP,
    whatever email it tries, real accounts included; another IP still logs in."""
    async with (
        running_app(database_urls, tmp_path, rate_limit_login_ip="5/hour") as app,
        client_of(app, "198.51.100.23") as attacker,
        client_of(app, "192.0.2.44") as bystander,
    ):
        for n in range(5):
            response = await login(attacker, f"victim{n}@example.com", "Spray-password-2024")
            assert_error(response, 401, "INVALID_CREDENTIALS")
        for email in ("victim9@example.com", admin.user.email):
            throttled = await login(attacker, email, PASSWORD)
            assert_error(throttled, 429, "RATE_LIMITED")
            assert int(throttled.headers["retry-after"]) >= 1

        assert_token_pair(
            await login(bystander, admin.user.email), organization="Acme", role="ADMIN"
        )


async def test_an_ipv6_client_is_counted_by_its_network_not_its_address(
    database_urls: DatabaseUrls, tmp_path: Path, admin: Actor
) -> None:
    """Credential stuffing over IPv6: a client holds a whole /64, so a new address per
    attempt changes nothing: the sixth attempt from that network is refused; another /64
    still logs in."""
    network = ipaddress.ip_network(f"{fresh_ip()}/64", strict=False)
    async with (
        running_app(database_urls, tmp_path, rate_limit_login_ip="5/hour") as app,
        client_of(app, fresh_ip()) as bystander,
    ):
        for n in range(6):
            async with client_of(app, str(network[(n + 1) << 32 | n])) as attacker:
                response = await login(attacker, f"victim{n}@example.com", "Spray-password-2024")
            if n < 5:
                assert_error(response, 401, "INVALID_CREDENTIALS")
        assert_error(response, 429, "RATE_LIMITED")

        assert_token_pair(
            await login(bystander, admin.user.email), organization="Acme", role="ADMIN"
        )


# --- refresh -------------------------------------------------------------------------


async def refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/auth/refresh", json={"refreshToken": token})


async def test_refresh_rotates_the_pair_and_spends_the_old_refresh_token(
    client: httpx.AsyncClient, admin: Actor
) -> None:
    first = await tokens_for(client, admin)

    second = assert_token_pair(
        await refresh(client, first["refreshToken"]), organization="Acme", role="ADMIN"
    )
    third = assert_token_pair(
        await refresh(client, second["refreshToken"]), organization="Acme", role="ADMIN"
    )

    assert len({first["refreshToken"], second["refreshToken"], third["refreshToken"]}) == 3
    assert len({first["accessToken"], second["accessToken"], third["accessToken"]}) == 3
    assert second["member"] == first["member"] == third["member"]
    assert (await viewer(client, third["accessToken"]))["viewer"]["role"] == "ADMIN"


async def test_a_spent_refresh_token_is_token_reused_and_kills_the_whole_session(
    client: httpx.AsyncClient, db: Database, admin: Actor
) -> None:
    """Given a session rotated twice (a thief holds the first refresh token), when the
    spent token is presented, then 401 TOKEN_REUSED, and every token of the session
    (the newest access and refresh tokens included) is dead; a high-severity
    `auth.refresh.reused` audit event names the session; other sessions live on."""
    other_session = await token_for(client, admin)
    first = await tokens_for(client, admin)
    second = (await refresh(client, first["refreshToken"])).json()
    third = (await refresh(client, second["refreshToken"])).json()
    assert (await viewer(client, third["accessToken"]))["viewer"]["role"] == "ADMIN"

    reused = await refresh(client, first["refreshToken"])

    error = assert_error(reused, 401, "TOKEN_REUSED")
    assert "accessToken" not in reused.text
    assert error["message"]
    for token in (third["accessToken"], second["accessToken"], first["accessToken"]):
        dead = await gql(client, token, "{ viewer { id } }")
        assert dead.status_code == 401
    newest = await refresh(client, third["refreshToken"])
    assert newest.status_code == 401
    assert newest.json()["error"]["code"] in {"UNAUTHENTICATED", "TOKEN_REUSED"}
    assert (await viewer(client, other_session))["viewer"]["role"] == "ADMIN"

    (event,) = [
        e for e in await audit_events(db, admin.org_id) if e.action == "auth.refresh.reused"
    ]
    assert event.severity == "high"
    assert event.ip_address == CLIENT_IP
    assert event.target_type == "Session"
    assert event.actor_membership_id == admin.membership.id


async def test_concurrent_refreshes_with_one_token_let_at_most_one_through(
    client: httpx.AsyncClient, admin: Actor
) -> None:
    """A race for one refresh token never yields two live pairs: within the reuse
    interval (issue 9) every winner gets the one successor pair, byte for byte."""
    for attempt in range(3):
        pair = await tokens_for(client, admin)

        responses = await asyncio.gather(*(refresh(client, pair["refreshToken"]) for _ in range(4)))

        statuses = sorted(r.status_code for r in responses)
        assert statuses.count(200) >= 1, (attempt, statuses)
        assert set(statuses) <= {200, 401}, (attempt, [r.text for r in responses])
        winners = [r.json() for r in responses if r.status_code == 200]
        assert len({w["refreshToken"] for w in winners}) == 1
        assert len({w["accessToken"] for w in winners}) == 1


async def test_refresh_and_access_tokens_are_not_interchangeable(
    client: httpx.AsyncClient, admin: Actor
) -> None:
    pair = await tokens_for(client, admin)

    as_access = await gql(client, pair["refreshToken"], "{ viewer { id } }")
    as_refresh = await refresh(client, pair["accessToken"])
    as_logout = await client.post(
        "/auth/logout", headers={"Authorization": f"Bearer {pair['refreshToken']}"}
    )

    assert as_access.status_code == 401
    assert as_access.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert_error(as_refresh, 401, "UNAUTHENTICATED")
    assert_error(as_logout, 401, "UNAUTHENTICATED")
    # Neither mistake burnt anything: the pair still works as intended.
    assert (await viewer(client, pair["accessToken"]))["viewer"]["role"] == "ADMIN"
    assert_token_pair(
        await refresh(client, pair["refreshToken"]), organization="Acme", role="ADMIN"
    )


@sqlite_only
async def test_refresh_with_garbage_or_no_token_is_refused(client: httpx.AsyncClient) -> None:
    assert_error(await refresh(client, "garbage"), 401, "UNAUTHENTICATED")
    assert_error(await refresh(client, "a.b.c"), 401, "UNAUTHENTICATED")
    missing = await client.post("/auth/refresh", json={})
    assert fields_of(assert_error(missing, 422, "VALIDATION_FAILED")) == {"refreshToken"}
    empty = await client.post("/auth/refresh", json={"refreshToken": ""})
    assert fields_of(assert_error(empty, 422, "VALIDATION_FAILED")) == {"refreshToken"}


# --- logout --------------------------------------------------------------------------


async def test_logout_ends_the_session_at_once(client: httpx.AsyncClient, admin: Actor) -> None:
    """Given a session in use (its check cached), when it logs out, then 204, and the
    same access token is refused on the very next request; its refresh token too; the
    admin's other sessions are untouched."""
    other = await token_for(client, admin)
    pair = await tokens_for(client, admin)
    headers = {"Authorization": f"Bearer {pair['accessToken']}"}
    assert (await viewer(client, pair["accessToken"]))["viewer"]["role"] == "ADMIN"

    response = await client.post("/auth/logout", headers=headers)

    assert response.status_code == 204
    assert response.content == b""
    assert_no_store(response)
    after = await gql(client, pair["accessToken"], "{ viewer { id } }")
    assert after.status_code == 401
    assert after.headers["www-authenticate"] == "Bearer"
    assert_error(await refresh(client, pair["refreshToken"]), 401, "UNAUTHENTICATED")
    assert_error(await client.post("/auth/logout", headers=headers), 401, "UNAUTHENTICATED")
    assert (await viewer(client, other))["viewer"]["role"] == "ADMIN"


async def test_logout_is_audited_with_its_session_and_no_token(
    client: httpx.AsyncClient, db: Database, admin: Actor
) -> None:
    """Given a session, when it logs out, then one `auth.logout` audit event names the
    member, the session and the client IP, and carries no token; a refused logout (its
    session already ended) records nothing more."""
    pair = await tokens_for(client, admin)
    headers = {"Authorization": f"Bearer {pair['accessToken']}"}

    assert (await client.post("/auth/logout", headers=headers)).status_code == 204
    assert (await client.post("/auth/logout", headers=headers)).status_code == 401

    (event,) = [e for e in await audit_events(db, admin.org_id) if e.action == "auth.logout"]
    async with db.session(admin.org_id) as session:
        (ended,) = (
            await session.exec(select(AuthSession).where(col(AuthSession.revoked_at).is_not(None)))
        ).all()
    assert ended.revoked_reason == "logout"
    assert (event.target_type, event.target_id) == ("Session", str(ended.id))
    assert event.actor_membership_id == admin.membership.id
    assert event.actor_user_id == admin.user.id
    assert event.ip_address == CLIENT_IP
    assert event.severity == "info"
    stored = json.dumps(event.model_dump(mode="json"))
    assert pair["accessToken"] not in stored
    assert pair["refreshToken"] not in stored


async def test_logout_with_a_refresh_token_or_a_revoked_session_records_nothing(
    client: httpx.AsyncClient, db: Database, admin: Actor
) -> None:
    """Given a session and another one revoked by `revokeSession`,
    when the first's refresh token is sent to logout as a bearer, and the revoked one's
    access token, then both are 401, the first session still works, and neither logout
    is audited (the revocation is, once, as `session.revoked`)."""
    pair = await tokens_for(client, admin)
    revoked = await tokens_for(client, admin)
    listed = await gql(client, revoked["accessToken"], "{ sessions { id current } }")
    (own,) = [s["id"] for s in listed.json()["data"]["sessions"] if s["current"]]
    ended = await gql(
        client,
        pair["accessToken"],
        "mutation($id: ID!) { revokeSession(id: $id) { id } }",
        {"id": own},
    )
    assert "errors" not in ended.json(), ended.json()

    for token in (pair["refreshToken"], revoked["accessToken"]):
        response = await client.post("/auth/logout", headers={"Authorization": f"Bearer {token}"})
        assert_error(response, 401, "UNAUTHENTICATED")

    assert (await viewer(client, pair["accessToken"]))["viewer"]["role"] == "ADMIN"
    actions = [e.action for e in await audit_events(db, admin.org_id)]
    assert "auth.logout" not in actions
    assert actions.count("session.revoked") == 1


async def test_concurrent_logouts_of_one_session_are_audited_once(
    app: Starlette, client: httpx.AsyncClient, db: Database, admin: Actor
) -> None:
    """Given three logouts of one session that all passed authentication before any of
    them ended it (tabs closing together), when they run at once, then the session ends
    and exactly one `auth.logout` is recorded."""
    runtime = runtime_of(app)
    access = (await tokens_for(client, admin))["accessToken"]
    principals = [await runtime.authenticator.authenticate(access) for _ in range(3)]

    await asyncio.gather(
        *(
            auth_service.logout(db, runtime.authenticator, principal, RequestMeta(CLIENT_IP))
            for principal in principals
            if principal is not None
        )
    )

    assert all(principal is not None for principal in principals)
    assert (await runtime.authenticator.authenticate(access)) is None
    actions = [e.action for e in await audit_events(db, admin.org_id)]
    assert actions.count("auth.logout") == 1


@sqlite_only
async def test_logout_without_a_valid_access_token_is_401(client: httpx.AsyncClient) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer garbage"},
        {"Authorization": "Basic YWRtaW46cGFzcw=="},
    ):
        response = await client.post("/auth/logout", headers=headers)
        assert_error(response, 401, "UNAUTHENTICATED")
        assert response.headers["www-authenticate"] == "Bearer"


# --- invitations ---------------------------------------------------------------------


async def test_an_invitation_is_accepted_once_with_the_invited_role(
    client: httpx.AsyncClient, admin: Actor
) -> None:
    """Given the admin invites a MANAGER, when the invitee accepts, then a token pair of
    a MANAGER of Acme; the same token a second time (any password) is 404."""
    admin_token = await token_for(client, admin)
    token = await invite(client, admin_token, "newbie@example.com", "MANAGER")

    accepted = await accept(client, token)

    body = assert_token_pair(accepted, organization="Acme", role="MANAGER")
    assert STRONG not in accepted.text
    assert (await viewer(client, body["accessToken"]))["viewer"]["role"] == "MANAGER"
    assert_error(await accept(client, token), 404, "NOT_FOUND")
    assert_error(await accept(client, token, "other-Pass-phrase-77"), 404, "NOT_FOUND")
    assert_token_pair(
        await login(client, "newbie@example.com", STRONG), organization="Acme", role="MANAGER"
    )


async def test_an_expired_invitation_is_refused_like_an_unknown_one(
    client: httpx.AsyncClient, db: Database, admin: Actor
) -> None:
    admin_token = await token_for(client, admin)
    token = await invite(client, admin_token, "late@example.com")
    async with db.session(admin.org_id) as session:
        await session.exec(update(Invitation).values(expires_at=utcnow() - timedelta(seconds=1)))

    expired = await accept(client, token)
    unknown = await accept(client, "x" * 43)

    assert_error(expired, 404, "NOT_FOUND")
    assert expired.content == unknown.content
    assert (await login(client, "late@example.com", STRONG)).status_code == 401


async def test_an_existing_account_must_give_its_own_password_to_accept(
    client: httpx.AsyncClient, admin: Actor, other_admin: Actor
) -> None:
    """Given an invitation to Acme for the email of Globex's admin, then accepting with
    any other password is 401 and changes nothing (no account takeover through an
    invitation); with the account's password they join as invited and keep it."""
    admin_token = await token_for(client, admin)
    token = await invite(client, admin_token, "ADMIN@globex.example", "AGENT")
    hijack = "attacker-Chosen-passw0rd-77"

    refused = await accept(client, token, hijack, name="Mallory")

    assert_error(refused, 401, "INVALID_CREDENTIALS")
    assert hijack not in refused.text
    assert (await login(client, other_admin.user.email, hijack)).status_code == 401

    joined = await accept(client, token, PASSWORD, name="Ignored Name")

    body = assert_token_pair(joined, organization="Acme", role="AGENT")
    assert [o["name"] for o in body["organizations"]] == ["Acme"]
    home = assert_token_pair(
        await login(client, other_admin.user.email, PASSWORD), organization="Globex", role="ADMIN"
    )
    assert {o["name"] for o in home["organizations"]} == {"Acme", "Globex"}
    acme = encode_global_id("Organization", admin.org_id)
    assert_token_pair(
        await login(client, other_admin.user.email, organizationId=acme),
        organization="Acme",
        role="AGENT",
    )
    assert_error(await accept(client, token, PASSWORD), 404, "NOT_FOUND")


async def test_a_new_user_with_a_weak_password_gets_422_and_the_invitation_survives(
    client: httpx.AsyncClient, admin: Actor
) -> None:
    admin_token = await token_for(client, admin)
    token = await invite(client, admin_token, "weak@example.com")

    for weak in ("short", "password1234", "weak@example.com-x"):
        response = await accept(client, token, weak)
        error = assert_error(response, 422, "VALIDATION_FAILED")
        assert fields_of(error) == {"password"}
        assert weak not in response.text

    assert_token_pair(await accept(client, token), organization="Acme", role="AGENT")


@sqlite_only
async def test_invitation_acceptance_validates_its_body(client: httpx.AsyncClient) -> None:
    """No smuggled role or workspace; garbage tokens are 404."""
    assert_error(await accept(client, "garbage"), 404, "NOT_FOUND")
    smuggled = await client.post(
        "/auth/invitations/accept",
        json={"token": "t", "name": "N", "password": STRONG, "role": "ADMIN"},
    )
    assert fields_of(assert_error(smuggled, 422, "VALIDATION_FAILED")) == {"role"}
    missing = await client.post("/auth/invitations/accept", json={"token": "t"})
    assert fields_of(assert_error(missing, 422, "VALIDATION_FAILED")) == {"name", "password"}
    assert STRONG not in smuggled.text


# --- every answer ----------------------------------------------------------------------


async def test_every_auth_answer_is_no_store(
    client: httpx.AsyncClient, settings: Settings, admin: Actor
) -> None:
    """Successes and errors of every route (tokens must never sit in a cache)."""
    pair = await tokens_for(client, admin)
    bearer = {"Authorization": f"Bearer {await token_for(client, admin)}"}
    spent = await tokens_for(client, admin)
    successor = (await refresh(client, spent["refreshToken"])).json()
    assert (await refresh(client, successor["refreshToken"])).status_code == 200
    responses = {
        "signup 202": await client.post("/auth/signup", json=signup_body()),
        "signup-again 202": await client.post("/auth/signup", json=signup_body()),
        "signup 422": await client.post("/auth/signup", json={}),
        "confirm 201": await client.post(
            "/auth/signup/confirm",
            json={"token": confirmation_token(mails_to(settings, "peter@initech.example")[0])},
        ),
        "confirm 404": await client.post("/auth/signup/confirm", json={"token": "nothing"}),
        "login 200": await login(client, admin.user.email),
        "login 401": await login(client, admin.user.email, "nope-Nope-1234"),
        "login 415": await client.post("/auth/login", content=b"x"),
        "refresh 200": await refresh(client, pair["refreshToken"]),
        "refresh 401 reused": await refresh(client, spent["refreshToken"]),
        "accept 404": await accept(client, "nothing"),
        "logout 401": await client.post("/auth/logout"),
        "logout 204": await client.post("/auth/logout", headers=bearer),
    }
    expected = {name: int(name.split()[1]) for name in responses}

    assert {name: r.status_code for name, r in responses.items()} == expected
    assert {name: r.headers.get("cache-control") for name, r in responses.items()} == {
        name: "no-store" for name in responses
    }


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("/auth/login", {"email": "admin\u0000@acme.example", "password": "x"}, "email"),
        ("/auth/login", {"email": "a@acme.example", "password": "x\u0000"}, "password"),
        ("/auth/signup", signup_body(organizationName="Acme\u0000"), "organizationName"),
        ("/auth/refresh", {"refreshToken": "a\u0000"}, "refreshToken"),
    ],
)
async def test_text_holding_nul_is_422_on_both_engines_not_a_500(
    client: httpx.AsyncClient, route: str, body: dict[str, Any], field: str
) -> None:
    """PostgreSQL cannot take U+0000 in a text parameter: refused before any statement."""
    # When a careless client sends a NUL character in a field
    response = await client.post(route, json=body)
    # Then it is the client's fault, named by field, whatever the engine
    error = assert_error(response, 422, "VALIDATION_FAILED")
    assert fields_of(error) == {field}, error


@sqlite_only
async def test_a_body_nested_past_the_json_parsers_stack_is_400_not_a_500(
    client: httpx.AsyncClient,
) -> None:
    # When a hostile client sends JSON nested 5,000 deep (under the size cap)
    body = "[" * 5000 + "]" * 5000
    response = await client.post(
        "/auth/login", content=body, headers={"content-type": "application/json"}
    )
    # Then it is malformed JSON, as any other
    assert_error(response, 400, "BAD_REQUEST")
