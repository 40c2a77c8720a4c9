"""The process's fan-out point between the broker and live subscriptions.

One broker subscription per workspace channel while anyone in this process listens to
that workspace (not one per socket). Each listener gets a bounded queue: a subscriber
that cannot keep up is cut off (`SlowConsumer`) instead of growing the server's memory.
When the broker reconnects, every listener is told to catch up from the database.

Shared fan-out: listeners opened under `sharing(...)` with the same key (a caller's
visibility class, the operation's document and variables) would produce the very same
frames, so only the first (the group's leader) receives events; the others are parked
and receive, from the socket layer, a copy of each frame the leader sends
(`weflux.gql.fanout`). When the leader leaves, the next member takes over with the
leader's unprocessed events (so no gap); a member whose access changed, or all members
when the leader's did, is released to listen on its own from the event in flight.

Dormant members: a listener opened with `restartable=True` (its generator keeps no state
that a fresh start would lose) does not stay suspended as a follower: `Dormant` is raised
out of `Hub.listen`, its operation ends without a frame and keeps only its id on the
socket and its place in the group (a few hundred bytes instead of a task, a generator and
Strawberry's execution state). When it must lead (hand-over) or listen on its own
(release), its `wake` restarts the operation, which adopts the waiting listener, backlog
included, when it listens again. `Hub.forget` removes one whose operation ended meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Hashable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from weflux.realtime.broker import Broker, Message, Unsubscribe
from weflux.realtime.events import EventName, workspace_channel

log = logging.getLogger(__name__)

QUEUE_LIMIT = 1_000
_background: set[asyncio.Future[None]] = set()
RESYNC: Message = {"event": EventName.RESYNC}


class Dormant(BaseException):
    """Raised out of `Hub.listen` when a restartable listener joins a group as a follower.

    A BaseException, so that no `except Exception` on the way (graphql-core, Strawberry,
    our extensions) turns it into an error frame: the socket layer catches it.
    """


class SlowConsumer(Exception):
    """A listener's queue overflowed: it must reconnect (and resume with `after`)."""


class _Inbox:
    """A bounded FIFO for one reader: what asyncio.Queue does, in a few hundred bytes.

    One per live subscription (asyncio.Queue costs about 3 KiB each: three deques and an
    Event); its deque exists only while messages wait.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[Message] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, message: Message) -> None:
        if self._items is None:
            self._items = deque()
        elif len(self._items) >= QUEUE_LIMIT:
            raise asyncio.QueueFull
        self._items.append(message)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def get_nowait(self) -> Message:
        if not self._items:
            raise asyncio.QueueEmpty
        message = self._items.popleft()
        if not self._items:
            self._items = None
        return message

    def pending(self) -> list[Message]:
        return list(self._items or ())

    async def get(self) -> Message:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.get_nowait()


@dataclass(eq=False, slots=True)
class _Listener:
    queue: _Inbox = field(default_factory=_Inbox)
    overflowed: bool = False
    # Called once on overflow: the subscriber may be stuck writing to a slow socket and
    # never come back for the next event, so the cut cannot wait for it.
    on_overflow: Callable[[], Awaitable[None]] | None = None
    # The event being processed (handed to a successor if the listener leads a group).
    current: Message | None = None
    group: Group | None = None
    member: Any = None
    org_id: uuid.UUID | None = None
    # A dormant follower has no operation running; `wake` restarts it (see the module doc).
    dormant: bool = False
    waking: bool = False  # woken: its restarted operation has yet to adopt it
    wake: Callable[[], None] | None = None
    # The event names it handles (None: all); RESYNC always reaches it. Others are never
    # queued: no wake-up of its task per event it would skip.
    events: frozenset[str] | None = None


class Member(Protocol):
    """What a group needs of a member (a subscription's sink on its socket)."""

    @property
    def changed(self) -> bool:
        """Its access changed since it joined: it must not share any more."""
        ...

    async def close_slow(self) -> None: ...


@dataclass(eq=False, slots=True)
class Sharing:
    """Set around an operation: listeners with equal `key()` share one leader's frames."""

    key: Callable[[], Hashable | None]
    member: Member
    listener: _Listener | None = None
    # Only the operation's own task shares: a task it spawns (a feed serving many
    # subscribers, say) inherits the context variable but is not this operation.
    task: asyncio.Task[Any] | None = None
    # How to restart the operation of a dormant member (None: its members never sleep).
    wake: Callable[[], None] | None = None


_sharing: ContextVar[Sharing | None] = ContextVar("weflux_hub_sharing", default=None)


@contextlib.contextmanager
def sharing(share: Sharing | None) -> Iterator[None]:
    """Listeners opened in this block (this task) may join a group (see the module doc).

    The task is let go when the block ends: a dormant member's operation task is over
    by then, and held by its sharing it stayed in memory with its coroutine and context
    (about 1 KiB per idle socket) for the socket's life. Only if it is still this task:
    a restart (`wake`) begun before this block ended has set its own."""
    task = asyncio.current_task()
    if share is not None:
        share.task = task
    token = _sharing.set(share)
    try:
        yield
    finally:
        _sharing.reset(token)
        if share is not None and share.task is task:
            share.task = None


@dataclass(eq=False)
class _Channel:
    listeners: set[_Listener] = field(default_factory=set)
    unsubscribe: Unsubscribe | None = None
    groups: set[Group] = field(default_factory=set)


@dataclass(eq=False)
class Group:
    """Listeners whose frames are identical: one leader listens, the others are parked."""

    channel: _Channel
    key: tuple[uuid.UUID, Hashable]
    leader: _Listener
    registry: dict[tuple[uuid.UUID, Hashable], Group]
    followers: dict[_Listener, Any] = field(default_factory=dict)  # insertion order

    def delivered(self) -> None:
        """The leader's frame for its current event went out to every member."""
        current = self.leader.current
        if current is not None and current is not RESYNC:
            self.leader.current = None

    def _backlog(self) -> list[Message]:
        """What the leader has yet to deliver: its event in flight, then its queue."""
        leader = self.leader
        pending = [leader.current] if leader.current is not None else []
        pending.extend(leader.queue.pending())
        return pending

    def release(self, listener: _Listener) -> None:
        """`listener` listens on its own, from the leader's first undelivered event on."""
        if self.followers.pop(listener, None) is None:
            return
        listener.group = None
        for message in self._backlog():
            _offer(listener, message)
        self.channel.listeners.add(listener)
        _wake(listener)

    def dissolve(self) -> None:
        """Every member listens on its own (the leader's access changed)."""
        for listener in list(self.followers):
            self.release(listener)
        self.leader.group = None
        self.channel.groups.discard(self)
        if self.registry.get(self.key) is self:
            del self.registry[self.key]

    def refresh(self) -> None:
        """Before an event: members whose access changed stop sharing."""
        if self.leader.member.changed:
            self.dissolve()
            return
        for listener, member in list(self.followers.items()):
            if member.changed:
                self.release(listener)

    def hand_over(self) -> None:
        """The leader leaves: the first follower leads, from the leader's backlog on."""
        leaving = self.leader
        if leaving.overflowed:
            # Events were lost for the whole group: every member must resume.
            for member in self.followers.values():
                _spawn(member.close_slow())
        backlog = self._backlog()
        successor = next(iter(self.followers))
        del self.followers[successor]
        for message in backlog:
            _offer(successor, message)
        self.leader = successor
        self.channel.listeners.add(successor)
        _wake(successor)


class Hub:
    """Workspace events for live subscriptions, fanned out inside the process."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._channels: dict[uuid.UUID, _Channel] = {}
        self._lock = asyncio.Lock()
        self._remove_reconnect: Callable[[], None] | None = None
        self._groups: dict[tuple[uuid.UUID, Hashable], Group] = {}

    async def start(self) -> None:
        self._remove_reconnect = self.broker.on_reconnect(self._on_reconnect)

    async def stop(self) -> None:
        if self._remove_reconnect is not None:
            self._remove_reconnect()
        async with self._lock:
            channels, self._channels = self._channels, {}
            self._groups.clear()
        for channel in channels.values():
            if channel.unsubscribe is not None:
                await channel.unsubscribe()

    @property
    def listener_count(self) -> int:
        parked = sum(len(g.followers) for g in self._groups.values())
        return parked + sum(len(c.listeners) for c in self._channels.values())

    @contextlib.asynccontextmanager
    async def listen(
        self,
        org_id: uuid.UUID,
        *,
        restartable: bool = False,
        events: Collection[str] | None = None,
    ) -> AsyncIterator[_Listener]:
        """Receive the workspace's events (and RESYNC markers) until the block ends.

        `restartable`: the caller may be ended (`Dormant`) while it follows a group, and
        started again when it must listen (see the module doc). `events`: only these
        event names are queued for it (and RESYNC markers); None: every event.
        """
        woken = _adoptable()
        if woken is not None and woken.org_id == org_id:
            woken.waking = False  # already placed (leader or alone), its backlog queued
            listener = woken
        else:
            listener = _Listener(
                org_id=org_id, events=None if events is None else _handled(frozenset(events))
            )
            async with self._lock:
                channel = self._channels.get(org_id)
                if channel is None:
                    channel = self._channels[org_id] = _Channel()
                    channel.unsubscribe = await self.broker.subscribe(
                        workspace_channel(org_id), self._dispatcher(org_id)
                    )
                self._join(org_id, channel, listener, restartable=restartable)
        try:
            yield listener
        finally:
            await self.forget(listener)

    async def forget(self, listener: _Listener) -> None:
        """`listener` stops listening (its block ended, or its dormant operation did)."""
        listener.dormant = listener.waking = False
        listener.wake = None
        async with self._lock:
            self._leave(listener)
            channel = self._channels.get(listener.org_id) if listener.org_id else None
            if channel is None:
                return
            channel.listeners.discard(listener)
            if not channel.listeners and not channel.groups:
                del self._channels[cast("uuid.UUID", listener.org_id)]
                if channel.unsubscribe is not None:
                    await channel.unsubscribe()

    def _join(
        self, org_id: uuid.UUID, channel: _Channel, listener: _Listener, *, restartable: bool
    ) -> None:
        share = _sharing.get()
        if share is not None and (
            share.listener is not None or share.task is not asyncio.current_task()
        ):
            share = None
        key = share.key() if share is not None else None
        if share is None or key is None:
            channel.listeners.add(listener)
            return
        share.listener = listener
        listener.member = share.member
        group = self._groups.get((org_id, key))
        if group is not None:
            group.refresh()  # a leader whose access changed leads no one new
        group = self._groups.get((org_id, key))
        if group is None or group.channel is not channel:
            group = Group(channel, (org_id, key), listener, self._groups)
            self._groups[(org_id, key)] = group
            channel.groups.add(group)
            channel.listeners.add(listener)
        else:
            group.followers[listener] = share.member
            listener.group = group
            if restartable and share.wake is not None:
                listener.dormant = True
                listener.wake = share.wake
                raise Dormant
        listener.group = group

    def _leave(self, listener: _Listener) -> None:
        group, listener.group = listener.group, None
        if group is None:
            return
        if listener is not group.leader:
            group.followers.pop(listener, None)
        elif group.followers:
            group.hand_over()
        else:
            group.channel.groups.discard(group)
            if self._groups.get(group.key) is group:
                del self._groups[group.key]

    def _dispatcher(self, org_id: uuid.UUID) -> Callable[[Message], Awaitable[None]]:
        async def dispatch(message: Message) -> None:
            channel = self._channels.get(org_id)
            if channel is None:
                return
            for group in list(channel.groups):
                group.refresh()
            for listener in channel.listeners:
                _offer(listener, message)

        return dispatch

    async def _on_reconnect(self) -> None:
        for channel in self._channels.values():
            for listener in channel.listeners:
                _offer(listener, RESYNC)


@functools.lru_cache(maxsize=64)
def _handled(events: frozenset[str]) -> frozenset[str]:
    """The names a listener of `events` is queued, RESYNC with them: one set for all its
    listeners (the names come from the code; a set each was 216 bytes per subscription)."""
    return frozenset({*events, EventName.RESYNC})


def _adoptable() -> _Listener | None:
    """The woken listener that this task's restarted operation takes back, if any."""
    share = _sharing.get()
    if share is None or share.task is not asyncio.current_task():
        return None
    listener = share.listener
    return listener if listener is not None and listener.waking else None


def _wake(listener: _Listener) -> None:
    """A dormant listener that must now listen: restart its operation."""
    if not listener.dormant:
        return
    wake, listener.wake = listener.wake, None
    listener.dormant = False
    listener.waking = True
    if wake is not None:
        wake()


def _offer(listener: _Listener, message: Message) -> None:
    if listener.overflowed:
        return
    if listener.events is not None and message.get("event") not in listener.events:
        return  # an event it does not handle
    try:
        listener.queue.put_nowait(message)
    except asyncio.QueueFull:
        listener.overflowed = True
        log.warning("a live subscriber fell behind and is being disconnected")
        if listener.on_overflow is not None:
            _spawn(listener.on_overflow())


def _spawn(job: Awaitable[None]) -> None:
    task = asyncio.ensure_future(job)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def next_event(listener: _Listener, *, timeout: float | None = None) -> Message | None:  # noqa: ASYNC109
    """The next message, None on timeout; SlowConsumer once the listener has overflowed."""
    listener.current = None  # the previous one was processed
    if listener.overflowed and listener.queue.empty():
        raise SlowConsumer
    try:
        if timeout is None:
            message = await listener.queue.get()
        else:
            message = await asyncio.wait_for(listener.queue.get(), timeout)
    except TimeoutError:
        return None
    if listener.overflowed and listener.queue.empty():
        raise SlowConsumer
    listener.current = message
    return message
