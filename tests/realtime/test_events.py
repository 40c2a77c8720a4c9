"""Events published after the commit that made them true (`weflux.realtime.events`)."""

from __future__ import annotations

import uuid

import pytest
from sqlmodel import select

from tests.fixtures.services import TEST_REDIS_URL, eventually
from weflux.db import Database
from weflux.models import Organization
from weflux.realtime.broker import InProcessBroker, Message, RedisBroker
from weflux.realtime.events import EventName, publish_after_commit, workspace_channel
from weflux.runtime import create_redis


class RecordingBroker(InProcessBroker):
    """Records each call: one `publish_many` per committed transaction."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[tuple[str, Message]]] = []

    async def publish_many(self, messages: list[tuple[str, Message]]) -> None:
        self.calls.append(list(messages))
        await super().publish_many(messages)


def _names(call: list[tuple[str, Message]]) -> list[str]:
    return [message["id"] for _, message in call]


async def test_a_transactions_events_go_out_together_in_order_after_its_commit(
    db: Database, org: Organization
) -> None:
    broker = RecordingBroker()
    async with db.session(org.id) as session:
        await session.exec(select(Organization))  # a transaction is open
        for n in range(3):
            publish_after_commit(session, broker, org.id, EventName.MESSAGE_ADDED, id=n)
        assert broker.calls == []  # nothing before the commit
    assert [_names(call) for call in broker.calls] == [["0", "1", "2"]]
    channel, message = broker.calls[0][0]
    assert channel == workspace_channel(org.id)
    assert message["event"] == EventName.MESSAGE_ADDED
    assert message["eid"]


async def test_nothing_of_a_rolled_back_unit_goes_out(db: Database, org: Organization) -> None:
    broker = RecordingBroker()

    async def failing_unit() -> None:
        async with db.session(org.id) as session:
            await session.exec(select(Organization))
            publish_after_commit(session, broker, org.id, EventName.MESSAGE_ADDED, id="undone")
            raise RuntimeError("the unit fails")

    with pytest.raises(RuntimeError):
        await failing_unit()
    assert broker.calls == []


async def test_each_transaction_of_a_session_publishes_its_own_events(
    db: Database, org: Organization
) -> None:
    broker = RecordingBroker()
    async with db.session(org.id) as session:
        await session.exec(select(Organization))
        publish_after_commit(session, broker, org.id, EventName.MESSAGE_ADDED, id="first")
        await session.commit()
        await session.exec(select(Organization))
        publish_after_commit(session, broker, org.id, EventName.MESSAGE_ADDED, id="second")
    # both committed; each transaction's events form their own batch
    assert sorted(_names(call)[0] for call in broker.calls) == ["first", "second"]


async def test_redis_publishes_a_batch_in_order(require_redis: None) -> None:
    publisher_redis, listener_redis = create_redis(TEST_REDIS_URL), create_redis(TEST_REDIS_URL)
    publisher, listener = RedisBroker(publisher_redis), RedisBroker(listener_redis)
    await listener.start()
    try:
        await listener.wait_connected()
        channel, other = f"test:{uuid.uuid4().hex}", f"test:{uuid.uuid4().hex}"
        received: list[Message] = []

        async def handler(message: Message) -> None:
            received.append(message)

        await listener.subscribe(channel, handler)
        await listener.subscribe(other, handler)
        await publisher.publish_many(
            [(channel, {"n": 1}), (other, {"n": 2}), (channel, {"n": 3, "text": "héllo"})]
        )
        await eventually(lambda: len(received) == 3)
        assert received == [{"n": 1}, {"n": 2}, {"n": 3, "text": "héllo"}]
    finally:
        await listener.stop()
        await publisher.stop()
        await publisher_redis.aclose()
        await listener_redis.aclose()


async def test_a_bare_rollback_forgets_what_its_transaction_queued(
    db: Database, org: Organization
) -> None:
    """A rollback not made by `db.session` or `settle` (a caller's own `session.rollback()`)
    still discards its transaction's events: the session's next commit sends only its own."""
    broker = RecordingBroker()
    async with db.session(org.id) as session:
        await session.exec(select(Organization))
        publish_after_commit(session, broker, org.id, EventName.MESSAGE_ADDED, id="undone")
        await session.rollback()
        await session.exec(select(Organization))
        publish_after_commit(session, broker, org.id, EventName.MESSAGE_ADDED, id="kept")
    assert [_names(call) for call in broker.calls] == [["kept"]]
