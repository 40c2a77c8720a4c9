"""Only writes of what the webhook caches hold evict them (weflux.services.channel_cache).

The worker stamps every number's health each hour, Meta's webhooks and the health refresh
write its quality, limits and status, a template sync its stamp: none of these changes a
cached channel, route or live key, so none evicts them, and the next webhook reads no
number. A write of a key, a secret, a phone number or business account id, or whether
the number is live evicts at once, in every process: through the ORM, a Core UPDATE of
such a column, or SQL in words naming the table (never parsed: it always evicts).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import httpx
import pytest
from sqlalchemy import func, text, update
from sqlmodel import select

from tests.fixtures import webhooks as wh
from tests.fixtures.app import counting
from tests.fixtures.inbound import keyed_number
from tests.fixtures.processes import Processes
from weflux.config import Settings
from weflux.crypto.fields import seal
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.models import AccountStatus, Message, Organization, WhatsAppAccount, utcnow
from weflux.runtime import runtime_of
from weflux.services.channel_cache import QUIET_COLUMNS

KEY = "cache-columns-key-000000000000000001"
NEW_KEY = "cache-columns-key-000000000000000002"
SECRET = "cache-columns-app-secret-0123456789"
TOKEN = "cache-columns-verify-token-0123"
Write = Callable[[Database], Awaitable[None]]
ATTEMPTS = 20


def message_body() -> bytes:
    return wh.encode(
        wh.webhook_body(
            wh.messages_change(messages=[wh.text_message(body="hi")], contacts=[wh.contact()])
        )
    )


async def post(
    client: httpx.AsyncClient, body: bytes | None = None, *, key: str = KEY, secret: str = SECRET
) -> int:
    body = message_body() if body is None else body
    headers = {"X-Hub-Signature-256": wh.sign(body, secret)}
    return (
        await client.post(f"/webhooks/whatsapp/{key}", content=body, headers=headers)
    ).status_code


async def handshake(client: httpx.AsyncClient, token: str) -> int:
    params = {"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": "c"}
    return (await client.get(f"/webhooks/whatsapp/{KEY}", params=params)).status_code


def number_reads(statements: list[str]) -> list[str]:
    """The statements that read numbers: a channel, routes, the live keys."""
    return [s for s in statements if "whatsapp_accounts" in s or "weflux_webhook_" in s]


def _row(org: Organization, change: Callable[[WhatsAppAccount], None]) -> Write:
    """`change` applied to the number's row through the ORM, in one unit of work."""

    async def write(db: Database) -> None:
        async with db.session(org.id) as session:
            query = select(WhatsAppAccount).where(WhatsAppAccount.webhook_key == KEY)
            change((await session.exec(query)).one())

    return write


def _core(org: Organization, **values: object) -> Write:
    """An UPDATE of every number of the workspace (as the health stamp, an erasure)."""

    async def write(db: Database) -> None:
        async with db.session(org.id) as session:
            await session.exec(update(WhatsAppAccount).values(**values))

    return write


@pytest.fixture
async def cached(processes: Processes, org: Organization) -> Processes:
    """A connected number, its channel and routes cached by the reader, live keys loaded."""
    settings = runtime_of(processes.writer).settings

    async def connect(db: Database) -> None:
        await keyed_number(
            db, settings, org.id, webhook_key=KEY, app_secret=SECRET, verify_token=TOKEN
        )

    await processes.change(connect)
    return processes


class Announcements:
    """How many times the writer announced a change of numbers (its own count: other
    processes on the shared Redis channel do not add to it)."""

    def __init__(self, processes: Processes) -> None:
        self.count = 0
        db = runtime_of(processes.writer).db
        announce = db.channels_changed
        assert announce is not None

        async def counted(ids: frozenset[uuid.UUID] | None) -> None:
            self.count += 1
            await announce(ids)

        db.channels_changed = counted


async def warm_post_reads(processes: Processes, write: Write) -> list[str]:
    """`write` after a webhook cached the number and the live keys loaded, then the
    number reads of the next webhook, in a window no other process's change interrupted
    (another test's can evict early on the shared Redis: try again; every test worker that
    connects a number announces an eviction of all, so a busy run needs many tries)."""
    reader = runtime_of(processes.reader)
    for _ in range(ATTEMPTS):
        generation = reader.channel_cache.generation  # before the loads: none evicted since
        assert await post(processes.client) == 200
        await reader.live_keys.load()
        await write(runtime_of(processes.writer).db)
        with counting(processes.reader) as statements:
            assert await post(processes.client) == 200
        # Current: loaded in this generation (no change came between the load and now).
        if reader.channel_cache.generation == generation and reader.live_keys.current:
            return number_reads(statements)
    pytest.fail(f"the cache was evicted in each of {ATTEMPTS} tries: by the write, or others")


def quality_webhook() -> bytes:
    return wh.encode(wh.webhook_body(wh.quality_change(current_limit="TIER_10K")))


def account_webhook() -> bytes:
    return wh.encode(
        wh.webhook_body(wh.account_update_change("ACCOUNT_RESTRICTION", restriction_types=["X"]))
    )


def _refreshed(account: WhatsAppAccount) -> None:
    """What channels.refresh_health writes from Meta's answer."""
    account.quality_rating = "YELLOW"
    account.messaging_limit_tier = "TIER_100K"
    account.throughput_level = "HIGH"
    account.verified_name = "Cache Columns"
    account.status = "FLAGGED"
    account.status_detail = "flagged"
    account.health_checked_at = utcnow()


QUIET: dict[str, Callable[[Organization], Write]] = {
    "health stamp (the worker's UPDATE)": lambda org: _core(org, health_checked_at=utcnow()),
    "health refresh": lambda org: _row(org, _refreshed),
    "templates synced": lambda org: _row(
        org, lambda a: setattr(a, "templates_synced_at", utcnow())
    ),
    "key set to itself": lambda org: _row(org, lambda a: setattr(a, "webhook_key", KEY)),
}


@pytest.mark.parametrize("what", list(QUIET))
async def test_a_bookkeeping_write_evicts_nothing(
    cached: Processes, org: Organization, what: str
) -> None:
    """Given a number whose channel, routes and live keys the reader holds,
    when its health, quality, status or a stamp is written (or a column set to its value),
    then the writer announces no change, the live keys stay current and the next
    webhook reads no number."""
    announcements = Announcements(cached)
    assert await warm_post_reads(cached, QUIET[what](org)) == []
    assert announcements.count == 0


@pytest.mark.parametrize("body", [quality_webhook, account_webhook])
async def test_quality_and_account_webhooks_evict_nothing(
    cached: Processes, org: Organization, body: Callable[[], bytes]
) -> None:
    """Given a cached number,
    when Meta's quality or account update for it is processed (its limit, its status),
    then nothing is announced and the next webhook reads no number."""
    announcements = Announcements(cached)

    async def write(_db: Database) -> None:
        assert await post(cached.client, body()) == 200

    assert await warm_post_reads(cached, write) == []
    assert announcements.count == 0
    async with runtime_of(cached.writer).db.session(org.id) as session:
        account = (await session.exec(select(WhatsAppAccount))).one()
    assert (account.messaging_limit_tier, account.status) in {
        ("TIER_10K", "CONNECTED"),
        (None, "RESTRICTED"),
    }


def _disconnect(account: WhatsAppAccount) -> None:
    account.disconnected_at = utcnow()


async def _text_rekey(db: Database, org: Organization) -> None:
    async with db.session(org.id) as session:
        await session.execute(
            text("UPDATE whatsapp_accounts SET webhook_key = :new WHERE webhook_key = :old"),
            {"new": NEW_KEY, "old": KEY},
        )


async def _seal(settings: Settings, db: Database, org: Organization, column: str) -> None:
    async with db.session(org.id) as session:
        account = (await session.exec(select(WhatsAppAccount))).one()
        seal(KeyRing.from_settings(settings), account, column, "rotated-0123456789")
        account.credentials_updated_at = utcnow()


async def test_a_rotated_app_secret_is_seen_at_once(cached: Processes, org: Organization) -> None:
    """Given a cached channel, when its app secret is rotated on the writer,
    then the reader's next webhook signed with the old one is refused."""
    assert await post(cached.client) == 200
    settings = runtime_of(cached.writer).settings
    await cached.change(lambda db: _seal(settings, db, org, "app_secret_enc"))
    assert await post(cached.client) == 401
    assert await post(cached.client, secret="rotated-0123456789") == 200


async def test_a_rotated_verify_token_is_seen_at_once(cached: Processes, org: Organization) -> None:
    """Given a cached channel, when its verify token is rotated on the writer,
    then the reader's next handshake with the old one is refused."""
    assert await handshake(cached.client, TOKEN) == 200
    settings = runtime_of(cached.writer).settings
    await cached.change(lambda db: _seal(settings, db, org, "webhook_verify_token_enc"))
    assert await handshake(cached.client, TOKEN) == 403
    assert await handshake(cached.client, "rotated-0123456789") == 200


GONE: dict[str, Callable[[Organization], Write]] = {
    "key changed": lambda org: _row(org, lambda a: setattr(a, "webhook_key", NEW_KEY)),
    "disconnected": lambda org: _row(org, _disconnect),
    "disconnected by a Core UPDATE": lambda org: _core(org, disconnected_at=utcnow()),
    "key changed by SQL in words": lambda org: lambda db: _text_rekey(db, org),
}


@pytest.mark.parametrize("what", list(GONE))
async def test_a_number_gone_from_its_url_is_404_at_once(
    cached: Processes, org: Organization, what: str
) -> None:
    """Given a cached channel and the live keys loaded,
    when its key is changed or it is disconnected (ORM, Core UPDATE or SQL text),
    then the reader's next webhook to its URL is 404."""
    assert await post(cached.client) == 200
    await runtime_of(cached.reader).live_keys.load()
    await cached.change(GONE[what](org))
    assert await post(cached.client) == 404


ROUTED: dict[str, Callable[[Organization], Write]] = {
    "phone number id": lambda org: _row(org, lambda a: setattr(a, "phone_number_id", "1")),
    "business account id": lambda org: _row(org, lambda a: setattr(a, "business_account_id", "2")),
    "display number (Core)": lambda org: _core(org, display_phone_number="+1 555 0100"),
    "secrets erased (Core)": lambda org: _core(org, app_secret_enc=None),
}


@pytest.mark.parametrize("what", list(ROUTED))
async def test_a_routing_or_secret_column_evicts_at_once(
    cached: Processes, org: Organization, what: str
) -> None:
    """Given a cached channel and routes,
    when a column its routes or secrets are built from is written on the writer,
    then the reader's next webhook reads the number again."""
    assert await post(cached.client) == 200
    await cached.change(ROUTED[what](org))
    with counting(cached.reader) as statements:
        await post(cached.client)
    assert number_reads(statements) != []


def test_no_cached_column_is_quiet() -> None:
    """The columns the cached answers are built from are none of the quiet ones."""
    cached = {
        "id",
        "org_id",
        "webhook_key",
        "app_secret_enc",
        "webhook_verify_token_enc",
        "phone_number_id",
        "business_account_id",
        "display_phone_number",
        "disconnected_at",
    }
    columns = set(WhatsAppAccount.__table__.columns.keys())  # type: ignore[attr-defined]
    assert not cached & QUIET_COLUMNS
    assert cached | QUIET_COLUMNS == columns  # each classified (a new one evicts until it is)


# A number Meta banned (or flagged, restricted) still receives its webhooks: `status` is
# what Meta last said of it; only the workspace's disconnection ends its URL and routes
# (docs/channels.md). Its messages in flight are stored, and Meta's ACCOUNT_RECONNECTED,
# which brings it back to CONNECTED, must reach it. Nothing cached reads `status`.


async def _stored(processes: Processes, org: Organization) -> tuple[int, str]:
    async with runtime_of(processes.writer).db.session(org.id) as session:
        messages = (await session.exec(select(func.count()).select_from(Message))).one()
        status = (await session.exec(select(WhatsAppAccount.status))).one()
    return int(messages), str(status)


async def test_a_banned_number_stores_its_webhooks_and_comes_back(
    cached: Processes, org: Organization
) -> None:
    """Given a connected number, cached by the reader,
    when Meta bans it (its status BANNED, written on the writer),
    then a message to it is still stored, and Meta's ACCOUNT_RECONNECTED for it makes
    it CONNECTED again."""
    assert await post(cached.client) == 200
    before, _ = await _stored(cached, org)
    await _row(org, lambda a: setattr(a, "status", AccountStatus.BANNED))(
        runtime_of(cached.writer).db
    )
    assert await post(cached.client, message_body()) == 200
    after, status = await _stored(cached, org)
    assert (after, status) == (before + 1, AccountStatus.BANNED)
    reconnected = wh.encode(wh.webhook_body(wh.account_update_change("ACCOUNT_RECONNECTED")))
    assert await post(cached.client, reconnected) == 200
    assert (await _stored(cached, org))[1] == AccountStatus.CONNECTED
