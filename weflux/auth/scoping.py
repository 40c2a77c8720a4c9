"""Tenant scoping: the one place that confines ORM statements to a workspace.

Every session carries a scope in `session.info`: one workspace (`org_id`), or none.
Work that must cross workspaces does so only through the explicit paths of
weflux.auth.crossings (on PostgreSQL, SECURITY DEFINER functions that each answer one
question with ids), or, for maintenance run as the schema owner, a session opened with
`all_workspaces="why"` on a maintenance Database (`grep -rn all_workspaces weflux/`).

- Reads, updates and deletes of workspace-owned models get `org_id = <workspace>`
  added by `with_loader_criteria`, registered per mapped class (the mixin form of
  the SQLAlchemy docs does not reach SQLModel classes).
- Writes are checked before flush: `org_id` is filled from the scope, and a row of
  another workspace is refused.
- With no scope, any ORM statement touching a workspace-owned table raises.
- Erased contacts (`erased_at`), their conversations and those conversations' messages,
  notes, labellings and reactions are hidden from every read, update and delete: the erasure
  tombstone, so an erased contact is gone at once from queries, `node`, subscriptions,
  replays and exports. Only the eraser itself looks past it (`see_erased`,
  weflux.lifecycle.erasure), and a yes-or-no question whether anything carries an
  upload (`past_erasure`).
- On PostgreSQL the same scope is handed to row-level security at the start of each
  transaction with `set_config(..., true)`, which ends with the transaction: the
  workspace (`app.org_id`) and the webhook event the session names, if any
  (`app.webhook_event_id`; see weflux.services.ingest).
"""

from __future__ import annotations

import functools
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Table,
    and_,
    bindparam,
    event,
    exists,
    func,
    inspect,
    or_,
    select,
    text,
    true,
    union_all,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import (
    ORMExecuteState,
    Session,
    SessionTransaction,
    aliased,
    with_loader_criteria,
)
from sqlalchemy.sql import Select, operators, visitors
from sqlalchemy.sql.dml import Delete, Insert, Update
from sqlalchemy.sql.elements import BinaryExpression, BooleanClauseList
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.selectable import CTE, TableClause
from sqlmodel import Session as SQLModelSession
from sqlmodel import col

from weflux.models import (
    Contact,
    Conversation,
    ConversationLabel,
    ConversationRemoval,
    MediaFile,
    Message,
    MessageReaction,
    Note,
    Organization,
    OrgScoped,
    workspace_models,
)
from weflux.pg_driver import begin_with

WORKSPACE_KEY = "weflux.org_id"
ALL_WORKSPACES_KEY = "weflux.all_workspaces"
WEBHOOK_EVENT_KEY = "weflux.webhook_event_id"
AGENT_KEY = "weflux.agent_membership_id"
SEE_ERASED_KEY = "weflux.see_erased"
# The workspace's feed lock is taken in the scope's statement at the transaction's start
# (`use_workspace(feed_lock=True)` before it began).
FEED_LOCK_KEY = "weflux.feed_lock"

# The models whose rows an erasure tombstone hides itself (`erased_at`), and those whose
# rows belong to a conversation (its tombstone and an Agent's visibility reach them
# through `conversation_id`): one list for the ORM's criteria and the Core conditions.
_TOMBSTONED = (Contact, Conversation)
_OF_A_CONVERSATION = (Message, Note, ConversationLabel, MessageReaction)

_APPLY_SCOPE_SQL = text(
    "SELECT set_config('app.org_id', :org_id, true), "
    "set_config('app.webhook_event_id', :webhook_event_id, true)"
)


_APPLY_SCOPE_AND_LOCK_SQL = text(
    "SELECT set_config('app.org_id', :org_id, true), "
    "set_config('app.webhook_event_id', :webhook_event_id, true), "
    "pg_advisory_xact_lock(:lock_class, hashtext(:org_id))"
)


def _literal(value: Any) -> str:
    """A UUID (or nothing) as the text of a SQL string literal, for the scope's statement
    sent with BEGIN (a simple query takes no parameters: weflux.pg_driver). Re-rendered
    from the UUID's integer, so it is 36 hex digits and hyphens whatever the object
    (a subclass's `__str__` included); anything else is refused."""
    if value is None:
        return ""
    if not isinstance(value, uuid.UUID):
        raise TenantScopeError("a scope's workspace and webhook event are UUIDs")
    return str(uuid.UUID(int=value.int))


def _events_literal(value: Any) -> str:
    """The webhook events a session names, as `app.webhook_event_id`'s text: one id, or
    several (a queue worker's batch: `webhook_queue`) joined by commas, each a `_literal`."""
    if isinstance(value, tuple):
        return ",".join(_literal(event) for event in value)
    return _literal(value)


def _scope_sql(session: Session, feed_lock: bool) -> str:
    """`_APPLY_SCOPE_SQL` (with `feed_lock`, `_APPLY_SCOPE_AND_LOCK_SQL`) with its values
    as literals: see `_literal`."""
    info = _info(session)
    return _scope_literal_sql(current_workspace(session), info.get(WEBHOOK_EVENT_KEY), feed_lock)


def _scope_literal_sql(org_id: Any, webhook_event: Any, feed_lock: bool = False) -> str:
    org = _literal(org_id)
    event = _events_literal(webhook_event)
    statement = (
        f"SELECT set_config('app.org_id', '{org}', true), "
        f"set_config('app.webhook_event_id', '{event}', true)"
    )
    if feed_lock:
        statement += f", pg_advisory_xact_lock({int(FEED_LOCK_CLASS)}, hashtext('{org}'))"
    return statement


class TenantScopeError(RuntimeError):
    """A statement or write would escape the session's workspace (or has none)."""


class ScopedSession(SQLModelSession):
    """The synchronous session behind every `AsyncSession` of the app."""


def _info(session: Session | AsyncSession) -> dict[Any, Any]:
    return session.sync_session.info if isinstance(session, AsyncSession) else session.info


def current_workspace(session: Session | AsyncSession) -> uuid.UUID | None:
    """The workspace the session is confined to, if any."""
    value = _info(session).get(WORKSPACE_KEY)
    return value if isinstance(value, uuid.UUID) else None


def crosses_workspaces(session: Session | AsyncSession) -> bool:
    return bool(_info(session).get(ALL_WORKSPACES_KEY))


def set_scope(
    session: Session | AsyncSession,
    org_id: uuid.UUID | None = None,
    *,
    all_workspaces: str | None = None,
    webhook_event: uuid.UUID | tuple[uuid.UUID, ...] | None = None,
) -> None:
    """Set the scope of a session before its transaction starts.

    `all_workspaces` only lifts the ORM layer: on PostgreSQL a maintenance session sees
    every workspace because it connects as the schema owner (weflux.db.Database).
    """
    if org_id is not None and all_workspaces:
        raise ValueError("a session is scoped to one workspace or to all, not both")
    info = _info(session)
    for key in (
        WORKSPACE_KEY,
        ALL_WORKSPACES_KEY,
        WEBHOOK_EVENT_KEY,
        SEE_ERASED_KEY,
        FEED_LOCK_KEY,
    ):
        info.pop(key, None)
    if org_id is not None:
        info[WORKSPACE_KEY] = org_id
    if all_workspaces:
        info[ALL_WORKSPACES_KEY] = all_workspaces
    if webhook_event is not None:
        info[WEBHOOK_EVENT_KEY] = webhook_event


def restrict_to_agent(session: Session | AsyncSession, membership_id: uuid.UUID) -> None:
    """Confine the session further to what an Agent may see (CONTRACT §3).

    Conversations assigned to them or to nobody; the messages, notes, labellings and reactions of
    those; the contacts of those. Every ORM read, update and delete obeys it, nested
    fields included.
    """
    _info(session)[AGENT_KEY] = membership_id


def see_erased(session: Session | AsyncSession) -> None:
    """Let the session see erased contacts' rows: only the eraser, to delete them."""
    _info(session)[SEE_ERASED_KEY] = True


@contextmanager
def viewing_as(session: Session | AsyncSession, agent: uuid.UUID | None) -> Iterator[None]:
    """For the statements inside, the Agent restriction of `agent` (None: none), still in
    the workspace; the session's own restriction is back afterwards.

    For a live socket whose principal may lag a role change: its reads judged by the
    role the database holds now (weflux.gql.live's `conversationRemoved`).
    """
    info = _info(session)
    previous = info.pop(AGENT_KEY, None)
    if agent is not None:
        info[AGENT_KEY] = agent
    try:
        yield
    finally:
        info.pop(AGENT_KEY, None)
        if previous is not None:
            info[AGENT_KEY] = previous


@contextmanager
def workspace_wide(session: Session | AsyncSession) -> Iterator[None]:
    """Lift an Agent's restriction for the statements inside, still in the workspace.

    Only for aggregates that must see the whole workspace and answer a number, never
    rows (the messaging-tier count of `weflux.services.quotas`).
    """
    with viewing_as(session, None):
        yield


@contextmanager
def past_erasure(session: Session | AsyncSession) -> Iterator[None]:
    """For the statements inside, erased contacts' rows too (the tombstone lifted), still
    in the workspace and under the session's other restrictions.

    Only for questions answered yes or no, never rows: whether any message at all carries
    an upload, an erased contact's included (weflux.services.media.visible).
    """
    info = _info(session)
    previous = info.get(SEE_ERASED_KEY)
    info[SEE_ERASED_KEY] = True
    try:
        yield
    finally:
        info.pop(SEE_ERASED_KEY, None)
        if previous:
            info[SEE_ERASED_KEY] = previous


def agent_restriction(session: Session | AsyncSession) -> uuid.UUID | None:
    value = _info(session).get(AGENT_KEY)
    return value if isinstance(value, uuid.UUID) else None


def _visible_parts(assignee: Any, agent: Any) -> tuple[Any, Any]:
    """The Agent's rule as two disjoint conditions on a conversation's assignee column:
    assigned to them, assigned to nobody. Their OR is the restriction."""
    return assignee == agent, assignee.is_(None)


VISIBLE_AGENT = "visible_agent"
# Disjoint conditions on `conversations` whose union is what an Agent may see: theirs
# (the Agent a bound parameter, `visible_parts` gives its value) and nobody's. Built
# once, so a statement shaped by them is built and compiled once too (issue 11).
_VISIBLE_AGENT = bindparam(
    VISIBLE_AGENT,
    type_=Conversation.__table__.c.assignee_membership_id.type,  # type: ignore[attr-defined]
    required=True,
)
VISIBLE_PARTS: tuple[Any, Any] = _visible_parts(
    col(Conversation.assignee_membership_id), _VISIBLE_AGENT
)


def visible_parts_of(assignee: Any) -> tuple[Any, Any]:
    """`VISIBLE_PARTS` on a copy of a conversation's assignee (a labelling's, migration
    0032), with the same parameter: a walk of the copies in parts. The conversation's
    own criteria still confine each row, so the copy can only narrow."""
    return _visible_parts(assignee, _VISIBLE_AGENT)


def visible_parts(session: Session | AsyncSession) -> dict[str, uuid.UUID] | None:
    """The parameters of `VISIBLE_PARTS` for the session: for an Agent, theirs; None
    when the session sees all of the workspace (no parts).

    Only for shaping a statement: a list read in the order of an index walks each part's
    own index (weflux.services.conversations). The session's criteria still confine
    every part: with these values the parts together narrow nothing, and with any other
    Agent they could only narrow, never widen; a statement run without the parameter
    fails (`required`).
    """
    agent = agent_restriction(session)
    if agent is None:
        return None
    return {VISIBLE_AGENT: agent}


async def use_workspace(
    session: AsyncSession, org_id: uuid.UUID, *, feed_lock: bool = False
) -> None:
    """Narrow a session to one workspace, also inside a transaction already begun.

    A webhook event the session names stays named (ingest writes each workspace's
    share of an event, then marks the event processed). With `feed_lock` (a writer of
    several conversations or messages) the workspace's feed lock is taken in the same
    statement on PostgreSQL (`lock_feed`): now, or, before the transaction has begun
    (the number's routes were cached), in the scope's statement at its start.
    """
    info = _info(session)
    info.pop(ALL_WORKSPACES_KEY, None)
    info[WORKSPACE_KEY] = org_id
    sync = session.sync_session
    if not sync.in_transaction():
        # Taken with the scope when the transaction begins (`_apply_database_scope`).
        info[FEED_LOCK_KEY] = feed_lock
    elif sync.get_bind().dialect.name == "postgresql":
        connection = await session.connection()
        # Begun, but no statement sent yet: the new scope replaces the one waiting for
        # the BEGIN (weflux.pg_driver), in its round trip.
        if begin_with(connection.sync_connection, _scope_sql(sync, feed_lock)):  # type: ignore[arg-type]
            return
        if feed_lock:
            await connection.execute(
                _APPLY_SCOPE_AND_LOCK_SQL, _scope_params(sync) | {"lock_class": FEED_LOCK_CLASS}
            )
        else:
            await connection.execute(_APPLY_SCOPE_SQL, _scope_params(sync))


def _scope_params(session: Session) -> dict[str, str]:
    return {
        "org_id": _literal(current_workspace(session)),
        "webhook_event_id": _events_literal(_info(session).get(WEBHOOK_EVENT_KEY)),
    }


@functools.cache
def _workspace_tables() -> dict[str, str]:
    """Table name -> the column holding its workspace."""
    tables = {Organization.__tablename__: "id"}
    for model in workspace_models():
        tables[str(model.__tablename__)] = "org_id"
    return tables


# Statements are immutable: the tables of one built once (a module's constant, a folded
# write's cached statement: weflux.services.folding) are read once, not at every execution.
_TABLES_IN: weakref.WeakKeyDictionary[Any, tuple[str, ...]] = weakref.WeakKeyDictionary()


def _tables_in(statement: Any) -> tuple[str, ...]:
    names = _TABLES_IN.get(statement)
    if names is None:
        # ORM statements hold annotated copies of the tables: compare by name.
        names = tuple(e.name for e in visitors.iterate(statement) if isinstance(e, Table))
        _TABLES_IN[statement] = names
    return names


@functools.cache
def _models_by_table() -> dict[str, Any]:
    models: dict[str, Any] = {Organization.__tablename__: Organization}
    for model in workspace_models():
        models[str(model.__tablename__)] = model
    return models


# An execution option: the statement finds its rows by primary key (`id IN (…)`, the
# DataLoaders). SQLite, which keeps no statistics, costs `org_id = ?` on any index that
# starts with `org_id` below a list of keys and walked the whole workspace's index for
# each page's messages, memberships, media files and numbers; in such a statement the
# workspace criterion still holds, but no index is chosen for it there (`+org_id`).
BY_KEY = "weflux_by_key"
# An execution option: the statement's rows are conversations, each read under all of
# its criteria (the Agent's restriction too); its labellings only narrow and order which
# (a label's page walks them: weflux.services.conversations). They keep the workspace
# and tombstone criteria, not the Agent's restriction, whose lookup of each labelling's
# conversation PostgreSQL hashed (every conversation the Agent may see, read for a page).
CONVERSATIONS_BY_LABELLINGS = "weflux_conversations_by_labellings"


class Unindexed(FunctionElement[Any]):
    """A column the planner must not pick an index for: `+column` on SQLite (its way to
    say so), the column itself elsewhere."""

    inherit_cache = True

    def __init__(self, column: Any) -> None:
        super().__init__(column)
        self.type = column.type


@compiles(Unindexed)
def _unindexed(element: Unindexed, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(Unindexed, "sqlite")
def _unindexed_sqlite(element: Unindexed, compiler: Any, **kw: Any) -> str:
    return "+" + str(compiler.process(element.clauses, **kw))


def _workspace_criterion(model: Any, org_id: uuid.UUID, by_key: bool = False) -> Any:
    if model is Organization:
        return with_loader_criteria(
            Organization, lambda cls: cls.id == org_id, include_aliases=True
        )
    if by_key:
        return with_loader_criteria(
            model, lambda cls: Unindexed(cls.org_id) == org_id, include_aliases=True
        )
    return with_loader_criteria(model, lambda cls: cls.org_id == org_id, include_aliases=True)


def _tombstone_criterion(model: Any, org_id: uuid.UUID) -> Any | None:
    conversations: Table = Conversation.__table__  # type: ignore[attr-defined]

    def not_erased(cls: Any) -> Any:
        return cls.erased_at.is_(None)

    def not_in_erased_conversation(cls: Any) -> Any:
        # Core columns, not the ORM class: the tombstone criterion of Conversation must
        # not apply to this subquery. The covering partial index ix_conversations_erased
        # serves it on both engines: the workspace's erased conversations only.
        erased = select(conversations.c.id).where(
            conversations.c.org_id == org_id, conversations.c.erased_at.is_not(None)
        )
        return cls.conversation_id.not_in(erased)

    def not_sent_by_erased_contact(cls: Any) -> Any:
        # A file an erased contact sent, even carried on by another conversation's message
        # (sendMedia) or detached from its own by retention: hidden with the contact,
        # deleted with it. One probe of the contacts' primary key per file with a sender.
        contacts: Table = Contact.__table__  # type: ignore[attr-defined]
        return ~exists().where(
            contacts.c.id == cls.sender_contact_id,
            contacts.c.org_id == org_id,
            contacts.c.erased_at.is_not(None),
        )

    if model in _TOMBSTONED:
        return with_loader_criteria(model, not_erased, include_aliases=True)
    if model in _OF_A_CONVERSATION:
        return with_loader_criteria(model, not_in_erased_conversation, include_aliases=True)
    if model is MediaFile:
        return with_loader_criteria(model, not_sent_by_erased_contact, include_aliases=True)
    return None


def _agent_criterion(model: Any, agent: uuid.UUID) -> Any | None:
    def visible_conversation(cls: Any) -> Any:
        return or_(*_visible_parts(cls.assignee_membership_id, agent))

    # A row's conversation is looked up by key (correlated EXISTS: the primary key, or the
    # contact's conversations by uq_conversations_org_id_contact_id_account_id), where an
    # IN list of the visible conversations read every conversation of the workspace on
    # SQLite for each statement. An alias, never the statement's own conversations; it
    # gets the workspace and tombstone criteria like any Conversation.
    visible = aliased(Conversation, name="visible_conversation")
    assignee = col(visible.assignee_membership_id)

    def in_visible_conversation(cls: Any) -> Any:
        return exists().where(
            col(visible.id) == cls.conversation_id, or_(*_visible_parts(assignee, agent))
        )

    def with_visible_conversation(cls: Any) -> Any:
        return exists().where(
            col(visible.contact_id) == cls.id, or_(*_visible_parts(assignee, agent))
        )

    if model is Conversation:
        return with_loader_criteria(model, visible_conversation, include_aliases=True)
    if model in _OF_A_CONVERSATION:
        return with_loader_criteria(model, in_visible_conversation, include_aliases=True)
    if model is Contact:
        return with_loader_criteria(model, with_visible_conversation, include_aliases=True)
    return None


# Built once per scope and set of tables (issue 11): building the options of every
# workspace-owned model for every statement cost about 0.3 ms a statement, and their
# presence made each statement's compilation dearer still.
_CRITERIA_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=_CRITERIA_CACHE_SIZE)
def _criteria(
    org_id: uuid.UUID,
    tables: frozenset[str],
    see_erased: bool,
    agent: uuid.UUID | None,
    by_key: bool = False,
    by_labellings: bool = False,
) -> tuple[Any, ...]:
    """The criteria confining a statement on `tables` to one workspace (and an Agent).

    Only the models of the tables the statement touches (its subqueries included) get
    one: the models have no relationships, so no load can reach another table. An
    Agent's criteria select from `conversations` in subqueries: its workspace criterion
    is then added too. `by_key` (`BY_KEY`): the workspace criteria choose no index.
    `by_labellings` (`CONVERSATIONS_BY_LABELLINGS`): no Agent's restriction of the
    labellings, whose conversations are the statement's rows, restricted.
    """
    models = _models_by_table()
    names = set(tables)
    if agent is not None:
        names.add(str(Conversation.__tablename__))
    options: list[Any] = []
    for name in sorted(names):
        model = models[name]
        options.append(_workspace_criterion(model, org_id, by_key))
        if not see_erased and (tombstone := _tombstone_criterion(model, org_id)) is not None:
            options.append(tombstone)
        if by_labellings and model is ConversationLabel:
            continue
        if agent is not None and (restriction := _agent_criterion(model, agent)) is not None:
            options.append(restriction)
    return tuple(options)


@event.listens_for(ScopedSession, "do_orm_execute")
def _scope_statement(state: ORMExecuteState) -> Any:
    if state.is_column_load or state.is_relationship_load:
        return None  # the criteria of the parent statement propagate to these
    session = state.session
    if crosses_workspaces(session):
        return None
    org_id = current_workspace(session)
    workspace_tables = _workspace_tables()
    touched = [name for name in _tables_in(state.statement) if name in workspace_tables]
    if not touched:
        return None
    if org_id is None:
        names = ", ".join(sorted(set(touched)))
        raise TenantScopeError(f"no workspace set for a statement on {names}")
    if state.is_insert:
        return _checked_insert(state, org_id, workspace_tables)
    if not state.is_orm_statement:
        # The loader criteria below would not reach a statement of Core tables (nothing
        # would confine it): such a statement takes `core_scope` and runs on the
        # session's connection.
        names = ", ".join(sorted(set(touched)))
        raise TenantScopeError(
            f"a Core statement on {names} through the session is not scoped: "
            "give it weflux.auth.scoping.core_scope and run it on the session's connection"
        )
    by_labellings = bool(state.execution_options.get(CONVERSATIONS_BY_LABELLINGS))
    selected = getattr(state.statement, "column_descriptions", None) if state.is_select else None
    if by_labellings and not (
        selected and all(described.get("type") is Conversation for described in selected)
    ):
        raise TenantScopeError(f"{CONVERSATIONS_BY_LABELLINGS}: a select of conversations only")
    if state.is_select or state.is_update or state.is_delete:
        options = _criteria(
            org_id,
            frozenset(touched),
            bool(_info(session).get(SEE_ERASED_KEY)),
            agent_restriction(session),
            bool(state.execution_options.get(BY_KEY)),
            by_labellings,
        )
        state.statement = state.statement.options(*options)
    return None


def _checked_insert(state: ORMExecuteState, org_id: uuid.UUID, tables: dict[str, str]) -> Any:
    statement: Any = state.statement
    if statement._independent_ctes or statement._values or statement._multi_values:
        return _checked_folded(state, org_id, tables)
    if statement.select is not None and tables.get(statement.table.name):
        raise TenantScopeError(
            f"insert into {statement.table.name} from a select: pass rows as parameters"
        )
    table = statement.table
    if tables.get(table.name) is None:
        return None
    params: Any = state.parameters
    rows: list[dict[str, Any]] = (
        list(params) if isinstance(params, list) else [dict(params)] if params else []
    )
    checked = _checked_rows(org_id, table, rows, tables)
    # The checked rows replace the execution's parameters (SQLAlchemy 2.1): the statement
    # runs once, not a second time from inside this hook (`invoke_statement`; issue 11).
    state.parameters = checked if isinstance(params, list) else checked[0]
    return None


def _checked_rows(
    org_id: uuid.UUID, table: Table, rows: list[dict[str, Any]], tables: dict[str, str]
) -> list[dict[str, Any]]:
    """`rows` of an INSERT into `table`, each in workspace `org_id` (filled where the
    workspace column is `org_id` and absent); refused if one is in another."""
    column = tables[table.name]
    if not rows:
        raise TenantScopeError(
            f"insert into {table.name}: pass rows as parameters so their workspace is checked"
        )
    checked: list[dict[str, Any]] = []
    for row in rows:
        value = row.get(column)
        if value is None and column == "org_id":
            row = {**row, column: org_id}
        elif value != org_id:
            raise TenantScopeError(f"insert into {table.name} of another workspace refused")
        checked.append(row)
    return checked


def insert_checked(
    session: Session, connection: Connection, statement: Insert, rows: list[dict[str, Any]]
) -> None:
    """Run a Core INSERT of `rows` into a workspace-owned table on the session's
    connection, each row's workspace checked as the session's hook checks an INSERT
    through the session (`_checked_insert`), without the ORM's execution around it (the
    webhook's hot path; issue 11). Fails closed as the hook does: no workspace, a session
    across workspaces, an Agent's or one past the erasure tombstone
    (`core_scope_params`), a table not owned by a workspace, a row of another workspace."""
    org_id = core_scope_params(session)[SCOPE_ORG]
    table: Table = statement.table  # type: ignore[assignment]
    tables = _workspace_tables()
    if table.name not in tables or statement.select is not None:
        raise TenantScopeError(f"insert_checked: rows into a workspace's table, not {table.name}")
    if statement._values or statement._multi_values or statement._independent_ctes:
        raise TenantScopeError("insert_checked: rows as parameters, not in the statement")
    connection.execute(statement, _checked_rows(org_id, table, rows, tables))


@dataclass(frozen=True, slots=True)
class _FoldPlan:
    """What a folded insert needs checked, read once from its (immutable) structure."""

    # The parameters (key, value written into the statement) giving each inserted row's
    # workspace; whether it carries `core_scope` (UPDATE, DELETE); why it is refused.
    workspaces: tuple[tuple[str, Any, bool], ...] = ()
    scoped: bool = False
    refusal: str | None = None


_FOLD_PLANS: weakref.WeakKeyDictionary[Any, _FoldPlan] = weakref.WeakKeyDictionary()


def _checked_folded(state: ORMExecuteState, org_id: uuid.UUID, tables: dict[str, str]) -> Any:
    """An INSERT whose values are in the statement, with writes folded in as CTEs
    (weflux.services.folding): every part is checked, fail closed.

    Each INSERT into a workspace-owned table gives every row's workspace as a parameter
    equal to the session's (an empty one is filled in); each UPDATE or DELETE of one
    carries `core_scope` with the session's workspace and never sets the workspace column;
    every SELECT anywhere in it (a CTE, a subquery in a value, a condition or RETURNING)
    that reads a workspace-owned table names it in its FROM, unaliased and unjoined, and
    confines it in its WHERE by `core_scope` or its workspace condition, with the
    session's workspace (a webhook's sender found inside the statement that writes:
    weflux.services.ingest.pg_single).
    """
    state.parameters = _folded_params(state.statement, state.parameters, org_id, tables)
    return None


def checked_folded(
    session: Session | AsyncSession, statement: Any, params: dict[str, Any]
) -> dict[str, Any]:
    """`params` of a folded insert (weflux.services.ingest.pg_single) checked as the
    session's hook checks one run through the session (`_checked_folded`), for a statement
    run past SQLAlchemy's execution on the session's connection
    (`weflux.pg_driver.fetch_in_transaction`). Fails closed as the hook does, and as Core
    statements do (`core_scope_params`): no workspace, a session across workspaces, an
    Agent's or one past the erasure tombstone, a statement that is not an INSERT, a part
    of another workspace or unconfined."""
    org_id = core_scope_params(session)[SCOPE_ORG]
    if not isinstance(statement, Insert):
        raise TenantScopeError("checked_folded: an INSERT, with writes folded in as CTEs")
    return _folded_params(statement, params, org_id, _workspace_tables())


def _folded_params(
    statement: Any, params: Any, org_id: uuid.UUID, tables: dict[str, str]
) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise TenantScopeError("a folded insert takes one set of parameters")
    plan = _FOLD_PLANS.get(statement)
    if plan is None:
        plan = _FOLD_PLANS[statement] = _fold_plan(statement, tables)
    if plan.refusal is not None:
        raise TenantScopeError(plan.refusal)
    if plan.scoped and params.get(SCOPE_ORG) != org_id:
        raise TenantScopeError("a change without core_scope of the session's workspace refused")
    checked: dict[str, Any] = dict(params)
    for key, written, fillable in plan.workspaces:
        given = checked.get(key, written)
        if given is None and fillable:
            checked[key] = org_id
        elif given != org_id:
            raise TenantScopeError("insert of another workspace's row refused")
    return checked


def _fold_plan(statement: Any, tables: dict[str, str]) -> _FoldPlan:
    parts = [statement] + [
        element.element for element in visitors.iterate(statement) if isinstance(element, CTE)
    ]
    workspaces: list[tuple[str, Any, bool]] = []
    scoped = False
    try:
        for part in parts:
            table = getattr(part, "table", None)
            column = tables.get(table.name) if isinstance(table, Table) else None
            if isinstance(part, Insert):
                if column is not None:
                    workspaces.extend(_inserted_workspaces(part, column))
            elif isinstance(part, (Update, Delete)) and column is not None:
                _check_scoped_change(part, column)
                scoped = True
        scoped = _check_confined_reads(statement, tables) or scoped
    except TenantScopeError as refused:
        return _FoldPlan(refusal=str(refused))
    return _FoldPlan(tuple(workspaces), scoped)


def _check_confined_reads(statement: Any, tables: dict[str, str]) -> bool:
    """Refuse a SELECT anywhere in `statement` reading a workspace-owned table it does
    not confine (`_confines`); whether any reads one (then `SCOPE_ORG` is checked)."""
    confined = False
    for element in visitors.iterate(statement):
        if not isinstance(element, Select):
            continue
        for table in _read_tables(element.get_final_froms(), tables):
            column = tables[table.name]
            if not any(_confines(c, table, column) for c in element._where_criteria):
                raise TenantScopeError(
                    f"a CTE reading (or a subquery of) {table.name} without core_scope "
                    "in an insert refused"
                )
            confined = True
    return confined


def _read_tables(froms: Any, tables: dict[str, str]) -> Iterator[Table]:
    """The workspace-owned tables a SELECT reads in its FROM; a join or an alias of one
    is refused (its condition would not be recognised)."""
    for from_ in froms:
        if isinstance(from_, Table):
            if from_.name in tables:
                yield from_
        elif not isinstance(from_, CTE) and any(
            isinstance(e, TableClause) and e.name in tables for e in visitors.iterate(from_)
        ):
            # A CTE is checked as a statement of its own (visitors.iterate reaches it);
            # a join or alias is not recognised: fail closed.
            raise TenantScopeError(
                "a CTE reading (or a subquery of) a workspace-owned table through a join "
                "or alias in an insert refused"
            )


def _confines(criterion: Any, table: Table, column: str) -> bool:
    """Whether a WHERE criterion is `table`'s `core_scope`, or includes its workspace
    condition (`table.<column> = :scope_org`) among the terms of an AND."""
    if criterion.compare(core_scope(table)):
        return True
    terms = criterion.clauses if isinstance(criterion, BooleanClauseList) else [criterion]
    return any(
        isinstance(term, BinaryExpression)
        and term.operator is operators.eq
        and term.left.compare(table.c[column])
        and isinstance(term.right, BindParameter)
        and term.right.key == SCOPE_ORG
        for term in terms
        if not isinstance(criterion, BooleanClauseList) or criterion.operator is operators.and_
    )


def _inserted_workspaces(part: Insert, column: str) -> list[tuple[str, Any, bool]]:
    name = part.table.name
    if part.select is not None:
        raise TenantScopeError(f"insert into {name} from a select: give rows as parameters")
    rows: list[Any] = list(part._multi_values[0]) if part._multi_values else [part._values or {}]
    found = []
    for row in rows:
        if not isinstance(row, dict):
            raise TenantScopeError(f"insert into {name}: name each row's columns")
        values = {getattr(key, "key", key): value for key, value in row.items()}
        value = values.get(column)
        if not isinstance(value, BindParameter):
            raise TenantScopeError(
                f"insert into {name}: pass each row's {column} in the parameters so its "
                "workspace is checked"
            )
        found.append((value.key, value.value, column == "org_id"))
    return found


def _check_scoped_change(part: Update | Delete, column: str) -> None:
    table: Table = part.table  # type: ignore[assignment]
    if isinstance(part, Update) and any(
        getattr(key, "key", key) == column for key in (part._values or {})
    ):
        raise TenantScopeError(f"moving {table.name} rows between workspaces refused")
    scope = core_scope(table)
    if not any(criterion.compare(scope) for criterion in part._where_criteria):
        raise TenantScopeError(f"a change of {table.name} without core_scope refused")


# -- Core statements -----------------------------------------------------------------------
# The webhook's hot path writes and reads with Core statements built once (no ORM instance,
# no unit of work: weflux.services.ingest). Their workspace conditions come from here, the
# workspace a bound parameter filled from the session's scope by `core_scope_params`.
SCOPE_ORG = "scope_org"


def core_scope(table: Table) -> ColumnElement[bool]:
    """What confines a Core statement on a workspace-owned `table` (in its WHERE, or in
    the ON of an outer join to it), as the ORM criteria confine ORM statements: its
    workspace and the erasure tombstone. No Agent restriction (`core_scope_params`
    refuses an Agent's session)."""
    column = _workspace_tables()[table.name]
    conversations: Table = Conversation.__table__  # type: ignore[attr-defined]
    org = bindparam(SCOPE_ORG, type_=conversations.c.org_id.type)
    condition: ColumnElement[bool] = table.c[column] == org
    model = _models_by_table()[table.name]
    if model in _TOMBSTONED:
        condition = and_(condition, table.c.erased_at.is_(None))
    elif model is MediaFile:
        raise TenantScopeError("a media file's erasure tombstone is the ORM criteria's alone")
    elif model in _OF_A_CONVERSATION:
        # As the ORM's tombstone: the erased conversations by ix_conversations_erased.
        erased = select(conversations.c.id).where(
            conversations.c.org_id == org, conversations.c.erased_at.is_not(None)
        )
        condition = and_(condition, table.c.conversation_id.not_in(erased))
    return condition


def core_visibility(table: Table) -> ColumnElement[bool] | None:
    """An Agent's visibility on a Core statement over `table`, as `_agent_criterion`
    confines ORM statements (the Agent the bound parameter `VISIBLE_AGENT`); None for a
    table the rule does not narrow. Goes with `core_scope(table)`, never instead of it."""
    conversations: Table = Conversation.__table__  # type: ignore[attr-defined]
    agent = _VISIBLE_AGENT
    if table is conversations:
        return or_(*_visible_parts(table.c.assignee_membership_id, agent))
    model = _models_by_table()[table.name]
    # An alias, confined as the ORM's is (workspace, tombstone), never the statement's own.
    visible = conversations.alias("visible_conversation")
    org = bindparam(SCOPE_ORG, type_=conversations.c.org_id.type)
    mine = and_(
        visible.c.org_id == org,
        visible.c.erased_at.is_(None),
        or_(*_visible_parts(visible.c.assignee_membership_id, agent)),
    )
    if model in _OF_A_CONVERSATION:
        return exists().where(visible.c.id == table.c.conversation_id, mine)
    if model is Contact:
        return exists().where(visible.c.contact_id == table.c.id, mine)
    return None


@dataclass(frozen=True, slots=True)
class ReadScope:
    """A reader's scope without a Session: a workspace, and the Agent whose visibility
    narrows it (None: sees the whole workspace). Built from a principal by the caller;
    what it confines to is said here alone (`params`, `begin_sql`, `ScopedRead`)."""

    org_id: uuid.UUID
    agent: uuid.UUID | None = None

    def params(self) -> dict[str, uuid.UUID]:
        """The values of `core_scope` and `core_visibility` for this reader."""
        if not isinstance(self.org_id, uuid.UUID):
            raise TenantScopeError("no workspace set for a scoped read")
        if self.agent is None:
            return {SCOPE_ORG: self.org_id}
        return {SCOPE_ORG: self.org_id, VISIBLE_AGENT: self.agent}

    def begin_sql(self) -> str:
        """The statement handing this workspace to row-level security with BEGIN (on
        PostgreSQL: weflux.pg_driver), its values literals re-rendered from UUIDs."""
        if not isinstance(self.org_id, uuid.UUID):
            raise TenantScopeError("no workspace set for a scoped read")
        return _scope_literal_sql(self.org_id, None)


class ScopedRead:
    """A Core read confined by the scoping layer, in the two shapes its readers need.

    `build(scope_of)` makes the statement, calling `scope_of(table)` for the condition of
    each workspace-owned table it reads (in its WHERE). It is built twice, once for a
    reader of the whole workspace (`core_scope`) and once for an Agent (`core_scope` and
    `core_visibility`); `statement(scope)` picks by the reader, so an Agent is never given
    the wider one (and the narrower one without an Agent fails: `VISIBLE_AGENT` is
    required).
    """

    __slots__ = ("_agent", "_whole")

    def __init__(self, build: Callable[[Callable[[Table], ColumnElement[bool]]], Any]) -> None:
        self._whole = build(core_scope)
        self._agent = build(_core_scope_visible)

    def statement(self, scope: ReadScope) -> Any:
        return self._whole if scope.agent is None else self._agent


def _core_scope_visible(table: Table) -> ColumnElement[bool]:
    visible = core_visibility(table)
    return core_scope(table) if visible is None else and_(core_scope(table), visible)


def core_scope_params(session: Session | AsyncSession) -> dict[str, uuid.UUID]:
    """The parameters of `core_scope` for `session`'s scope; fails closed without a
    workspace, across workspaces, past the tombstone or for an Agent (whose restriction
    only the ORM criteria apply)."""
    info = _info(session)
    org_id = current_workspace(session)
    if org_id is None or info.get(ALL_WORKSPACES_KEY):
        raise TenantScopeError("no workspace set for a Core statement")
    if info.get(AGENT_KEY) is not None or info.get(SEE_ERASED_KEY):
        raise TenantScopeError("Core statements apply no Agent restriction or erasure view")
    return {SCOPE_ORG: org_id}


@event.listens_for(ScopedSession, "before_flush")
def _guard_writes(session: Session, flush_context: Any, instances: Any) -> None:
    if crosses_workspaces(session):
        for obj in session.new:
            if isinstance(obj, OrgScoped) and obj.org_id is None:
                raise TenantScopeError(f"{type(obj).__name__} written without org_id")
        return
    org_id = current_workspace(session)
    for obj in list(session.new) + list(session.dirty) + list(session.deleted):
        owner = _owner(obj)
        if owner is _NOT_SCOPED:
            continue
        if org_id is None:
            raise TenantScopeError(f"no workspace set for a write of {type(obj).__name__}")
        if owner is None and isinstance(obj, OrgScoped) and obj in session.new:
            obj.org_id = org_id
            continue
        if owner != org_id:
            raise TenantScopeError(f"write of {type(obj).__name__} into another workspace refused")
        if isinstance(obj, OrgScoped) and obj in session.dirty:
            history = _org_history(obj)
            if history:
                raise TenantScopeError(f"moving {type(obj).__name__} between workspaces refused")


_NOT_SCOPED = object()


def _owner(obj: Any) -> Any:
    if isinstance(obj, OrgScoped):
        return obj.org_id
    if isinstance(obj, Organization):
        return obj.id
    return _NOT_SCOPED


def _org_history(obj: OrgScoped) -> bool:
    history = inspect(obj).attrs.org_id.history
    return bool(history.deleted) and history.deleted[0] is not None


@event.listens_for(ScopedSession, "after_begin")
def _apply_database_scope(
    session: Session, transaction: SessionTransaction, connection: Connection
) -> None:
    """Hand the scope to row-level security before the transaction's first statement.

    On PostgreSQL the scope's statement goes with the transaction's BEGIN, in its round
    trip (weflux.pg_driver; no round trip here), or, when the driver's transaction has
    begun already, now with bound parameters."""
    if connection.dialect.name != "postgresql":
        return
    if begin_with(connection, _scope_sql(session, bool(session.info.get(FEED_LOCK_KEY)))):
        return
    if session.info.get(FEED_LOCK_KEY):
        connection.execute(
            _APPLY_SCOPE_AND_LOCK_SQL, _scope_params(session) | {"lock_class": FEED_LOCK_CLASS}
        )
    else:
        connection.execute(_APPLY_SCOPE_SQL, _scope_params(session))


# -- the workspace change feed -------------------------------------------------------------
# Every insert and visible change of a conversation or message takes the next position of
# its workspace's change feed without a statement of its own: on PostgreSQL a row trigger
# (migration 0018) sets it inside the INSERT/UPDATE and RETURNING reads it back; on SQLite
# the flush allocates plain numbers, so batched INSERTs and UPDATEs stay batched either way.
# docs/realtime.md#the-change-feed.

# Columns whose change alone is no visible change (the delivery worker's bookkeeping).
_FEED_BOOKKEEPING = frozenset({"attempts", "next_attempt_at", "update_seq", "created_seq"})
_FEED_NEXT = "weflux.feed_next"


def _highest_position(org_id: Any) -> Any:
    highest = union_all(
        select(func.max(Conversation.update_seq).label("seq")).where(
            col(Conversation.org_id) == org_id
        ),
        select(func.max(Message.update_seq).label("seq")).where(col(Message.org_id) == org_id),
        select(func.max(ConversationRemoval.update_seq).label("seq")).where(
            col(ConversationRemoval.org_id) == org_id
        ),
        # What purges deleted (`raise_feed_floor`): never handed out again.
        select(col(Organization.feed_floor).label("seq")).where(col(Organization.id) == org_id),
    ).subquery()
    return select(func.coalesce(func.max(highest.c.seq), 0))


# The same, built once for the flush (`_allocate`): the workspace is a parameter, so the
# statement's compiled form is cached instead of a new statement being built per flush.
_HIGHEST_POSITION_OF = _highest_position(
    bindparam("feed_org", type_=Conversation.__table__.c.org_id.type)  # type: ignore[attr-defined]
)


_SEQUENCE_HEAD = text("SELECT pg_sequence_last_value('weflux_change_seq')")


async def handed_out_head(session: AsyncSession, org_id: uuid.UUID) -> int | None:
    """The highest position the workspace's feed has handed out (None: not known yet).

    PostgreSQL numbers every workspace's changes from one sequence: its last value. SQLite
    numbers each workspace apart: its highest row or floor, read past the scoping criteria
    (rows the caller may not see, and erased ones, count). No cursor a client was given
    is above it; one above it is another feed's (another workspace's, another database's).
    """
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        value = (await connection.execute(_SEQUENCE_HEAD)).scalar_one()
        return None if value is None else int(value)
    found = await connection.execute(_HIGHEST_POSITION_OF, {"feed_org": org_id})
    return int(found.scalar_one())


def feed_values(dialect: str, org_id: uuid.UUID, *, touch: bool = False) -> dict[str, Any]:
    """What a bulk UPDATE of conversations or messages sets to take a feed position.

    PostgreSQL: nothing (the trigger does when a column changes); with `touch` (a change
    kept beside the row, such as a reaction) -1, which the trigger replaces. SQLite, whose
    writers are serialised: one above the workspace's highest position, as a subquery.
    """
    if dialect == "postgresql":
        return {"update_seq": -1} if touch else {}
    return {"update_seq": (_highest_position(org_id).scalar_subquery() + 1)}


def _feed_changed(target: Any) -> bool:
    state = inspect(target)
    return any(
        state.attrs[attr.key].history.has_changes()
        for attr in state.mapper.column_attrs
        if attr.key not in _FEED_BOOKKEEPING
    )


def _allocate(connection: Connection, target: Any) -> None:
    """SQLite: the next position of the workspace, one SELECT per flush (writers hold the
    database's write lock from their first write, so nobody else allocates meanwhile)."""
    if connection.dialect.name == "postgresql":
        return
    allocated: dict[uuid.UUID, int] = connection.info.setdefault(_FEED_NEXT, {})
    if target.org_id not in allocated:
        allocated[target.org_id] = int(
            connection.execute(_HIGHEST_POSITION_OF, {"feed_org": target.org_id}).scalar_one()
        )
    allocated[target.org_id] += 1
    target.update_seq = allocated[target.org_id]


FEED_HIGHEST = "feed_highest"


def with_feed_highest(statement: Select[Any]) -> Select[Any]:
    """SQLite: `statement`'s rows, each with the workspace's highest feed position as
    column `feed_highest` (one row of NULLs and the position when it finds none; the
    workspace is the `feed_org` parameter): the SELECT of `reserve_feed_positions` folded
    into a read the transaction makes anyway."""
    found = statement.subquery("found")
    highest = _HIGHEST_POSITION_OF.subquery("feed")
    return select(highest.c[0].label(FEED_HIGHEST), found).select_from(
        highest.outerjoin(found, true())
    )


def reserve_feed_positions_sync(
    connection: Connection, org_id: uuid.UUID, count: int, highest: int | None = None
) -> range:
    """`count` new positions of the workspace's change feed, in order, for conversation
    and message rows written with Core statements (a message's `created_seq` is its
    `update_seq`). Synchronous: for a caller in SQLAlchemy's greenlet
    (`AsyncSession.run_sync`); async code calls `reserve_feed_positions`.

    SQLite: as the flush takes them, above the workspace's highest position, continuing
    a flush's allocation if one is under way; else above `highest` when the transaction
    has read it already (`with_feed_highest`), else read now (`_HIGHEST_POSITION_OF`). A
    writing transaction holds SQLite's write lock from its start (BEGIN IMMEDIATE), so
    nobody takes positions meanwhile. PostgreSQL: none (empty: the trigger assigns them
    in the INSERT or UPDATE).
    """
    if count <= 0 or connection.dialect.name == "postgresql":
        return range(0)
    allocated: dict[uuid.UUID, int] = connection.info.get(_FEED_NEXT, {})
    if org_id in allocated:
        highest = allocated[org_id]
        allocated[org_id] = highest + count
    elif highest is None:
        highest = int(connection.execute(_HIGHEST_POSITION_OF, {"feed_org": org_id}).scalar_one())
    return range(highest + 1, highest + count + 1)


async def reserve_feed_positions(
    connection: AsyncConnection, org_id: uuid.UUID, count: int, highest: int | None = None
) -> range:
    """`reserve_feed_positions_sync` from async code; no greenlet when nothing is read
    (`highest` known, or PostgreSQL)."""
    sync = connection.sync_connection
    assert sync is not None
    if highest is None and count > 0 and connection.dialect.name != "postgresql":
        return await connection.run_sync(reserve_feed_positions_sync, org_id, count)
    return reserve_feed_positions_sync(sync, org_id, count, highest)


def _take_position(mapper: Any, connection: Connection, target: Any) -> None:
    _allocate(connection, target)
    if isinstance(target, Message) and connection.dialect.name != "postgresql":
        target.created_seq = target.update_seq


def _take_position_if_changed(mapper: Any, connection: Connection, target: Any) -> None:
    if _feed_changed(target):
        _allocate(connection, target)


@event.listens_for(ScopedSession, "after_flush")
def _forget_allocations(session: Session, flush_context: Any) -> None:
    # A bulk UPDATE between two flushes may take positions: re-read the highest next time.
    session.connection().info.pop(_FEED_NEXT, None)


for _model in (Conversation, Message):
    event.listen(_model, "before_insert", _take_position)
    event.listen(_model, "before_update", _take_position_if_changed)
    inspect(_model).eager_defaults = True  # PostgreSQL: the trigger's position, by RETURNING
# A removal (conversationRemoved) takes its position from the same counter, once.
event.listen(ConversationRemoval, "before_insert", _take_position)
inspect(ConversationRemoval).eager_defaults = True


FEED_LOCK_CLASS = 1717  # as migration 0018's weflux_next_change


async def lock_feed(session: AsyncSession) -> None:
    """Take the workspace's feed lock now (PostgreSQL), before row-locking a feed row.

    The trigger takes the feed lock after the row lock of the row it changes; a transaction
    that changes (or row-locks) a second row after the lock is held could deadlock with one
    holding that row and waiting for the feed. So a transaction that locks a row before
    changing it, or changes several, takes the feed lock first: this, or
    `use_workspace(feed_lock=True)` (webhook ingest: no statement of its own).
    """
    connection = await session.connection()
    org_id = current_workspace(session)
    if connection.dialect.name != "postgresql" or org_id is None:
        return
    await connection.execute(
        text("SELECT pg_advisory_xact_lock(:lock_class, hashtext(:org))"),
        {"lock_class": FEED_LOCK_CLASS, "org": str(org_id)},
    )


async def raise_feed_floor(connection: AsyncConnection, org_id: uuid.UUID) -> None:
    """Before a purge deletes feed rows: SQLite keeps the workspace's highest position as
    its floor, so the next position is above every one handed out, deleted or not.

    On the purge's connection, in its transaction (a first write takes the write lock).
    PostgreSQL's sequence never goes back: nothing to do there.
    """
    if connection.dialect.name == "postgresql":
        return
    organizations: Table = Organization.__table__  # type: ignore[attr-defined]
    await connection.execute(
        organizations.update()
        .where(organizations.c.id == org_id)
        .values(feed_floor=_HIGHEST_POSITION_OF.scalar_subquery()),
        {"feed_org": org_id},
    )
