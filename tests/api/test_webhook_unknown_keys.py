"""Webhook URLs with an unknown key: the database is read once per key, not once per post.

A keyed URL that names no live channel answers 404, and its miss is remembered beside the
channel cache (weflux.services.channel_cache), until it expires or any number changes,
in this process at once and in the others through the broker: a key that becomes valid
(a number connected, a key changed) is served at once on every process.

Once a process holds the digests of every live key (weflux.services.live_keys), a key
whose digest is absent is refused without any read: distinct random keys read nothing.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

import httpx
import pytest
from sqlmodel import select

from tests.fixtures import webhooks as wh
from tests.fixtures.app import counting
from tests.fixtures.inbound import keyed_number
from tests.fixtures.processes import Processes
from weflux.auth.crossings import webhook_key_digest
from weflux.config import Settings
from weflux.db import Database
from weflux.models import Organization, WhatsAppAccount, utcnow
from weflux.runtime import runtime_of
from weflux.services.live_keys import LiveKeys

SECRET = "unknown-key-test-app-secret-0123"
NEW_KEY = "unknown-key-000000000000000000000001"
OLD_KEY = "unknown-key-000000000000000000000002"


def signed_body() -> tuple[bytes, dict[str, str]]:
    body = wh.encode(
        wh.webhook_body(
            wh.messages_change(messages=[wh.text_message(body="hi")], contacts=[wh.contact()])
        )
    )
    return body, {"X-Hub-Signature-256": wh.sign(body, SECRET)}


async def post(client: httpx.AsyncClient, key: str) -> httpx.Response:
    body, headers = signed_body()
    return await client.post(f"/webhooks/whatsapp/{key}", content=body, headers=headers)


async def handshake(client: httpx.AsyncClient, key: str) -> httpx.Response:
    params = {"hub.mode": "subscribe", "hub.verify_token": "guess", "hub.challenge": "c"}
    return await client.get(f"/webhooks/whatsapp/{key}", params=params)


def connect(
    settings: Settings, org: Organization, key: str
) -> Callable[[Database], Awaitable[None]]:
    """A number connected with webhook key `key`, as `connectWhatsAppAccount` stores it."""

    async def write(db: Database) -> None:
        await keyed_number(db, settings, org.id, webhook_key=key, app_secret=SECRET)

    return write


def rekey(org: Organization, old: str, new: str) -> Callable[[Database], Awaitable[None]]:
    """The number at `old` moved to `new` (a changed key: the old URL stops working)."""

    async def write(db: Database) -> None:
        async with db.session(org.id) as session:
            query = select(WhatsAppAccount).where(WhatsAppAccount.webhook_key == old)
            account = (await session.exec(query)).one()
            account.webhook_key = new

    return write


async def repeated_reads(processes: Processes, ask: Callable[[], Awaitable[int]]) -> list[str]:
    """The statements of three more asks for a key already asked for once, in a window
    no other process's change interrupted (another test's can evict early: try again)."""
    cache = runtime_of(processes.reader).channel_cache
    for _ in range(5):
        generation = cache.generation
        assert await ask() == 404
        await runtime_of(processes.reader).live_keys.settled()  # its read is not the ask's
        with counting(processes.reader) as statements:
            for _ in range(3):
                assert await ask() == 404
        if cache.generation == generation:
            return statements
    pytest.fail("other processes' channel changes kept evicting the cache")


def live_keys(processes: Processes) -> LiveKeys:
    return runtime_of(processes.reader).live_keys


async def quiet(processes: Processes, ask: Callable[[], Awaitable[None]]) -> list[str]:
    """The statements of `ask()` with the reader's live keys loaded first, in a window no
    other process's change interrupted (another test's can evict early: try again)."""
    keys = live_keys(processes)
    cache = runtime_of(processes.reader).channel_cache
    for _ in range(5):
        cache.clear()  # a try cut short may have left its miss remembered: ask afresh
        await keys.load()
        generation = cache.generation
        with counting(processes.reader) as statements:
            await ask()
        if keys.current and cache.generation == generation:
            return statements
    pytest.fail("other processes' channel changes kept evicting the live keys")


async def test_an_unknown_key_reads_the_database_once(processes: Processes) -> None:
    """Given a key that names no channel,
    when it is posted to again and again, and its handshake asked,
    then the first post reads the database, the others and the handshake send no
    statement, and every answer is the same 404."""
    with counting(processes.reader) as first:
        answer = await post(processes.client, NEW_KEY)
    assert first, "the first post looks the key up"
    assert "BEGIN IMMEDIATE" not in first, "as a reader: no write lock on SQLite"

    async def ask() -> int:
        return (await post(processes.client, NEW_KEY)).status_code

    assert await repeated_reads(processes, ask) == []
    again = await post(processes.client, NEW_KEY)
    assert (
        (again.status_code, again.text, again.headers.get("cache-control"))
        == (
            answer.status_code,
            answer.text,
            answer.headers.get("cache-control"),
        )
        == (404, "Not found", "no-store")
    )

    async def shake() -> int:
        return (await handshake(processes.client, NEW_KEY)).status_code

    assert await repeated_reads(processes, shake) == []


async def test_a_key_connected_on_another_process_works_at_once(
    processes: Processes, org: Organization
) -> None:
    """Given a key the reader has remembered as unknown,
    when a number is connected with it through the writer (another process on Redis),
    then the reader's next signed post to it is taken."""
    settings = runtime_of(processes.writer).settings
    assert (await post(processes.client, NEW_KEY)).status_code == 404
    assert (await post(processes.client, NEW_KEY)).status_code == 404
    await processes.change(connect(settings, org, NEW_KEY))
    assert (await post(processes.client, NEW_KEY)).status_code == 200


async def test_a_changed_key_moves_the_channel_at_once(
    processes: Processes, org: Organization
) -> None:
    """Given a number served at its key, and a new key remembered as unknown,
    when the number's key changes to the new one through the writer,
    then the reader serves the new key and answers 404 for the old one at once."""
    settings = runtime_of(processes.writer).settings
    await processes.change(connect(settings, org, OLD_KEY))
    assert (await post(processes.client, OLD_KEY)).status_code == 200
    assert (await post(processes.client, NEW_KEY)).status_code == 404
    await processes.change(rekey(org, OLD_KEY, NEW_KEY))
    assert (await post(processes.client, NEW_KEY)).status_code == 200
    assert (await post(processes.client, OLD_KEY)).status_code == 404


def random_key() -> str:
    return secrets.token_urlsafe(24)


async def test_distinct_random_keys_read_nothing(processes: Processes, org: Organization) -> None:
    """Given a live number, and the reader's live keys loaded,
    when posts and handshakes come to distinct random keys,
    then each is the same 404 and none sends a statement; the live number is served."""
    settings = runtime_of(processes.writer).settings
    await processes.change(connect(settings, org, OLD_KEY))
    answers: list[tuple[int, str, str | None]] = []

    async def ask() -> None:
        answers.clear()
        for _ in range(10):
            for response in (
                await post(processes.client, random_key()),
                await handshake(processes.client, random_key()),
            ):
                answers.append(
                    (response.status_code, response.text, response.headers.get("cache-control"))
                )

    assert await quiet(processes, ask) == []
    assert set(answers) == {(404, "Not found", "no-store")}
    assert len(live_keys(processes)) >= 1
    assert (await post(processes.client, OLD_KEY)).status_code == 200


async def test_a_key_connected_elsewhere_works_at_once_with_live_keys_loaded(
    processes: Processes, org: Organization
) -> None:
    """Given the reader's live keys loaded, and a key refused without a read,
    when a number is connected with that key through the writer (another process on Redis),
    then the reader's next signed post to it is taken, and still once the keys reload."""
    settings = runtime_of(processes.writer).settings

    async def ask() -> None:
        assert (await post(processes.client, NEW_KEY)).status_code == 404

    assert await quiet(processes, ask) == []
    await processes.change(connect(settings, org, NEW_KEY))
    assert not live_keys(processes).current
    assert (await post(processes.client, NEW_KEY)).status_code == 200
    await live_keys(processes).load()
    assert (await post(processes.client, NEW_KEY)).status_code == 200


async def test_a_changed_key_is_refused_at_once_with_live_keys_loaded(
    processes: Processes, org: Organization
) -> None:
    """Given a number served at its key, and the reader's live keys loaded,
    when its key changes through the writer,
    then the old key is 404 at once, and without a read once the keys reload; the new is served."""
    settings = runtime_of(processes.writer).settings
    await processes.change(connect(settings, org, OLD_KEY))
    await live_keys(processes).load()
    assert (await post(processes.client, OLD_KEY)).status_code == 200
    await processes.change(rekey(org, OLD_KEY, NEW_KEY))
    assert (await post(processes.client, OLD_KEY)).status_code == 404
    assert (await post(processes.client, NEW_KEY)).status_code == 200

    async def ask() -> None:
        assert (await post(processes.client, OLD_KEY)).status_code == 404

    assert await quiet(processes, ask) == []


async def test_a_colliding_digest_is_looked_up_and_answered_right(
    processes: Processes, org: Organization, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a live number, and an unknown key whose digest is made the live key's,
    when the unknown key is posted to with the live keys loaded,
    then it is looked up (a read) and answered 404; the live key is still served."""
    settings = runtime_of(processes.writer).settings
    await processes.change(connect(settings, org, OLD_KEY))

    def colliding(key: str) -> bytes:
        return webhook_key_digest(OLD_KEY if key == NEW_KEY else key)

    monkeypatch.setattr(live_keys(processes), "digest", colliding)
    answers: list[int] = []

    async def ask() -> None:
        answers[:] = [(await post(processes.client, NEW_KEY)).status_code]

    assert await quiet(processes, ask) != []
    assert answers == [404]
    assert (await post(processes.client, OLD_KEY)).status_code == 200


async def test_a_key_written_outside_the_app_works_within_the_age_bound(
    processes: Processes, org: Organization, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given the reader's live keys loaded,
    when a number is connected by another handle (a CLI: no message to any process),
    then its key is refused until the keys are `max_age` old, then served."""
    settings = runtime_of(processes.writer).settings
    keys = live_keys(processes)
    await keys.load()
    await connect(settings, org, NEW_KEY)(db)
    if keys.current:  # else another test's change made it look again already
        assert (await post(processes.client, NEW_KEY)).status_code == 404
    later = keys.clock() + keys.max_age
    monkeypatch.setattr(keys, "clock", lambda: later)
    assert not keys.current
    assert (await post(processes.client, NEW_KEY)).status_code == 200


def disconnect(org: Organization, key: str) -> Callable[[Database], Awaitable[None]]:
    """The number at `key` disconnected (its URL stops working)."""

    async def write(db: Database) -> None:
        async with db.session(org.id) as session:
            query = select(WhatsAppAccount).where(WhatsAppAccount.webhook_key == key)
            (await session.exec(query)).one().disconnected_at = utcnow()

    return write


async def test_a_removed_key_is_refused_at_once_with_live_keys_loaded(
    processes: Processes, org: Organization
) -> None:
    """Given a number served at its key, and the reader's live keys loaded,
    when the number is disconnected through the writer,
    then its key is 404 at once, and without a read once the keys reload."""
    settings = runtime_of(processes.writer).settings
    await processes.change(connect(settings, org, OLD_KEY))
    await live_keys(processes).load()
    assert (await post(processes.client, OLD_KEY)).status_code == 200
    await processes.change(disconnect(org, OLD_KEY))
    assert (await post(processes.client, OLD_KEY)).status_code == 404

    async def ask() -> None:
        assert (await post(processes.client, OLD_KEY)).status_code == 404

    assert await quiet(processes, ask) == []
