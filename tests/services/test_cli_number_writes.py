"""Numbers the CLI writes are seen at once by running servers sharing its Redis.

`weflux demo` connects a number from another process than the servers: its committed
write is announced on the channel cache's Redis channel (weflux.cli), as a server's own
writes are, so a server whose live webhook keys were loaded before it serves the new
number's URL at once instead of answering 404 for up to 30 s.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlmodel import select

from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.services import TEST_REDIS_URL, eventually
from weflux.cli import main
from weflux.db import Database
from weflux.models import WhatsAppAccount
from weflux.realtime.broker import Broker
from weflux.services.channel_cache import ChannelCache
from weflux.services.live_keys import LiveKeys

# The servers share the CLI's Redis.
pytestmark = pytest.mark.parametrize("broker", ["redis"], indirect=True)


@pytest.fixture
async def server(broker: Broker, db: Database) -> AsyncIterator[LiveKeys]:
    """A server's live keys over Redis, loaded (no number yet), current for 30 s."""
    cache = ChannelCache(broker)
    keys = LiveKeys(db, cache)
    try:
        await cache.start()
        await keys.load()
        yield keys
    finally:
        await keys.stop()
        await cache.stop()


async def test_a_number_the_demo_connects_is_live_on_a_running_server_at_once(
    server: LiveKeys,
    owner_db: Database,
    database_urls: DatabaseUrls,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: object,
) -> None:
    """Given a server whose live keys were loaded before any number existed,
    when `weflux demo` (another process's database handle, the same Redis) connects one,
    then the server's keys stop vouching for their load at once: the new key may be
    live (its lookup is made), not refused for up to 30 s."""
    monkeypatch.chdir(str(tmp_path))
    monkeypatch.setenv("WEFLUX_DATABASE_URL", database_urls.app)
    monkeypatch.setenv("WEFLUX_DATABASE_MIGRATION_URL", database_urls.owner)
    monkeypatch.setenv("WEFLUX_REDIS_URL", TEST_REDIS_URL)
    assert server.current
    assert len(server) == 0
    assert await asyncio.to_thread(main, ["demo"]) == 0
    async with owner_db.session(all_workspaces="test: the demo's number") as session:
        key = (await session.exec(select(WhatsAppAccount.webhook_key))).one()
    await eventually(lambda: not server.current, seconds=5)
    assert server.may_be_live(key)
