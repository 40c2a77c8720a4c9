"""Webhook routing across workspaces: by number for messages, by business account for
its notices; a keyed URL only ever reaches its own workspace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from tests.fixtures import webhooks as wh
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import create_whatsapp_account
from tests.fixtures.settings import make_settings
from weflux.config import Settings
from weflux.crypto.fields import seal
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.models import Message, Organization, TemplateStatusEvent, WhatsAppAccount

PLATFORM_SECRET = "platform-app-secret-routing-0123"
CHANNEL_SECRET = "channel-app-secret-routing-4567"
OURS, THEIRS = "106540352242922", "106540352243033"
OUR_DISPLAY, THEIR_DISPLAY = "15550783881", "15550783999"


@pytest.fixture
def settings(database_urls: DatabaseUrls, tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        meta_app_secret=PLATFORM_SECRET,
    )


async def _number(
    db: Database, settings: Settings, org: Organization, phone: str, display: str
) -> WhatsAppAccount:
    """A number of the shared business account (as if Meta had listed it for each)."""
    async with db.session(org.id) as session:
        account = await create_whatsapp_account(
            session,
            phone_number_id=phone,
            display_phone_number=display,
            business_account_id=wh.WABA_ID,
        )
        seal(KeyRing.from_settings(settings), account, "app_secret_enc", CHANNEL_SECRET)
    return account


async def _post(client: httpx.AsyncClient, body: Any, path: str, secret: str) -> None:
    raw = wh.encode(body)
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": wh.sign(raw, secret)}
    assert (await client.post(path, content=raw, headers=headers)).status_code == 200


async def _state(db: Database, org: Organization) -> tuple[list[str | None], list[Any], int]:
    async with db.session(org.id) as session:
        texts = [m.text for m in (await session.exec(select(Message))).all()]
        accounts = [
            (a.phone_number_id, a.messaging_limit_tier, a.status)
            for a in (await session.exec(select(WhatsAppAccount))).all()
        ]
        templates = len((await session.exec(select(TemplateStatusEvent))).all())
    return texts, accounts, templates


def _shared_body() -> dict[str, Any]:
    return wh.webhook_body(
        wh.messages_change(
            OURS, messages=[wh.text_message(body="for us")], contacts=[wh.contact()]
        ),
        wh.messages_change(
            THEIRS, messages=[wh.text_message(body="for them")], contacts=[wh.contact()]
        ),
        wh.quality_change(current_limit="TIER_10K", display_phone_number=THEIR_DISPLAY),
        wh.account_update_change("ACCOUNT_VIOLATION", violation_type="SCAM"),
        wh.template_status_change("APPROVED"),
    )


async def test_a_shared_business_account_routes_each_part_to_its_owner(
    client: httpx.AsyncClient,
    db: Database,
    settings: Settings,
    org: Organization,
    other_org: Organization,
) -> None:
    """Given two workspaces, each holding one number of the same business account,
    when one platform webhook carries a message for each number, a quality update
    naming one number, an account update and a template update for the account,
    then each message reaches its number's workspace only, the quality update only the
    number it names, and the account-wide updates both workspaces."""
    await _number(db, settings, org, OURS, OUR_DISPLAY)
    await _number(db, settings, other_org, THEIRS, THEIR_DISPLAY)
    await _post(client, _shared_body(), "/webhooks/whatsapp", PLATFORM_SECRET)
    assert await _state(db, org) == (["for us"], [(OURS, None, "FLAGGED")], 1)
    assert await _state(db, other_org) == (["for them"], [(THEIRS, "TIER_10K", "FLAGGED")], 1)


async def test_a_keyed_url_reaches_only_its_own_workspace(
    client: httpx.AsyncClient,
    db: Database,
    settings: Settings,
    org: Organization,
    other_org: Organization,
) -> None:
    """Given the same two workspaces,
    when the same webhook comes to the first workspace's own (keyed) URL,
    then nothing of it reaches the other workspace."""
    ours = await _number(db, settings, org, OURS, OUR_DISPLAY)
    await _number(db, settings, other_org, THEIRS, THEIR_DISPLAY)
    await _post(client, _shared_body(), f"/webhooks/whatsapp/{ours.webhook_key}", CHANNEL_SECRET)
    assert await _state(db, org) == (["for us"], [(OURS, None, "FLAGGED")], 1)
    assert await _state(db, other_org) == ([], [(THEIRS, None, "CONNECTED")], 0)
