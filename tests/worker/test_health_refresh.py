"""The worker refreshes quality rating and limits of every connected number, once each."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from tests.fixtures.app import lifespan
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import Actor
from tests.fixtures.meta import (
    ACCESS_TOKEN,
    OTHER_ACCESS_TOKEN,
    OTHER_PHONE_NUMBER_ID,
    PHONE_NUMBER_ID,
)
from tests.fixtures.settings import make_settings
from weflux.app import create_app
from weflux.config import Settings
from weflux.crypto.fields import seal
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.models import MessageTemplate, WhatsAppAccount, utcnow
from weflux.realtime.broker import InProcessBroker, Message
from weflux.realtime.events import workspace_channel
from weflux.sandbox.cloud_api import FakeCloudApi, RecordedRequest
from weflux.services.channels import Services
from weflux.whatsapp.client import CloudApiClient
from weflux.worker.health import refresh_due_accounts

HOUR = timedelta(hours=1)


@pytest.fixture
def worker_settings(database_urls: DatabaseUrls, tmp_path: Path, meta_url: str) -> Settings:
    return make_settings(
        tmp_path,
        database_url=database_urls.app,
        database_migration_url=database_urls.owner,
        meta_graph_url=meta_url,
    )


@pytest.fixture
async def services(worker_settings: Settings) -> AsyncIterator[Services]:
    cloud = CloudApiClient.from_settings(worker_settings)
    yield Services(
        keyring=KeyRing.from_settings(worker_settings), cloud=cloud, broker=InProcessBroker()
    )
    await cloud.aclose()


async def _account(
    db: Database, keyring: KeyRing, actor: Actor, phone_number_id: str, token: str
) -> WhatsAppAccount:
    async with db.session(actor.org_id) as session:
        account = WhatsAppAccount(
            org_id=actor.org_id,
            display_phone_number="+1 555 0100",
            phone_number_id=phone_number_id,
            business_account_id="102290129340398",
            webhook_key=f"key-{phone_number_id}",
            credentials_updated_at=utcnow(),
        )
        seal(keyring, account, "access_token_enc", token)
        session.add(account)
    return account


def _health_calls(fake_meta: FakeCloudApi) -> list[RecordedRequest]:
    """The health reads (the daily template sync rides along, and is counted apart)."""
    return [
        r
        for r in fake_meta.requests
        if r.method == "GET" and not r.path.endswith("/message_templates")
    ]


async def _reload(db: Database, account: WhatsAppAccount) -> WhatsAppAccount:
    async with db.session(account.org_id) as session:
        row = await session.get(WhatsAppAccount, account.id)
    assert row is not None
    return row


async def test_due_accounts_of_every_workspace_are_refreshed_once(
    db: Database,
    services: Services,
    fake_meta: FakeCloudApi,
    admin: Actor,
    other_admin: Actor,
) -> None:
    ours = await _account(db, services.keyring, admin, PHONE_NUMBER_ID, ACCESS_TOKEN)
    theirs = await _account(
        db, services.keyring, other_admin, OTHER_PHONE_NUMBER_ID, OTHER_ACCESS_TOKEN
    )
    fake_meta.set_health(PHONE_NUMBER_ID, quality_rating="YELLOW", messaging_limit_tier="TIER_10K")
    events: list[Message] = []

    async def listen(message: Message) -> None:
        events.append({k: v for k, v in message.items() if k != "eid"})

    await services.broker.subscribe(workspace_channel(admin.org_id), listen)

    assert await refresh_due_accounts(db, services, interval=HOUR) == 2
    assert await refresh_due_accounts(db, services, interval=HOUR) == 0  # not due again yet

    refreshed = await _reload(db, ours)
    assert (refreshed.quality_rating, refreshed.messaging_limit_tier) == ("YELLOW", "TIER_10K")
    assert refreshed.health_checked_at is not None
    assert (await _reload(db, theirs)).quality_rating == "GREEN"
    assert len(_health_calls(fake_meta)) == 2
    assert events == [{"event": "whatsAppAccountUpdated", "id": str(ours.id)}]


async def test_concurrent_workers_check_each_number_once(
    db: Database,
    services: Services,
    fake_meta: FakeCloudApi,
    admin: Actor,
) -> None:
    await _account(db, services.keyring, admin, PHONE_NUMBER_ID, ACCESS_TOKEN)
    await _account(db, services.keyring, admin, OTHER_PHONE_NUMBER_ID, OTHER_ACCESS_TOKEN)
    fake_meta.delay_next(0.3, count=2)
    done = await asyncio.gather(
        *(refresh_due_accounts(db, services, interval=HOUR) for _ in range(3))
    )
    assert sum(done) == 2
    assert len(_health_calls(fake_meta)) == 2


async def test_an_invalid_token_flags_the_account_and_the_others_go_on(
    db: Database,
    services: Services,
    fake_meta: FakeCloudApi,
    admin: Actor,
) -> None:
    broken = await _account(db, services.keyring, admin, PHONE_NUMBER_ID, "EAAGrevoked0000000000")
    fine = await _account(db, services.keyring, admin, OTHER_PHONE_NUMBER_ID, OTHER_ACCESS_TOKEN)
    await refresh_due_accounts(db, services, interval=HOUR)
    assert (await _reload(db, broken)).status == "TOKEN_INVALID"
    assert (await _reload(db, fine)).status == "CONNECTED"


async def test_disconnected_accounts_are_left_alone(
    db: Database,
    services: Services,
    fake_meta: FakeCloudApi,
    admin: Actor,
) -> None:
    account = await _account(db, services.keyring, admin, PHONE_NUMBER_ID, ACCESS_TOKEN)
    async with db.session(admin.org_id) as session:
        row = await session.get(WhatsAppAccount, account.id)
        assert row is not None
        row.disconnected_at = utcnow()
        row.access_token_enc = None
    assert await refresh_due_accounts(db, services, interval=HOUR) == 0
    assert fake_meta.requests == []


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_the_in_process_worker_runs_under_the_app(
    db: Database,
    worker_settings: Settings,
    services: Services,
    fake_meta: FakeCloudApi,
    admin: Actor,
) -> None:
    account = await _account(db, services.keyring, admin, PHONE_NUMBER_ID, ACCESS_TOKEN)
    app = create_app(worker_settings.model_copy(update={"in_process_worker": True}))
    async with lifespan(app):
        for _ in range(100):
            if (await _reload(db, account)).health_checked_at is not None:
                break
            await asyncio.sleep(0.05)
    assert (await _reload(db, account)).health_checked_at is not None


@pytest.mark.parametrize("dialect", ["postgresql"])
async def test_weflux_worker_runs_as_its_own_process(
    db: Database,
    database_urls: DatabaseUrls,
    worker_settings: Settings,
    services: Services,
    fake_meta: FakeCloudApi,
    meta_url: str,
    admin: Actor,
    tmp_path: Path,
) -> None:
    account = await _account(db, services.keyring, admin, PHONE_NUMBER_ID, ACCESS_TOKEN)
    assert worker_settings.encryption_keys is not None
    assert worker_settings.jwt_secret is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEFLUX_")} | {
        "WEFLUX_ENV": "test",
        "WEFLUX_DATABASE_URL": database_urls.app,
        "WEFLUX_JWT_SECRET": worker_settings.jwt_secret.get_secret_value(),
        "WEFLUX_ENCRYPTION_KEYS": worker_settings.encryption_keys.get_secret_value(),
        "WEFLUX_META_GRAPH_URL": meta_url,
    }
    process = subprocess.Popen(  # noqa: ASYNC220  (a real process is the point)
        [sys.executable, "-m", "weflux", "worker"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        # A new process's start (imports, pools) took 30-50 s on the loaded CI machine.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (await _reload(db, account)).quality_rating != "UNKNOWN":
                break
            await asyncio.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.to_thread(process.communicate, timeout=20)
    assert (await _reload(db, account)).quality_rating == "GREEN", output.decode()
    assert process.returncode == 0, output.decode()
    assert ACCESS_TOKEN not in output.decode()


async def test_no_account_query_escapes_its_workspace(db: Database, admin: Actor) -> None:
    async with db.session(admin.org_id) as session:
        assert (await session.exec(select(WhatsAppAccount))).all() == []


async def test_templates_are_synced_with_the_health_refresh_once_a_day(
    db: Database, services: Services, fake_meta: FakeCloudApi, admin: Actor
) -> None:
    account = await _account(db, services.keyring, admin, PHONE_NUMBER_ID, ACCESS_TOKEN)
    fake_meta.add_template("102290129340398", "order_update", body="Order {{1}} for {{2}}")
    assert await refresh_due_accounts(db, services, interval=HOUR) == 1
    async with db.session(admin.org_id) as session:
        (template,) = (await session.exec(select(MessageTemplate))).all()
    assert (template.name, template.status, template.parameter_count) == (
        "order_update",
        "APPROVED",
        2,
    )
    synced = (await _reload(db, account)).templates_synced_at
    assert synced is not None

    # The next health round within the day leaves the templates alone.
    async with db.session(admin.org_id) as session:
        row = await session.get(WhatsAppAccount, account.id)
        assert row is not None
        row.health_checked_at = utcnow() - 2 * HOUR
    assert await refresh_due_accounts(db, services, interval=HOUR) == 1
    listings = [r for r in fake_meta.requests if r.path.endswith("/message_templates")]
    assert len(listings) == 1
