"""Live tests: the app under a real uvicorn, spoken to by an independent WebSocket client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import make_settings
from tests.fixtures import webhooks as wh
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.live import live_server
from weflux.app import create_app
from weflux.config import Settings
from weflux.db import Database
from weflux.models import Organization, WhatsAppAccount, utcnow

SECRET = "platform-app-secret-live-tests"


@pytest.fixture
def settings(database_urls: DatabaseUrls, tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        meta_app_secret=SECRET,
    )


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[str]:
    async with live_server(create_app(settings)) as base_url:
        yield base_url


@pytest.fixture
async def channel(db: Database, org: Organization) -> WhatsAppAccount:
    async with db.session(org.id) as session:
        account = WhatsAppAccount(
            org_id=org.id,
            display_phone_number=wh.DISPLAY_PHONE_NUMBER,
            phone_number_id=wh.PHONE_NUMBER_ID,
            business_account_id=wh.WABA_ID,
            webhook_key="live-key-00000000000000000000001",
            credentials_updated_at=utcnow(),
            status="CONNECTED",
        )
        session.add(account)
    return account
