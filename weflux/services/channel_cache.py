"""What webhooks need to know about numbers, cached per process, evicted on change.

A webhook asked the database three times about the same `whatsapp_accounts` row: which
channel a keyed URL names, its secrets (decrypted), and the routes of its phone number
(issue 11). `ChannelCache` keeps those answers in the process. A committed write to
`whatsapp_accounts` through a session of the app's `Database` that may change one evicts,
here and, through the broker, in every other process (`CHANNEL`), so the next webhook
after a rotation or a disconnection, on any process, reads the new state:
- a write that says which numbers it wrote and can only change or remove their answers
  (their secrets, display number, workspace, a disconnection: `NAMED_COLUMNS`; a
  deletion) evicts the answers naming those numbers alone; misses and the live keys
  (weflux.services.live_keys) stay true. The numbers are read from the flushed rows, and
  from an UPDATE or DELETE's parameters (the ORM's bulk update by key) or WHERE (`id =`,
  `id IN`);
- any other (a new number, a key, a phone number or business account id, a
  disconnection undone, a column not classified, rows not held to ids, SQL in words
  naming the table) evicts everything, the live keys' generation with it.
Writes of `QUIET_COLUMNS` alone (health, quality, limits, status, bookkeeping stamps:
with 10,000 numbers, several a second) evict nothing.

The broker's message names the numbers (`change_message`); one that names none, or
cannot be read, evicts everything. So during a rolling deploy an older process, which
reads no names, evicts everything on a newer one's message, and a newer one on an
older one's: never less. The CLI's writes (`weflux demo`, `keys rotate`, a restore) are
announced the same way through Redis (weflux.cli).

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

import itertools
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator
from typing import Any

from sqlalchemy import Column, event, inspect
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import (
    BinaryExpression,
    BindParameter,
    BooleanClauseList,
    ClauseElement,
    TextClause,
)

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
_EVICTIONS_KEPT = 64  # a load that outlived more is not kept
# session.info: what this transaction wrote, once it queued the Database's `channels_changed`.
_WRITTEN_KEY = "weflux.channels_written"
_ACCOUNTS = str(WhatsAppAccount.__tablename__)
_COLUMNS = frozenset(WhatsAppAccount.__table__.columns.keys())  # type: ignore[attr-defined]


def change_message(ids: Iterable[uuid.UUID] | None) -> Message:
    """What `CHANNEL` carries: the numbers written (`ids`), or none named (evict all).
    A process that knows no `ids` (an older one) evicts all: never less."""
    if ids is None:
        return {"changed": True}
    return {"changed": True, "ids": sorted(str(i) for i in ids)}


def _message_ids(message: Message) -> frozenset[uuid.UUID] | None:
    """The numbers a message names; None (all) when it names none or cannot be read."""
    ids = message.get("ids") if isinstance(message, dict) else None
    if not isinstance(ids, list):
        return None
    try:
        return frozenset(uuid.UUID(str(i)) for i in ids)
    except ValueError:
        return None


class ChannelCache:
    """Answers about numbers, valid until a number they name changes, or any number
    changes in a way that may add answers (or `TTL_SECONDS` pass)."""

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
        # Bumped when everything is evicted (the live keys' too); `_evictions` by any,
        # the last ones' numbers in `_evicted` (None: all), for the loads under way.
        self.generation = 0
        self._evictions = 0
        self._evicted: deque[frozenset[uuid.UUID] | None] = deque(maxlen=_EVICTIONS_KEPT)
        # key -> (expires, answer, the numbers it names; None: any change evicts it)
        self._entries: dict[Hashable, tuple[float, Any, frozenset[uuid.UUID] | None]] = {}
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
        self,
        key: Hashable,
        load: Callable[[], Awaitable[Any]],
        *,
        remember_miss: bool = False,
        names: Callable[[Any], Iterable[uuid.UUID]] | None = None,
    ) -> Any:
        """The cached answer for `key`, else `load()`'s, cached unless a change happened
        while it loaded (it may be stale already). A None answer is cached only with
        `remember_miss`, as a miss (`MISS_TTL_SECONDS`, at most `MAX_MISSES`).
        `names(answer)`: the numbers an answer is built from, so that a change of
        another number keeps it; without it any change evicts it."""
        if not self.usable:
            return await load()
        now = self.clock()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            return entry[1]
        if remember_miss and self._missed(key, now):
            return None
        evictions = self._evictions
        value = await load()
        named = frozenset() if value is None else None if names is None else frozenset(names(value))
        if self._evicted_since(evictions, named):
            return value
        if value is not None:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = (now + self.ttl, value, named)
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

    def __len__(self) -> int:
        return len(self._entries)

    def _missed(self, key: Hashable, now: float) -> bool:
        expires = self._misses.get(key)
        if expires is None:
            return False
        if expires <= now:
            del self._misses[key]
            return False
        self._misses.move_to_end(key)
        return True

    def _evicted_since(self, evictions: int, named: frozenset[uuid.UUID] | None) -> bool:
        """Whether an eviction since the `evictions`-th may concern an answer naming
        `named` (None: any does); one too old to be kept may."""
        since = self._evictions - evictions
        if since > len(self._evicted):
            return True
        return any(
            ids is None or named is None or not named.isdisjoint(ids)
            for ids in itertools.islice(self._evicted, len(self._evicted) - since, None)
        )

    def clear(self) -> None:
        self.generation += 1
        self._evictions += 1
        self._evicted.append(None)
        self._entries.clear()
        self._misses.clear()

    def evict(self, ids: frozenset[uuid.UUID] | None) -> None:
        """Evict the answers naming these numbers (and those naming none known), or all
        (`ids` None). A write that names its numbers adds no answer (see
        `NAMED_COLUMNS`): misses and the live keys stay true."""
        if ids is None:
            self.clear()
            return
        self._evictions += 1
        self._evicted.append(ids)
        self._entries = {
            key: entry
            for key, entry in self._entries.items()
            if entry[2] is not None and entry[2].isdisjoint(ids)
        }

    async def changed(self, ids: frozenset[uuid.UUID] | None = None) -> None:
        """A write to whatsapp_accounts committed (of these numbers; None: unknown ones,
        or ones that may add answers): evict here and in every process."""
        self.evict(ids)
        try:
            await self.broker.publish(CHANNEL, change_message(ids))
        except Exception:
            log.exception("could not announce a channel change; other processes expire it")

    async def _heard(self, message: Message) -> None:
        self.evict(_message_ids(message))

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


# Columns whose write changes only the answers naming that number, never adds one: a
# write of these (and quiet ones) by known ids evicts those numbers' answers alone. The
# others (the key, the phone number and business account ids, the id, a disconnection
# undone, a column not named here) may make a number answer where it did not: all.
NAMED_COLUMNS = frozenset(
    {
        "org_id",
        "display_phone_number",
        "app_secret_enc",
        "webhook_verify_token_enc",
    }
)
_DISCONNECTED = "disconnected_at"  # named when set, not when cleared (a reconnection)


class WrittenNumbers:
    """The numbers a transaction (or a CLI command's transactions) wrote, as far as it
    can tell (`ids` None: unknown; empty: none)."""

    def __init__(self) -> None:
        self.ids: set[uuid.UUID] | None = set()

    def add(self, ids: Iterable[uuid.UUID] | None) -> None:
        if ids is None or self.ids is None:
            self.ids = None
        else:
            self.ids.update(ids)

    def named(self) -> frozenset[uuid.UUID] | None:
        return None if self.ids is None else frozenset(self.ids)


def _queue_change(session: Session, ids: Iterable[uuid.UUID] | None) -> None:
    listener = session.info.get(CHANNELS_CHANGED_KEY)
    if listener is None:
        return
    written: WrittenNumbers | None = session.info.get(_WRITTEN_KEY)
    if written is None:
        fresh = session.info[_WRITTEN_KEY] = WrittenNumbers()
        after_commit_of(session, lambda: listener(fresh.named()))
        written = fresh
    written.add(ids)


def _evicting(names: Iterable[Any]) -> bool:
    """Whether a write of these columns (names, or columns of the table) may change a
    cached answer: any not known quiet does (an unnamed one too)."""
    return any(name not in QUIET_COLUMNS for name in _names(names))


def _names(columns: Iterable[Any]) -> Iterator[str | None]:
    for name in columns:
        yield name if isinstance(name, str) else getattr(name, "name", None)


def _by_id(names: Iterable[str | None], disconnected: Any) -> bool:
    """Whether a write of these columns changes only its numbers' answers: each named or
    quiet, and a disconnection only set (`disconnected`: its new value, None unknown)."""
    for name in names:
        if name == _DISCONNECTED:
            if disconnected is None:
                return False
        elif name not in NAMED_COLUMNS and name not in QUIET_COLUMNS:
            return False
    return True


def _changed_columns(account: WhatsAppAccount) -> Iterator[str]:
    """The attributes of a flushed row whose value changed (a value set again is none)."""
    state = inspect(account)
    for key in state.committed_state:
        if state.attrs[key].history.has_changes():
            yield key


@event.listens_for(ScopedSession, "after_flush")
def _flushed(session: Session, _context: Any) -> None:
    # After a flush, before its history is reset: what it wrote is still the history.
    for obj in session.new:
        if isinstance(obj, WhatsAppAccount):
            _queue_change(session, None)  # a new number: new answers
            return
    for obj in session.deleted:
        if isinstance(obj, WhatsAppAccount):
            _queue_change(session, [obj.id])  # its answers gone, none added
    for obj in session.dirty:
        if not isinstance(obj, WhatsAppAccount):
            continue
        changed = list(_changed_columns(obj))
        if _evicting(changed):
            named = _by_id(changed, obj.disconnected_at)
            _queue_change(session, [obj.id] if named else None)


def _set_columns(state: ORMExecuteState) -> Iterator[Any]:
    """What an UPDATE writes: its SET clause's columns, and its parameters named after a
    column (these set it); other names are only bound values. The ORM's bulk update by
    primary key (an entity's UPDATE without WHERE, given rows) finds rows by `id`."""
    statement = state.statement
    yield from getattr(statement, "_values", None) or ()
    rows, by_key = _rows(state)
    written = _COLUMNS - {"id"} if by_key else _COLUMNS
    for row in rows:
        yield from (name for name in row if name in written)


def _rows(state: ORMExecuteState) -> tuple[list[Any], bool]:
    """An execution's parameter rows, and whether they are the ORM's bulk update by key."""
    parameters = state.parameters
    rows = list(parameters) if isinstance(parameters, list | tuple) else [parameters or {}]
    by_key = (
        isinstance(parameters, list | tuple)
        and state.is_orm_statement
        and not getattr(state.statement, "_where_criteria", ())
    )
    return rows, by_key


def _literal(value: Any) -> Any:
    """A bound value's Python value (None when it is SQL, or unknown)."""
    if isinstance(value, BindParameter):
        return None if value.callable is not None else value.value
    return None if isinstance(value, ClauseElement) else value


def _where_ids(statement: Any) -> list[uuid.UUID] | None:
    """The ids a WHERE holds its rows to (`id = x`, `id IN (...)` among its ANDed
    criteria), else None."""
    for criterion in getattr(statement, "_where_criteria", ()):
        anded = isinstance(criterion, BooleanClauseList) and criterion.operator is operators.and_
        for clause in criterion.clauses if anded else [criterion]:
            if not isinstance(clause, BinaryExpression):
                continue
            column = clause.left
            if not (isinstance(column, Column) and column.name == "id"):
                continue
            if column.table.name != _ACCOUNTS:
                continue
            value = _literal(clause.right)
            if clause.operator is operators.eq and isinstance(value, uuid.UUID):
                return [value]
            if (
                clause.operator is operators.in_op
                and isinstance(value, list | tuple)
                and all(isinstance(i, uuid.UUID) for i in value)
            ):
                return list(value)
    return None


def _update_ids(state: ORMExecuteState) -> list[uuid.UUID] | None:
    """The numbers an UPDATE or DELETE writes, when the statement says (else None)."""
    rows, by_key = _rows(state)
    if by_key:
        ids = [row.get("id") for row in rows if isinstance(row, dict)]
        known = [i for i in ids if isinstance(i, uuid.UUID)]
        return known if len(known) == len(rows) else None
    if rows != [{}]:
        return None  # bound values of its own: not read
    return _where_ids(state.statement)


def _set_disconnection(state: ORMExecuteState) -> Any:
    values = getattr(state.statement, "_values", None) or {}
    for column, value in values.items():
        if next(_names([column])) == _DISCONNECTED:
            return _literal(value)
    return None


@event.listens_for(ScopedSession, "do_orm_execute")
def _bulk_write(state: ORMExecuteState) -> None:
    statement = state.statement
    if isinstance(statement, TextClause):
        # SQL in words is not parsed: naming the table is enough (fail safe).
        if _ACCOUNTS in statement.text.lower():
            _queue_change(state.session, None)
        return
    if not (state.is_update or state.is_delete or state.is_insert):
        return
    table = getattr(statement, "table", None)
    if getattr(table, "name", None) != _ACCOUNTS:
        return
    if state.is_insert:
        _queue_change(state.session, None)
    elif state.is_delete:
        _queue_change(state.session, _update_ids(state))
    else:
        columns = list(_names(_set_columns(state)))
        if _evicting(columns):
            named = _by_id(columns, _set_disconnection(state))
            _queue_change(state.session, _update_ids(state) if named else None)


@event.listens_for(ScopedSession, "after_soft_rollback")
def _rolled_back(session: Session, _transaction: Any) -> None:
    session.info.pop(_WRITTEN_KEY, None)


@event.listens_for(ScopedSession, "after_commit")
def _committed(session: Session) -> None:
    session.info.pop(_WRITTEN_KEY, None)
