"""SMTP settings over GraphQL: Admin only, write-only password, a real test email."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from tests.fixtures.api import error_codes, gql, token_for, without_cost
from tests.fixtures.app import app_client
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import Actor
from tests.fixtures.settings import PRODUCTION_MAIL, make_settings
from tests.fixtures.smtp import PASSWORD, USERNAME, RecordingHandler, authenticator, running_server
from weflux.db import Database
from weflux.models import SmtpSettings

UPDATE = """mutation($input: SmtpSettingsInput!) { updateSmtpSettings(input: $input) {
  host port username fromAddress security hasPassword } }"""
READ = "{ smtpSettings { host port username hasPassword } }"
SEND = "mutation($to: String!) { sendTestEmail(to: $to) }"


@pytest.fixture
def smtp_server() -> Iterator[tuple[RecordingHandler, int]]:
    with running_server(authenticator=authenticator, auth_require_tls=False) as running:
        yield running


def settings_input(port: int, **overrides: object) -> dict[str, object]:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "username": USERNAME,
        "password": PASSWORD,
        "fromAddress": "noreply@acme.example",
        "security": "NONE",
    }
    return values | overrides


async def test_admin_saves_settings_and_sends_a_real_test_email(
    client: httpx.AsyncClient,
    admin: Actor,
    smtp_server: tuple[RecordingHandler, int],
    db: Database,
) -> None:
    handler, port = smtp_server
    token = await token_for(client, admin)
    saved = await gql(client, token, UPDATE, {"input": settings_input(port)})
    assert saved.json()["data"]["updateSmtpSettings"]["hasPassword"] is True
    assert PASSWORD not in saved.text

    sent = await gql(client, token, SEND, {"to": "ops@acme.example"})
    assert without_cost(sent.json()) == {"data": {"sendTestEmail": True}}
    (delivered,) = handler.delivered
    assert delivered.rcpt_tos == ["ops@acme.example"]
    assert handler.logins == [USERNAME]

    async with db.session(admin.org_id) as session:
        row = (await session.exec(select(SmtpSettings))).one()
    assert row.password_enc is not None
    assert PASSWORD not in row.password_enc


async def test_omitting_the_password_keeps_the_stored_one(
    client: httpx.AsyncClient, admin: Actor, smtp_server: tuple[RecordingHandler, int]
) -> None:
    handler, port = smtp_server
    token = await token_for(client, admin)
    await gql(client, token, UPDATE, {"input": settings_input(port)})
    changed = await gql(
        client,
        token,
        UPDATE,
        {"input": settings_input(port, password=None, fromAddress="a@b.example")},
    )
    assert changed.json()["data"]["updateSmtpSettings"]["hasPassword"] is True
    assert (await gql(client, token, SEND, {"to": "ops@acme.example"})).json()["data"] == {
        "sendTestEmail": True
    }
    assert handler.logins == [USERNAME]


async def test_a_wrong_password_fails_without_echoing_it(
    client: httpx.AsyncClient, admin: Actor, smtp_server: tuple[RecordingHandler, int]
) -> None:
    _, port = smtp_server
    token = await token_for(client, admin)
    await gql(client, token, UPDATE, {"input": settings_input(port, password="wrong-pass-123456")})
    response = await gql(client, token, SEND, {"to": "ops@acme.example"})
    assert error_codes(response) == ["BAD_USER_INPUT"]
    assert "wrong-pass-123456" not in response.text


async def test_only_an_admin_reads_or_changes_smtp(
    client: httpx.AsyncClient, manager: Actor, agent: Actor
) -> None:
    for actor in (manager, agent):
        token = await token_for(client, actor)
        assert error_codes(await gql(client, token, READ)) == ["FORBIDDEN"]
        assert error_codes(await gql(client, token, UPDATE, {"input": settings_input(25)})) == [
            "FORBIDDEN"
        ]
        assert error_codes(await gql(client, token, SEND, {"to": "x@y.example"})) == ["FORBIDDEN"]


async def test_bad_settings_are_refused_per_field(client: httpx.AsyncClient, admin: Actor) -> None:
    token = await token_for(client, admin)
    response = await gql(
        client, token, UPDATE, {"input": settings_input(0, host="http://x/", security="SSL")}
    )
    assert error_codes(response) == ["BAD_USER_INPUT"]
    fields = {d["field"] for d in response.json()["errors"][0]["extensions"]["details"]}
    assert {"host", "port", "security"} <= fields
    assert without_cost((await gql(client, token, READ)).json()) == {"data": {"smtpSettings": None}}


@pytest.mark.parametrize("host", ["[::1]", "0:0:0:0:0:0:0:1"])
async def test_an_ipv6_literal_host_is_saved_canonically_and_reached(
    client: httpx.AsyncClient, admin: Actor, db: Database, host: str
) -> None:
    """Given a mail server on the IPv6 loopback, when an Admin saves its address in
    brackets or in a long spelling, then it is stored in its short form without brackets,
    and the test email reaches it."""
    with running_server(hostname="::1", authenticator=authenticator, auth_require_tls=False) as (
        handler,
        port,
    ):
        token = await token_for(client, admin)
        saved = await gql(client, token, UPDATE, {"input": settings_input(port, host=host)})
        assert saved.json()["data"]["updateSmtpSettings"]["host"] == "::1"
        sent = await gql(client, token, SEND, {"to": "ops@acme.example"})
        assert without_cost(sent.json()) == {"data": {"sendTestEmail": True}}
    assert [envelope.rcpt_tos for envelope in handler.delivered] == [["ops@acme.example"]]
    assert handler.logins == [USERNAME]
    async with db.session(admin.org_id) as session:
        assert (await session.exec(select(SmtpSettings))).one().host == "::1"


async def test_a_test_email_needs_saved_settings(client: httpx.AsyncClient, admin: Actor) -> None:
    token = await token_for(client, admin)
    assert error_codes(await gql(client, token, SEND, {"to": "ops@acme.example"})) == ["CONFLICT"]


Production = tuple[httpx.AsyncClient, str]


@pytest.fixture
async def production(
    database_urls: DatabaseUrls, tmp_path: Path, admin: Actor
) -> AsyncIterator[Production]:
    """A production app (private hosts refused, SMTP ports only): a client and an Admin's
    token."""
    settings = make_settings(
        tmp_path, env="production", database_url=database_urls.app, **PRODUCTION_MAIL
    )
    async with app_client(settings, "127.0.0.1", "https://api.test") as client:
        yield client, await token_for(client, admin)


async def save(admin_client: Production, port: int, **overrides: object) -> httpx.Response:
    """`updateSmtpSettings` with `settings_input(port, **overrides)`."""
    client, token = admin_client
    return await gql(client, token, UPDATE, {"input": settings_input(port, **overrides)})


def refused_fields(response: httpx.Response) -> list[str]:
    """The fields a BAD_USER_INPUT answer names (it must be one)."""
    assert error_codes(response) == ["BAD_USER_INPUT"]
    return [detail["field"] for detail in response.json()["errors"][0]["extensions"]["details"]]


@pytest.mark.parametrize("dialect", ["sqlite"])
@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "10.0.0.5",
        "169.254.169.254",
        "::1",
        "[::1]",
        "[fe80::1]",
        "fd00::25",
        "[::ffff:10.0.0.5]",
    ],
)
async def test_production_refuses_private_smtp_hosts(production: Production, host: str) -> None:
    assert refused_fields(await save(production, 587, host=host, security="STARTTLS")) == ["host"]
    assert refused_fields(await save(production, 25, host="smtp.example.com")) == ["security"]


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_production_takes_a_public_ipv6_literal_in_its_canonical_form(
    production: Production,
) -> None:
    """Given production, when an Admin saves a public IPv6 address in brackets and in
    capitals, then it passes the private-address checks and is stored in its short form."""
    typed = "[2606:4700:4700:0:0:0:0:1111]"
    response = await save(production, 587, host=typed, security="STARTTLS")
    assert response.json()["data"]["updateSmtpSettings"]["host"] == "2606:4700:4700::1111"


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_production_takes_smtp_ports_only(production: Production) -> None:
    """Given production (WEFLUX_SMTP_ALLOWED_PORTS at its default), when an Admin saves a
    mail server on another port, then it is refused on its port field, before any lookup."""
    response = await save(production, 22, host="smtp.example.com", security="STARTTLS")
    assert refused_fields(response) == ["port"]
    assert response.json()["errors"][0]["extensions"]["details"] == [
        {
            "field": "port",
            "message": "Mail servers are reached on ports 25, 465, 587 and 2525 only.",
        }
    ]
