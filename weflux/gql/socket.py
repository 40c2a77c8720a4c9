"""Operations over the WebSocket (graphql-transport-ws), limited and charged as over HTTP.

A frame of the wrong shape (`frame_problem`) closes the socket 4400. Every `subscribe`
message counts against the request limits of `/graphql` (per IP and per workspace)
before it runs; over them it is answered with an `error` frame coded `RATE_LIMITED`
(with `retryAfter`, in seconds). Then `weflux.gql.guard.OperationGuard`
validates, costs and charges it like any other operation.

Queries and mutations work as over HTTP: each runs in its own unit of work (a session
scoped to the caller, fresh DataLoaders) under the deadline. Before its result is sent
the unit is committed, and its after-commit events published, or rolled back when the
result has errors; past the deadline the operation is cancelled, rolled back and
answered `TIMEOUT`. Subscriptions load each event in a unit of their own (`weflux.gql.live`);
alike subscriptions of the process share one execution and one serialisation of each
event (`weflux.gql.fanout`). A member that only waits for the leader's frames keeps no
operation running (`weflux.realtime.hub.Dormant`): only its id stays registered, and its
operation is started again, under the socket's current principal, when it must lead or
listen on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from typing import Any, cast

from graphql import OperationType
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    ConnectionInitMessage,
    Message,
    NextMessage,
    SubscribeMessage,
)
from strawberry.types.execution import ExecutionResult

from weflux.db import settle
from weflux.db_errors import is_service_outage
from weflux.errors import ErrorCode
from weflux.gql.context import Context
from weflux.gql.fanout import broadcast, sharing_for
from weflux.gql.guard import (
    DeadlineExceeded,
    current_operation,
    hit_request_limits,
    operation_scope,
    refused_at_commit,
    timeout_error,
)
from weflux.realtime.caps import TOO_MANY_SOCKETS_CLOSE, TooManySockets, admission_of
from weflux.realtime.hub import Dormant, Sharing, sharing

_INTERNAL = {
    "message": "Internal server error",
    "extensions": {"code": ErrorCode.INTERNAL_SERVER_ERROR},
}
# A live event that could not be loaded (its database read failed): never sent as a
# `next` without data, which the client would step over. The socket is closed with
# 1013 (Try Again Later), which graphql-ws retries: its subscriptions resume after the
# last event they received (docs/realtime.md#close-codes).
TRY_AGAIN_CLOSE = 1013
_UNDELIVERED = frozenset((ErrorCode.INTERNAL_SERVER_ERROR, ErrorCode.UPSTREAM_UNAVAILABLE))
log = logging.getLogger(__name__)


def undelivered(payload: Any) -> bool:
    """Whether a subscription's `next` payload stands for an event that failed to load."""
    errors = payload.get("errors") if isinstance(payload, dict) else None
    if not errors:
        return False  # every delivered frame: no generator made
    return any(
        isinstance(error, dict) and (error.get("extensions") or {}).get("code") in _UNDELIVERED
        for error in errors
    )


def _finished() -> asyncio.Task[None]:
    """A done future standing for a dormant operation's task (one per event loop)."""
    loop = asyncio.get_running_loop()
    done = _FINISHED.get(loop)
    if done is None:
        done = _FINISHED[loop] = loop.create_future()
        done.set_result(None)
    return cast("asyncio.Task[None]", done)  # cancelled and awaited, like a done task


_FINISHED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Future[None]] = (
    weakref.WeakKeyDictionary()
)


def frame_problem(frame: object) -> str | None:
    """Why a frame is not one graphql-transport-ws allows, or None.

    Strawberry reads frames as they come: an operation id that is not a string slipped
    past the request limits below (they key on string ids), an unhashable one or a
    payload that is not an object ended the connection with an exception, and a query or
    variables of another type failed inside the operation."""
    if not isinstance(frame, dict):
        return "A message must be a JSON object"
    kind = frame.get("type")
    if kind not in ("subscribe", "complete"):
        return None
    operation_id = frame.get("id")
    if not isinstance(operation_id, str) or not operation_id:
        return "An operation's `id` must be a non-empty string"
    if kind == "complete":
        return None
    payload = frame.get("payload")
    if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
        return "A subscribe `payload` must be an object with the `query` as a string"
    for key, expected in (("variables", dict), ("extensions", dict), ("operationName", str)):
        if payload.get(key) is not None and not isinstance(payload[key], expected):
            kind_of = "an object" if expected is dict else "a string"
            return f"A subscribe payload's `{key}` must be {kind_of} or null"
    return None


class _Wake:
    """Restarts one dormant operation (`OperationHandler._wake`): held by its sharing for
    the socket's life, two slots (a partial over a bound method was about 0.25 KiB)."""

    __slots__ = ("handler", "operation")

    def __init__(self, handler: OperationHandler, operation: Operation[Context, None]) -> None:
        self.handler = handler
        self.operation = operation

    def __call__(self) -> None:
        self.handler._wake(self.operation)


class OperationHandler(BaseGraphQLTransportWSHandler[Context, None]):
    """Strawberry's graphql-transport-ws handler, with limits and a unit per operation."""

    _shares: dict[str, Sharing] | None = None
    _closing = False  # closed for an event it could not deliver: nothing more goes out

    async def handle_message(self, message: Message) -> None:
        """A frame of the wrong shape closes the socket 4400 (the protocol's invalid
        message) before Strawberry reads it."""
        problem = frame_problem(message)
        if problem is not None:
            await self.handle_invalid_message(problem)
            return
        await super().handle_message(message)

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        operation_id = message.get("id")
        principal = self.context.principal
        if (
            self.connection_acknowledged
            and principal is not None
            and isinstance(operation_id, str)
            and operation_id not in self.operations
        ):
            limit = self.max_subscriptions_per_connection
            if limit is not None and len(self.operations) >= limit:
                # Strawberry's own refusal has no code; this one is coded, and costs
                # no request from the rate limits.
                await self._refuse(
                    operation_id,
                    f"At most {limit} operations may run at once on one socket: complete one first",
                    {"code": ErrorCode.RATE_LIMITED, "limit": limit},
                )
                return
            decision = await hit_request_limits(
                self.context.limiter, self.context.meta.ip, principal
            )
            if not decision.allowed:
                await self._refuse(
                    operation_id,
                    "Too many requests",
                    {"code": ErrorCode.RATE_LIMITED, "retryAfter": decision.retry_after},
                )
                return
        await super().handle_subscribe(message)
        # As `connection_init` below: Strawberry's read loop holds this frame until the
        # next one, for an idle socket its whole life. Its operation took what it needs
        # (the id, the query, the variables); the rest goes.
        cast("dict[str, object]", message).clear()

    async def _refuse(self, operation_id: str, message: str, extensions: dict[str, Any]) -> None:
        """Answer one operation with an `error` frame; the socket stays open."""
        await self.send_message(
            {
                "id": operation_id,
                "type": "error",
                "payload": [{"message": message, "extensions": extensions}],
            }
        )

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        """Past the session's or the member's cap of sockets, close 4403 (`on_ws_connect`);
        the database away while the token is checked, 1013 (graphql-ws retries it)."""
        admission = admission_of(self.context.request.scope)
        if admission is not None:
            admission.initialised()  # no longer waiting for it, whatever comes next
        try:
            await super().handle_connection_init(message)
        except TooManySockets as refused:
            await self.websocket.close(code=TOO_MANY_SOCKETS_CLOSE, reason=str(refused))
            return
        except Exception as error:
            if not is_service_outage(error):
                raise
            # Not the connection dropped without a close frame (1006).
            await self.websocket.close(TRY_AGAIN_CLOSE, "Try again later")
            return
        # The init timeout is cancelled by now: drop it (a finished task held for the
        # socket's life is close to 1 KiB); it ends on its own.
        self.connection_init_timeout_task = None
        # Strawberry's read loop holds the last frame until the next one comes: an idle
        # socket kept its whole `connection_init` (up to 64 KiB). Only the token is needed
        # from now on, and `on_ws_connect` kept it.
        cast("dict[str, object]", message).clear()

    async def run_operation(self, operation: Operation[Context, None]) -> None:
        context = self.context
        seconds = context.settings.graphql_timeout.total_seconds()
        scope = None
        share = self._shares.get(operation.id) if self._shares is not None else None
        restarted = share is not None and share.listener is not None and share.listener.waking
        if not restarted:
            share = sharing_for(
                self, operation.id, operation.query, operation.variables, operation.operation_name
            )
        if share is not None:
            share.wake = _Wake(self, operation)
            if self._shares is None:
                self._shares = {}
            self._shares[operation.id] = share
        dormant = False
        try:
            with sharing(share):
                async with operation_scope(
                    None, seconds, open_unit=context.operation_unit
                ) as scope:
                    scope.charged = restarted
                    await super().run_operation(operation)
        except Dormant:
            dormant = True  # it follows a group without running: `_wake` restarts it
            # Nor does it keep this task (with its context, about 1 KiB) once it ends. Only
            # if it is still this task: a restart (`_wake`) begun meanwhile set its own.
            if operation.task is asyncio.current_task():
                operation.task = _finished()
        except DeadlineExceeded:
            # Its unit is rolled back (closed); answer unless the result went out already.
            if scope is not None and not scope.answered:
                report = scope.report
                await operation.send_next(
                    ExecutionResult(
                        data=None,
                        errors=[timeout_error()],
                        extensions={"cost": report} if report is not None else None,
                    )
                )
            await operation.send_operation_message({"id": operation.id, "type": "complete"})
        finally:
            if not dormant and share is not None:
                if self._shares is not None and self._shares.get(operation.id) is share:
                    del self._shares[operation.id]
                listener = share.listener
                if listener is not None and listener.waking:
                    # restarted to lead or listen, it ended before listening: pass it on
                    await context.hub.forget(listener)

    def _wake(self, operation: Operation[Context, None]) -> None:
        """Restart a dormant member's operation (it must lead, or listen on its own)."""
        if self.operations.get(operation.id) is not operation:
            return  # completed meanwhile: `cleanup_operation` forgets its listener
        operation.task = asyncio.create_task(self.run_operation(operation))
        operation.task.add_done_callback(self._task_done)

    async def cleanup_operation(self, operation_id: str) -> None:
        """Also forget a dormant (or just woken) member: it has no task to end."""
        await super().cleanup_operation(operation_id)
        shares = self._shares
        share = shares.get(operation_id) if shares is not None else None
        listener = share.listener if share is not None else None
        if shares is not None and listener is not None and (listener.dormant or listener.waking):
            del shares[operation_id]
            await self.context.hub.forget(listener)

    async def send_message(self, message: Message) -> None:
        """The first result of a query or mutation goes out once its unit is settled; a
        subscription's event that failed to load closes the socket instead (1013)."""
        if self._closing:
            return
        scope = current_operation()
        if (
            scope is not None
            and not scope.answered
            and message["type"] == "next"
            and scope.operation in (OperationType.QUERY, OperationType.MUTATION)
        ):
            scope.answered = True
            payload: dict[str, Any] = dict(message["payload"])
            if not payload.get("errors"):
                refusal = await refused_at_commit(scope, self.context.principal)
                if refusal is not None:
                    payload = {**payload, "data": None, "errors": [refusal.formatted]}
            if scope.unit is not None and not await settle(
                scope.unit, commit=not payload.get("errors")
            ):
                payload = {"data": None, "errors": [_INTERNAL]}
            message = cast("NextMessage", {**message, "payload": payload})
        elif message["type"] == "next" and undelivered(message["payload"]):
            # Not broadcast either: a shared group's next leader reads the event again.
            self._closing = True
            log.warning("a live event could not be loaded; its socket is closed to resume")
            with contextlib.suppress(Exception):  # gone meanwhile
                await self.websocket.close(TRY_AGAIN_CLOSE, "Try again later: resume with after")
            return
        elif message["type"] == "next" and self._shares is not None:
            share = self._shares.get(message["id"])
            if share is not None and await broadcast(share, dict(message["payload"])):
                return
        await super().send_message(message)
