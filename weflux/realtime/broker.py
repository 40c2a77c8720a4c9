"""The broker: publish/subscribe by exact channel, in-process or over Redis.

One interface, two implementations. The Redis one holds a single pub/sub connection
per process (not per socket), subscribes to exact channels only while something in
the process listens (no pattern subscriptions: each taxes every PUBLISH), reconnects
with backoff, resubscribes, and then tells its listeners that messages may have been
missed (`on_reconnect`) so they can catch up from the database. Events it could not
publish are kept (up to `UNSENT_LIMIT`) and go out on reconnection, with the next publish,
or on a retry timer, whichever comes first: oldest first, each once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from weflux.backoff import exponential_backoff
from weflux.redis_errors import redis_errors
from weflux.tasks import cancel_and_wait

if TYPE_CHECKING:  # redis-py is imported only by a process that has WEFLUX_REDIS_URL
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

log = logging.getLogger(__name__)

Message = dict[str, Any]
UNSENT_LIMIT = 10_000
# How long one publish (or one kept event's) may take before its events are kept instead.
PUBLISH_TIMEOUT = 5.0
# A subscription that has heard nothing for `QUIET_PING` seconds sends a PING; heard
# nothing `PING_TIMEOUT` seconds after it, it is taken for lost and reconnected. A Redis
# that vanished without a reset (a partition, a host gone) otherwise left the process
# deaf, its subscribers told nothing, until TCP gave up (redis-py's own health check
# sends its PING but never misses the answer).
QUIET_PING = 5.0
PING_TIMEOUT = 5.0
Handler = Callable[[Message], Awaitable[None]]
Unsubscribe = Callable[[], Awaitable[None]]
ReconnectListener = Callable[[], Awaitable[None]]


class Broker(ABC):
    """Publish/subscribe by exact channel name."""

    def __init__(self) -> None:
        self._handlers: dict[str, set[Handler]] = {}
        self._reconnect_listeners: set[ReconnectListener] = set()

    @property
    def connected(self) -> bool:
        """Whether messages published now will reach this process."""
        return True

    async def start(self) -> None:  # noqa: B027  (optional hook)
        """Open connections."""

    async def stop(self) -> None:  # noqa: B027
        """Close connections."""

    @abstractmethod
    async def publish(self, channel: str, message: Message) -> None:
        """Deliver `message` to every subscriber of `channel` in every process."""

    async def publish_many(self, messages: list[tuple[str, Message]]) -> None:
        """`publish` each (channel, message), in order."""
        for channel, message in messages:
            await self.publish(channel, message)

    async def subscribe(self, channel: str, handler: Handler) -> Unsubscribe:
        """Call `handler` for each message on `channel` until the returned function is awaited."""
        handlers = self._handlers.setdefault(channel, set())
        first = not handlers
        handlers.add(handler)
        if first:
            await self._channel_opened(channel)

        async def unsubscribe() -> None:
            current = self._handlers.get(channel)
            if current is None or handler not in current:
                return
            current.discard(handler)
            if not current:
                del self._handlers[channel]
                await self._channel_closed(channel)

        return unsubscribe

    def on_reconnect(self, listener: ReconnectListener) -> Callable[[], None]:
        """Be told after a reconnection (messages may have been missed meanwhile)."""
        self._reconnect_listeners.add(listener)
        return lambda: self._reconnect_listeners.discard(listener)

    async def _channel_opened(self, channel: str) -> None:  # noqa: B027
        """The first local subscriber of `channel` arrived."""

    async def _channel_closed(self, channel: str) -> None:  # noqa: B027
        """The last local subscriber of `channel` left."""

    async def _dispatch(self, channel: str, message: Message) -> None:
        for handler in list(self._handlers.get(channel, ())):
            try:
                await handler(message)
            except Exception:
                log.exception("broker handler failed", extra={"channel": channel})

    async def _notify_reconnected(self) -> None:
        for listener in list(self._reconnect_listeners):
            try:
                await listener()
            except Exception:
                log.exception("broker reconnect listener failed")


class InProcessBroker(Broker):
    """One process only: publish calls the subscribers directly."""

    async def publish(self, channel: str, message: Message) -> None:
        if not self._handlers.get(channel):
            return  # nobody listens (this is the only process): nothing to copy (issue 11)
        # Round-trip through JSON so both implementations hand over the same shapes.
        await self._dispatch(channel, json.loads(json.dumps(message, default=str)))


class RedisBroker(Broker):
    """Redis pub/sub with one connection per process.

    `publisher`, if given, is the client events are published with (the broker closes
    it on `stop`): a client of the same Redis without a socket timeout
    (`create_redis(url, socket_timeout=None)`), each publish bounded by `PUBLISH_TIMEOUT`
    here instead. With a socket timeout redis-py bounds each write with
    `asyncio.wait_for`, which before Python 3.12 runs the write in a task of its own: a
    task and a turn of the event loop more before every event leaves (issue 11, goal 4).
    """

    def __init__(
        self,
        redis: Redis,
        *,
        publisher: Redis | None = None,
        backoff_base: float = 0.1,
        backoff_cap: float = 5.0,
    ) -> None:
        super().__init__()
        self._redis = redis
        self._publisher = publisher
        self._errors = redis_errors()
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._lock = asyncio.Lock()
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._stopping = False
        self._unsent: deque[tuple[str, str]] = deque()  # (channel, payload), oldest first
        self._flushing = False
        self._dropped = 0  # kept events dropped (the oldest) since the list was last empty
        # Publishes the kept events on a timer: a publish can fail while the subscription
        # stays up, and then no reconnection would flush them (a quiet workspace's event
        # would wait for the next publish, maybe for good).
        self._retry: asyncio.Task[None] | None = None
        # Set by redis-py when it reconnects the subscription by itself (its own retry
        # resubscribes without raising): the reader then reports it like any reconnection.
        self._reconnected_silently = False

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def start(self) -> None:
        self._stopping = False
        self._reader = asyncio.create_task(self._run(), name="weflux-broker-reader")

    async def wait_connected(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def stop(self) -> None:
        self._stopping = True
        retry, self._retry = self._retry, None
        if retry is not None:
            await cancel_and_wait(retry)
        if self._unsent:
            log.warning(
                "broker stopped with kept events unpublished", extra={"count": len(self._unsent)}
            )
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await cancel_and_wait(reader)
        await self._close_pubsub()
        if self._publisher is not None:
            await self._publisher.aclose()

    async def publish(self, channel: str, message: Message) -> None:
        """Publish now; while Redis is unreachable, keep it and publish it again later (on
        reconnection, with the next publish, or by the retry timer).

        Subscribers de-duplicate by id, so a late copy is harmless, while a lost one would
        leave a live view behind until its next catch-up.
        """
        await self._send([(channel, json.dumps(message, default=str))])

    async def publish_many(self, messages: list[tuple[str, Message]]) -> None:
        """Publish all, in order, in one round trip (a pipeline, no transaction); while
        Redis is unreachable, keep them as `publish` does."""
        await self._send(
            [(channel, json.dumps(message, default=str)) for channel, message in messages]
        )

    async def _send(self, payloads: list[tuple[str, str]]) -> None:
        if not self._unsent and not self._flushing:
            redis = self._publisher or self._redis
            try:
                async with asyncio.timeout(PUBLISH_TIMEOUT):
                    if len(payloads) == 1:
                        await redis.publish(*payloads[0])
                    else:
                        async with redis.pipeline(transaction=False) as pipe:
                            for channel, payload in payloads:
                                pipe.publish(channel, payload)
                            await pipe.execute()
                return
            except self._errors:
                log.warning("broker unreachable: events are kept and published again")
        # Behind events kept earlier (or being published now): they go first.
        self._unsent.extend(payloads)
        self._trim_unsent()
        with contextlib.suppress(*self._errors):
            await self._flush_unsent()
        if self._unsent:
            self._schedule_retry()

    def _trim_unsent(self) -> None:
        """Past `UNSENT_LIMIT` the oldest kept events are dropped (memory stays bounded);
        subscribers catch up from the database on reconnection, not after a drop alone."""
        excess = len(self._unsent) - UNSENT_LIMIT
        if excess <= 0:
            return
        for _ in range(excess):
            self._unsent.popleft()
        if not self._dropped:
            log.warning("broker kept events over the limit: the oldest are dropped")
        self._dropped += excess

    def _schedule_retry(self) -> None:
        """Start the retry timer unless it runs (or the broker is stopping)."""
        if self._stopping or (self._retry is not None and not self._retry.done()):
            return
        self._retry = asyncio.create_task(self._retry_unsent(), name="weflux-broker-retry")

    async def _pause(self, attempt: int) -> None:
        """The wait after `attempt` failures: jittered, capped, never near zero."""
        await asyncio.sleep(
            exponential_backoff(
                attempt, base=self._backoff_base, cap=self._backoff_cap, floor=self._backoff_base
            )
        )

    async def _retry_unsent(self) -> None:
        """Publish the kept events after a jittered, capped backoff, again until none is left.

        One attempt per delay, whatever fails (a down Redis costs a connection attempt per
        delay, never a hot loop); a publish or the reader may empty the list meanwhile.
        """
        attempt = 0
        while self._unsent and not self._stopping:
            attempt += 1
            await self._pause(attempt)
            try:
                await self._flush_unsent()
            except self._errors as exc:
                log.info("broker retry failed", extra={"error": type(exc).__name__})
            except Exception:
                # Never kept events without a retry: try again after the next delay.
                log.exception("broker retry failed")

    async def _flush_unsent(self) -> None:
        """Publish the kept events, oldest first, by one task at a time: two flushing the
        same list would publish one event twice and drop the next one unpublished. The one
        in flight is out of the list, so trimming it to its limit never drops the wrong one;
        put back when its publish fails, it is the oldest, and the first dropped if events
        kept meanwhile filled the list."""
        if self._flushing:
            return  # the flushing task publishes them all, these included
        self._flushing = True
        try:
            while self._unsent:
                item = self._unsent.popleft()
                try:
                    async with asyncio.timeout(PUBLISH_TIMEOUT):
                        await (self._publisher or self._redis).publish(*item)
                except BaseException:
                    self._unsent.appendleft(item)
                    self._trim_unsent()
                    raise
        finally:
            self._flushing = False
        if self._dropped:
            log.warning(
                "broker published its kept events; the oldest were dropped",
                extra={"dropped": self._dropped},
            )
            self._dropped = 0

    async def _channel_opened(self, channel: str) -> None:
        async with self._lock:
            if self._pubsub is not None and self.connected:
                try:
                    await self._pubsub.subscribe(channel)
                except self._errors:
                    log.warning("subscribe failed; the reader will resubscribe on reconnect")

    async def _channel_closed(self, channel: str) -> None:
        async with self._lock:
            if self._pubsub is not None and self.connected:
                with contextlib.suppress(*self._errors):
                    await self._pubsub.unsubscribe(channel)

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        self._connected.clear()
        if pubsub is not None:
            if pubsub.connection is not None:
                pubsub.connection.deregister_connect_callback(self._on_silent_reconnect)
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _connect(self) -> None:
        async with self._lock:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            # A sentinel channel keeps the connection subscribed even with no listeners.
            await pubsub.subscribe("weflux:broker", *self._handlers)
            # Registered after the first connection, so it runs only on a reconnection
            # (after redis-py's own callback has resubscribed).
            assert pubsub.connection is not None
            pubsub.connection.register_connect_callback(self._on_silent_reconnect)
            self._reconnected_silently = False
            self._pubsub = pubsub
            self._connected.set()

    async def _on_silent_reconnect(self, _connection: object) -> None:
        self._reconnected_silently = True

    async def _run(self) -> None:
        attempt = 0
        first = True
        while not self._stopping:
            try:
                await self._connect()
                await self._flush_unsent()
                if not first:
                    log.info("broker reconnected")
                    await self._notify_reconnected()
                first = False
                attempt = 0
                await self._read()
            except asyncio.CancelledError:
                raise
            except self._errors as exc:
                log.warning("broker connection lost", extra={"error": type(exc).__name__})
            except Exception:
                # Never a deaf process for good: start over, and listeners catch up.
                log.exception("broker reader failed")
            await self._close_pubsub()
            if self._stopping:
                break
            attempt += 1
            await self._pause(attempt)

    async def _read(self) -> None:
        assert self._pubsub is not None
        # Until `stop()`, not only until cancelled: a cancellation can be lost inside the
        # Redis client's read (under load: `stop()` then waited for the reader forever).
        clock = asyncio.get_running_loop().time
        heard = clock()
        pinged: float | None = None  # when the PING not answered yet was sent
        while not self._stopping:
            message = await self._pubsub.get_message(timeout=1.0)
            if message is not None:  # a message, PING's answer, a subscription's
                heard, pinged = clock(), None
            elif pinged is not None and clock() - pinged > PING_TIMEOUT:
                raise ConnectionError("the broker's subscription went silent")
            elif pinged is None and clock() - heard > QUIET_PING:
                await self._pubsub.ping()
                pinged = clock()
            if self._reconnected_silently:
                # Messages published while the connection was down were missed.
                self._reconnected_silently = False
                log.info("broker reconnected")
                await self._flush_unsent()
                await self._notify_reconnected()
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else str(channel)
            try:
                payload = json.loads(message["data"])
            except (TypeError, ValueError):
                log.warning("broker dropped a malformed message", extra={"channel": channel})
                continue
            await self._dispatch(channel, payload)
            # Let the subscribers it woke run before the next message is parsed: a
            # transaction's events arrive together (one pipeline), and `messageAdded`'s
            # read would otherwise wait behind the parsing of the `conversationUpdated`
            # that follows it (about 0.08 ms at p50 on the way to the frame; issue 11).
            await asyncio.sleep(0)
