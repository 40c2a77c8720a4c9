"""WhatsApp credentials stored by a connect or an update whose Meta check was in flight
when the workspace's deletion was requested: refused, or destroyed with the others.

`connect` and `update_credentials` ask Meta first (seconds, at worst), then read the
workspace's row for share (`sessions.refuse_while_deleting`) before they seal anything.
The fake Cloud API holds the check while the deletion commits.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlmodel import select
from starlette.applications import Starlette

from tests.fixtures.deletion import request_deletion
from tests.fixtures.factories import Actor
from tests.fixtures.meta import BUSINESS_ACCOUNT_ID, PHONE_NUMBER_ID
from tests.fixtures.outbound import make_account
from tests.fixtures.principals import principal_of
from weflux.db import Database
from weflux.errors import Forbidden
from weflux.models import WhatsAppAccount
from weflux.sandbox.cloud_api import FakeCloudApi
from weflux.services import channels
from weflux.services.audit import RequestMeta
from weflux.services.channels import Services

NEW_TOKEN = "EAAGtestACCESStokenFORweflux0000000000000009"
SECRETS = ("access_token_enc", "app_secret_enc", "webhook_verify_token_enc")


async def accounts(db: Database, admin: Actor) -> list[WhatsAppAccount]:
    async with db.session(admin.org_id) as session:
        return list((await session.exec(select(WhatsAppAccount))).all())


async def test_a_connect_whose_meta_check_spans_the_deletion_stores_nothing(
    app: Starlette, db: Database, services: Services, fake_meta: FakeCloudApi, admin: Actor
) -> None:
    """Given connectWhatsAppAccount waiting on Meta's check, when the deletion is
    requested and commits meanwhile, then the connect is FORBIDDEN and no number, no
    credential is stored (one was, with its secrets, without the check)."""
    hold = fake_meta.hold_next()

    async def connecting() -> WhatsAppAccount:
        async with db.session(admin.org_id) as session:
            return await channels.connect(
                session,
                services,
                principal_of(admin),
                RequestMeta(),
                display_phone_number="+1 555 078 3881",
                phone_number_id=PHONE_NUMBER_ID,
                business_account_id=BUSINESS_ACCOUNT_ID,
                access_token=NEW_TOKEN,
                app_secret="app-secret-0123456789abcdef",
                webhook_verify_token="verify-token-0123456789",
            )

    fake_meta.set_access_token(PHONE_NUMBER_ID, NEW_TOKEN)
    connect = asyncio.create_task(connecting())
    await asyncio.wait_for(hold.reached.wait(), 30)
    await request_deletion(app, db, admin)  # the connect holds no lock while it waits
    hold.release()

    with pytest.raises(Forbidden):
        await connect
    assert await accounts(db, admin) == []


async def test_an_update_whose_meta_check_spans_the_deletion_keeps_no_credential(
    app: Starlette, db: Database, services: Services, fake_meta: FakeCloudApi, admin: Actor
) -> None:
    """Given updateWhatsAppCredentials waiting on Meta's check of a new token, when the
    deletion is requested meanwhile, then no credential survives: on PostgreSQL the
    deletion commits first and the update is FORBIDDEN (it stored the new token after the
    deletion without the check); on SQLite the update's first read took the write lock,
    so the deletion waits for it and destroys what it stored."""
    account = await make_account(
        db, services.keyring, admin.org_id, business_account_id=BUSINESS_ACCOUNT_ID
    )
    fake_meta.set_access_token(PHONE_NUMBER_ID, NEW_TOKEN)
    hold = fake_meta.hold_next()

    async def updating() -> WhatsAppAccount:
        async with db.session(admin.org_id) as session:
            return await channels.update_credentials(
                session,
                services,
                principal_of(admin),
                RequestMeta(),
                account_id=account.id,
                access_token=NEW_TOKEN,
                app_secret="new-app-secret-0123456789",
                webhook_verify_token=None,
            )

    update = asyncio.create_task(updating())
    await asyncio.wait_for(hold.reached.wait(), 30)
    if db.dialect == "postgresql":
        await request_deletion(app, db, admin)
        hold.release()
        with pytest.raises(Forbidden):
            await update
    else:
        deletion = asyncio.create_task(request_deletion(app, db, admin))
        hold.release()
        await update
        await deletion

    [stored] = await accounts(db, admin)
    assert stored.disconnected_at is not None
    assert {name: getattr(stored, name) for name in SECRETS} == dict.fromkeys(SECRETS)
