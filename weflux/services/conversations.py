"""The shared inbox: conversation lists, message history, assignment, status, read state.

Every read goes through the caller's scoped session. Another workspace's rows, and
for an Agent the conversations assigned to someone else (with their messages and
contacts), are invisible there, so they surface here as NOT_FOUND exactly like rows
that do not exist. Nothing in this module filters by workspace or visibility by hand.
"""

from __future__ import annotations

import enum
import functools
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    Integer,
    Uuid,
    and_,
    any_,
    bindparam,
    literal,
    or_,
    true,
    tuple_,
    union_all,
)
from sqlalchemy import select as sa_select
from sqlalchemy.orm import aliased
from sqlmodel import AutoString, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth.crossings import matching_contacts
from weflux.auth.permissions import Permission
from weflux.auth.principal import Principal
from weflux.auth.scoping import (
    CONVERSATIONS_BY_LABELLINGS,
    VISIBLE_PARTS,
    lock_feed,
    visible_parts,
    visible_parts_of,
)
from weflux.errors import BadUserInput, Forbidden, NotFound
from weflux.models import (
    Contact,
    Conversation,
    ConversationLabel,
    ConversationStatus,
    Membership,
    Message,
    RemovalReason,
    listed_message,
    utcnow,
)
from weflux.pagination import (
    Page,
    decode_keyset,
    encode_cursor,
    encode_keyset,
    invalid_cursor,
    page_of,
    page_size,
)
from weflux.realtime.broker import Broker
from weflux.realtime.events import EventName, publish_after_commit
from weflux.services.removals import record_removal

MAX_SEARCH = 100
# A search term matching at most this many contacts (once per matching column) reads
# its conversations by their contacts' ids (PostgreSQL: `matching_contact_ids`); one
# matching more walks the list's order, where at least one row in five times the
# workspace's size over SEARCH_CANDIDATES matches (five columns).
SEARCH_CANDIDATES = 1000
_PHONE_PUNCTUATION = str.maketrans("", "", " -().+")


class AssigneeFilter(enum.StrEnum):
    ME = "ME"
    UNASSIGNED = "UNASSIGNED"
    ANY = "ANY"


ASSIGNEE_FILTER_MEANINGS: dict[AssigneeFilter, str] = {
    AssigneeFilter.ME: "Assigned to the caller.",
    AssigneeFilter.UNASSIGNED: "Assigned to nobody.",
    AssigneeFilter.ANY: "Every conversation the caller may see.",
}


def search_term(search: str | None) -> str | None:
    """The trimmed search text, or None to match everything."""
    if search is None:
        return None
    term = search.strip()
    if len(term) > MAX_SEARCH:
        message = f"`search` is at most {MAX_SEARCH} characters"
        raise BadUserInput(message, details=[{"field": "search", "message": message}])
    return term or None


def _phone_digits(term: str) -> str | None:
    """The bare digits of a term that is a phone number once punctuation is dropped."""
    digits = term.translate(_PHONE_PUNCTUATION)
    return digits if digits.isdigit() and digits != term else None


# A term's conditions are built with the term a bound parameter, escaped as `autoescape`
# would (`/` escapes `%`, `_` and `/`, which match themselves), so a list statement that
# holds them is built once per shape (`_page_statement`).
_ESCAPE = "/"
_SEARCH = "search"
_SEARCH_DIGITS = "search_digits"


def _escaped(term: str) -> str:
    return (
        term.replace(_ESCAPE, _ESCAPE * 2).replace("%", _ESCAPE + "%").replace("_", _ESCAPE + "_")
    )


def _matching(digits: bool, contact: Any = Contact, values: dict[str, str] | None = None) -> Any:
    """`contact_matches` with the term (and its bare digits) as named parameters: their
    `values` (`_matching_params`), or none, to be given at execution."""

    def term(key: str) -> Any:
        if values is None:
            return bindparam(key, type_=AutoString(), required=True)
        return bindparam(key, values[key], type_=AutoString())

    conditions = [
        col(contact.name).icontains(term(_SEARCH), escape=_ESCAPE),
        col(contact.profile_name).icontains(term(_SEARCH), escape=_ESCAPE),
        col(contact.phone_number).icontains(term(_SEARCH), escape=_ESCAPE),
        col(contact.wa_id).icontains(term(_SEARCH), escape=_ESCAPE),
    ]
    if digits:
        conditions.append(col(contact.wa_id).contains(term(_SEARCH_DIGITS), escape=_ESCAPE))
    return or_(*conditions)


def _matching_params(term: str) -> tuple[bool, dict[str, str]]:
    """Whether `term` is a phone number once punctuation is dropped, and the values of
    `_matching`'s parameters."""
    digits = _phone_digits(term)
    params = {_SEARCH: _escaped(term)}
    if digits is None:
        return False, params
    params[_SEARCH_DIGITS] = _escaped(digits)
    return True, params


def contact_matches(term: str, contact: Any = Contact) -> Any:
    """Name, WhatsApp profile name, phone number or WhatsApp id containing `term`,
    case-insensitively (`contact`: Contact or an alias of it).

    `%` and `_` in the term match themselves (LIKE with an escape character). A term
    that is a phone number once punctuation is dropped also matches the bare digits.
    """
    digits, values = _matching_params(term)
    return _matching(digits, contact, values)


def _contains_pattern(term: str) -> str:
    """The LIKE pattern `contains(term, autoescape=True)` binds: `/` escapes `%`, `_`, `/`."""
    return f"%{_escaped(term)}%"


async def matching_contact_ids(session: AsyncSession, term: str) -> list[uuid.UUID] | None:
    """The ids of the workspace's contacts that `contact_matches(term)` would find, when
    there are at most SEARCH_CANDIDATES of them; None to read as before.

    PostgreSQL only, for a term of three characters or more: its trigram indexes
    (migration 0025) find them; a shorter term has no trigram, and SQLite has no such
    index. A common term (more than SEARCH_CANDIDATES) is found sooner by walking the
    list's order and testing each row. The caller still tests `contact_matches(term)`
    in its scoped session: these ids only narrow what it reads.
    """
    if len(term) < 3 or (await session.connection()).dialect.name != "postgresql":
        return None
    digits = _phone_digits(term)
    found = await matching_contacts(
        session,
        _contains_pattern(term),
        _contains_pattern(digits) if digits is not None else None,
        SEARCH_CANDIDATES + 1,
    )
    # One row per matching column: a contact found by its name and its profile name
    # counts twice here, so a term walks from about half as many contacts.
    return list(dict.fromkeys(found)) if len(found) <= SEARCH_CANDIDATES else None


_CANDIDATES = bindparam("candidates", type_=ARRAY(Uuid()), required=True)


def among(column: Any, ids: list[uuid.UUID]) -> Any:
    """`column = ANY(ids)` (PostgreSQL), one array parameter whatever the count: the
    statement stays one prepared statement."""
    return column == any_(literal(ids, ARRAY(Uuid())))


def _matched_by_subquery(
    digits: bool, contact_id: Any, values: dict[str, str] | None = None
) -> Any:
    """`matches_by_subquery` with the term as named parameters (`_matching`)."""
    matched = aliased(Contact, name="matched_contact")
    condition = sa_select(_matching(digits, matched, values)).where(col(matched.id) == contact_id)
    return condition.scalar_subquery()


def matches_by_subquery(term: str, contact_id: Any) -> Any:
    """Whether the contact `contact_id` names matches `term`, as a correlated scalar
    subquery (the scoping layer confines its contact as any other).

    For a walk of a list's order. Not a join or a plain condition: PostgreSQL under
    row-level security, which hides the columns' statistics from ILIKE, estimates a long
    term rare and reads and sorts every match for a page. A subquery's condition is
    estimated to keep one row in two, so a common term walks the list's order index and
    stops at a page.
    """
    digits, values = _matching_params(term)
    return _matched_by_subquery(digits, contact_id, values)


# --- conversations -----------------------------------------------------------------

_columns = Conversation.__table__.c  # type: ignore[attr-defined]
# The values of a list page's statement, bound at execution: the statement of each
# shape is built once (`_page_statement`) and SQLAlchemy compiles it once.
_STATUS = bindparam("status", type_=_columns.status.type, required=True)
_ME = bindparam("me", type_=_columns.assignee_membership_id.type, required=True)
_LABEL = bindparam("label", type_=ConversationLabel.__table__.c.label_id.type, required=True)  # type: ignore[attr-defined]
_AFTER_AT = bindparam("after_at", type_=_columns.last_message_at.type, required=True)
_AFTER_ID = bindparam("after_id", type_=_columns.id.type, required=True)
_LIMIT = bindparam("page_limit", type_=Integer(), required=True)


class _Range(enum.Enum):
    """Where a statement of the list starts: a range of an index in the list's order."""

    ALL = enum.auto()  # the first page
    DATED_BEFORE = enum.auto()  # (last_message_at, id) < the cursor's
    UNDATED = enum.auto()  # without messages (sorted last)
    UNDATED_BEFORE = enum.auto()  # without messages, id < the cursor's

    def condition(self, at_column: Any, id_column: Any) -> Any | None:
        """The range on the columns a page walks: the conversations' `last_message_at`
        and `id`, or a label's copy of them in `conversation_labels`."""
        if self is _Range.DATED_BEFORE:
            return tuple_(at_column, id_column) < tuple_(_AFTER_AT, _AFTER_ID)
        if self is _Range.UNDATED:
            return at_column.is_(None)
        if self is _Range.UNDATED_BEFORE:
            return and_(at_column.is_(None), id_column < _AFTER_ID)
        return None


class _Search(enum.Enum):
    """How a page with a search finds its matches (`list_conversations`)."""

    CANDIDATES = enum.auto()  # PostgreSQL: its few contacts' ids, each row's contact tested
    WALKED = enum.auto()  # PostgreSQL: the list's order walked, each row's contact tested
    JOINED = enum.auto()  # SQLite: joined to the contacts, in the list's order


def _conversation_cursor(row: Conversation) -> str:
    at = row.last_message_at.isoformat() if row.last_message_at is not None else None
    return encode_keyset("conversation", at, row.id)


def _after_conversation(cursor: str) -> tuple[tuple[_Range, ...], dict[str, Any]]:
    """The rows after a cursor as ranges, each read in the list's order by a range of an
    index, to be read in turn, with the cursor's values: those with an earlier activity
    key (a row comparison), then those without messages (sorted last). An OR of them
    would be a filter, every earlier page read again to reach the cursor."""
    key, row_id = decode_keyset("conversation", cursor)
    if key is None:  # already among the conversations without messages (sorted last)
        return (_Range.UNDATED_BEFORE,), {_AFTER_ID.key: row_id}
    try:
        at = datetime.fromisoformat(key)
    except ValueError:
        raise invalid_cursor() from None
    if at.tzinfo is None:
        raise invalid_cursor()
    return (_Range.DATED_BEFORE, _Range.UNDATED), {_AFTER_AT.key: at, _AFTER_ID.key: row_id}


def _newest_first(at_column: Any, id_column: Any) -> tuple[Any, Any]:
    return at_column.desc().nulls_last(), id_column.desc()


_LABELLED_ORDER = (col(ConversationLabel.last_message_at), col(ConversationLabel.conversation_id))
_LISTED_ORDER = (col(Conversation.last_message_at), col(Conversation.id))
# An Agent's parts on the labellings' copy of the assignee (`VISIBLE_PARTS`'s parameter).
_LABELLED_PARTS = visible_parts_of(col(ConversationLabel.assignee_membership_id))


def _in_order(query: Any, parts: tuple[Any, ...], order: tuple[Any, Any]) -> Any:
    """`query`'s first `_LIMIT` rows in the list's order (of `order`'s columns): each part
    (none: one) walked apart and limited, then merged."""
    branches = [
        query.where(*([part] if part is not None else []))
        .order_by(*_newest_first(*order))
        .limit(_LIMIT)
        for part in parts or (None,)
    ]
    if len(branches) == 1:
        return branches[0]
    merged = union_all(*(branch.subquery().select() for branch in branches)).subquery("page")
    # Ordered by the union's own columns: the entity's, adapted to it, cost ~3 ms a page.
    ordered = _newest_first(merged.c.last_message_at, merged.c.id)
    return select(aliased(Conversation, merged)).order_by(*ordered).limit(_LIMIT)


class _Labelled(enum.Enum):
    """Whether a page is a label's, and how it reads each labelling's conversation."""

    NO = enum.auto()
    JOINED = enum.auto()  # SQLite; PostgreSQL with a search's candidates
    LATERAL = enum.auto()  # PostgreSQL: a subquery of one row (`_labelled_page`)


@dataclass(frozen=True)
class _Shape:
    """What a list page's statement is made of; its values are bound at execution."""

    range_: _Range
    search: _Search | None
    digits: bool  # the search matches the term's bare digits too
    status: bool
    assignee: AssigneeFilter
    label: _Labelled
    parts: bool  # an Agent's parts (`VISIBLE_PARTS`)


@functools.cache
def _page_statement(shape: _Shape) -> Any:
    """The statement of a shape, built once (a few hundred shapes at most).

    Building a merged statement per request (subqueries, their column collections, the
    entity aliased to the union) and the scoping layer's walk of each new statement cost
    about 2 ms of Python per Agent page; one statement object per shape is walked once
    and hits SQLAlchemy's compiled cache.
    """
    query = select(Conversation)
    contact_id = col(Conversation.contact_id)
    if shape.search is _Search.JOINED:
        query = query.join(Contact, col(Contact.id) == contact_id).where(_matching(shape.digits))
    elif shape.search is _Search.CANDIDATES:
        query = query.where(
            _matched_by_subquery(shape.digits, contact_id), contact_id == any_(_CANDIDATES)
        )
    elif shape.search is _Search.WALKED:
        query = query.where(_matched_by_subquery(shape.digits, contact_id))
    if shape.label is not _Labelled.NO:
        return _labelled_page(query, shape)
    if shape.status:
        query = query.where(col(Conversation.status) == _STATUS)
    if shape.assignee == AssigneeFilter.ME:
        query = query.where(col(Conversation.assignee_membership_id) == _ME)
    elif shape.assignee == AssigneeFilter.UNASSIGNED:
        query = query.where(col(Conversation.assignee_membership_id).is_(None))
    if (range_ := shape.range_.condition(*_LISTED_ORDER)) is not None:
        query = query.where(range_)
    return _in_order(query, VISIBLE_PARTS if shape.parts else (), _LISTED_ORDER)


def _labelled_page(conversations: Any, shape: _Shape) -> Any:
    """A label's page: its labellings walked in the list's order on the range of the
    filters (their copies of the conversation's order, status and assignee: migrations
    0030, 0032; an Agent's parts on the copied assignee), each conversation read by key
    under all of its criteria (`conversations`: a select of them, with a search's
    conditions). Every part reads about a page, whatever the shares of the label, the
    status or the Agent.

    The labellings only narrow and order (`CONVERSATIONS_BY_LABELLINGS`: the Agent's
    restriction is tested on each conversation, not looked up again for each labelling,
    a lookup PostgreSQL hashed: every conversation the Agent may see). On PostgreSQL
    each conversation is a LATERAL subquery of one row (`_Labelled.LATERAL`): joined, it
    was hashed too, and the restriction's estimate (its share, counted against the
    labellings' range) made the walk look unfinished at a page, so every labelling of
    the part was read and sorted. SQLite has no LATERAL, and looks each row up anyway.
    """
    labelled = col(ConversationLabel.conversation_id)
    conditions = [col(ConversationLabel.label_id) == _LABEL]
    if shape.status:
        conditions.append(col(ConversationLabel.status) == _STATUS)
    assignee = col(ConversationLabel.assignee_membership_id)
    if shape.assignee == AssigneeFilter.ME:
        conditions.append(assignee == _ME)
    elif shape.assignee == AssigneeFilter.UNASSIGNED:
        conditions.append(assignee.is_(None))
    if (range_ := shape.range_.condition(*_LABELLED_ORDER)) is not None:
        conditions.append(range_)
    if shape.label is _Labelled.LATERAL:
        one = conversations.where(col(Conversation.id) == labelled).limit(1)
        row = one.lateral("labelled_conversation")
        query = (
            select(aliased(Conversation, row))
            .select_from(ConversationLabel)
            .join(row, true())
            .where(*conditions)
        )
    else:
        query = conversations.join(ConversationLabel, labelled == col(Conversation.id)).where(
            *conditions
        )
    page = _in_order(query, _LABELLED_PARTS if shape.parts else (), _LABELLED_ORDER)
    return page.execution_options(**{CONVERSATIONS_BY_LABELLINGS: True})


async def list_conversations(
    session: AsyncSession,
    principal: Principal,
    *,
    first: int | None = None,
    after: str | None = None,
    status: ConversationStatus | None = None,
    assignee: AssigneeFilter = AssigneeFilter.ANY,
    search: str | None = None,
    label: uuid.UUID | None = None,
) -> Page[Conversation]:
    """Visible conversations, newest activity first, keyset-paginated on (last_message_at, id).

    New conversations arriving between two pages land before the first one and never
    shift the pages already read: no duplicates, no gaps.

    A page reads about a page, whatever the workspace: each part of it (for an Agent,
    their conversations and nobody's) is walked in the order of an index from the
    cursor and limited to a page, then merged, in one statement; a second reads the
    conversations without messages on the page where the others run out. The scoping
    layer confines every part. A label's page walks the label's labellings in that
    order, on the range of its status and assignee (their copies of them), and reads
    each conversation by key. A search reads its few matches by their contacts
    (PostgreSQL, `matching_contact_ids`), or walks so and tests each row's contact.
    Each statement's shape is built once, its values bound.
    """
    size = page_size(first)
    term = search_term(search)
    params: dict[str, Any] = {}
    how: _Search | None = None
    digits = False
    if term is not None:
        digits, matching = _matching_params(term)
        params |= matching
        candidates = await matching_contact_ids(session, term)
        if candidates is not None:
            how = _Search.CANDIDATES
            params[_CANDIDATES.key] = candidates
        elif (await session.connection()).dialect.name == "postgresql":
            how = _Search.WALKED
        else:
            how = _Search.JOINED
    if status is not None:
        params[_STATUS.key] = status
    if assignee == AssigneeFilter.ME:
        params[_ME.key] = principal.membership_id
    # A page walks the list's order in parts, an Agent's own share and nobody's apart
    # (visible_parts), unless the filter names one of them. Not with a search's few
    # candidates: those pages are bounded by the candidates' size, not a page, and each
    # part would pay it again (SQLite's search: as before, joined, looked up row by row).
    parts = None
    if assignee == AssigneeFilter.ANY and how in (None, _Search.WALKED):
        parts = visible_parts(session)
        params |= parts or {}
    labelled = _Labelled.NO
    if label is not None:
        params[_LABEL.key] = label
        # A search's few candidates are joined, so that PostgreSQL may read them first.
        dialect = (await session.connection()).dialect.name
        lateral = dialect == "postgresql" and how is not _Search.CANDIDATES
        labelled = _Labelled.LATERAL if lateral else _Labelled.JOINED
    ranges: tuple[_Range, ...] = (_Range.ALL,)
    if after:
        ranges, cursor = _after_conversation(after)
        params |= cursor
    rows: list[Conversation] = []
    for range_ in ranges:
        shape = _Shape(range_, how, digits, status is not None, assignee, labelled, bool(parts))
        params[_LIMIT.key] = size + 1 - len(rows)
        rows += (await session.exec(_page_statement(shape), params=params)).all()
        if len(rows) > size:
            break
    return page_of(rows, size, _conversation_cursor, has_previous_page=bool(after))


async def get_conversation(session: AsyncSession, conversation_id: uuid.UUID) -> Conversation:
    """A visible conversation, or NOT_FOUND."""
    row = await session.get(Conversation, conversation_id)
    if row is None:
        raise NotFound("Conversation not found")
    return row


async def _locked(session: AsyncSession, conversation_id: uuid.UUID) -> Conversation:
    """The conversation, freshly read and row-locked (PostgreSQL) for a change.

    The lock serialises concurrent assignments: the second of two Agents grabbing the
    same unassigned conversation re-reads it assigned to the first, no longer visible.
    The workspace's feed lock comes first (`lock_feed`).
    """
    await lock_feed(session)
    row = (
        await session.exec(
            select(Conversation)
            .where(col(Conversation.id) == conversation_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).first()
    if row is None:
        raise NotFound("Conversation not found")
    return row


def _changed(session: AsyncSession, broker: Broker, conversation: Conversation) -> None:
    conversation.updated_at = utcnow()
    session.add(conversation)
    publish_after_commit(
        session, broker, conversation.org_id, EventName.CONVERSATION_UPDATED, id=conversation.id
    )


async def assign(
    session: AsyncSession,
    principal: Principal,
    conversation_id: uuid.UUID,
    assignee_membership_id: uuid.UUID | None,
    *,
    broker: Broker,
) -> Conversation:
    """Assign a conversation (None: unassign), by the rules of CONTRACT §3.

    ADMIN and MANAGER assign to any member of the workspace (another workspace's
    member is NOT_FOUND). An AGENT may take an unassigned conversation and give up
    their own; anything else is FORBIDDEN.
    """
    if not principal.can(Permission.ASSIGN_SELF) and not principal.can(Permission.ASSIGN_ANYONE):
        raise Forbidden("Your role cannot assign conversations")
    conversation = await _locked(session, conversation_id)
    current = conversation.assignee_membership_id
    if principal.can(Permission.ASSIGN_ANYONE):
        if assignee_membership_id is not None:
            member = await session.get(Membership, assignee_membership_id)
            if member is None:
                raise NotFound("Member not found")
    else:
        if current not in (None, principal.membership_id):
            # Someone else's: an Agent's session never shows it, whatever the caller.
            raise NotFound("Conversation not found")
        if assignee_membership_id not in (None, principal.membership_id):
            raise Forbidden("Agents can assign conversations to themselves only")
    if current != assignee_membership_id:
        conversation.assignee_membership_id = assignee_membership_id
        _changed(session, broker, conversation)
        if assignee_membership_id is not None:
            # Agents who saw it (its assignee before, or all when it had none) lose it.
            record_removal(
                session,
                broker,
                conversation.org_id,
                RemovalReason.REASSIGNED,
                conversation_id=conversation.id,
                member_id=current,
            )
        await session.flush()
    return conversation


async def update_status(
    session: AsyncSession,
    principal: Principal,
    conversation_id: uuid.UUID,
    status: ConversationStatus,
    *,
    broker: Broker,
) -> Conversation:
    """Open, park (PENDING) or resolve a visible conversation."""
    if not principal.can(Permission.REPLY):
        raise Forbidden("Your role cannot change conversations")
    conversation = await _locked(session, conversation_id)
    if conversation.status != status:
        conversation.status = status
        _changed(session, broker, conversation)
        await session.flush()
    return conversation


async def mark_read(
    session: AsyncSession,
    principal: Principal,
    conversation_id: uuid.UUID,
    *,
    broker: Broker,
) -> Conversation:
    """Set a visible conversation's unread count to zero."""
    if not principal.can(Permission.REPLY):
        raise Forbidden("Your role cannot change conversations")
    conversation = await _locked(session, conversation_id)
    if conversation.unread_count != 0:
        conversation.unread_count = 0
        _changed(session, broker, conversation)
        await session.flush()
    return conversation


# --- messages ----------------------------------------------------------------------


def _message_cursor(row: Message) -> str:
    return encode_cursor(row.id)


async def list_messages(
    session: AsyncSession,
    conversation_id: uuid.UUID,
    *,
    first: int | None = None,
    after: uuid.UUID | None = None,
    last: int | None = None,
    before: uuid.UUID | None = None,
) -> Page[Message]:
    """A window of the history, keyset on the time-ordered message id, newest last.

    `first`/`after` read forwards (oldest first); `last`/`before` scroll back. With
    neither `first`, `last` nor `after`, the latest messages are returned (a chat's
    opening view).
    """
    if first is not None and last is not None:
        message = "Pass `first` or `last`, not both"
        raise BadUserInput(message, details=[{"field": "last", "message": message}])
    id_column = col(Message.id)
    query = select(Message).where(col(Message.conversation_id) == conversation_id, listed_message())
    if after is not None:
        query = query.where(id_column > after)
    if before is not None:
        query = query.where(id_column < before)
    if last is not None or (first is None and after is None):
        size = page_size(last, "last")
        rows = (await session.exec(query.order_by(id_column.desc()).limit(size + 1))).all()
        return Page(
            items=[(row, _message_cursor(row)) for row in rows[:size][::-1]],
            has_next_page=before is not None,
            has_previous_page=len(rows) > size,
        )
    size = page_size(first)
    rows = (await session.exec(query.order_by(id_column).limit(size + 1))).all()
    return page_of(rows, size, _message_cursor, has_previous_page=after is not None)
