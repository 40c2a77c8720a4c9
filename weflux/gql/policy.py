"""Three checks of every operation before it runs, over HTTP and the WebSocket alike.

1. While the workspace's deletion is scheduled (its grace period), a mutation may only
   be one of `GRACE_PERIOD_OPERATIONS`: anything else answers `FORBIDDEN`. The request
   itself is refused (`BAD_USER_INPUT`) beside any other mutation but those. The session
   says whether the deletion was scheduled when it was looked up (every session ends when
   one is requested, so no older session says otherwise); a session that says so is
   checked against the database, since a cancellation may have come since.
2. A member who must enroll in two factors (their workspace requires them) may run
   only the enrollment mutations: anything else answers `TWO_FACTOR_REQUIRED`.
3. An operation that names a sensitive root field (`SENSITIVE_OPERATIONS` of
   `weflux.auth.permissions`, the one list) needs an authentication of the session
   within `WEFLUX_REAUTHENTICATION_WINDOW`, else `REAUTHENTICATION_REQUIRED`.

`weflux.gql.guard.OperationGuard` calls `screen` once the operation is valid. A mutation
judged before a deletion was requested is judged again against the database: as it starts,
under the workspace's deletion lock (`refusal_at_start`, PostgreSQL), or just before its
commit (`refusal_at_commit`, SQLite).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import timedelta

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationType,
    SelectionSetNode,
    get_operation_ast,
)
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel.ext.asyncio.session import AsyncSession

from weflux.auth.permissions import (
    DELETING_WORKSPACE_MESSAGE,
    ENROLLMENT_OPERATIONS,
    GRACE_PERIOD_OPERATIONS,
    MUST_ENROLL_MESSAGE,
    SENSITIVE_OPERATIONS,
    Permission,
)
from weflux.auth.principal import Principal
from weflux.db import Database
from weflux.errors import ErrorCode, ReauthenticationRequired, Unauthenticated
from weflux.models import Organization
from weflux.services.sessions import share_deletion_lock
from weflux.services.two_factor import require_recent_authentication

INTROSPECTION = frozenset({"__schema", "__type", "__typename"})
# Mutations that commit during a grace period: the allowed ones, and the request itself
# (it refuses a second one under the workspace's lock; weflux.lifecycle.requests).
COMMITS_WHILE_DELETING = GRACE_PERIOD_OPERATIONS | INTROSPECTION | {"requestWorkspaceDeletion"}
# Checked just before their commit on PostgreSQL too, not as they start: an upload stores
# its file first (seconds for a large one, and a unit of its own for the file's intent),
# and a unit begun at its start held a connection throughout: as many uploads at once as
# the pool's connections each waited for a second one, and every request of the process
# with them. Its unit locks no row a deletion request takes (the file's intent, its new
# row), so taking the lock at its commit cannot deadlock.
CHECKED_AT_COMMIT = frozenset({"uploadMedia"})


def root_fields(document: DocumentNode, operation_name: str | None) -> set[str]:
    """The root field names an operation selects (through fragments too)."""
    operation = get_operation_ast(document, operation_name)
    if operation is None:
        return set()
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    names: set[str] = set()
    seen: set[str] = set()

    def walk(selections: SelectionSetNode) -> None:
        for selection in selections.selections:
            if isinstance(selection, FieldNode):
                names.add(selection.name.value)
            elif isinstance(selection, InlineFragmentNode):
                walk(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                if name not in seen and name in fragments:
                    seen.add(name)
                    walk(fragments[name].selection_set)

    walk(operation.selection_set)
    return names


async def screen(
    principal: Principal | None,
    db: Database,
    reauthentication_window: timedelta,
    document: DocumentNode,
    operation_name: str | None,
    kind: OperationType,
    permissions: Mapping[str, Permission],
) -> GraphQLError | None:
    """The refusal of an operation by the two-factor policy or the re-authentication rule.

    `permissions`: what each mutation requires. A sensitive mutation the caller's role may
    not run at all needs no re-authentication: it is refused FORBIDDEN as it runs, so a
    client is not sent to ask for a password that changes nothing.
    """
    if principal is None:
        return None
    fields = root_fields(document, operation_name)
    if kind is OperationType.MUTATION and "requestWorkspaceDeletion" in fields:
        beside = sorted(fields - COMMITS_WHILE_DELETING)
        if beside:
            # The mutations after it would run inside the grace period it starts, judged
            # before it: refused whole, before anything runs, on both engines.
            return GraphQLError(
                "requestWorkspaceDeletion runs alone (or beside the mutations allowed while "
                f"a deletion is scheduled), not with {', '.join(beside)}",
                extensions={"code": ErrorCode.BAD_USER_INPUT},
            )
    if (
        principal.workspace_deleting
        and kind is OperationType.MUTATION
        and fields - GRACE_PERIOD_OPERATIONS - INTROSPECTION
        and await _deletion_scheduled(db, principal)
    ):
        return GraphQLError(DELETING_WORKSPACE_MESSAGE, extensions={"code": ErrorCode.FORBIDDEN})
    if principal.must_enroll and fields - ENROLLMENT_OPERATIONS - INTROSPECTION:
        return GraphQLError(MUST_ENROLL_MESSAGE, extensions={"code": ErrorCode.TWO_FACTOR_REQUIRED})
    sensitive = {
        name
        for name in fields & SENSITIVE_OPERATIONS
        if name not in permissions or principal.can(permissions[name])
    }
    if kind is OperationType.MUTATION and sensitive:
        async with db.session(principal.org_id) as session:
            try:
                await require_recent_authentication(session, principal, reauthentication_window)
            except (ReauthenticationRequired, Unauthenticated) as refusal:
                return GraphQLError(refusal.message, extensions={"code": refusal.graphql_code})
    return None


_ORGANIZATIONS = Organization.__table__  # type: ignore[attr-defined]
_DELETION_SCHEDULED = select(_ORGANIZATIONS.c.deletion_scheduled_at).where(
    _ORGANIZATIONS.c.id == bindparam("org_id")
)


async def refusal_at_start(
    unit: AsyncSession, org_id: uuid.UUID, fields: frozenset[str]
) -> GraphQLError | None:
    """PostgreSQL: the grace period's refusal of a mutation, read again as it starts,
    under the workspace's deletion lock taken for share until it commits.

    `screen` judged the mutation from the session; a deletion requested since (it ends
    every session, but not the operations already running) must not see the mutation's
    writes commit after its own. `requestWorkspaceDeletion` takes the lock alone
    (`sessions.take_deletion_lock`) before anything else, so it waits for every mutation
    running, and then fails what they queued and destroys what they stored; a mutation
    that starts after it committed reads the deletion here. Taken before any row, so no
    mutation holds a row the request needs while waiting for it (no deadlock).
    """
    if not _checked(unit, fields, "postgresql") or _at_commit(fields):
        return None
    connection = await unit.connection()
    await share_deletion_lock(connection, org_id)
    return await _refusal(connection, org_id)


async def refusal_at_commit(
    unit: AsyncSession, org_id: uuid.UUID, fields: frozenset[str]
) -> GraphQLError | None:
    """SQLite: the same, read just before the mutation's commit, in its transaction: a
    writer holds the database's write lock from its first statement, so the deletion
    either committed before it (seen here) or waits for it. A mutation that opened no
    transaction wrote nothing: no statement.

    PostgreSQL, the mutations of `CHECKED_AT_COMMIT` only: the lock taken for share, then
    the read, just before the commit."""
    if not unit.in_transaction():
        return None
    if _checked(unit, fields, "sqlite"):
        return await _refusal(await unit.connection(), org_id)
    if _checked(unit, fields, "postgresql") and _at_commit(fields):
        connection = await unit.connection()
        await share_deletion_lock(connection, org_id)
        return await _refusal(connection, org_id)
    return None


def _at_commit(fields: frozenset[str]) -> bool:
    return fields - COMMITS_WHILE_DELETING <= CHECKED_AT_COMMIT


def _checked(unit: AsyncSession, fields: frozenset[str], dialect: str) -> bool:
    bind = unit.bind
    return (
        bool(fields - COMMITS_WHILE_DELETING)
        and bind is not None
        and (bind.dialect.name == dialect)
    )


async def _refusal(connection: AsyncConnection, org_id: uuid.UUID) -> GraphQLError | None:
    """FORBIDDEN while the workspace's deletion is scheduled (Core: one row, by its key)."""
    scheduled = (await connection.execute(_DELETION_SCHEDULED, {"org_id": org_id})).first()
    if scheduled is None or scheduled[0] is None:
        return None
    return GraphQLError(DELETING_WORKSPACE_MESSAGE, extensions={"code": ErrorCode.FORBIDDEN})


async def _deletion_scheduled(db: Database, principal: Principal) -> bool:
    """Whether the caller's workspace has a deletion scheduled now (not as cached)."""
    async with db.session(principal.org_id) as session:
        organization = await session.get(Organization, principal.org_id)
        return organization is not None and organization.deletion_scheduled_at is not None
