"""The counts feed: bursts coalesce, the final state is pushed, alike subscribers share.

Real hub and in-process broker; the counting function is the feed's own seam (what a
subscription passes in: one statement through the subscriber's scope), here a tally of
a state the test sets, recording who counted.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta

import pytest

from weflux.auth.principal import Principal
from weflux.models import Role, utcnow
from weflux.realtime.broker import InProcessBroker
from weflux.realtime.counts import Count, CountsFeed
from weflux.realtime.events import EventName, workspace_channel
from weflux.realtime.hub import Hub
from weflux.services.inbox_counts import Assigned, InboxCounts, InboxTally

ORG = uuid.uuid4()


def _principal(role: Role) -> Principal:
    return Principal(
        user_id=uuid.uuid4(),
        org_id=ORG,
        session_id=uuid.uuid4(),
        membership_id=uuid.uuid4(),
        role=role,
        token_expires_at=utcnow() + timedelta(hours=1),
    )


class Inbox:
    """The state the counting function reads: unassigned open conversations, and who
    counted (one entry per statement)."""

    def __init__(self) -> None:
        self.unassigned = 0
        self.counted_by: list[uuid.UUID] = []
        self.failures = 0  # the next counts that fail (the database away)

    def counter(self, principal: Principal) -> Count:
        async def count() -> InboxTally:
            self.counted_by.append(principal.membership_id)
            if self.failures:
                self.failures -= 1
                raise ConnectionError("the database is away")
            return InboxTally({None: Assigned(self.unassigned, 0)})

        return count


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    broker = InProcessBroker()
    hub = Hub(broker)
    await hub.start()
    yield hub
    await hub.stop()


async def _changed(hub: Hub, event: EventName = EventName.CONVERSATION_UPDATED) -> None:
    await hub.broker.publish(workspace_channel(ORG), {"event": event, "id": str(uuid.uuid4())})


async def _next(values: AsyncIterator[InboxCounts]) -> InboxCounts:
    return await asyncio.wait_for(anext(values), 5)


def _unassigned(n: int) -> InboxCounts:
    return InboxCounts(mine=0, unassigned=n, all=n, unread=0)


async def test_a_burst_is_counted_once_and_its_final_state_is_pushed(hub: Hub) -> None:
    """Given a subscriber that has its first counts,
    when fifty changes are published at once, then one recount follows and the next value
    is the state after the last of them; and when two more come within the interval after
    that recount, the next value is still the final one, counted once more."""
    feed = CountsFeed(hub, interval=0.05)
    inbox = Inbox()
    admin = _principal(Role.ADMIN)
    async with feed.subscribe(ORG, lambda: admin, inbox.counter(admin)) as subscriber:
        values = subscriber.values()
        assert await _next(values) == _unassigned(0)

        for n in range(1, 51):
            inbox.unassigned = n
            await _changed(hub)
        assert await _next(values) == _unassigned(50)
        assert len(inbox.counted_by) == 2

        inbox.unassigned = 51
        await _changed(hub)
        inbox.unassigned = 52
        await _changed(hub)
        assert await _next(values) == _unassigned(52)
        assert len(inbox.counted_by) == 3
    await feed.stop()


async def test_members_who_see_alike_share_one_count(hub: Hub) -> None:
    """Given an Admin, a Manager and an Agent following their counts,
    when a conversation changes, then one count serves the Admin and the Manager and one
    is the Agent's, and each gets the new value."""
    feed = CountsFeed(hub, interval=0.0)
    inbox = Inbox()
    people = [_principal(Role.ADMIN), _principal(Role.MANAGER), _principal(Role.AGENT)]
    async with (
        feed.subscribe(ORG, lambda: people[0], inbox.counter(people[0])) as first,
        feed.subscribe(ORG, lambda: people[1], inbox.counter(people[1])) as second,
        feed.subscribe(ORG, lambda: people[2], inbox.counter(people[2])) as third,
    ):
        streams = [s.values() for s in (first, second, third)]
        for stream in streams:
            assert await _next(stream) == _unassigned(0)
        inbox.counted_by.clear()

        inbox.unassigned = 1
        await _changed(hub)
        for stream in streams:
            assert await _next(stream) == _unassigned(1)

        assert len(inbox.counted_by) == 2
        assert people[2].membership_id in inbox.counted_by
    await feed.stop()


async def test_a_role_change_is_counted_at_once(hub: Hub) -> None:
    """Given a Manager following their counts, just recounted after a change (the next
    recount for changes is an hour away),
    when their role changes and the authenticator says so, then they are counted at once
    with the new role."""
    feed = CountsFeed(hub, interval=3600.0)
    inbox = Inbox()
    manager = _principal(Role.MANAGER)
    current = [manager]
    async with feed.subscribe(ORG, lambda: current[0], inbox.counter(manager)) as subscriber:
        values = subscriber.values()
        assert await _next(values) == _unassigned(0)
        inbox.unassigned = 1
        await _changed(hub)
        assert await _next(values) == _unassigned(1)
        inbox.unassigned = 3
        current[0] = replace(manager, role=Role.AGENT)

        await feed.on_revocation(set(), {manager.membership_id})

        assert await _next(values) == _unassigned(3)
        assert len(inbox.counted_by) == 3
    await feed.stop()


async def test_a_count_that_fails_is_counted_again(hub: Hub) -> None:
    """Given a subscriber whose first two counts fail (the database away),
    when the database answers again, then the subscriber gets its counts without any
    further event."""
    feed = CountsFeed(hub, interval=0.01)
    inbox = Inbox()
    inbox.failures = 2
    inbox.unassigned = 4
    admin = _principal(Role.ADMIN)
    async with feed.subscribe(ORG, lambda: admin, inbox.counter(admin)) as subscriber:
        assert await _next(subscriber.values()) == _unassigned(4)
        assert len(inbox.counted_by) == 3
    await feed.stop()
