"""The process's fan-out point between the broker and live subscriptions.

One broker subscription per workspace channel while anyone in this process listens to
that workspace (not one per socket). Each listener gets a bounded queue: a subscriber
that cannot keep up is cut off (`SlowConsumer`) instead of growing the server's memory.
When the broker reconnects, every listener is told to catch up from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from weflux.realtime.broker import Broker, Message, Unsubscribe
from weflux.realtime.events import EventName, workspace_channel

log = logging.getLogger(__name__)

QUEUE_LIMIT = 1_000
_background: set[asyncio.Future[None]] = set()
RESYNC: Message = {"event": EventName.RESYNC}


class SlowConsumer(Exception):
    """A listener's queue overflowed: it must reconnect (and resume with `after`)."""


@dataclass(eq=False)
class _Listener:
    queue: asyncio.Queue[Message] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    overflowed: bool = False
    # Called once on overflow: the subscriber may be stuck writing to a slow socket and
    # never come back for the next event, so the cut cannot wait for it.
    on_overflow: Callable[[], Awaitable[None]] | None = None


@dataclass(eq=False)
class _Channel:
    listeners: set[_Listener] = field(default_factory=set)
    unsubscribe: Unsubscribe | None = None


class Hub:
    """Workspace events for live subscriptions, fanned out inside the process."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._channels: dict[uuid.UUID, _Channel] = {}
        self._lock = asyncio.Lock()
        self._remove_reconnect: Callable[[], None] | None = None

    async def start(self) -> None:
        self._remove_reconnect = self.broker.on_reconnect(self._on_reconnect)

    async def stop(self) -> None:
        if self._remove_reconnect is not None:
            self._remove_reconnect()
        async with self._lock:
            channels, self._channels = self._channels, {}
        for channel in channels.values():
            if channel.unsubscribe is not None:
                await channel.unsubscribe()

    @property
    def listener_count(self) -> int:
        return sum(len(c.listeners) for c in self._channels.values())

    @contextlib.asynccontextmanager
    async def listen(self, org_id: uuid.UUID) -> AsyncIterator[_Listener]:
        """Receive the workspace's events (and RESYNC markers) until the block ends."""
        listener = _Listener()
        async with self._lock:
            channel = self._channels.get(org_id)
            if channel is None:
                channel = self._channels[org_id] = _Channel()
                channel.unsubscribe = await self.broker.subscribe(
                    workspace_channel(org_id), self._dispatcher(org_id)
                )
            channel.listeners.add(listener)
        try:
            yield listener
        finally:
            async with self._lock:
                channel.listeners.discard(listener)
                if not channel.listeners and self._channels.get(org_id) is channel:
                    del self._channels[org_id]
                    if channel.unsubscribe is not None:
                        await channel.unsubscribe()

    def _dispatcher(self, org_id: uuid.UUID) -> Callable[[Message], Awaitable[None]]:
        async def dispatch(message: Message) -> None:
            channel = self._channels.get(org_id)
            if channel is None:
                return
            for listener in channel.listeners:
                _offer(listener, message)

        return dispatch

    async def _on_reconnect(self) -> None:
        for channel in self._channels.values():
            for listener in channel.listeners:
                _offer(listener, RESYNC)


def _offer(listener: _Listener, message: Message) -> None:
    if listener.overflowed:
        return
    try:
        listener.queue.put_nowait(message)
    except asyncio.QueueFull:
        listener.overflowed = True
        log.warning("a live subscriber fell behind and is being disconnected")
        if listener.on_overflow is not None:
            task = asyncio.ensure_future(listener.on_overflow())
            _background.add(task)
            task.add_done_callback(_background.discard)


async def next_event(listener: _Listener, *, timeout: float | None = None) -> Message | None:  # noqa: ASYNC109
    """The next message, None on timeout; SlowConsumer once the listener has overflowed."""
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
    return message
