"""Subscriptions: live inbox events over graphql-transport-ws.

Events on the broker carry ids only. Each subscriber loads what an event names through
its own scoped unit of work (workspace, and for an Agent the visibility rule), so an
Agent never receives a conversation they cannot see, and a reassignment away stops the
flow at once. `messageAdded(after:)` replays from the database, then continues live
without a gap or a duplicate: live events are buffered during the replay and
de-duplicated by id, and after a broker reconnection the subscription catches up from
the database. Subscribers who see alike share one load and one execution of each event
(`weflux.gql.event_memo`).

A row is yielded from inside the event unit that read it (its fields load through that
unit), directly or by an inner generator (`_catch_up`, `_replay`). `async for`
does not close what it iterates, so each is iterated under `aclosing`: a subscription
closed while a value is out (the client went away, the server stops) ends the inner
units in its own task, their connections back in the pool at once, rather than whenever
the garbage collector finds them (tests/gql/test_live_close.py).
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, TypeVar

import strawberry
from sqlalchemy import Table, bindparam, func
from sqlalchemy import select as core_select
from sqlalchemy.orm.instrumentation import manager_of_class
from sqlmodel import col, select
from strawberry.types import Info

from weflux.auth.permissions import Permission, has_permission
from weflux.auth.scoping import ScopedRead, handed_out_head, viewing_as, workspace_wide
from weflux.errors import BadUserInput, Forbidden
from weflux.gql.channels.types import WhatsAppAccount, to_whatsapp_account
from weflux.gql.context import Context, EventUnit
from weflux.gql.event_memo import SharedEvent
from weflux.gql.inbox.team_types import Note, to_note
from weflux.gql.inbox.types import Conversation, Message, to_conversation, to_message
from weflux.gql.loaders import Loaders
from weflux.gql.permissions import guarded
from weflux.gql.security.types import SecurityEvent, to_security_event
from weflux.ids import decode_optional_global_id, encode_global_id
from weflux.models import Conversation as ConversationRow
from weflux.models import ConversationRemoval as ConversationRemovalRow
from weflux.models import Membership as MembershipRow
from weflux.models import Message as MessageRow
from weflux.models import Note as NoteRow
from weflux.models import Organization as OrganizationRow
from weflux.models import RemovalReason, listed_message, utcnow
from weflux.models import SecurityEvent as SecurityEventRow
from weflux.models import WhatsAppAccount as WhatsAppAccountRow
from weflux.pagination import decode_cursor, decode_update_cursor
from weflux.realtime.events import EventName
from weflux.realtime.hub import RESYNC, SlowConsumer, next_event

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


def event_key(event: dict[str, Any]) -> str:
    """The occurrence an event names (a fresh key when it carries none: nothing shared)."""
    eid = event.get("eid")
    return eid if isinstance(eid, str) and eid else uuid.uuid4().hex


_MESSAGES: Table = MessageRow.__table__  # type: ignore[attr-defined]
_CONVERSATIONS: Table = ConversationRow.__table__  # type: ignore[attr-defined]
# A new message with its conversation, in one statement (one round trip less on the way
# to `messageAdded`'s frame), as a Core statement built once by the scoping layer, for a
# reader of the whole workspace and for an Agent: no Session and no ORM statement
# (loader criteria, compile state, instance loading) on the way to the frame (issue 11,
# goals 3 and 4). Both tables are scoped as any read (workspace, erasure, an Agent's
# visibility); a message is visible only with its conversation, so the inner join hides
# nothing more.
_MESSAGE_AND_CONVERSATION = ScopedRead(
    lambda scope_of: (
        core_select(_MESSAGES, _CONVERSATIONS)
        .select_from(
            _MESSAGES.join(_CONVERSATIONS, _CONVERSATIONS.c.id == _MESSAGES.c.conversation_id)
        )
        .where(
            _MESSAGES.c.id == bindparam("message"),
            scope_of(_MESSAGES),
            scope_of(_CONVERSATIONS),
        )
    )
)
_MESSAGE_KEYS = tuple(column.key for column in _MESSAGES.c)
_Row = TypeVar("_Row")
_CONVERSATION_KEYS = tuple(column.key for column in _CONVERSATIONS.c)


def _loaded(model: type[_Row], keys: tuple[str, ...], values: Any) -> _Row:
    """A row of `model` made as the ORM makes a loaded one: its instance without
    `__init__`, its columns put in its dict (about a third of `model_construct`'s CPU, which
    handles each field's default and alias; the values are the database's, already
    typed by the statement's result processing)."""
    instance = manager_of_class(model).new_instance()
    instance.__dict__.update(zip(keys, values, strict=True))
    return instance


async def _message_and_conversation(
    unit: EventUnit, _model: type[Any], message_id: uuid.UUID, loaders: Loaders
) -> MessageRow | None:
    """A new message with its conversation, read by the event's unit without a Session
    (`EventUnit.fetch`): `Message.conversation` then resolves at once."""
    row = await unit.fetch(_MESSAGE_AND_CONVERSATION, {"message": message_id})
    if row is None:
        return None
    split = len(_MESSAGE_KEYS)
    message = _loaded(MessageRow, _MESSAGE_KEYS, row[:split])
    conversation = _loaded(ConversationRow, _CONVERSATION_KEYS, row[split:])
    loaders.conversation.prime(conversation.id, conversation)
    return message


# One row by id for each model `_follow` reads, built once per model on first use.
_BY_ID: dict[type[Any], tuple[ScopedRead, tuple[str, ...]]] = {}


def _by_id(model: type[Any]) -> tuple[ScopedRead, tuple[str, ...]]:
    found = _BY_ID.get(model)
    if found is None:
        table: Table = model.__table__
        read = ScopedRead(
            lambda scope_of: core_select(table).where(
                table.c.id == bindparam("row"), scope_of(table)
            )
        )
        found = _BY_ID[model] = (read, tuple(column.key for column in table.c))
    return found


async def _row_by_id(
    unit: EventUnit, model: type[Any], row_id: uuid.UUID, _loaders: Loaders
) -> Any:
    """The row an id-only event names, as the caller may see it (`EventUnit.fetch`)."""
    read, keys = _by_id(model)
    row = await unit.fetch(read, {"row": row_id})
    return None if row is None else _loaded(model, keys, row)


def _shared(info: Info[Context, None], event: dict[str, Any], row_id: uuid.UUID) -> SharedEvent:
    """The event as the caller's visibility class sees it (loaded and executed once)."""
    context = info.context
    return context.event_memo.get(event_key(event), row_id, context.actor, context.new_loaders)


async def _close_slow(info: Info[Context, None]) -> None:
    await info.context.close_socket(SLOW_CONSUMER_CLOSE, "Too slow: resume with after")


async def _replay(
    info: Info[Context, None], floor: uuid.UUID, conversation_id: uuid.UUID | None, seen: _Seen
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
                .where(col(MessageRow.id) > floor, listed_message())
                .order_by(col(MessageRow.id))
                .limit(REPLAY_PAGE)
            )
            if conversation_id is not None:
                query = query.where(MessageRow.conversation_id == conversation_id)
            rows = list((await info.context.unit.exec(query)).all())
        loaders = info.context.new_loaders()
        for row in rows:
            if row.id in seen:
                continue
            seen.add(row.id)
            async with info.context.event_unit(loaders):
                yield to_message(row)
        if len(rows) < REPLAY_PAGE:
            return
        floor = rows[-1].id


@strawberry.type(
    description="Live events over the WebSocket at /graphql (subprotocol graphql-transport-ws). "
    'Authenticate in `connection_init` with `{"Authorization": "Bearer <accessToken>"}`.'
)
class Subscription:
    @strawberry.subscription(
        **guarded(
            Permission.READ_WORKSPACE,
            "New messages, inbound and outbound, in conversations visible to the caller. "
            "With `after` every visible message after it is replayed first, then the stream "
            "goes on live with no gap and no duplicate. A client too slow to drain its "
            "socket is closed with 4008: resume with `after`.",
        )
    )
    async def message_added(
        self,
        info: Info[Context, None],
        conversation_id: Annotated[
            strawberry.ID | None,
            strawberry.argument(description="Only this conversation's; null: all visible."),
        ] = None,
        after: Annotated[
            str | None,
            strawberry.argument(
                description="A `Message.cursor`: first replay every visible message after "
                "it (to resume after a reconnection); null: live messages only."
            ),
        ] = None,
    ) -> AsyncGenerator[Message, None]:
        context = info.context
        only = decode_optional_global_id(conversation_id, "Conversation")
        floor = decode_cursor(after) if after is not None else None
        started_ms = int(utcnow().timestamp() * 1000)
        seen = _Seen()
        # Live only (no `after`), it keeps nothing a restart would lose: it may sleep.
        async with info.context.hub.listen(
            context.actor.org_id, restartable=floor is None, events=(EventName.MESSAGE_ADDED,)
        ) as listener:
            listener.on_overflow = lambda: _close_slow(info)
            if floor is not None:
                async with aclosing(_replay(info, floor, only, seen)) as items:
                    async for message in items:
                        yield message
            while True:
                try:
                    event = await next_event(listener)
                except SlowConsumer:
                    await _close_slow(info)
                    return
                if event is None:
                    continue
                if event is RESYNC or event.get("event") == EventName.RESYNC:
                    since_ms = max(seen.newest_ms, started_ms) - int(
                        LATE_COMMIT_WINDOW.total_seconds() * 1000
                    )
                    catch_up = uuid_floor(since_ms)
                    if floor is not None and floor > catch_up:
                        catch_up = floor
                    async with aclosing(_replay(info, catch_up, only, seen)) as items:
                        async for message in items:
                            yield message
                    continue
                if event.get("event") != EventName.MESSAGE_ADDED:
                    continue
                try:
                    message_id = uuid.UUID(event["id"])
                    in_conversation = uuid.UUID(event["conversation_id"])
                except (KeyError, ValueError):
                    continue
                if message_id in seen or (only is not None and in_conversation != only):
                    continue
                # The row an event names, as this caller may see it: read (once for the
                # visibility class) and yielded inside the event unit it loads through.
                shared = _shared(info, event, message_id)
                async with context.event_unit(shared.loaders):
                    row = await shared.load(
                        lambda: context.event_reader,
                        MessageRow,
                        message_id,
                        _message_and_conversation,
                    )
                    if row is not None:
                        seen.add(row.id)
                        yield shared.convert(row, to_message)

    @strawberry.subscription(
        **guarded(
            Permission.READ_WORKSPACE,
            "Changes of visible messages: status (sent, delivered, read, failed), reactions, "
            "an inbound file stored or failed (`media`): the message as it is now, in "
            "change-feed order. With `after` every visible message changed "
            "since it is replayed first (each once, as it is now), then the stream goes on "
            "live with no gap and no duplicate.",
        )
    )
    async def message_updated(
        self,
        info: Info[Context, None],
        conversation_id: Annotated[
            strawberry.ID | None,
            strawberry.argument(description="Only this conversation's; null: all visible."),
        ] = None,
        after: Annotated[
            str | None,
            strawberry.argument(
                description="A `Message.updateCursor`: first replay every visible message "
                "changed after it; null: live changes only. One this "
                "workspace's feed never handed out is BAD_USER_INPUT (`Unknown`)."
            ),
        ] = None,
    ) -> AsyncGenerator[Message, None]:
        only = decode_optional_global_id(conversation_id, "Conversation")
        async with aclosing(
            _feed(info, EventName.MESSAGE_UPDATED, MessageRow, to_message, after, conversation=only)
        ) as items:
            async for message in items:
                yield message

    @strawberry.subscription(
        **guarded(
            Permission.READ_WORKSPACE,
            "Visible conversations that are new, assigned, or changed status, unread count "
            "or last message: the conversation as it is now, in change-feed order. With "
            "`after` every visible conversation changed since it is replayed first (each "
            "once, as it is now), then the stream goes on live with no gap and no duplicate.",
        )
    )
    async def conversation_updated(
        self,
        info: Info[Context, None],
        after: Annotated[
            str | None,
            strawberry.argument(
                description="A `Conversation.updateCursor`: first replay every visible "
                "conversation changed after it; null: live changes only. One this "
                "workspace's feed never handed out is BAD_USER_INPUT (`Unknown`)."
            ),
        ] = None,
    ) -> AsyncGenerator[Conversation, None]:
        async with aclosing(
            _feed(info, EventName.CONVERSATION_UPDATED, ConversationRow, to_conversation, after)
        ) as items:
            async for conversation in items:
                yield conversation

    @strawberry.subscription(
        **guarded(
            Permission.READ_WORKSPACE,
            "The global id of a conversation that left the caller's view: reassigned away "
            "from an Agent, erased, or no longer visible because the caller's role was "
            "narrowed to AGENT. Evict it from caches. With `after` every conversation that "
            "left the caller's view since it is replayed first (each once; not those the "
            "caller sees again now, which `conversationUpdated` delivers), then the stream "
            "goes on live with no gap and no duplicate.",
        )
    )
    async def conversation_removed(
        self,
        info: Info[Context, None],
        after: Annotated[
            str | None,
            strawberry.argument(
                description="The `Conversation.updateCursor` `conversationUpdated` resumes "
                "from (the last one the client processed): first replay every removal from "
                "the caller's view after that position of the workspace's change feed; "
                "null: live removals only. BAD_USER_INPUT for one older than the removals "
                "kept (`Expired`) or one the feed never handed out (`Unknown`)."
            ),
        ] = None,
    ) -> AsyncGenerator[strawberry.ID, None]:
        async with aclosing(_removals(info, after)) as items:
            async for conversation_id in items:
                yield strawberry.ID(encode_global_id("Conversation", conversation_id))

    @strawberry.subscription(
        **guarded(
            Permission.READ_WORKSPACE,
            "New private notes on the conversations the caller may see (on one with "
            "`conversationId`), loaded through the caller's scope: an Agent receives none of "
            "a conversation assigned to someone else.",
        )
    )
    async def note_added(
        self,
        info: Info[Context, None],
        conversation_id: Annotated[
            strawberry.ID | None,
            strawberry.argument(description="Only notes of this Conversation; null: all."),
        ] = None,
    ) -> AsyncGenerator[Note, None]:
        only = decode_optional_global_id(conversation_id, "Conversation")
        async with aclosing(
            _follow(info, EventName.NOTE_ADDED, NoteRow, to_note, conversation=only)
        ) as items:
            async for note in items:
                yield note

    @strawberry.subscription(
        **guarded(
            Permission.READ_WORKSPACE,
            "Quality rating, limit tier and status changes of the workspace's numbers "
            "(a disconnection included): the account as it is now.",
        )
    )
    async def whats_app_account_updated(
        self, info: Info[Context, None]
    ) -> AsyncGenerator[WhatsAppAccount, None]:
        async with aclosing(
            _follow(
                info, EventName.WHATSAPP_ACCOUNT_UPDATED, WhatsAppAccountRow, to_whatsapp_account
            )
        ) as items:
            async for account in items:
                yield account

    @strawberry.subscription(
        **guarded(Permission.READ_AUDIT, "New security events of the workspace, as they are seen.")
    )
    async def security_event_added(
        self, info: Info[Context, None]
    ) -> AsyncGenerator[SecurityEvent, None]:
        async with aclosing(
            _follow(
                info,
                EventName.SECURITY_EVENT_ADDED,
                SecurityEventRow,
                to_security_event,
                permission=Permission.READ_AUDIT,
            )
        ) as items:
            async for event in items:
                yield event


async def _follow(
    info: Info[Context, None],
    name: EventName,
    model: type[Any],
    to_type: Any,
    *,
    conversation: uuid.UUID | None = None,
    permission: Permission | None = None,
) -> AsyncGenerator[Any, None]:
    """The rows that the workspace's `name` events point at, as this caller may see them.

    A `permission` the subscription needs is checked again at each event: a role changed
    while the socket stays open (an Admin made Manager) ends it FORBIDDEN there."""
    context = info.context
    async with context.hub.listen(
        context.actor.org_id, restartable=True, events=(name,)
    ) as listener:
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
            if permission is not None and not context.actor.can(permission):
                raise Forbidden("Your role does not allow this")
            shared = _shared(info, event, row_id)
            async with context.event_unit(shared.loaders):
                row = await shared.load(lambda: context.event_reader, model, row_id, _row_by_id)
                if row is not None:
                    yield shared.convert(row, to_type)


# -- the change feed: conversationUpdated and messageUpdated ---------------------------------


def _feed_query(model: type[Any], position: int, conversation: uuid.UUID | None) -> Any:
    """Visible rows changed after `position`, in feed order (index (org_id, update_seq))."""
    query = (
        select(model)
        .where(col(model.update_seq) > position)
        .order_by(col(model.update_seq))
        .limit(REPLAY_PAGE)
    )
    if model is MessageRow:
        # A message's feed is its changes since its creation (status, reactions): a new
        # one is messageAdded's.
        query = query.where(
            col(MessageRow.update_seq) > col(MessageRow.created_seq), listed_message()
        )
        if conversation is not None:
            query = query.where(MessageRow.conversation_id == conversation)
    return query


async def _after(info: Info[Context, None], after: str, *, removals: bool = False) -> int:
    """The position of an `after` cursor; BAD_USER_INPUT ("Unknown") for one the
    workspace's feed never handed out (another workspace's, a database's before a
    restore), which would otherwise hold back every change until the feed passed it.
    For `removals`, also ("Expired") when retention deleted removals after it: the client
    refetches its list instead of silently missing them (docs/realtime.md). One read."""
    position = decode_update_cursor(after)
    async with info.context.event_unit():
        head = await handed_out_head(info.context.unit, info.context.actor.org_id)
        pruned = None
        if removals:
            query = select(OrganizationRow.removals_pruned_through)
            pruned = (await info.context.unit.exec(query)).first()
    if head is not None and position > head:
        raise BadUserInput(
            "This cursor is not of this workspace's change feed; refetch and subscribe "
            "again without after",
            details=[{"field": "after", "message": "Unknown"}],
        )
    if pruned is not None and position < pruned:
        raise BadUserInput(
            "This cursor is older than the conversation removals kept; refetch the "
            "conversations and subscribe again without after",
            details=[{"field": "after", "message": "Expired"}],
        )
    return position


async def _feed_head(info: Info[Context, None], model: type[Any]) -> int:
    """The highest position of the workspace's feed visible now (0 when empty)."""
    async with info.context.event_unit():
        found = (await info.context.unit.exec(select(func.max(col(model.update_seq))))).first()
    return int(found or 0)


async def _catch_up(
    info: Info[Context, None],
    model: type[Any],
    to_type: Any,
    position: int,
    conversation: uuid.UUID | None,
) -> AsyncGenerator[tuple[int, Any], None]:
    """Every visible row changed after `position`, as it is now, in feed order.

    Pages are read in short units of their own, like `_replay`; each row is delivered in an
    event unit with DataLoaders shared across the page.
    """
    while True:
        async with info.context.event_unit():
            rows = list(
                (await info.context.unit.exec(_feed_query(model, position, conversation))).all()
            )
        loaders = info.context.new_loaders()
        for row in rows:
            position = row.update_seq
            async with info.context.event_unit(loaders):
                yield position, to_type(row)
        if len(rows) < REPLAY_PAGE:
            return


async def _feed(
    info: Info[Context, None],
    name: EventName,
    model: type[Any],
    to_type: Any,
    after: str | None,
    *,
    conversation: uuid.UUID | None = None,
) -> AsyncGenerator[Any, None]:
    """A workspace's changes of `model` from the change feed, replayed then live.

    Each position of a workspace's feed commits in order (docs/realtime.md#the-change-feed),
    so reading the feed after the last position delivered misses nothing and repeats
    nothing. An event is only a signal that the feed moved: on each one (and after a
    broker reconnection) the subscription reads what follows its position.
    """
    # Without `after`, live from the head read before listening: a change committed between
    # the two is above it, read by the first catch-up once the listener is in place.
    position = await _after(info, after) if after is not None else await _feed_head(info, model)
    async with info.context.hub.listen(info.context.actor.org_id, events=(name,)) as listener:
        listener.on_overflow = lambda: _close_slow(info)
        pending = True
        while True:
            if pending:
                start = position
                async with aclosing(_catch_up(info, model, to_type, start, conversation)) as items:
                    async for reached, converted in items:
                        position = reached
                        yield converted
            try:
                event = await next_event(listener)
            except SlowConsumer:
                await _close_slow(info)
                return
            pending = event is RESYNC or (
                event is not None and event.get("event") in (name, EventName.RESYNC)
            )


# -- conversationRemoved -------------------------------------------------------------------


@dataclass(frozen=True)
class _Viewer:
    """The caller as the database says now (a live socket's role may lag a role change)."""

    membership_id: uuid.UUID
    sees_all: bool
    joined: datetime


async def _viewer(info: Info[Context, None]) -> _Viewer | None:
    """The caller's membership now (None: removed, nothing more to send)."""
    membership_id = info.context.actor.membership_id
    async with info.context.event_unit():
        member = await info.context.unit.get(MembershipRow, membership_id)
    if member is None:
        return None
    sees_all = has_permission(member.role, Permission.SEE_ALL_CONVERSATIONS)
    return _Viewer(membership_id, sees_all, member.created_at)


def _lost_by(viewer: _Viewer, removal: ConversationRemovalRow) -> bool:
    """Whether the caller could see the conversation before the removal (ids never leak)."""
    if removal.reason == RemovalReason.ERASED and viewer.sees_all:
        return True
    if removal.reason == RemovalReason.ROLE_NARROWED or viewer.sees_all:
        return False  # a narrowed role is expanded apart; a reassignment hides nothing here
    return removal.member_id is None or removal.member_id == viewer.membership_id


async def _still_visible(
    info: Info[Context, None], viewer: _Viewer, ids: list[uuid.UUID]
) -> set[uuid.UUID]:
    """Those of `ids` the caller sees now (came back: `conversationUpdated` delivers them)."""
    if not ids:
        return set()
    async with info.context.event_unit():
        unit = info.context.unit
        # The scoping's visibility rule, for the role the database holds now.
        with viewing_as(unit, None if viewer.sees_all else viewer.membership_id):
            query = select(col(ConversationRow.id)).where(col(ConversationRow.id).in_(ids))
            return set((await unit.exec(query)).all())


async def _told_later(
    info: Info[Context, None],
    viewer: _Viewer,
    position: int,
    ids: list[uuid.UUID],
    visible: set[uuid.UUID],
) -> set[uuid.UUID]:
    """Those of `ids` (not `visible` now) that a later removal of the feed hides from the
    caller again: that removal tells them, not this one.

    The page of removals and the visibility check are two reads: a change committed
    between them (the conversation assigned to the caller, then away again) makes an
    earlier removal look like the caller's, and both would be sent. Checked after the
    visibility (whose change commits with its removal), so a removal that hid the
    conversation is found here whenever it made it invisible there.
    """
    gone = [conversation_id for conversation_id in ids if conversation_id not in visible]
    if not gone:
        return set()
    async with info.context.event_unit():
        query = select(ConversationRemovalRow).where(
            col(ConversationRemovalRow.conversation_id).in_(gone),
            col(ConversationRemovalRow.update_seq) > position,
        )
        later = (await info.context.unit.exec(query)).all()
    return {row.conversation_id for row in later if row.conversation_id and _lost_by(viewer, row)}


async def _assigned_to_others(
    info: Info[Context, None], membership_id: uuid.UUID, before: uuid.UUID
) -> AsyncGenerator[list[uuid.UUID], None]:
    """Pages of ids of conversations made before `before` (a UUIDv7) and assigned now to
    someone other than `membership_id`."""
    floor = uuid.UUID(int=0)
    while True:
        async with info.context.event_unit():
            unit = info.context.unit
            with workspace_wide(unit):
                assignee = col(ConversationRow.assignee_membership_id)
                ids = list(
                    (
                        await unit.exec(
                            select(col(ConversationRow.id))
                            .where(
                                col(ConversationRow.id) > floor,
                                col(ConversationRow.id) < before,
                                assignee.is_not(None),
                                assignee != membership_id,
                            )
                            .order_by(col(ConversationRow.id))
                            .limit(REPLAY_PAGE)
                        )
                    ).all()
                )
        yield ids
        if len(ids) < REPLAY_PAGE:
            return
        floor = ids[-1]


async def _removal_rows(
    info: Info[Context, None], position: int, joined: datetime
) -> list[ConversationRemovalRow]:
    """A page of the workspace's removals after `position` since the caller joined."""
    async with info.context.event_unit():
        query = (
            select(ConversationRemovalRow)
            .where(
                col(ConversationRemovalRow.update_seq) > position,
                col(ConversationRemovalRow.created_at) >= joined,
            )
            .order_by(col(ConversationRemovalRow.update_seq))
            .limit(REPLAY_PAGE)
        )
        return list((await info.context.unit.exec(query)).all())


async def _removed_since(
    info: Info[Context, None], position: int
) -> AsyncGenerator[tuple[int, uuid.UUID | None], None]:
    """(position, id) of every conversation that left the caller's view after `position`.

    Each id once per read; an id the caller sees again now is skipped. The id None only
    moves the position past removals that are not the caller's.
    """
    viewer = await _viewer(info)
    if viewer is None:
        return
    sent: set[uuid.UUID] = set()
    while True:
        rows = await _removal_rows(info, position, viewer.joined)
        for row in rows:
            position = row.update_seq
            pages: AsyncGenerator[list[uuid.UUID], None] | None = None
            if row.reason == RemovalReason.ROLE_NARROWED:
                if row.member_id == viewer.membership_id and not viewer.sees_all:
                    pages = _assigned_to_others(info, viewer.membership_id, row.id)
            elif row.conversation_id is not None and _lost_by(viewer, row):
                pages = _one_page([row.conversation_id])
            if pages is not None:
                async with aclosing(pages) as items:
                    async for ids in items:
                        fresh = [
                            conversation_id
                            for conversation_id in ids
                            if conversation_id not in sent
                        ]
                        back = await _still_visible(info, viewer, fresh)
                        back |= await _told_later(info, viewer, position, fresh, back)
                        for conversation_id in fresh:
                            if conversation_id not in back:
                                sent.add(conversation_id)
                                yield position, conversation_id
            yield position, None
        if len(rows) < REPLAY_PAGE:
            return


async def _one_page(ids: list[uuid.UUID]) -> AsyncGenerator[list[uuid.UUID], None]:
    yield ids


async def _removal_head(info: Info[Context, None]) -> int:
    async with info.context.event_unit():
        query = select(func.max(col(ConversationRemovalRow.update_seq)))
        found = (await info.context.unit.exec(query)).first()
    return int(found or 0)


async def _removals(
    info: Info[Context, None], after: str | None
) -> AsyncGenerator[uuid.UUID, None]:
    """Conversations that leave the caller's view, from the change feed, replayed then live.

    As `_feed`: the removals are positions of the workspace's feed, committed in order; an
    event is only a signal to read the removals after the last position delivered.
    """
    context = info.context
    if after is not None:
        position = await _after(info, after, removals=True)
    else:
        position = await _removal_head(info)
    async with context.hub.listen(
        context.actor.org_id, events=(EventName.CONVERSATION_REMOVED,)
    ) as listener:
        listener.on_overflow = lambda: _close_slow(info)
        pending = True
        while True:
            if pending:
                start = position
                async with aclosing(_removed_since(info, start)) as items:
                    async for reached, conversation_id in items:
                        position = reached
                        if conversation_id is not None:
                            yield conversation_id
            try:
                event = await next_event(listener)
            except SlowConsumer:
                await _close_slow(info)
                return
            pending = event is RESYNC or (
                event is not None
                and event.get("event") in (EventName.CONVERSATION_REMOVED, EventName.RESYNC)
            )
