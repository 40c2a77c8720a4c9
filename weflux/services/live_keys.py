"""Every live webhook key's digest, per process: an unknown key is refused without a read.

`/webhooks/whatsapp/{webhookKey}` looks its key up in the database (through the channel
cache, weflux.services.channel_cache). Random keys, each new, would each cost a read.
`LiveKeys` holds the digests of every live number's key (the first 8 bytes of SHA-256,
`crossings.webhook_key_digest`: never the keys; on PostgreSQL the database digests them,
weflux_live_webhook_key_digests), sorted in an array of 8 bytes a key (800 KB for 100,000
numbers). A key whose digest is absent names no live number: 404 at once. A digest
present goes on to the lookup (a key of another's digest, 1 in 2**64 per live key,
costs that read and answers right).

It is trusted only while it is current, else the lookup is made as before:
- loaded in the channel cache's present generation: a committed write through the app
  (or the CLI, through Redis) that evicts everything (a new number, a key, a
  disconnection undone among others; not a health stamp: its `QUIET_COLUMNS`; not a
  write of named numbers' secrets or a disconnection: these add no key), here or
  (through the broker) elsewhere, and the broker's reconnection, start a new one;
- while the channel cache is usable (started, the broker connected);
- for `MAX_AGE_SECONDS` after its load began: a key written outside the app and its CLI
  (SQL by hand, another tool; the CLI without Redis) sends no message, and works within
  that bound.
An asked key that finds it not current starts one rebuild in the background (at most
one at a time, at most one start per `MIN_REBUILD_SECONDS`); requests do not wait for it.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import sys
import time
from array import array
from collections.abc import Callable

from weflux.auth import crossings
from weflux.db import Database, begin_read_only
from weflux.services.channel_cache import MISS_TTL_SECONDS, ChannelCache

log = logging.getLogger(__name__)

MAX_AGE_SECONDS = MISS_TTL_SECONDS  # as a remembered miss: a key made outside the app
MIN_REBUILD_SECONDS = 1.0


def _number(digest: bytes) -> int:
    return int.from_bytes(digest, sys.byteorder)  # as array("Q") reads the loaded bytes


class LiveKeys:
    """The digests of the live webhook keys, trusted while current (see the module)."""

    def __init__(
        self,
        db: Database,
        cache: ChannelCache,
        *,
        max_age: float = MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        digest: Callable[[str], bytes] = crossings.webhook_key_digest,
    ) -> None:
        self.db = db
        self.cache = cache
        self.max_age = max_age
        self.clock = clock
        self.digest = digest  # tests inject collisions
        self._digests = array("Q")
        self._generation: int | None = None  # the cache's, when the load began
        self._loaded_at = 0.0
        self._started_at: float | None = None  # the last rebuild's start
        self._rebuild: asyncio.Task[None] | None = None

    @property
    def current(self) -> bool:
        return (
            self._generation == self.cache.generation
            and self.cache.usable
            and self.clock() - self._loaded_at < self.max_age
        )

    def __len__(self) -> int:
        return len(self._digests)

    @property
    def nbytes(self) -> int:
        """The memory of the digests themselves."""
        return self._digests.itemsize * len(self._digests)

    def may_be_live(self, key: str) -> bool:
        """False only when `key` certainly names no live number (current, digest absent);
        when not current, True, and a rebuild is started."""
        if not self.current:
            self._start_rebuild()
            return True
        number = _number(self.digest(key))
        index = bisect.bisect_left(self._digests, number)
        return index < len(self._digests) and self._digests[index] == number

    def _start_rebuild(self) -> None:
        if self._rebuild is not None or not self.cache.usable:
            return
        now = self.clock()
        if self._started_at is not None and now - self._started_at < MIN_REBUILD_SECONDS:
            return
        self._started_at = now
        self._rebuild = asyncio.create_task(self._load(), name="weflux-live-keys")
        self._rebuild.add_done_callback(self._rebuilt)

    def _rebuilt(self, task: asyncio.Task[None]) -> None:
        self._rebuild = None
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("live webhook keys not loaded", exc_info=error)

    async def _load(self) -> None:
        generation, began = self.cache.generation, self.clock()
        async with self.db.session() as session:
            await begin_read_only(session)
            blob = await crossings.live_webhook_key_digests(session)
        digests = array("Q")
        digests.frombytes(blob)
        if generation != self.cache.generation:
            return  # a change while it loaded: it may be stale already
        self._digests = array("Q", sorted(digests))
        self._generation, self._loaded_at = generation, began

    async def load(self) -> None:
        """Rebuild now and wait for it (tests, benchmarks); current unless a change came."""
        if self._rebuild is not None:
            await asyncio.shield(self._rebuild)
        self._started_at = None
        self._start_rebuild()
        if self._rebuild is not None:
            await asyncio.shield(self._rebuild)

    async def settled(self) -> None:
        """Once a rebuild under way (if any) has ended."""
        if self._rebuild is not None:
            await asyncio.gather(asyncio.shield(self._rebuild), return_exceptions=True)

    async def stop(self) -> None:
        if self._rebuild is not None:
            self._rebuild.cancel()
            await asyncio.gather(self._rebuild, return_exceptions=True)
            self._rebuild = None
        self._digests, self._generation = array("Q"), None
