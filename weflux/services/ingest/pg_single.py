"""PostgreSQL: a one-message webhook in ONE statement, its sender's lookup included.

The folded write (weflux.services.folding) needs the sender's contact and conversation
read first, to decide in Python what to write. For the common webhook (one message, not
a reaction) the statement decides itself, from the rows it finds (issue 11: one round
trip and its CPU less per webhook):

    WITH sender AS (SELECT id FROM contacts WHERE core_scope AND (user_id = :u OR wa_id = :w)
                    ORDER BY user_id = :u first LIMIT 1),
         contact_new AS (INSERT INTO contacts … ON CONFLICT DO NOTHING RETURNING id),
         contact_seen AS (UPDATE contacts SET … WHERE id = (sender) AND core_scope
                          AND something changed),
         conversation_new AS (INSERT INTO conversations … ON CONFLICT DO NOTHING RETURNING id),
         conversation_known AS (UPDATE conversations SET … WHERE contact_id = (sender)
                                AND account_id = :a AND core_scope RETURNING id),
         media_file AS (INSERT INTO media_files …), event AS (INSERT INTO webhook_events …)
    INSERT INTO messages (…, conversation_id, …)
    VALUES (…, (SELECT id FROM conversation_new UNION ALL SELECT id FROM conversation_known), …)
    RETURNING conversation_id

The decisions `weflux.services.ingest.senders` and `inbound` make in Python from the
read, made here by the statement (each pinned in tests/services/test_ingest_pg_single.py):

- **A new sender or a known one**: the contact's INSERT (built in Python as for a new
  sender) conflicts with the partial unique index on (org_id, user_id) or (org_id, wa_id)
  of the contact `sender` found, and inserts nothing; found by neither (an erased contact
  is not found, as `_senders` does not find it), it inserts. The contact's id is the
  inserted one, else the found one.
- **The known contact's changes** (`senders._contacts`): a new profile name (the name
  too, unless the team set it), username, user id or WhatsApp id bump `updated_at`; a
  phone number derived from the WhatsApp id when it has none; an opt-out or opt-in
  keyword (decided from the text in Python, `opt_change`) sets `opted_out` and
  `opted_out_at`. The UPDATE runs only when something changes (no row version written
  for nothing).
- **The conversation** of the contact and number: the new one's INSERT conflicts with the
  unique (org_id, contact_id, account_id) of a known one, whose UPDATE counts the message
  unread, reopens it if RESOLVED, makes the message its latest unless a later one is
  already shown, and moves `last_inbound_at` forward only (`_UPDATE_CONVERSATIONS`).
- **The message** names the conversation written (new or known); RETURNING gives its id
  for the events published after the commit (`messageAdded`, `conversationUpdated`).

What it keeps: one statement in the transaction that stores the event (durable before
200, with the event's row a CTE when it is stored here). A redelivered wamid breaks the
unique index of messages and the statement fails whole (`IntegrityError`): the event is
processed again, asking first (`process._optimistically`), as before. A contact or
conversation that appears between the statement's snapshot and its INSERT (another
transaction's, committed meanwhile) makes the INSERT do nothing while nothing was found:
the message's conversation (or the conversation's contact) is then NULL, a NOT NULL
violation, `IntegrityError`, retried the same way; webhooks of one workspace already wait
for each other on the feed lock taken at BEGIN. Feed positions: PostgreSQL runs a CTE the
statement reads when it is read, so both conversation writes (the message's value reads
them) run before the message's row, and the trigger numbers them in that order, as the
flush did. The scoping layer checks every part (`scoping.checked_folded`, as its session
hook checks a folded insert: each INSERT's workspace parameter, each UPDATE's
`core_scope`, the `sender` SELECT's `core_scope`; fail closed), row-level security
confines each beneath it.

The statement runs past SQLAlchemy's execution, on the session's connection in the
session's transaction (`weflux.pg_driver.fetch_in_transaction`: BEGIN with the scope the
session's `after_begin` hook left waiting, then the prepared statement; COMMIT is the
session's): about 0.4 ms of CPU less per webhook than the ORM's and SQLAlchemy's
execution of it (the statement's cache key, its parameters and result, the ORM's
execution state; issue 11, goal 4).

Held like the folded writes (`writes._send_held` sends it, with the event's row when
`store_and_process` gives one); a batch, a reaction, or SQLite take the other paths.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, DateTime, String, Table, and_, bindparam, case, func, or_, select
from sqlalchemy import update as update_of
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.sql import Executable
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth.scoping import checked_folded, core_scope, core_scope_params
from weflux.pg_driver import PreparedSelect, fetch_in_transaction
from weflux.realtime.broker import Broker
from weflux.realtime.events import EventName, publish_after_commit
from weflux.services import folding
from weflux.services.ingest.statements import (
    _CONTACTS,
    _CONVERSATIONS,
    _MEDIA_FILES,
    _MESSAGES,
    REOPENED_STATUS,
)

# session.info: the one message held back (`hold`), sent by `send`.
_HELD_KEY = "weflux.ingest.single"


@dataclass(slots=True)
class Single:
    """One message's statement, held until it is sent with what follows (the event's row)."""

    broker: Broker
    org_id: uuid.UUID
    message_id: uuid.UUID
    # Rows as for a new sender (`writes._rows`): its contact and conversation, the message
    # and its media file's job (or None).
    contact: dict[str, Any]
    conversation: dict[str, Any]
    message: dict[str, Any]
    media_file: dict[str, Any] | None
    # What the statement decides from (the `o_` parameters).
    decide: dict[str, Any]


def hold(session: AsyncSession, single: Single) -> None:
    session.sync_session.info[_HELD_KEY] = single


def held(session: Any) -> bool:
    return _HELD_KEY in session.info


def _o(name: str, type_: Any) -> Any:
    return bindparam(f"o_{name}", type_=type_)


def _values(table: Table, prefix: str, row: dict[str, Any], **expressions: Any) -> dict[str, Any]:
    values = folding._insert_values(table, prefix, list(row))
    values.update(expressions)
    return values


def _build(
    contact: dict[str, Any],
    conversation: dict[str, Any],
    message: dict[str, Any],
    media_file: dict[str, Any] | None,
    event: folding.Insert | None,
) -> Executable:
    c, v = _CONTACTS, _CONVERSATIONS
    user_id = _o("user_id", c.c.user_id.type)
    wa_id = _o("wa_id", c.c.wa_id.type)
    username = _o("username", c.c.username.type)
    profile_name = _o("profile_name", c.c.profile_name.type)
    opted_out = _o("opted_out", Boolean())
    now = _o("now", DateTime(timezone=True))
    at = _o("at", DateTime(timezone=True))
    message_id = _o("message_id", v.c.last_message_id.type)
    account_id = _o("account_id", v.c.account_id.type)

    # The sender, as `_senders` and `_contacts` find it: by user id first, else WhatsApp id.
    sender = (
        select(c.c.id)
        .where(
            core_scope(c),
            or_(
                and_(c.c.user_id == user_id, c.c.erased_at.is_(None)),
                and_(c.c.wa_id == wa_id, c.c.erased_at.is_(None)),
            ),
        )
        .order_by(case((c.c.user_id == user_id, 0), else_=1))
        .limit(1)
        .cte("sender")
    )
    found = select(sender.c.id).scalar_subquery()
    contact_new = (
        pg_insert(c)
        .values(_values(c, "c_", contact))
        .on_conflict_do_nothing()
        .returning(c.c.id)
        .cte("contact_new")
    )
    contact_id = func.coalesce(select(contact_new.c.id).scalar_subquery(), found)

    renamed = and_(profile_name.is_not(None), c.c.profile_name.is_distinct_from(profile_name))
    touched = [renamed] + [
        and_(value.is_not(None), c.c[name].is_distinct_from(value))
        for name, value in (("username", username), ("user_id", user_id), ("wa_id", wa_id))
    ]
    numbered = and_(
        func.coalesce(c.c.phone_number, "") == "", func.coalesce(wa_id, c.c.wa_id).is_not(None)
    )
    opting = and_(opted_out.is_not(None), c.c.opted_out.is_distinct_from(opted_out))
    contact_seen = (
        update_of(c)
        .where(c.c.id == found, core_scope(c), or_(*touched, numbered, opting))
        .values(
            profile_name=func.coalesce(profile_name, c.c.profile_name),
            name=case((and_(renamed, ~c.c.name_set_by_team), profile_name), else_=c.c.name),
            username=func.coalesce(username, c.c.username),
            user_id=func.coalesce(user_id, c.c.user_id),
            wa_id=func.coalesce(wa_id, c.c.wa_id),
            phone_number=case(
                (numbered, "+" + func.coalesce(wa_id, c.c.wa_id).cast(String)),
                else_=c.c.phone_number,
            ),
            opted_out=func.coalesce(opted_out, c.c.opted_out),
            opted_out_at=case((opting, case((opted_out, now), else_=None)), else_=c.c.opted_out_at),
            updated_at=case((or_(*touched), now), else_=c.c.updated_at),
        )
        .cte("contact_seen")
    )

    conversation_new = (
        pg_insert(v)
        .values(_values(v, "v_", conversation, contact_id=contact_id))
        .on_conflict_do_nothing()
        .returning(v.c.id)
        .cte("conversation_new")
    )
    latest = or_(v.c.last_message_at.is_(None), at >= v.c.last_message_at)
    conversation_known = (
        update_of(v)
        .where(v.c.contact_id == found, v.c.account_id == account_id, core_scope(v))
        .values(
            unread_count=v.c.unread_count + 1,
            status=REOPENED_STATUS,
            last_message_id=case((latest, message_id), else_=v.c.last_message_id),
            last_message_at=case((latest, at), else_=v.c.last_message_at),
            last_inbound_at=case(
                (or_(v.c.last_inbound_at.is_(None), at > v.c.last_inbound_at), at),
                else_=v.c.last_inbound_at,
            ),
            updated_at=now,
        )
        .returning(v.c.id)
        .cte("conversation_known")
    )
    # Read here, so both run before the message's row (its feed position after theirs); at
    # most one gives a row (the UPDATE cannot see the row the INSERT beside it writes).
    conversation_id = (
        select(conversation_new.c.id).union_all(select(conversation_known.c.id)).scalar_subquery()
    )
    ctes = [contact_new, contact_seen, conversation_new, conversation_known]
    if media_file is not None:
        ctes.append(
            pg_insert(_MEDIA_FILES)
            .values(_values(_MEDIA_FILES, "f_", media_file, sender_contact_id=contact_id))
            .cte("media_file")
        )
    if event is not None:
        ctes.append(
            pg_insert(event.table).values(_values(event.table, "e_", event.rows[0])).cte("event")
        )
    return (
        pg_insert(_MESSAGES)
        .values(_values(_MESSAGES, "m_", message, conversation_id=conversation_id))
        .returning(_MESSAGES.c.conversation_id)
        .add_cte(*ctes)
    )


_STATEMENTS: dict[tuple[Any, ...], PreparedSelect] = {}


def _statement(single: Single, event: folding.Insert | None) -> PreparedSelect:
    """The statement of `single`'s shape (its rows' keys), built once and cached (with
    its compiled form for asyncpg, `PreparedSelect`)."""
    key = (
        tuple(single.contact),
        tuple(single.conversation),
        tuple(single.message),
        tuple(single.media_file) if single.media_file is not None else None,
        (event.table.name, tuple(event.rows[0])) if event is not None else None,
    )
    statement = _STATEMENTS.get(key)
    if statement is None:
        if len(_STATEMENTS) >= folding._FOLDED_MAX:
            _STATEMENTS.clear()
        statement = _STATEMENTS[key] = PreparedSelect(
            _build(single.contact, single.conversation, single.message, single.media_file, event)
        )
    return statement


def _params(single: Single, event: folding.Insert | None) -> dict[str, Any]:
    params = {f"o_{key}": value for key, value in single.decide.items()}
    for prefix, row in (
        ("c_", single.contact),
        ("v_", single.conversation),
        ("m_", single.message),
        ("f_", single.media_file),
        ("e_", event.rows[0] if event is not None else None),
    ):
        if row is not None:
            params.update({prefix + key: value for key, value in row.items()})
    return params


async def send(session: AsyncSession, event: folding.Insert | None = None) -> bool:
    """Send the message held back (with `event`'s one row, if given, in the statement);
    whether one was held (else nothing is sent)."""
    single: Single | None = session.sync_session.info.pop(_HELD_KEY, None)
    if single is None:
        return False
    if event is not None and len(event.rows) != 1:
        raise ValueError("one event row folds with a single message")
    prepared = _statement(single, event)
    # Checked as the session's hook checks a folded insert (every part's workspace, fail
    # closed), then run past SQLAlchemy's execution in the session's transaction, whose
    # BEGIN carries the scope for row-level security (weflux.pg_driver).
    params = checked_folded(
        session, prepared.statement, _params(single, event) | core_scope_params(session)
    )
    await session.flush()  # what the session's execution would flush first (nothing, as a rule)
    rows = await fetch_in_transaction(await session.connection(), prepared, params)
    (conversation_id,) = rows[0] if len(rows) == 1 else _one_row(len(rows))
    publish_after_commit(
        session,
        single.broker,
        single.org_id,
        EventName.MESSAGE_ADDED,
        id=single.message_id,
        conversation_id=conversation_id,
    )
    publish_after_commit(
        session, single.broker, single.org_id, EventName.CONVERSATION_UPDATED, id=conversation_id
    )
    return True


def _one_row(count: int) -> tuple[Any]:
    raise RuntimeError(f"pg_single: the statement returned {count} rows, not one")


def decide(
    *,
    user_id: str | None,
    wa_id: str | None,
    username: str | None,
    profile_name: str | None,
    opted_out: bool | None,
    at: datetime,
    now: datetime,
    message_id: uuid.UUID,
    account_id: uuid.UUID,
) -> dict[str, Any]:
    """The parameters the statement decides from (None: nothing given)."""
    return {
        "user_id": user_id or None,
        "wa_id": wa_id or None,
        "username": username or None,
        "profile_name": profile_name or None,
        "opted_out": opted_out,
        "at": at,
        "now": now,
        "message_id": message_id,
        "account_id": account_id,
    }
