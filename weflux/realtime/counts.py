"""Live inbox counts: recounted after the events that may change them, pushed on change.

Per workspace with a subscriber in this process, one hub listener and one counting task.
The events that can move a count (a conversation changed, a bulk change, a broker
reconnection) mark the workspace stale; the task then recounts at most once per
`interval`, and an event that arrives during a recount or the interval after it makes
one more recount at the end of it, so a burst costs a few recounts and the final state
is always pushed. A recount runs one statement per visibility class (every Admin and
Manager of the workspace share one; each Agent has their own), through the scoped
session of one subscriber of that class (weflux.services.inbox_counts), and pushes to a
subscriber only what differs from what it was last given. A new subscriber, and one whose
role changed (told by the authenticator's revocation listener, after the socket registry
has refreshed its principal), is counted at once, outside the interval.

Recounts of one workspace run one after another in its task, so a later snapshot never
overtakes an earlier one. Each subscriber keeps only the latest value it has not taken
yet: a slow client skips intermediate values, never the last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from weflux.auth.principal import Principal, visibility_class
from weflux.realtime.events import EventName
from weflux.realtime.hub import RESYNC, Hub, SlowConsumer, next_event
from weflux.services.inbox_counts import InboxCounts, InboxTally
from weflux.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# How often a workspace's counts are recounted at most under a burst of events.
COALESCE_SECONDS = 0.25
# The events after which counts may differ: every change of a conversation's status,
# assignee, unread count or existence publishes one of these.
COUNTED_EVENTS = frozenset({EventName.CONVERSATION_UPDATED, EventName.INBOX_COUNTS_UPDATED})

Count = Callable[[], Awaitable[InboxTally]]


@dataclass(eq=False)
class CountsSubscriber:
    """One live subscription: who it is now, how to count as them, what it was given."""

    principal: Callable[[], Principal | None]
    count: Count
    last: InboxCounts | None = None
    _latest: InboxCounts | None = None
    _ready: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, counts: InboxCounts) -> None:
        """Hand `counts` over unless it is what this subscriber was last given."""
        if counts == self.last:
            return
        self.last = self._latest = counts
        self._ready.set()

    async def values(self) -> AsyncIterator[InboxCounts]:
        """Each new value, the latest one when several came while the client was busy."""
        given: InboxCounts | None = None
        while True:
            await self._ready.wait()
            self._ready.clear()
            value, self._latest = self._latest, None
            # A then B then A again while the client was busy: it still has A.
            if value is not None and value != given:
                given = value
                yield value


class _Workspace:
    """The subscribers of one workspace in this process, and the task that counts for them."""

    def __init__(self, hub: Hub, org_id: uuid.UUID, interval: float) -> None:
        self.hub = hub
        self.org_id = org_id
        self.interval = interval
        self.subscribers: set[CountsSubscriber] = set()
        self.fresh: set[CountsSubscriber] = set()
        self.stale = False
        self.failing = False
        self.wake = asyncio.Event()
        self.listening = asyncio.Event()
        self.tasks = [
            asyncio.create_task(self._listen(), name="weflux-counts-listen"),
            asyncio.create_task(self._count(), name="weflux-counts-count"),
        ]

    def add(self, subscriber: CountsSubscriber) -> None:
        self.subscribers.add(subscriber)
        self.recount_now([subscriber])

    def recount_now(self, subscribers: Iterable[CountsSubscriber]) -> None:
        self.fresh.update(subscribers)
        self.wake.set()

    def mark_stale(self) -> None:
        self.stale = True
        self.wake.set()

    async def stop(self) -> None:
        await cancel_and_wait(*self.tasks)

    async def _listen(self) -> None:
        while True:
            async with self.hub.listen(self.org_id, events=_WAKING) as listener:
                self.listening.set()
                try:
                    while True:
                        event = await next_event(listener)
                        if event is RESYNC or (event and event.get("event") in _WAKING):
                            self.mark_stale()
                except SlowConsumer:
                    pass
            # Events were dropped: count again, and listen afresh.
            self.mark_stale()

    async def _count(self) -> None:
        # Listening before the first count: no event between the two is missed.
        await self.listening.wait()
        loop = asyncio.get_running_loop()
        last = -math.inf
        while True:
            now = loop.time()
            due = self.stale and now >= last + self.interval
            if self.fresh or due:
                batch = set(self.subscribers) if due else set(self.fresh)
                self.fresh.clear()
                if due:
                    self.stale = False
                    last = now
                await self._recount(batch)
                continue
            self.wake.clear()
            wait = last + self.interval - now if self.stale else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), wait)

    async def _recount(self, batch: set[CountsSubscriber]) -> None:
        classes: dict[str, list[tuple[CountsSubscriber, Principal]]] = {}
        for subscriber in batch & self.subscribers:
            principal = subscriber.principal()
            if principal is not None:
                classes.setdefault(visibility_class(principal), []).append((subscriber, principal))
        for members in classes.values():
            try:
                tally = await members[0][0].count()
            except Exception:
                # Counted again after the interval (the database may be back by then);
                # logged once per outage, not at every retry.
                if not self.failing:
                    log.warning("could not count the inbox", exc_info=True)
                self.failing = True
                self.stale = True
                continue
            self.failing = False
            for subscriber, principal in members:
                subscriber.offer(tally.counts_for(principal.membership_id))


_WAKING = frozenset({*COUNTED_EVENTS, EventName.RESYNC})


class CountsFeed:
    """The process's live inbox counts, by workspace."""

    def __init__(self, hub: Hub, *, interval: float = COALESCE_SECONDS) -> None:
        self.hub = hub
        self.interval = interval
        self._workspaces: dict[uuid.UUID, _Workspace] = {}
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def subscribe(
        self, org_id: uuid.UUID, principal: Callable[[], Principal | None], count: Count
    ) -> AsyncIterator[CountsSubscriber]:
        """Follow the counts of `principal` (read again at each count: roles change),
        counted by `count` (one statement through their scoped session)."""
        subscriber = CountsSubscriber(principal=principal, count=count)
        async with self._lock:
            workspace = self._workspaces.get(org_id)
            if workspace is None:
                workspace = self._workspaces[org_id] = _Workspace(self.hub, org_id, self.interval)
            workspace.add(subscriber)
        try:
            yield subscriber
        finally:
            async with self._lock:
                workspace.subscribers.discard(subscriber)
                workspace.fresh.discard(subscriber)
                if not workspace.subscribers and self._workspaces.get(org_id) is workspace:
                    del self._workspaces[org_id]
                    await workspace.stop()

    async def stop(self) -> None:
        async with self._lock:
            workspaces, self._workspaces = self._workspaces, {}
        for workspace in workspaces.values():
            await workspace.stop()

    async def on_revocation(self, sessions: set[uuid.UUID], memberships: set[uuid.UUID]) -> None:
        """Recount members whose role may have changed (everyone after a broker outage).

        An authenticator's revocation listener, registered after the socket registry's so
        that the sockets' principals are fresh when it runs.
        """
        everyone = not sessions and not memberships
        for workspace in list(self._workspaces.values()):
            changed = [
                s
                for s in workspace.subscribers
                if everyone or ((p := s.principal()) is not None and p.membership_id in memberships)
            ]
            if changed:
                workspace.recount_now(changed)
