"""Connecting WhatsApp numbers: Meta checks the token, secrets go in and never out."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import text
from sqlmodel import select

from tests.fixtures.api import error_codes, gql, token_for
from tests.fixtures.channels import Connector
from tests.fixtures.factories import Actor
from tests.fixtures.meta import (
    ACCESS_TOKEN,
    BUSINESS_ACCOUNT_ID,
    OTHER_ACCESS_TOKEN,
    OTHER_PHONE_NUMBER_ID,
    PHONE_NUMBER_ID,
)
from weflux.config import Settings
from weflux.crypto.fields import open_secret
from weflux.crypto.keyring import DecryptionError, KeyRing
from weflux.db import Database
from weflux.models import AuditEvent, WhatsAppAccount
from weflux.sandbox.cloud_api import FakeCloudApi

ACCOUNTS = """{ whatsAppAccounts { id phoneNumberId qualityRating messagingLimitTier status
  hasAppSecret hasWebhookVerifyToken credentialsUpdatedAt } }"""
UPDATE = """mutation($input: UpdateWhatsAppCredentialsInput!) {
  updateWhatsAppCredentials(input: $input) { id credentialsUpdatedAt status hasAppSecret } }"""
DISCONNECT = "mutation($id: ID!) { disconnectWhatsAppAccount(id: $id) { id status } }"
REFRESH = """mutation($id: ID!) { refreshWhatsAppAccountHealth(id: $id) {
  qualityRating messagingLimitTier status } }"""


async def _stored(db: Database, actor: Actor) -> list[WhatsAppAccount]:
    async with db.session(actor.org_id) as session:
        return list((await session.exec(select(WhatsAppAccount))).all())


async def test_an_admin_connects_a_number_checked_with_meta(
    connect: Connector, admin: Actor, fake_meta: FakeCloudApi, db: Database, settings: Settings
) -> None:
    response = await connect(admin)
    account = response.json()["data"]["connectWhatsAppAccount"]
    assert account["phoneNumberId"] == PHONE_NUMBER_ID
    assert account["businessAccountId"] == BUSINESS_ACCOUNT_ID
    assert account["qualityRating"] == "GREEN"
    assert account["messagingLimitTier"] == "TIER_2K"
    assert account["status"] == "CONNECTED"
    assert account["hasAppSecret"] is True
    assert account["hasWebhookVerifyToken"] is True
    assert account["webhookPath"].startswith("/webhooks/whatsapp/")
    assert len(account["webhookPath"].rsplit("/", 1)[1]) >= 32
    assert ACCESS_TOKEN not in response.text

    checks = [r for r in fake_meta.requests if r.method == "GET"]
    # The business account's numbers, then the number's health (issue 9, item 12).
    assert [r.path.rsplit("/", 1)[-1] for r in checks] == ["phone_numbers", PHONE_NUMBER_ID]
    assert [r.authorization for r in checks] == [f"Bearer {ACCESS_TOKEN}"] * 2
    assert all(ACCESS_TOKEN not in r.path + str(r.query) for r in checks)

    (row,) = await _stored(db, admin)
    assert row.access_token_enc is not None
    assert row.access_token_enc.startswith("v1.")
    keyring = KeyRing.from_settings(settings)
    token = open_secret(keyring, row, "access_token_enc")
    assert token is not None
    assert token.reveal() == ACCESS_TOKEN


async def test_the_secrets_are_optional_but_the_token_is_not(
    connect: Connector, admin: Actor
) -> None:
    response = await connect(admin, appSecret=None, webhookVerifyToken=None)
    account = response.json()["data"]["connectWhatsAppAccount"]
    assert account["hasAppSecret"] is False
    assert account["hasWebhookVerifyToken"] is False
    missing = await connect(admin, phoneNumberId=OTHER_PHONE_NUMBER_ID, accessToken=" ")
    assert error_codes(missing) == ["BAD_USER_INPUT"]


async def test_a_token_meta_rejects_is_bad_user_input_and_stores_nothing(
    connect: Connector, admin: Actor, db: Database
) -> None:
    response = await connect(admin, accessToken="EAAGwrongTOKEN000000000000")
    assert error_codes(response) == ["BAD_USER_INPUT"]
    assert "access token rejected" in response.json()["errors"][0]["message"]
    assert "EAAGwrongTOKEN" not in response.text
    assert await _stored(db, admin) == []


async def test_meta_down_is_reported_and_stores_nothing(
    connect: Connector, admin: Actor, fake_meta: FakeCloudApi, db: Database
) -> None:
    fake_meta.fail_next_raw(http_status=503)
    response = await connect(admin)
    assert error_codes(response) == ["UPSTREAM_UNAVAILABLE"]
    assert await _stored(db, admin) == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("phoneNumberId", "12ab"),
        ("phoneNumberId", "../../me"),
        ("businessAccountId", "x"),
        ("displayPhoneNumber", ""),
        ("accessToken", "tok\nen"),
    ],
)
async def test_malformed_input_is_refused_before_meta_is_called(
    connect: Connector, admin: Actor, fake_meta: FakeCloudApi, field: str, value: str
) -> None:
    response = await connect(admin, **{field: value})
    assert error_codes(response) == ["BAD_USER_INPUT"]
    assert response.json()["errors"][0]["extensions"]["details"][0]["field"] == field
    assert fake_meta.requests == []


async def test_only_an_admin_connects(
    connect: Connector, manager: Actor, agent: Actor, fake_meta: FakeCloudApi
) -> None:
    for actor in (manager, agent):
        assert error_codes(await connect(actor)) == ["FORBIDDEN"]
    assert fake_meta.requests == []


async def test_every_role_reads_accounts_but_never_a_secret(
    connect: Connector, client: httpx.AsyncClient, admin: Actor, manager: Actor, agent: Actor
) -> None:
    await connect(admin)
    for actor in (admin, manager, agent):
        response = await gql(client, await token_for(client, actor), ACCOUNTS)
        (account,) = response.json()["data"]["whatsAppAccounts"]
        assert account["qualityRating"] == "GREEN"
        for secret in (ACCESS_TOKEN, "app-secret-0123456789abcdef", "verify-token-0123456789"):
            assert secret not in response.text


async def test_a_number_belongs_to_one_workspace_platform_wide(
    connect: Connector, admin: Actor, other_admin: Actor, client: httpx.AsyncClient
) -> None:
    first = await connect(admin)
    assert "errors" not in first.json()
    assert error_codes(await connect(other_admin)) == ["CONFLICT"]
    assert error_codes(await connect(admin)) == ["CONFLICT"]

    account_id = first.json()["data"]["connectWhatsAppAccount"]["id"]
    token = await token_for(client, admin)
    assert (await gql(client, token, DISCONNECT, {"id": account_id})).json()["data"] == {
        "disconnectWhatsAppAccount": {"id": account_id, "status": "DISCONNECTED"}
    }
    again = await connect(other_admin)
    assert again.json()["data"]["connectWhatsAppAccount"]["phoneNumberId"] == PHONE_NUMBER_ID


async def test_credentials_rotate_and_a_rejected_token_changes_nothing(
    connect: Connector,
    admin: Actor,
    client: httpx.AsyncClient,
    fake_meta: FakeCloudApi,
    db: Database,
    settings: Settings,
) -> None:
    account = (await connect(admin)).json()["data"]["connectWhatsAppAccount"]
    token = await token_for(client, admin)
    new_token = "EAAGrotatedTOKEN00000000000000000000000009"

    refused = await gql(
        client, token, UPDATE, {"input": {"id": account["id"], "accessToken": new_token}}
    )
    assert error_codes(refused) == ["BAD_USER_INPUT"]

    fake_meta.set_access_token(PHONE_NUMBER_ID, new_token)
    rotated = await gql(
        client, token, UPDATE, {"input": {"id": account["id"], "accessToken": new_token}}
    )
    updated = rotated.json()["data"]["updateWhatsAppCredentials"]
    assert updated["credentialsUpdatedAt"] > account["credentialsUpdatedAt"]
    assert updated["hasAppSecret"] is True  # omitted credentials stay

    (row,) = await _stored(db, admin)
    secret = open_secret(KeyRing.from_settings(settings), row, "access_token_enc")
    assert secret is not None
    assert secret.reveal() == new_token

    nothing = await gql(client, token, UPDATE, {"input": {"id": account["id"]}})
    assert error_codes(nothing) == ["BAD_USER_INPUT"]


async def test_disconnect_keeps_history_and_destroys_credentials(
    connect: Connector, admin: Actor, client: httpx.AsyncClient, db: Database
) -> None:
    account = (await connect(admin)).json()["data"]["connectWhatsAppAccount"]
    token = await token_for(client, admin)
    await gql(client, token, DISCONNECT, {"id": account["id"]})

    (row,) = await _stored(db, admin)
    assert row.disconnected_at is not None
    assert row.status == "DISCONNECTED"
    assert (row.access_token_enc, row.app_secret_enc, row.webhook_verify_token_enc) == (
        None,
        None,
        None,
    )
    listed = await gql(client, token, ACCOUNTS)
    assert listed.json()["data"]["whatsAppAccounts"] == []
    again = await gql(client, token, DISCONNECT, {"id": account["id"]})
    assert error_codes(again) == ["NOT_FOUND"]


async def test_health_refresh_reads_quality_and_limits_live(
    connect: Connector,
    admin: Actor,
    manager: Actor,
    agent: Actor,
    client: httpx.AsyncClient,
    fake_meta: FakeCloudApi,
) -> None:
    account = (await connect(admin)).json()["data"]["connectWhatsAppAccount"]
    fake_meta.set_health(PHONE_NUMBER_ID, quality_rating="RED", messaging_limit_tier="TIER_10K")
    response = await gql(client, await token_for(client, manager), REFRESH, {"id": account["id"]})
    assert response.json()["data"]["refreshWhatsAppAccountHealth"] == {
        "qualityRating": "RED",
        "messagingLimitTier": "TIER_10K",
        "status": "CONNECTED",
    }
    refused = await gql(client, await token_for(client, agent), REFRESH, {"id": account["id"]})
    assert error_codes(refused) == ["FORBIDDEN"]


async def test_a_token_revoked_at_meta_shows_as_token_invalid(
    connect: Connector, admin: Actor, client: httpx.AsyncClient, fake_meta: FakeCloudApi
) -> None:
    account = (await connect(admin)).json()["data"]["connectWhatsAppAccount"]
    fake_meta.set_access_token(PHONE_NUMBER_ID, "EAAGsomeoneELSE000000000000000")
    response = await gql(client, await token_for(client, admin), REFRESH, {"id": account["id"]})
    assert response.json()["data"]["refreshWhatsAppAccountHealth"]["status"] == "TOKEN_INVALID"


async def test_another_workspaces_account_is_not_found_everywhere(
    connect: Connector, admin: Actor, other_admin: Actor, client: httpx.AsyncClient
) -> None:
    account = (await connect(admin)).json()["data"]["connectWhatsAppAccount"]
    theirs = await token_for(client, other_admin)
    for query, variables in (
        (UPDATE, {"input": {"id": account["id"], "appSecret": "x" * 20}}),
        (DISCONNECT, {"id": account["id"]}),
        (REFRESH, {"id": account["id"]}),
        ("query($id: ID!) { node(id: $id) { id } }", {"id": account["id"]}),
    ):
        assert error_codes(await gql(client, theirs, query, variables)) == ["NOT_FOUND"]
    assert (await gql(client, theirs, ACCOUNTS)).json()["data"]["whatsAppAccounts"] == []


async def test_a_ciphertext_moved_to_another_row_does_not_decrypt(
    connect: Connector,
    admin: Actor,
    client: httpx.AsyncClient,
    owner_db: Database,
    db: Database,
    settings: Settings,
) -> None:
    first = (await connect(admin)).json()["data"]["connectWhatsAppAccount"]
    second = (
        await connect(admin, phoneNumberId=OTHER_PHONE_NUMBER_ID, accessToken=OTHER_ACCESS_TOKEN)
    ).json()["data"]["connectWhatsAppAccount"]
    assert first["id"] != second["id"]
    async with owner_db.engine.begin() as conn:  # an attacker with write access to the table
        await conn.execute(
            text(
                "UPDATE whatsapp_accounts SET access_token_enc = "
                "(SELECT access_token_enc FROM whatsapp_accounts WHERE phone_number_id = :a) "
                "WHERE phone_number_id = :b"
            ),
            {"a": PHONE_NUMBER_ID, "b": OTHER_PHONE_NUMBER_ID},
        )
    rows = {row.phone_number_id: row for row in await _stored(db, admin)}
    with pytest.raises(DecryptionError) as error:
        open_secret(
            KeyRing.from_settings(settings), rows[OTHER_PHONE_NUMBER_ID], "access_token_enc"
        )
    assert ACCESS_TOKEN not in str(error.value)

    response = await gql(client, await token_for(client, admin), REFRESH, {"id": second["id"]})
    assert error_codes(response) == ["CONFLICT"]
    assert ACCESS_TOKEN not in response.text


async def test_audit_events_name_the_action_never_the_secret(
    connect: Connector,
    admin: Actor,
    client: httpx.AsyncClient,
    fake_meta: FakeCloudApi,
    db: Database,
) -> None:
    account = (await connect(admin)).json()["data"]["connectWhatsAppAccount"]
    token = await token_for(client, admin)
    await gql(client, token, UPDATE, {"input": {"id": account["id"], "appSecret": "n" * 24}})
    await gql(client, token, DISCONNECT, {"id": account["id"]})
    async with db.session(admin.org_id) as session:
        events = (await session.exec(select(AuditEvent))).all()
    actions = [e.action for e in events]
    for action in (
        "whatsapp_account.connected",
        "whatsapp_account.credentials_updated",
        "whatsapp_account.disconnected",
    ):
        assert action in actions
    dumped = " ".join(str(e.details) for e in events)
    assert ACCESS_TOKEN not in dumped
    assert "n" * 24 not in dumped
