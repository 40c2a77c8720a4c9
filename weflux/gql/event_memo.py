"""One live event, loaded and executed once per visibility class for all its subscribers.

Subscribers who see alike (every ADMIN and MANAGER; each Agent alone) share the row an
event names, its GraphQL object and the result of executing one document on it: the
memo keeps recent events by (event, visibility class), and the execution context below
reuses a result computed for the same object, document and variables.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from graphql import ExecutionResult
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from weflux.auth.principal import Principal, visibility_class
from weflux.gql.errors import failed_to_run
from weflux.gql.loaders import Loaders

# How a live event's row is read: (the unit of work, model, id, the class's DataLoaders)
# -> row. A fetch may prime the DataLoaders with related rows read by the same statement.
Unit = TypeVar("Unit")
Fetch = Callable[[Unit, type[Any], uuid.UUID, Loaders], Awaitable[Any]]


class SharedEvent:
    """One event as one visibility class sees it: loaded once, shared by its subscribers."""

    def __init__(self, loaders: Loaders) -> None:
        self.row: asyncio.Future[Any] | None = None
        self.loaders = loaders
        self.converted: Any = None

    def convert(self, row: Any, to_type: Any) -> Any:
        """The GraphQL object of the row, one for the whole class (see SharedResults)."""
        if self.converted is None:
            self.converted = to_type(row)
            share_results(self.converted)
        return self.converted

    async def load(
        self,
        unit: Callable[[], Unit],
        model: type[Any],
        row_id: uuid.UUID,
        fetch: Fetch[Unit],
    ) -> Any:
        """The row, read once through the first subscriber's unit of work.

        The first subscriber reads it in its own task (no task of its own: one hop less
        on the way to the frame); others of the class await its outcome, and read for
        themselves if it failed or was abandoned.
        """
        pending = self.row
        if pending is None:
            pending = self.row = asyncio.get_running_loop().create_future()
            try:
                row = await fetch(unit(), model, row_id, self.loaders)
            except BaseException as error:
                # Those waiting read for themselves; so does the next one to come.
                self.row = None
                pending.set_exception(RuntimeError("the shared load failed"))
                pending.exception()  # retrieved: no "never retrieved" warning
                if not isinstance(error, Exception):
                    raise
                return await fetch(unit(), model, row_id, self.loaders)  # as a waiter would
            pending.set_result(row)
            return row
        try:
            # shield: a waiter cancelled must not cancel the others' future
            return await asyncio.shield(pending)
        except Exception:
            # The subscriber that started the load failed or went away: load for ourselves.
            return await fetch(unit(), model, row_id, self.loaders)


class EventMemo:
    """Recent events by (event, visibility class); bounded, oldest dropped first."""

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self._entries: OrderedDict[tuple[str, str, str], SharedEvent] = OrderedDict()

    def get(
        self,
        occurrence: str,
        row_id: uuid.UUID,
        principal: Principal,
        new_loaders: Callable[[], Loaders],
    ) -> SharedEvent:
        """The event as `principal`'s class sees it (new, with `new_loaders()`, if unseen)."""
        key = (occurrence, str(row_id), visibility_class(principal))
        shared = self._entries.get(key)
        if shared is None or getattr(shared.converted, _SPOILED, False):
            shared = self._entries[key] = SharedEvent(new_loaders())
            while len(self._entries) > self.limit:
                self._entries.popitem(last=False)
        return shared


_RESULTS = "_weflux_shared_results"
_SPOILED = "_weflux_spoiled"  # its execution failed unexpectedly: load the event again


def share_results(root: Any) -> None:
    """Let every subscriber of one visibility class reuse the execution of `root`."""
    object.__setattr__(root, _RESULTS, {})


class SharedEventExecutionContext(StrawberryGraphQLCoreExecutionContext):
    """Executes a live event's selection set once per visibility class and document.

    Subscribers of one class receive the same root object (see `SharedEvent.convert`);
    the result of executing one document with one set of variables on it is the same for
    all of them, so it is computed once and each subscriber gets its own copy of the
    result's envelope (extensions such as error masking replace `errors` on it).

    The first subscriber executes in its own task (no task of its own: one loop hop less
    on the way to the frame); others of the class await its outcome, and execute for
    themselves if it failed or was abandoned (as `SharedEvent.load` does for the row).

    Invariant: no field reachable from a subscription payload may depend on the caller
    beyond the visibility class (today none reads `info.context.actor`); a field that
    does must not be shared this way.
    """

    def execute_operation(self, serially: bool | None = None) -> Any:
        results: dict[Any, asyncio.Future[Any]] | None = getattr(self.root_value, _RESULTS, None)
        location = self.operation.loc
        if results is None or location is None:
            return super().execute_operation(serially)
        coerced = self.variable_values.coerced
        if coerced:
            try:
                variables = json.dumps(coerced, sort_keys=True, default=str)
            except (TypeError, ValueError):
                return super().execute_operation(serially)
        else:
            variables = ""  # the common case: no variables, nothing to serialise
        key = (location.source.body, location.start, location.end, variables)
        shared = results.get(key)
        if shared is not None:
            return self._await_shared(shared, serially)
        outcome = super().execute_operation(serially)
        future = asyncio.get_running_loop().create_future()
        results[key] = future
        if not self.is_awaitable(outcome):
            future.set_result(outcome)
            return _own_copy(cast("ExecutionResult", outcome))
        return _execute_first(outcome, future, results, key, self.root_value)

    async def _await_shared(self, shared: asyncio.Future[Any], serially: bool | None) -> Any:
        try:
            # shield: a waiter cancelled must not cancel the others' future
            result = await asyncio.shield(shared)
        except Exception:
            # The subscriber that executed first failed or went away: execute for ourselves.
            outcome = super().execute_operation(serially)
            return await outcome if self.is_awaitable(outcome) else outcome
        return _own_copy(result)


async def _execute_first(
    outcome: Awaitable[ExecutionResult],
    future: asyncio.Future[Any],
    results: dict[Any, asyncio.Future[Any]],
    key: Any,
    root: Any,
) -> ExecutionResult:
    try:
        result = await outcome
    except BaseException:
        _unshare(future, results, key)
        raise
    if result.errors and any(failed_to_run(error) for error in result.errors):
        # A read that failed (a killed connection): not the event as the class sees
        # it, and its subscriber will not send it (`weflux.gql.socket`). Others load
        # and execute it again, with DataLoaders that did not keep the failure.
        _unshare(future, results, key)
        object.__setattr__(root, _SPOILED, True)
        return result
    future.set_result(result)
    return _own_copy(result)


def _unshare(
    future: asyncio.Future[Any], results: dict[Any, asyncio.Future[Any]], key: Any
) -> None:
    """Those waiting execute for themselves; so does the next one to come."""
    if results.get(key) is future:
        del results[key]
    future.set_exception(RuntimeError("the shared execution failed"))
    future.exception()  # retrieved: no "never retrieved" warning


def _own_copy(result: ExecutionResult) -> ExecutionResult:
    return ExecutionResult(
        data=result.data,
        errors=list(result.errors) if result.errors else None,
        extensions=result.extensions,
    )
