"""A write that says which numbers it wrote evicts only their cached answers.

A number's secrets rotated, its display number written, or the number disconnected,
through the ORM or an UPDATE holding its rows to known ids: the other numbers' channels
and routes stay cached (their next webhook reads no number) and the live keys stay
current, here and in every process (the broker's message names the numbers). A write
that may make a number answer where it did not (a new number, a key, a phone number id,
a disconnection undone) or that does not say which rows it writes still evicts all.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import update
from sqlmodel import col

from tests.api.test_webhook_cache_columns import (
    KEY,
    SECRET,
    Write,
    _core,
    _disconnect,
    _row,
    number_reads,
    post,
)
from tests.fixtures import webhooks as wh
from tests.fixtures.app import counting
from tests.fixtures.inbound import keyed_number
from tests.fixtures.processes import Processes
from weflux.crypto.fields import seal
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.models import Organization, WhatsAppAccount
from weflux.realtime.broker import InProcessBroker
from weflux.runtime import runtime_of
from weflux.services.channel_cache import CHANNEL, ChannelCache

OTHER_KEY = "cache-targeted-key-0000000000000000003"
OTHER_SECRET = "cache-targeted-app-secret-9876543210"
OTHER_PHONE = "1090000000077"
OTHER_WABA = "2090000000077"


def other_body() -> bytes:
    change = wh.messages_change(
        OTHER_PHONE, waba_id=OTHER_WABA, messages=[wh.text_message(body="hi")], contacts=[]
    )
    return wh.encode(wh.webhook_body(change))


async def post_other(processes: Processes) -> int:
    return await post(processes.client, other_body(), key=OTHER_KEY, secret=OTHER_SECRET)


@pytest.fixture
async def two(processes: Processes, org: Organization) -> tuple[Processes, uuid.UUID]:
    """Two connected numbers (KEY's and OTHER_KEY's); the id of KEY's."""
    settings = runtime_of(processes.writer).settings
    ids: list[uuid.UUID] = []

    async def connect(db: Database) -> None:
        first = await keyed_number(db, settings, org.id, webhook_key=KEY, app_secret=SECRET)
        ids.append(first.id)
        await keyed_number(
            db,
            settings,
            org.id,
            webhook_key=OTHER_KEY,
            app_secret=OTHER_SECRET,
            phone_number_id=OTHER_PHONE,
            business_account_id=OTHER_WABA,
        )

    await processes.change(connect)
    return processes, ids[0]


def _by_id(where: Callable[[uuid.UUID], object], **values: object) -> Callable[..., Write]:
    """A Core UPDATE of KEY's number held to its id by `where`."""

    def make(org: Organization, number: uuid.UUID) -> Write:
        async def write(db: Database) -> None:
            async with db.session(org.id) as session:
                statement = update(WhatsAppAccount).where(where(number)).values(**values)  # type: ignore[arg-type]
                await session.exec(statement)

        return write

    return make


def _rotated(org: Organization, _number: uuid.UUID, settings: object) -> Write:
    keyring = KeyRing.from_settings(settings)  # type: ignore[arg-type]
    return _row(org, lambda a: seal(keyring, a, "app_secret_enc", "rotated-0123456789"))


NAMED: dict[str, Callable[[Organization, uuid.UUID, object], Write]] = {
    "app secret rotated (ORM)": _rotated,
    "disconnected (ORM)": lambda org, _n, _s: _row(org, _disconnect),
    "display number by id (Core)": lambda org, n, _s: _by_id(
        lambda i: WhatsAppAccount.id == i, display_phone_number="+1 555 0100"
    )(org, n),
    "secrets erased by ids (Core IN)": lambda org, n, _s: _by_id(
        lambda i: col(WhatsAppAccount.id).in_([i]), app_secret_enc=None
    )(org, n),
}


async def warm_other_reads(
    processes: Processes, write: Write, *, evicts_all: bool = False
) -> tuple[list[str], list[str], bool]:
    """Both numbers' webhooks cached and the live keys loaded, then `write` (heard by the
    reader): the number reads of the other number's next webhook, of KEY's, and whether
    the live keys stayed current. Unless `evicts_all`, retried when another test's
    change evicted all meanwhile (on the shared Redis)."""
    reader = runtime_of(processes.reader)
    for _ in range(5):
        generation = reader.channel_cache.generation  # before the loads: none evicted since
        await post(processes.client)  # 401 once a retried write rotated its secret
        assert await post_other(processes) == 200
        await reader.live_keys.load()
        await processes.change(write)
        current = reader.live_keys.current
        with counting(processes.reader) as other:
            assert await post_other(processes) == 200
        with counting(processes.reader) as own:
            await post(processes.client)
        if evicts_all or reader.channel_cache.generation == generation:
            return number_reads(other), number_reads(own), current
    pytest.fail("other processes' channel changes kept evicting the cache")


@pytest.mark.parametrize("what", list(NAMED))
async def test_a_write_of_one_number_keeps_the_others_cached(
    two: tuple[Processes, uuid.UUID], org: Organization, what: str
) -> None:
    """Given two numbers cached by the reader and the live keys loaded,
    when one number's secrets, display number or connection is written on the writer
    (ORM, or a Core UPDATE by its id),
    then the other's next webhook reads no number, the live keys stay current, and the
    written number's next webhook reads it again."""
    processes, number = two
    settings = runtime_of(processes.writer).settings
    other, own, current = await warm_other_reads(processes, NAMED[what](org, number, settings))
    assert other == []
    assert current
    assert own != []


EVERYTHING: dict[str, Callable[[Organization, uuid.UUID], Write]] = {
    "reconnected by id (Core)": _by_id(lambda i: WhatsAppAccount.id == i, disconnected_at=None),
    "key by id (Core)": _by_id(lambda i: WhatsAppAccount.id == i, webhook_key="k" * 40),
    "display number without ids (Core)": lambda org, _n: _core(
        org, display_phone_number="+1 555 0199"
    ),
}


@pytest.mark.parametrize("what", list(EVERYTHING))
async def test_a_write_that_may_add_answers_or_names_no_number_evicts_all(
    two: tuple[Processes, uuid.UUID], org: Organization, what: str
) -> None:
    """Given two numbers cached by the reader,
    when a write may make a number answer where it did not, or does not hold its rows
    to ids, then the other number's next webhook reads numbers again, and the live keys
    are no longer current."""
    processes, number = two
    other, _own, current = await warm_other_reads(
        processes, EVERYTHING[what](org, number), evicts_all=True
    )
    assert other != []
    assert not current


async def test_a_message_naming_no_number_evicts_all() -> None:
    """Given answers cached for two numbers,
    when a message names one, only its answers go; when one names none (an older
    process's) or cannot be read, all go, the live keys' generation with them."""
    broker = InProcessBroker()
    cache = ChannelCache(broker)
    await cache.start()
    first, second = uuid.uuid4(), uuid.uuid4()

    async def fill() -> None:
        for number in (first, second):
            await cache.get_or_load(number, functools.partial(_answer, number), names=_itself)
        assert len(cache) == 2

    await fill()
    generation = cache.generation
    await broker.publish(CHANNEL, {"changed": True, "ids": [str(first)]})
    assert (len(cache), cache.generation) == (1, generation)
    for message in ({"changed": True}, {"changed": True, "ids": ["not a uuid"]}, {}):
        await fill()
        await broker.publish(CHANNEL, message)
        assert len(cache) == 0
        assert cache.generation > generation
        generation = cache.generation
    await cache.stop()


async def _answer(number: uuid.UUID) -> uuid.UUID:
    return number


def _itself(number: uuid.UUID) -> list[uuid.UUID]:
    return [number]


async def test_a_load_outlived_by_another_numbers_eviction_is_kept() -> None:
    """Given answers loading while evictions come,
    when one names another number, the answer is kept; when one names its number or
    none, it is not (it may be stale already)."""
    broker = InProcessBroker()
    cache = ChannelCache(broker)
    await cache.start()
    number = uuid.uuid4()

    def loading(evicted: list[str] | None) -> Callable[[], Awaitable[uuid.UUID]]:
        async def load() -> uuid.UUID:
            message = {"changed": True} if evicted is None else {"changed": True, "ids": evicted}
            await broker.publish(CHANNEL, message)
            return number

        return load

    for evicted, kept in (([str(uuid.uuid4())], 1), ([str(number)], 0), (None, 0)):
        await cache.get_or_load(number, loading(evicted), names=lambda a: [a])
        assert len(cache) == kept
        cache.clear()
    await cache.stop()
