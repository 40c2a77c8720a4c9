"""Subscriptions: live inbox events over graphql-transport-ws.

Events on the broker carry ids only. Each subscriber loads what an event names through
its own scoped unit of work (workspace, and for an Agent the visibility rule), so an
Agent never receives a conversation they cannot see, and a reassignment away stops the
flow at once. `messageAdded(after:)` replays from the database, then continues live
without a gap or a duplicate: live events are buffered during the replay and
de-duplicated by id, and after a broker reconnection the subscription catches up from
the database.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator
from datetime import timedelta
from typing import Any

import strawberry
from graphql import ExecutionResult
from sqlmodel import col, select
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.types import Info

from weflux.auth.permissions import Permission
from weflux.gql.channels.types import WhatsAppAccount, to_whatsapp_account
from weflux.gql.context import Context
from weflux.gql.inbox.types import Conversation, Message, to_conversation, to_message
from weflux.gql.loaders import Loaders
from weflux.gql.permissions import requires
from weflux.gql.types import decode_cursor
from weflux.ids import decode_global_id
from weflux.models import Conversation as ConversationRow
from weflux.models import Message as MessageRow
from weflux.models import WhatsAppAccount as WhatsAppAccountRow
from weflux.models import utcnow
from weflux.realtime.hub import RESYNC, Hub, SlowConsumer, next_event

READ = [requires(Permission.READ_WORKSPACE)]
REPLAY_PAGE = 100
# How far back a catch-up looks before the newest message seen: messages committed late
# (a transaction that began earlier and ended later) still carry an older id.
LATE_COMMIT_WINDOW = timedelta(seconds=60)
SEEN_LIMIT = 10_000
SLOW_CONSUMER_CLOSE = 4008


def uuid_floor(moment_ms: int) -> uuid.UUID:
    """The smallest UUIDv7 of a millisecond: every message id made then or later is above."""
    return uuid.UUID(int=moment_ms << 80)


def _moment_ms(row_id: uuid.UUID) -> int:
    return row_id.int >> 80


class _Seen:
    """The ids already delivered, bounded."""

    def __init__(self) -> None:
        self._ids: OrderedDict[uuid.UUID, None] = OrderedDict()
        self.newest_ms = 0

    def __contains__(self, row_id: uuid.UUID) -> bool:
        return row_id in self._ids

    def add(self, row_id: uuid.UUID) -> None:
        self._ids[row_id] = None
        self.newest_ms = max(self.newest_ms, _moment_ms(row_id))
        while len(self._ids) > SEEN_LIMIT:
            self._ids.popitem(last=False)


class _Shared:
    """One event as one visibility class sees it: loaded once, shared by its subscribers."""

    def __init__(self, context: Context) -> None:
        self.row: asyncio.Future[Any] | None = None
        self.loaders = Loaders(context)
        self.converted: Any = None

    def convert(self, row: Any, to_type: Any) -> Any:
        """The GraphQL object of the row, one for the whole class (see SharedResults)."""
        if self.converted is None:
            self.converted = to_type(row)
            share_results(self.converted)
        return self.converted

    async def load(self, context: Context, model: type[Any], row_id: uuid.UUID) -> Any:
        if self.row is None:
            self.row = asyncio.ensure_future(context.unit.get(model, row_id))
        try:
            return await asyncio.shield(self.row)
        except Exception:
            # The subscriber that started the load went away mid-way: load for ourselves.
            return await context.unit.get(model, row_id)


class EventMemo:
    """Recent events by (event, visibility class); bounded, oldest dropped first."""

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self._entries: OrderedDict[tuple[str, str, str], _Shared] = OrderedDict()

    def get(self, occurrence: str, row_id: uuid.UUID, context: Context) -> _Shared:
        principal = context.actor
        visibility = (
            "all"
            if principal.can(Permission.SEE_ALL_CONVERSATIONS)
            else f"agent:{principal.membership_id}"
        )
        key = (occurrence, str(row_id), visibility)
        shared = self._entries.get(key)
        if shared is None:
            shared = self._entries[key] = _Shared(context)
            while len(self._entries) > self.limit:
                self._entries.popitem(last=False)
        return shared


_RESULTS = "_weflux_shared_results"


def share_results(root: Any) -> None:
    """Let every subscriber of one visibility class reuse the execution of `root`."""
    object.__setattr__(root, _RESULTS, {})


class SharedEventExecutionContext(StrawberryGraphQLCoreExecutionContext):
    """Executes a live event's selection set once per visibility class and document.

    Subscribers of one class receive the same root object (see `_Shared.convert`); the
    result of executing one document with one set of variables on it is the same for
    all of them, so it is computed once and each subscriber gets its own copy of the
    result's envelope (extensions such as error masking replace `errors` on it).

    Invariant: no field reachable from a subscription payload may depend on the caller
    beyond the visibility class (today none reads `info.context.actor`); a field that
    does must not be shared this way.
    """

    def execute_operation(self, serially: bool | None = None) -> Any:
        results = getattr(self.root_value, _RESULTS, None)
        location = self.operation.loc
        if results is None or location is None:
            return super().execute_operation(serially)
        try:
            variables = json.dumps(self.variable_values.coerced, sort_keys=True, default=str)
        except (TypeError, ValueError):
            return super().execute_operation(serially)
        key = (location.source.body, location.start, location.end, variables)
        shared = results.get(key)
        if shared is None:
            outcome = super().execute_operation(serially)
            if not self.is_awaitable(outcome):
                return outcome
            shared = results[key] = asyncio.ensure_future(outcome)
        return _own_copy(shared)


async def _own_copy(shared: asyncio.Future[Any]) -> ExecutionResult:
    result = await asyncio.shield(shared)
    return ExecutionResult(
        data=result.data,
        errors=list(result.errors) if result.errors else None,
        extensions=result.extensions,
    )


def event_key(event: dict[str, Any]) -> str:
    """The occurrence an event names (a fresh key when it carries none: nothing shared)."""
    eid = event.get("eid")
    return eid if isinstance(eid, str) and eid else uuid.uuid4().hex


def _memo(info: Info) -> EventMemo:
    state = info.context.request.app.state
    memo: EventMemo | None = getattr(state, "event_memo", None)
    if memo is None:
        memo = state.event_memo = EventMemo()
    return memo


async def _deliver(
    info: Info, occurrence: str, model: type[Any], row_id: uuid.UUID, to_type: Any
) -> AsyncGenerator[tuple[Any, Any], None]:
    """The row an event names and its GraphQL object, as this caller may see them."""
    context = info.context
    shared = _memo(info).get(occurrence, row_id, context)
    async with context.event_unit(shared.loaders):
        row = await shared.load(context, model, row_id)
        if row is not None:
            yield row, shared.convert(row, to_type)


def _hub(info: Info) -> Hub:
    hub: Hub = info.context.request.app.state.hub
    return hub


async def _close_slow(info: Info) -> None:
    await info.context.request.close(code=SLOW_CONSUMER_CLOSE, reason="Too slow: resume with after")


async def _replay(
    info: Info, floor: uuid.UUID, conversation_id: uuid.UUID | None, seen: _Seen
) -> AsyncGenerator[Message, None]:
    """Every visible message above `floor`, oldest first, not yet delivered.

    Each page is read in a unit of its own that ends before its first message is sent,
    so no transaction stays open while a client drains its socket; each message is then
    delivered in an event unit of its own, with DataLoaders shared across the page.
    """
    while True:
        async with info.context.event_unit():
            query = (
                select(MessageRow)
                .where(col(MessageRow.id) > floor)
                .order_by(col(MessageRow.id))
                .limit(REPLAY_PAGE)
            )
            if conversation_id is not None:
                query = query.where(MessageRow.conversation_id == conversation_id)
            rows = list((await info.context.unit.exec(query)).all())
        loaders = Loaders(info.context)
        for row in rows:
            if row.id in seen:
                continue
            seen.add(row.id)
            async with info.context.event_unit(loaders):
                yield to_message(row)
        if len(rows) < REPLAY_PAGE:
            return
        floor = rows[-1].id


@strawberry.type(description="Live events. Authenticate in `connection_init`.")
class Subscription:
    @strawberry.subscription(
        description=(
            "New messages, inbound and outbound, visible to the caller. With `after` (a "
            "Message cursor) every visible message after it is replayed first, then the "
            "stream goes on live with no gap and no duplicate."
        ),
        permission_classes=READ,
    )
    async def message_added(
        self,
        info: Info,
        conversation_id: strawberry.ID | None = None,
        after: str | None = None,
    ) -> AsyncGenerator[Message, None]:
        context = info.context
        only = decode_global_id(conversation_id, "Conversation") if conversation_id else None
        floor = decode_cursor(after) if after else None
        started_ms = int(utcnow().timestamp() * 1000)
        seen = _Seen()
        async with _hub(info).listen(context.actor.org_id) as listener:
            listener.on_overflow = lambda: _close_slow(info)
            if floor is not None:
                async for message in _replay(info, floor, only, seen):
                    yield message
            while True:
                try:
                    event = await next_event(listener)
                except SlowConsumer:
                    await _close_slow(info)
                    return
                if event is None:
                    continue
                if event is RESYNC or event.get("event") == RESYNC["event"]:
                    since_ms = max(seen.newest_ms, started_ms) - int(
                        LATE_COMMIT_WINDOW.total_seconds() * 1000
                    )
                    catch_up = uuid_floor(since_ms)
                    if floor is not None and floor > catch_up:
                        catch_up = floor
                    async for message in _replay(info, catch_up, only, seen):
                        yield message
                    continue
                if event.get("event") != "messageAdded":
                    continue
                try:
                    message_id = uuid.UUID(event["id"])
                    in_conversation = uuid.UUID(event["conversation_id"])
                except (KeyError, ValueError):
                    continue
                if message_id in seen or (only is not None and in_conversation != only):
                    continue
                async for row, message in _deliver(
                    info, event_key(event), MessageRow, message_id, to_message
                ):
                    seen.add(row.id)
                    yield message

    @strawberry.subscription(
        description="Status changes of visible messages (sent, delivered, read, failed).",
        permission_classes=READ,
    )
    async def message_updated(
        self, info: Info, conversation_id: strawberry.ID | None = None
    ) -> AsyncGenerator[Message, None]:
        only = decode_global_id(conversation_id, "Conversation") if conversation_id else None
        async for message in _follow(
            info, "messageUpdated", MessageRow, to_message, conversation=only
        ):
            yield message

    @strawberry.subscription(
        description="Visible conversations that are new, assigned, or changed status, "
        "unread count or last message.",
        permission_classes=READ,
    )
    async def conversation_updated(self, info: Info) -> AsyncGenerator[Conversation, None]:
        async for conversation in _follow(
            info, "conversationUpdated", ConversationRow, to_conversation
        ):
            yield conversation

    @strawberry.subscription(
        description="Quality rating, limit tier and status changes of the workspace's numbers.",
        permission_classes=READ,
    )
    async def whats_app_account_updated(self, info: Info) -> AsyncGenerator[WhatsAppAccount, None]:
        async for account in _follow(
            info, "whatsAppAccountUpdated", WhatsAppAccountRow, to_whatsapp_account
        ):
            yield account


async def _follow(
    info: Info,
    name: str,
    model: type[Any],
    to_type: Any,
    *,
    conversation: uuid.UUID | None = None,
) -> AsyncGenerator[Any, None]:
    """The rows that the workspace's `name` events point at, as this caller may see them."""
    async with _hub(info).listen(info.context.actor.org_id) as listener:
        listener.on_overflow = lambda: _close_slow(info)
        while True:
            try:
                event = await next_event(listener)
            except SlowConsumer:
                await _close_slow(info)
                return
            if event is None or event.get("event") != name:
                continue
            try:
                row_id = uuid.UUID(event["id"])
                in_conversation = (
                    uuid.UUID(event["conversation_id"]) if conversation is not None else None
                )
            except (KeyError, ValueError):
                continue
            if conversation is not None and in_conversation != conversation:
                continue
            async for _, converted in _deliver(info, event_key(event), model, row_id, to_type):
                yield converted
