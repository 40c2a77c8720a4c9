"""Migration 0037: recovery codes stored as plain SHA-256 are wrapped under the key ring."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from sqlmodel import select

from tests.fixtures.api import token_for
from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.factories import PASSWORD, Actor
from tests.fixtures.two_factor import enroll, mfa_login
from weflux import cli
from weflux.auth import recovery_codes, totp
from weflux.config import Settings
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.migrate import downgrade, migrate
from weflux.models import User

BEFORE = "0036_webhook_event_batches"
SCOPE = "test: recovery codes"


async def _stored(database_urls: DatabaseUrls, user_id: uuid.UUID) -> str | None:
    owner = Database(database_urls.owner, maintenance=True)
    try:
        async with owner.session(all_workspaces=SCOPE) as session:
            user = (
                await session.exec(
                    select(User).where(User.id == user_id).execution_options(populate_existing=True)
                )
            ).one()
            return user.recovery_code_hashes
    finally:
        await owner.dispose()


async def _enrolled_before_0037(database_urls: DatabaseUrls, user_id: uuid.UUID) -> list[str]:
    """The schema back at 0036, and the user's recovery codes as that release stored them
    (plain SHA-256): the codes."""
    await downgrade(database_urls.owner, BEFORE)
    codes = totp.new_recovery_codes()
    owner = Database(database_urls.owner, maintenance=True)
    try:
        async with owner.session(all_workspaces=SCOPE) as session:
            user = await session.get(User, user_id)
            assert user is not None
            user.recovery_code_hashes = " ".join(recovery_codes.digest(c) for c in codes)
            session.add(user)
    finally:
        await owner.dispose()
    return codes


async def test_weflux_migrate_wraps_old_recovery_codes_and_each_still_works_once(
    client: httpx.AsyncClient, settings: Settings, database_urls: DatabaseUrls, agent: Actor
) -> None:
    """Given a user with two factors whose recovery codes were stored by the release before
    0037 (plain SHA-256), when `weflux migrate` runs, then no plain hash is left (each
    value names the key ring's key), and an old code logs in once, a second time never."""
    phone = await enroll(client, await token_for(client, agent))
    codes = await _enrolled_before_0037(database_urls, agent.user.id)

    await asyncio.to_thread(cli._migrate, settings)

    stored = await _stored(database_urls, agent.user.id)
    assert stored is not None
    primary = KeyRing.from_settings(settings).primary_kid
    assert recovery_codes.count_by_kid(stored) == {primary: 10}
    assert not any(recovery_codes.digest(code) in stored for code in codes)
    first = await mfa_login(client, agent.user.email, PASSWORD, recoveryCode=codes[7])
    again = await mfa_login(client, agent.user.email, PASSWORD, recoveryCode=codes[7])
    assert first.status_code == 200, first.text
    assert again.status_code == 401
    assert again.json()["error"]["code"] == "INVALID_MFA_CODE"
    # The codes of the enrollment under 0037 were replaced by the old release's: gone.
    gone = await mfa_login(client, agent.user.email, PASSWORD, recoveryCode=phone.recovery_codes[0])
    assert gone.status_code == 401
    assert recovery_codes.count_by_kid(await _stored(database_urls, agent.user.id)) == {primary: 9}


async def test_without_the_key_ring_the_migration_fails_and_changes_nothing(
    settings: Settings, database_urls: DatabaseUrls, agent: Actor
) -> None:
    """Given plain recovery hashes, when 0037 runs without a key ring (`alembic upgrade` by
    hand), then it fails saying what to run, and the hashes are as they were; with the key
    ring it succeeds."""
    codes = await _enrolled_before_0037(database_urls, agent.user.id)
    before = await _stored(database_urls, agent.user.id)

    with pytest.raises(RuntimeError, match="WEFLUX_ENCRYPTION_KEYS"):
        await migrate(database_urls.owner, app_url=database_urls.app)

    assert await _stored(database_urls, agent.user.id) == before
    keyring = KeyRing.from_settings(settings)
    await migrate(database_urls.owner, app_url=database_urls.app, keyring=keyring)
    stored = await _stored(database_urls, agent.user.id)
    assert stored is not None
    assert recovery_codes.matching(keyring, agent.user.id, stored, codes[0]) is not None
