"""The shared inbox: conversation lists, message history, assignment, status, read state.

Every read goes through the caller's scoped session. Another workspace's rows, and
for an Agent the conversations assigned to someone else (with their messages and
contacts), are invisible there, so they surface here as NOT_FOUND exactly like rows
that do not exist. Nothing in this module filters by workspace or visibility by hand.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ARRAY, Uuid, and_, any_, literal, or_, tuple_, union_all
from sqlalchemy import select as sa_select
from sqlalchemy.orm import aliased
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth.crossings import matching_contacts
from weflux.auth.permissions import Permission
from weflux.auth.principal import Principal
from weflux.auth.scoping import lock_feed, visible_parts
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


def contact_matches(term: str, contact: Any = Contact) -> Any:
    """Name, WhatsApp profile name, phone number or WhatsApp id containing `term`,
    case-insensitively (`contact`: Contact or an alias of it).

    `%` and `_` in the term match themselves (LIKE with an escape character). A term
    that is a phone number once punctuation is dropped also matches the bare digits.
    """
    conditions = [
        col(contact.name).icontains(term, autoescape=True),
        col(contact.profile_name).icontains(term, autoescape=True),
        col(contact.phone_number).icontains(term, autoescape=True),
        col(contact.wa_id).icontains(term, autoescape=True),
    ]
    digits = _phone_digits(term)
    if digits is not None:
        conditions.append(col(contact.wa_id).contains(digits, autoescape=True))
    return or_(*conditions)


def _contains_pattern(term: str) -> str:
    """The LIKE pattern `contains(term, autoescape=True)` binds: `/` escapes `%`, `_`, `/`."""
    escaped = term.replace("/", "//").replace("%", "/%").replace("_", "/_")
    return f"%{escaped}%"


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


def among(column: Any, ids: list[uuid.UUID]) -> Any:
    """`column = ANY(ids)` (PostgreSQL), one array parameter whatever the count: the
    statement stays one prepared statement."""
    return column == any_(literal(ids, ARRAY(Uuid())))


def matches_by_subquery(term: str, contact_id: Any) -> Any:
    """Whether the contact `contact_id` names matches `term`, as a correlated scalar
    subquery (the scoping layer confines its contact as any other).

    For a walk of a list's order. Not a join or a plain condition: PostgreSQL under
    row-level security, which hides the columns' statistics from ILIKE, estimates a long
    term rare and reads and sorts every match for a page. A subquery's condition is
    estimated to keep one row in two, so a common term walks the list's order index and
    stops at a page.
    """
    matched = aliased(Contact, name="matched_contact")
    condition = sa_select(contact_matches(term, matched)).where(col(matched.id) == contact_id)
    return condition.scalar_subquery()


# --- conversations -----------------------------------------------------------------


def _conversation_cursor(row: Conversation) -> str:
    at = row.last_message_at.isoformat() if row.last_message_at is not None else None
    return encode_keyset("conversation", at, row.id)


def _after_conversation(cursor: str) -> tuple[Any, ...]:
    """The rows after a cursor as ranges, each read in the list's order by a range of an
    index, to be read in turn: those with an earlier activity key (a row comparison),
    then those without messages (sorted last). An OR of them would be a filter, every
    earlier page read again to reach the cursor."""
    key, row_id = decode_keyset("conversation", cursor)
    at_column = col(Conversation.last_message_at)
    id_column = col(Conversation.id)
    if key is None:  # already among the conversations without messages (sorted last)
        return (and_(at_column.is_(None), id_column < row_id),)
    try:
        at = datetime.fromisoformat(key)
    except ValueError:
        raise invalid_cursor() from None
    if at.tzinfo is None:
        raise invalid_cursor()
    return (tuple_(at_column, id_column) < tuple_(at, row_id), at_column.is_(None))


def _newest_first(entity: Any) -> tuple[Any, Any]:
    return col(entity.last_message_at).desc().nulls_last(), col(entity.id).desc()


def _in_order(query: Any, parts: tuple[Any, ...], limit: int) -> Any:
    """`query`'s first `limit` rows in the list's order: each part (none: one) walked
    apart and limited, then merged."""
    branches = [
        query.where(*([part] if part is not None else []))
        .order_by(*_newest_first(Conversation))
        .limit(limit)
        for part in parts or (None,)
    ]
    if len(branches) == 1:
        return branches[0]
    merged = union_all(*(branch.subquery().select() for branch in branches)).subquery("page")
    # Ordered by the union's own columns: the entity's, adapted to it, cost ~3 ms a page.
    return select(aliased(Conversation, merged)).order_by(*_newest_first(merged.c)).limit(limit)


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
    layer confines every part. A search reads its few matches by their contacts
    (PostgreSQL, `matching_contact_ids`), or walks so and tests each row's contact.
    """
    size = page_size(first)
    term = search_term(search)
    query = select(Conversation)
    # A page walks the list's order in parts, unless a search reads its few candidates
    # (or, on SQLite, its contacts as before: joined, looked up row by row).
    walks = term is None
    if term is not None:
        candidates = await matching_contact_ids(session, term)
        if candidates is not None:
            query = query.where(
                matches_by_subquery(term, col(Conversation.contact_id)),
                among(col(Conversation.contact_id), candidates),
            )
        elif (await session.connection()).dialect.name == "postgresql":
            query = query.where(matches_by_subquery(term, col(Conversation.contact_id)))
            walks = True
        else:
            query = query.join(Contact, col(Contact.id) == col(Conversation.contact_id)).where(
                contact_matches(term)
            )
    if status is not None:
        query = query.where(col(Conversation.status) == status)
    # An Agent's own share and nobody's are walked apart (visible_parts) unless the
    # filter names one of them. Not with a label or a search's few candidates: those
    # pages are bounded by the label's or the candidates' size, not a page, and each part
    # would pay it again (SQLite's search: as before).
    parts: tuple[Any, ...] = ()
    if assignee == AssigneeFilter.ME:
        query = query.where(col(Conversation.assignee_membership_id) == principal.membership_id)
    elif assignee == AssigneeFilter.UNASSIGNED:
        query = query.where(col(Conversation.assignee_membership_id).is_(None))
    elif label is None and walks:
        parts = visible_parts(session)
    if label is not None:
        tagged = select(col(ConversationLabel.conversation_id)).where(
            col(ConversationLabel.label_id) == label
        )
        query = query.where(col(Conversation.id).in_(tagged))
    rows: list[Conversation] = []
    for range_ in _after_conversation(after) if after else (None,):
        ranged = query.where(range_) if range_ is not None else query
        rows += (await session.exec(_in_order(ranged, parts, size + 1 - len(rows)))).all()
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
