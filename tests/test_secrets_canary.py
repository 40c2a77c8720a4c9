"""Secrets stay secret: a whole flow with canary values, then a search for them everywhere.

Every HTTP response, every WebSocket frame, every log record of our code and every
non-secret column of every table is searched for the plaintext of each canary secret
(passwords, access tokens, app secrets, verify tokens, the SMTP password, the TOTP
secret after its one showing at enrollment): zero hits. Recovery codes, shown once at
confirmation, are in no log line and no column. The secret columns hold envelopes only.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from aiosmtpd.smtp import AuthResult
from sqlalchemy import inspect, text
from websockets.typing import Subprotocol

from tests.fixtures.api import without_cost
from tests.fixtures.app import HTTP_TIMEOUT
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.live import live_server
from tests.fixtures.logs import LogCapture, capture_logs
from tests.fixtures.mail import confirmation_token, wait_for_mails
from tests.fixtures.meta import PHONE_NUMBER_ID
from tests.fixtures.settings import make_settings
from tests.fixtures.smtp import USERNAME, running_server
from tests.fixtures.two_factor import CONFIRM, AuthenticatorApp, mfa_login
from weflux.app import create_app
from weflux.config import generate_encryption_key_entry, parse_encryption_keys
from weflux.crypto.keyring import KeyRing
from weflux.crypto.rotation import rotate_keys
from weflux.crypto.secret import Secret
from weflux.db import Database
from weflux.logs import SecretRedactingFilter
from weflux.sandbox.cloud_api import FakeCloudApi

SECRET_COLUMNS = {
    "access_token_enc",
    "app_secret_enc",
    "webhook_verify_token_enc",
    "password_enc",
    "totp_secret_enc",
}


def canary(kind: str) -> str:
    return f"Canary{kind}{uuid.uuid4().hex}"


@pytest.fixture
def captured_logs() -> Iterator[LogCapture]:
    with capture_logs() as capture:
        yield capture


async def _graphql(client: httpx.AsyncClient, token: str, query: str, **variables: object) -> dict:  # type: ignore[type-arg]
    response = await client.post(
        "/graphql",
        json={"query": query, "variables": variables},
        headers={"Authorization": f"Bearer {token}"},
    )
    return response.json()  # type: ignore[no-any-return]


async def _dump_database(owner_url: str) -> tuple[str, str]:
    """(every non-secret value, every secret-column value) of every table, as text."""
    owner = Database(owner_url)
    plain: list[str] = []
    sealed: list[str] = []
    try:
        async with owner.engine.connect() as conn:
            tables = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
            for table in tables:
                result = await conn.execute(text(f'SELECT * FROM "{table}"'))  # noqa: S608
                for row in result.mappings():
                    for column, value in row.items():
                        (sealed if column in SECRET_COLUMNS else plain).append(f"{value!s}")
    finally:
        await owner.dispose()
    return "\n".join(plain), "\n".join(sealed)


async def test_no_secret_escapes_anywhere(
    database_urls: DatabaseUrls,
    tmp_path: Path,
    captured_logs: LogCapture,
    fake_meta: FakeCloudApi,
    meta_url: str,
) -> None:
    secrets = {
        "password": canary("Pass-Word-"),
        "access_token": "EAAG" + canary("Token"),
        "rotated_token": "EAAG" + canary("Rotated"),
        "rejected_token": "EAAG" + canary("Rejected"),
        "app_secret": canary("AppSecret"),
        "verify_token": canary("Verify"),
        "smtp_password": canary("Smtp"),
        "wrong_smtp_password": canary("WrongSmtp"),
    }
    fake_meta.set_access_token(PHONE_NUMBER_ID, secrets["access_token"])
    responses: list[str] = []
    frames: list[str] = []

    async def keep(response: httpx.Response) -> None:
        await response.aread()
        responses.append(json.dumps(dict(response.headers)) + response.text)

    old_key = generate_encryption_key_entry("old")
    settings = make_settings(
        tmp_path,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        meta_graph_url=meta_url,
        encryption_keys=old_key,
    )
    smtp_accounts = {USERNAME: secrets["smtp_password"]}

    def smtp_auth(server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]

        ok = smtp_accounts.get(auth_data.login.decode()) == auth_data.password.decode()
        return AuthResult(success=ok, handled=ok)

    with running_server(authenticator=smtp_auth, auth_require_tls=False) as (_, smtp_port):
        async with (
            live_server(create_app(settings)) as base_url,
            httpx.AsyncClient(
                timeout=HTTP_TIMEOUT, base_url=base_url, event_hooks={"response": [keep]}
            ) as client,
        ):
            requested = await client.post(
                "/auth/signup",
                json={
                    "organizationName": "Canary Co",
                    "name": "Ada",
                    "email": "ada@canary.example",
                    "password": secrets["password"],
                },
            )
            assert requested.status_code == 202
            [mail] = await wait_for_mails(settings, "ada@canary.example")
            secrets["confirmation_token"] = confirmation_token(mail)
            signup = await client.post(
                "/auth/signup/confirm", json={"token": secrets["confirmation_token"]}
            )
            token = signup.json()["accessToken"]
            await client.post(
                "/auth/login",
                json={"email": "ada@canary.example", "password": secrets["password"] + "x"},
            )
            connected = await _graphql(
                client,
                token,
                """mutation($input: ConnectWhatsAppAccountInput!) {
                      connectWhatsAppAccount(input: $input) { id hasAppSecret } }""",
                input={
                    "displayPhoneNumber": "+1 555 0100",
                    "phoneNumberId": PHONE_NUMBER_ID,
                    "businessAccountId": "102290129340398",
                    "accessToken": secrets["access_token"],
                    "appSecret": secrets["app_secret"],
                    "webhookVerifyToken": secrets["verify_token"],
                },
            )
            account_id = connected["data"]["connectWhatsAppAccount"]["id"]
            update = """mutation($input: UpdateWhatsAppCredentialsInput!) {
                  updateWhatsAppCredentials(input: $input) { id } }"""
            rejected = await _graphql(
                client,
                token,
                update,
                input={"id": account_id, "accessToken": secrets["rejected_token"]},
            )
            assert rejected["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
            fake_meta.set_access_token(PHONE_NUMBER_ID, secrets["rotated_token"])
            await _graphql(
                client,
                token,
                update,
                input={"id": account_id, "accessToken": secrets["rotated_token"]},
            )
            fake_meta.fail_next(code=131000, http_status=500, message="Something went wrong")
            refresh = "mutation($id: ID!) { refreshWhatsAppAccountHealth(id: $id) { status } }"
            await _graphql(client, token, refresh, id=account_id)
            await _graphql(client, token, refresh, id=account_id)
            smtp = """mutation($input: SmtpSettingsInput!) {
                  updateSmtpSettings(input: $input) { hasPassword } }"""
            smtp_input = {
                "host": "127.0.0.1",
                "port": smtp_port,
                "username": USERNAME,
                "password": secrets["smtp_password"],
                "fromAddress": "noreply@canary.example",
                "security": "NONE",
            }
            await _graphql(client, token, smtp, input=smtp_input)
            sent = await _graphql(
                client, token, 'mutation { sendTestEmail(to: "ops@canary.example") }'
            )
            assert without_cost(sent) == {"data": {"sendTestEmail": True}}
            await _graphql(
                client,
                token,
                smtp,
                input=smtp_input | {"password": secrets["wrong_smtp_password"]},
            )
            failed = await _graphql(
                client, token, 'mutation { sendTestEmail(to: "ops@canary.example") }'
            )
            assert failed["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
            await _graphql(
                client,
                token,
                """{ whatsAppAccounts { id status hasAppSecret hasWebhookVerifyToken
                          webhookPath credentialsUpdatedAt }
                        smtpSettings { host hasPassword }
                        auditEvents { edges { node { action targetId actor { id } } } } }""",
            )
            await _graphql(client, token, "query($id: ID!) { node(id: $id) { id } }", id=account_id)

            ws_url = base_url.replace("http", "ws") + "/graphql"
            async with websockets.connect(
                ws_url, subprotocols=[Subprotocol("graphql-transport-ws")]
            ) as socket:
                await socket.send(
                    json.dumps(
                        {
                            "type": "connection_init",
                            "payload": {"authorization": f"Bearer {token}"},
                        }
                    )
                )
                frames.append(str(await socket.recv()))
                await socket.send(
                    json.dumps(
                        {
                            "id": "1",
                            "type": "subscribe",
                            "payload": {"query": "{ whatsAppAccounts { id } }"},
                        }
                    )
                )
                try:
                    while True:
                        frame = str(await socket.recv())
                        frames.append(frame)
                        if json.loads(frame).get("type") in ("complete", "error"):
                            break
                except websockets.ConnectionClosed as closed:
                    frames.append(str(closed))

            # Two factors: the secret is shown once (that answer is set aside), then never.
            begun = await _graphql(
                client, token, "mutation { beginTwoFactorEnrollment { secret otpauthUri } }"
            )
            shown = responses.pop()
            phone = AuthenticatorApp(begun["data"]["beginTwoFactorEnrollment"]["secret"])
            assert phone.secret in shown
            secrets["totp_secret"] = phone.secret
            confirmed = await _graphql(client, token, CONFIRM, code=phone.code())
            responses.pop()  # the recovery codes, shown once
            recovery_codes = confirmed["data"]["confirmTwoFactorEnrollment"]
            token = (
                await mfa_login(
                    client, "ada@canary.example", secrets["password"], code=phone.code()
                )
            ).json()["accessToken"]
            renewed = await client.post(
                "/auth/reauthenticate",
                json={"password": secrets["password"], "code": phone.code()},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert renewed.status_code == 204
            await _graphql(client, token, "{ viewer { user { twoFactorEnabled } } }")

    database = Database(database_urls.owner, maintenance=True)  # rotation: maintenance
    try:
        new_ring = KeyRing(
            parse_encryption_keys(f"{generate_encryption_key_entry('new')},{old_key}")
        )
        rotated = await rotate_keys(database, new_ring)
    finally:
        await database.dispose()
    assert rotated.rotated >= 4

    assert any(r.authorization == f"Bearer {secrets['access_token']}" for r in fake_meta.requests)
    plain_columns, sealed_columns = await _dump_database(database_urls.owner)
    haystacks = {
        "HTTP responses": "\n".join(responses),
        "WebSocket frames": "\n".join(frames),
        "log records": "\n".join(captured_logs.lines),
        "non-secret columns": plain_columns,
        "secret columns": sealed_columns,
    }
    assert responses
    assert frames
    assert captured_logs.lines
    leaks = [
        f"{name} in {where}"
        for name, value in secrets.items()
        for where, haystack in haystacks.items()
        if value in haystack
    ]
    assert leaks == []
    shown_once = [
        f"recovery code in {where}"
        for code in recovery_codes
        for where in ("log records", "non-secret columns", "secret columns")
        if code in haystacks[where]
    ]
    assert shown_once == []
    assert sealed_columns.count("v1.new.") >= 4  # every stored secret is an envelope


def test_the_redaction_filter_is_a_second_line(caplog: pytest.LogCaptureFixture) -> None:

    value = canary("Redacted")
    Secret(value)  # known to the process now
    record = logging.LogRecord("weflux.test", logging.ERROR, __file__, 1, "oops %s", (value,), None)
    SecretRedactingFilter().filter(record)
    assert value not in record.getMessage()
