"""What every GraphQL operation goes through, over HTTP and over the WebSocket alike.

1. The request limits (`graphql_ip`, `graphql_workspace`): `hit_request_limits`.
2. Validation, whose errors never suggest a name ("Did you mean ..."); its verdict is
   kept with the parsed document (`weflux.gql.documents`), both functions of the text.
   Text holding NUL, in a literal or a variable, is refused (`weflux.gql.nul`); so is a
   document without one operation to run (`weflux.gql.operations`). What follows
   judges the operation that runs, never another of the document.
3. The grace period of a workspace deletion, the two-factor policy and re-authentication
   of sensitive operations (`weflux.gql.policy`).
4. Its calculated cost (`weflux.gql.cost`): refused with `QUERY_TOO_COMPLEX` above
   `WEFLUX_GRAPHQL_MAX_NODES`, else charged to the workspace's and the member's leaky
   buckets (`RATE_LIMITED` when either is spent), and reported in `extensions.cost`.
5. A deadline (`WEFLUX_GRAPHQL_TIMEOUT`) for queries and mutations: past it the
   operation's SQLite statement is interrupted, its task cancelled, its unit of work
   rolled back, and the answer is `TIMEOUT`. Subscriptions live on past it.

All of it happens before execution: a refused operation never touches the database.
The transports (`weflux.gql.view`, `weflux.gql.socket`) run each operation inside an
`operation_scope`; the schema extension `OperationGuard` does the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from contextvars import ContextVar
from typing import Any

from graphql import DocumentNode, GraphQLError, OperationType, validate
from sqlmodel.ext.asyncio.session import AsyncSession
from strawberry.extensions import SchemaExtension
from strawberry.schema.validation_rules.maybe_null import MaybeNullValidationRule
from strawberry.schema.validation_rules.one_of import OneOfInputValidationRule

from weflux.auth.permissions import Permission
from weflux.auth.principal import Principal
from weflux.db import begin_read_only, interrupt
from weflux.errors import ErrorCode
from weflux.gql.budgets import CostBudgets
from weflux.gql.cost import OperationCost, operation_cost
from weflux.gql.documents import DocumentCache, validation_errors
from weflux.gql.nul import nul_error
from weflux.gql.operations import operation_error
from weflux.gql.policy import refusal_at_commit, refusal_at_start, root_fields, screen
from weflux.nul import holds_nul
from weflux.throttle.leaky_bucket import Charge
from weflux.throttle.ratelimit import ALLOWED, RateLimitDecision, RateLimiter, per_ip

# Strawberry validates with these two besides graphql-core's rules.
_STRAWBERRY_RULES = (MaybeNullValidationRule, OneOfInputValidationRule)

TIMEOUT_MESSAGE = "The operation ran past its deadline and was cancelled; nothing was changed"


class DeadlineExceeded(Exception):
    """The operation ran past `WEFLUX_GRAPHQL_TIMEOUT`; it was cancelled."""


# --- the request limits ------------------------------------------------------------


async def hit_request_limits(
    limiter: RateLimiter, ip: str | None, principal: Principal
) -> RateLimitDecision:
    """Count one operation from `ip` against the per-IP and per-workspace request limits."""
    for name, key in (("graphql_ip", per_ip(ip)), ("graphql_workspace", str(principal.org_id))):
        decision = await limiter.hit(name, key)
        if not decision.allowed:
            return decision
    return ALLOWED


# --- the cost budgets (weflux.gql.budgets) -------------------------------------------


def cost_report(cost: OperationCost | None, charge: Charge) -> dict[str, Any]:
    """`extensions.cost`: what was asked, and the tighter of the two buckets after it."""
    tightest = charge.tightest
    return {
        "requested": cost.points if cost is not None else 0,
        "nodes": cost.nodes if cost is not None else 0,
        "remaining": math.floor(tightest.remaining) if tightest is not None else None,
        "maximum": tightest.spec.capacity if tightest is not None else None,
        "restoreRate": tightest.spec.restore_rate if tightest is not None else None,
    }


# --- one operation in flight -------------------------------------------------------


class OperationScope:
    """One operation: its unit of work, its deadline, and what it was charged."""

    def __init__(
        self, unit: AsyncSession | None, open_unit: OpenUnit | None, stack: AsyncExitStack
    ) -> None:
        self.unit = unit
        self.operation: OperationType | None = None  # known once validated
        self.fields: frozenset[str] = frozenset()  # a mutation's root fields
        self.report: dict[str, Any] | None = None
        self.answered = False  # its result was sent (the socket's first `next`)
        self.expired = False
        # A dormant fan-out member's subscription restarted (weflux.gql.socket): charged
        # when the client started it, not again.
        self.charged = False
        self._open_unit = open_unit
        self._stack = stack
        self._timeout: asyncio.Timeout | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._interrupting: asyncio.Task[None] | None = None

    async def ensure_unit(self) -> AsyncSession | None:
        """The operation's unit of work, opened now if the transport left that to us."""
        if self.unit is None and self._open_unit is not None:
            self.unit = await self._stack.enter_async_context(self._open_unit())
        return self.unit

    def disarm(self) -> None:
        """No deadline for this operation (a subscription)."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def _arm(self, timeout: asyncio.Timeout, seconds: float) -> None:
        self._timeout = timeout
        self._expiry = asyncio.get_running_loop().call_later(seconds, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        self.expired = True
        if self.unit is not None:
            # Scheduled first, so it runs before the cancellation below: a statement that
            # runs in aiosqlite's thread must stop before its connection can roll back.
            self._interrupting = asyncio.ensure_future(self._interrupt(self.unit))
        assert self._timeout is not None
        self._timeout.reschedule(asyncio.get_running_loop().time())

    async def _interrupt(self, unit: AsyncSession) -> None:
        if self._timeout is not None:  # still running (see `operation_scope`)
            await interrupt(unit)


OpenUnit = Callable[[], AbstractAsyncContextManager[AsyncSession]]
_current: ContextVar[OperationScope | None] = ContextVar("weflux_operation", default=None)


@contextlib.asynccontextmanager
async def operation_scope(
    unit: AsyncSession | None, seconds: float, *, open_unit: OpenUnit | None = None
) -> AsyncIterator[OperationScope]:
    """Run one operation under its deadline; `DeadlineExceeded` when it expires.

    `unit` is the operation's unit of work; or, with `open_unit`, one is opened once the
    operation is known to be a query or a mutation (and closed, rolling back whatever was
    not committed, when the scope ends). The operation (in the caller's task) is cancelled
    at the deadline; the caller answers `TIMEOUT`, its unit rolled back.
    """
    token = None
    try:
        async with AsyncExitStack() as stack:
            scope = OperationScope(unit, open_unit, stack)
            token = _current.set(scope)
            try:
                async with asyncio.timeout(None) as timeout:
                    scope._arm(timeout, seconds)
                    yield scope
            except TimeoutError:
                if scope.expired:
                    raise DeadlineExceeded from None
                raise
            finally:
                scope.disarm()
                scope._timeout = None
    finally:
        if token is not None:
            _current.reset(token)


def current_operation() -> OperationScope | None:
    """The operation this task runs, inside `operation_scope`."""
    return _current.get()


async def refused_at_commit(
    scope: OperationScope, principal: Principal | None
) -> GraphQLError | None:
    """Whether a mutation that ran without errors may commit (`policy.refusal_at_commit`:
    SQLite; on PostgreSQL most were read as they started): the transports ask just
    before they settle its unit."""
    if scope.operation is not OperationType.MUTATION or scope.unit is None or principal is None:
        return None
    return await refusal_at_commit(scope.unit, principal.org_id, scope.fields)


def timeout_error() -> GraphQLError:
    return GraphQLError(TIMEOUT_MESSAGE, extensions={"code": ErrorCode.TIMEOUT})


# --- the schema extension ----------------------------------------------------------


class OperationGuard(SchemaExtension):
    """Validation without suggestions, then the operation's cost: limit, charge, report."""

    def __init__(
        self, documents: DocumentCache, permissions: Mapping[str, Permission] | None = None
    ) -> None:
        self._documents = documents
        self._permissions: Mapping[str, Permission] = permissions or {}
        self._operation: OperationType | None = None
        self._report: dict[str, Any] | None = None

    async def on_validate(self) -> AsyncIterator[None]:
        execution = self.execution_context
        document = execution.graphql_document
        if execution.pre_execution_errors is None and holds_nul(execution.variables):
            execution.pre_execution_errors = [nul_error()]
        if execution.pre_execution_errors is None and document is not None:
            execution.pre_execution_errors = self._validate(document)
        if not execution.pre_execution_errors:
            refusal = await self._admit()
            if refusal is not None:
                execution.pre_execution_errors = [refusal]
        yield

    def _validate(self, document: DocumentNode) -> list[GraphQLError]:
        """The document's validation errors, computed once per schema and document text.

        Strawberry's own validation, but with `hide_suggestions`: no "Did you mean" for
        fields, arguments, types, input fields or enum values. Its rules are the schema's
        (fixed when it is built), so the verdict is a function of the text alone.
        """
        execution = self.execution_context
        query = execution.query
        known = self._documents.get(query) if query is not None else None
        if known is not None and known.document is not document:
            known = None  # parsed anew, not the cached document: validate it as given
        cached = validation_errors(known)
        if cached is not None:
            return cached
        errors = validate(
            execution.schema._schema,
            document,
            (*execution.validation_rules, *_STRAWBERRY_RULES),
            hide_suggestions=True,
        )
        for error in errors:
            # Coded here: one pointing at a variable's definition is no value's fault.
            if "code" not in (error.extensions or {}):
                error.extensions = {
                    **(error.extensions or {}),
                    "code": ErrorCode.GRAPHQL_VALIDATION_FAILED,
                }
        if known is not None:
            known.errors = tuple(errors)
        return errors

    async def _admit(self) -> GraphQLError | None:
        """The refusal of the operation, or None once it is charged and may run."""
        execution = self.execution_context
        context = execution.context
        scope = _current.get()
        assert execution.graphql_document is not None
        unchosen = operation_error(execution.graphql_document, execution.operation_name)
        if unchosen is not None:
            return unchosen
        cost = operation_cost(
            execution.schema._schema,
            execution.graphql_document,
            execution.operation_name,
            execution.variables,
        )
        if cost is None:
            return None  # no root type for it: graphql-core answers that
        refusal = await screen(
            context.principal,
            context.db,
            context.settings.reauthentication_window,
            execution.graphql_document,
            execution.operation_name,
            cost.operation,
            self._permissions,
        )
        if refusal is not None:
            return refusal
        self._operation = cost.operation
        budgets: CostBudgets = context.cost_budgets
        limit = context.settings.graphql_max_nodes
        too_complex = cost.nodes > limit
        free = too_complex or (scope is not None and scope.charged)
        charge = await budgets.charge(context.actor, 0 if free else cost.points)
        self._report = cost_report(cost, charge)
        if scope is not None:
            scope.operation, scope.report = cost.operation, self._report
            if cost.operation is OperationType.MUTATION:
                scope.fields = frozenset(
                    root_fields(execution.graphql_document, execution.operation_name)
                )
        if too_complex:
            return GraphQLError(
                f"This operation could return up to {cost.nodes:,} nodes; the limit is "
                f"{limit:,}. Ask for smaller pages (first/last) or fewer nested connections.",
                extensions={"code": ErrorCode.QUERY_TOO_COMPLEX},
            )
        if not charge.allowed:
            return GraphQLError(
                f"The cost budget is spent; it holds enough for this operation again in "
                f"{charge.retry_after} s",
                extensions={"code": ErrorCode.RATE_LIMITED, "retryAfter": charge.retry_after},
            )
        if scope is not None:
            if cost.operation is OperationType.SUBSCRIPTION:
                scope.disarm()  # a subscription lives on; each event has its own unit
            else:
                unit = await scope.ensure_unit()
                if cost.operation is OperationType.QUERY and unit is not None:
                    await begin_read_only(unit)
                elif unit is not None and context.principal is not None:
                    return await refusal_at_start(unit, context.principal.org_id, scope.fields)
        return None

    async def get_results(self) -> dict[str, Any]:
        if self._operation is OperationType.SUBSCRIPTION:
            return {}  # charged when it started; its events carry no report
        if self._report is None:  # refused before its cost was known (invalid)
            context = self.execution_context.context
            principal = getattr(context, "principal", None)
            if principal is None:
                return {}
            budgets: CostBudgets = context.cost_budgets
            self._report = cost_report(None, await budgets.charge(principal, 0))
        return {"cost": self._report}
