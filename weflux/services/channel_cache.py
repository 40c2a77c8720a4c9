"""What webhooks need to know about numbers, cached per process, evicted on change.

A webhook asked the database three times about the same `whatsapp_accounts` row: which
channel a keyed URL names, its secrets (decrypted), and the routes of its phone number
(issue 11). `ChannelCache` keeps those answers in the process. A committed write to
`whatsapp_accounts` through a session of the app's `Database` that may change one (a
number connected or deleted; its key, secrets, ids, display number, workspace, or
disconnection) evicts every entry, here and, through the broker, in every other process
(`CHANNEL`). So the next webhook after a rotation or a disconnection, on any process,
reads the new state. Writes of `QUIET_COLUMNS` alone (health, quality, limits, status,
bookkeeping stamps: with 10,000 numbers, several a second) evict nothing. What a flush
wrote is read from each row's attribute history, what an UPDATE writes from its SET
columns and parameters; an INSERT, a DELETE and SQL in words naming the table always
evict.

Limits, and what covers them:
- between a commit in one process and the broker's message reaching another, that
  other process may still answer one webhook from the old state (milliseconds);
- while the broker is not connected (Redis down) the cache is bypassed, and every entry
  is dropped when it reconnects (messages may have been missed);
- a write that does not go through the app's `Database` (SQL by hand, another tool)
  is not heard: entries also expire after `TTL_SECONDS`.

Misses are remembered too, where the caller asks (`remember_miss`: a keyed URL that
names no live channel), so a stream of posts to an unknown key reads the database once
per key and `MISS_TTL_SECONDS`, not once per post. They are kept apart from the answers,
least recently used first out past `MAX_MISSES` (random keys by the million cost a
bounded memory and never push out a live channel), and evicted with them by any change:
a channel connected in any process is served at once everywhere. A key whose digest no
live key has is refused before any of this (weflux.services.live_keys), while those
digests are current: this cache's generation is theirs.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator
from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.sql.elements import TextClause

from weflux.auth.scoping import ScopedSession
from weflux.db import CHANNELS_CHANGED_KEY, after_commit_of
from weflux.models import WhatsAppAccount
from weflux.realtime.broker import Broker, Message, Unsubscribe

log = logging.getLogger(__name__)

CHANNEL = "weflux:whatsapp_accounts:changed"
TTL_SECONDS = 60.0
MAX_ENTRIES = 10_000
MISS_TTL_SECONDS = 30.0
MAX_MISSES = 10_000  # about 3 MB of 64-character keys
# session.info: whether this transaction queued the Database's `channels_changed` already.
_QUEUED_KEY = "weflux.channels_changed_queued"
_ACCOUNTS = str(WhatsAppAccount.__tablename__)
_COLUMNS = frozenset(WhatsAppAccount.__table__.columns.keys())  # type: ignore[attr-defined]


class ChannelCache:
    """Answers about numbers, valid until any number changes (or `TTL_SECONDS` pass)."""

    def __init__(
        self,
        broker: Broker,
        *,
        ttl: float = TTL_SECONDS,
        miss_ttl: float = MISS_TTL_SECONDS,
        max_misses: int = MAX_MISSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.broker = broker
        self.ttl = ttl
        self.miss_ttl = miss_ttl
        self.max_misses = max_misses
        self.clock = clock
        self.generation = 0
        self._entries: dict[Hashable, tuple[float, Any]] = {}
        # key -> when its miss expires; least recently used first.
        self._misses: OrderedDict[Hashable, float] = OrderedDict()
        self._unsubscribe: Unsubscribe | None = None
        self._forget_reconnect: Callable[[], None] | None = None

    async def start(self) -> None:
        self._unsubscribe = await self.broker.subscribe(CHANNEL, self._heard)
        self._forget_reconnect = self.broker.on_reconnect(self._reconnected)

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            await self._unsubscribe()
            self._unsubscribe = None
        if self._forget_reconnect is not None:
            self._forget_reconnect()
            self._forget_reconnect = None
        self.clear()

    @property
    def usable(self) -> bool:
        """Only while it hears about changes: started, and the broker connected."""
        return self._unsubscribe is not None and self.broker.connected

    async def get_or_load(
        self, key: Hashable, load: Callable[[], Awaitable[Any]], *, remember_miss: bool = False
    ) -> Any:
        """The cached answer for `key`, else `load()`'s, cached unless a change happened
        while it loaded (it may be stale already). A None answer is cached only with
        `remember_miss`, as a miss (`MISS_TTL_SECONDS`, at most `MAX_MISSES`)."""
        if not self.usable:
            return await load()
        now = self.clock()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            return entry[1]
        if remember_miss and self._missed(key, now):
            return None
        generation = self.generation
        value = await load()
        if generation != self.generation:
            return value
        if value is not None:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = (now + self.ttl, value)
        elif remember_miss:
            self._misses[key] = now + self.miss_ttl
            self._misses.move_to_end(key)
            if len(self._misses) > self.max_misses:
                self._misses.popitem(last=False)
        return value

    @property
    def misses(self) -> int:
        """How many misses are remembered (expired ones until they are asked for again)."""
        return len(self._misses)

    def _missed(self, key: Hashable, now: float) -> bool:
        expires = self._misses.get(key)
        if expires is None:
            return False
        if expires <= now:
            del self._misses[key]
            return False
        self._misses.move_to_end(key)
        return True

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._misses.clear()

    async def changed(self) -> None:
        """A write to whatsapp_accounts committed: evict here and in every process."""
        self.clear()
        try:
            await self.broker.publish(CHANNEL, {"changed": True})
        except Exception:
            log.exception("could not announce a channel change; other processes expire it")

    async def _heard(self, message: Message) -> None:
        self.clear()

    async def _reconnected(self) -> None:
        self.clear()


# --- hearing the writes -----------------------------------------------------------------

# Columns no cached answer is built from, so a write of these alone evicts nothing: the
# answers are built from the id, the workspace, the key, the app secret and verify token
# (a channel: weflux.api.webhooks), the phone number id, business account id and display
# number (routes: crossings.webhook_routes), and whether it is live (`disconnected_at`);
# live keys from the key and `disconnected_at`. Health, quality, limits, status and
# bookkeeping stamps are written hourly per number by the worker (weflux.worker.health)
# and by Meta's webhooks. Any column not named here evicts, a new one too (fail safe).
QUIET_COLUMNS = frozenset(
    {
        "access_token_enc",  # sending's (weflux.services.outbound), never a webhook's
        "credentials_updated_at",
        "quality_rating",
        "messaging_limit_tier",
        "throughput_level",
        "verified_name",
        "status",
        "status_detail",
        "health_checked_at",
        "templates_synced_at",
        "sandbox",
        "created_at",
    }
)


def _queue_change(session: Session) -> None:
    listener = session.info.get(CHANNELS_CHANGED_KEY)
    if listener is None or session.info.get(_QUEUED_KEY):
        return
    session.info[_QUEUED_KEY] = True
    after_commit_of(session, listener)


def _evicting(names: Iterable[Any]) -> bool:
    """Whether a write of these columns (names, or columns of the table) may change a
    cached answer: any not known quiet does (an unnamed one too)."""
    for name in names:
        if not isinstance(name, str):
            name = getattr(name, "name", None)
        if name not in QUIET_COLUMNS:
            return True
    return False


def _changed_columns(account: WhatsAppAccount) -> Iterator[str]:
    """The attributes of a flushed row whose value changed (a value set again is none)."""
    state = inspect(account)
    for key in state.committed_state:
        if state.attrs[key].history.has_changes():
            yield key


@event.listens_for(ScopedSession, "after_flush")
def _flushed(session: Session, _context: Any) -> None:
    # After a flush, before its history is reset: what it wrote is still the history.
    for obj in (*session.new, *session.deleted):
        if isinstance(obj, WhatsAppAccount):
            _queue_change(session)
            return
    for obj in session.dirty:
        if isinstance(obj, WhatsAppAccount) and _evicting(_changed_columns(obj)):
            _queue_change(session)
            return


def _set_columns(state: ORMExecuteState) -> Iterator[Any]:
    """What an UPDATE writes: its SET clause's columns, and its parameters named after a
    column (these set it); other names are only bound values. The ORM's bulk update by
    primary key (an entity's UPDATE without WHERE, given rows) finds rows by `id`."""
    statement = state.statement
    yield from getattr(statement, "_values", None) or ()
    parameters = state.parameters
    rows = parameters if isinstance(parameters, list | tuple) else [parameters or {}]
    by_key = (
        isinstance(parameters, list | tuple)
        and state.is_orm_statement
        and not getattr(statement, "_where_criteria", ())
    )
    written = _COLUMNS - {"id"} if by_key else _COLUMNS
    for row in rows:
        yield from (name for name in row if name in written)


@event.listens_for(ScopedSession, "do_orm_execute")
def _bulk_write(state: ORMExecuteState) -> None:
    statement = state.statement
    if isinstance(statement, TextClause):
        # SQL in words is not parsed: naming the table is enough (fail safe).
        if _ACCOUNTS in statement.text.lower():
            _queue_change(state.session)
        return
    if not (state.is_update or state.is_delete or state.is_insert):
        return
    table = getattr(statement, "table", None)
    if getattr(table, "name", None) != _ACCOUNTS:
        return
    if not state.is_update or _evicting(_set_columns(state)):
        _queue_change(state.session)


@event.listens_for(ScopedSession, "after_soft_rollback")
def _rolled_back(session: Session, _transaction: Any) -> None:
    session.info.pop(_QUEUED_KEY, None)


@event.listens_for(ScopedSession, "after_commit")
def _committed(session: Session) -> None:
    session.info.pop(_QUEUED_KEY, None)
