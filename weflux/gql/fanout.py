"""Shared fan-out: one execution and one serialisation per event for alike subscriptions.

Subscriptions on one process with the same visibility class (every ADMIN and MANAGER of
a workspace; each Agent alone), the same document and the same variables would send the
very same `next` payloads. `weflux.realtime.hub` lets only the first of them (the
leader) receive events; here, each payload the leader sends is serialised once and
written to every member's socket, only the operation id differing.

Subscriptions that resume (`after` given) are never shared: their replay depends on
when they started. A member whose access changed (a new role, re-checked by
`weflux.realtime.sockets`) is released to run on its own; if the leader's changed, the
group is dissolved. Writes never wait on a slow socket: a member whose socket cannot
take a frame now gets it queued, in order, and is closed with 4008 once
`weflux.realtime.hub.QUEUE_LIMIT` frames wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any, cast

from graphql import (
    ArgumentNode,
    DocumentNode,
    GraphQLError,
    NullValueNode,
    VariableNode,
    parse,
    visit,
)
from graphql.language import Visitor

from weflux.auth.principal import visibility_class
from weflux.gql.documents import DocumentCache, documents_of
from weflux.gql.schema import MAX_TOKENS
from weflux.realtime.hub import QUEUE_LIMIT, Sharing

if TYPE_CHECKING:
    from starlette.websockets import WebSocket

    from weflux.auth.principal import Principal
    from weflux.gql.context import Context

log = logging.getLogger(__name__)

SLOW_CONSUMER_CLOSE = 4008
# Below this many bytes waiting in a socket's transport, a frame is written at once
# (uvicorn's WebSocket pauses writers above 64 KiB; a paused write would hold everyone).
WRITE_ROOM = 48 * 1024
_background: set[asyncio.Task[None]] = set()


class _Resumes(Visitor):
    def __init__(self, variables: dict[str, Any]) -> None:
        super().__init__()
        self.variables = variables
        self.found = False

    def enter_argument(self, node: ArgumentNode, *_: Any) -> None:
        if node.name.value != "after" or isinstance(node.value, NullValueNode):
            return
        if (
            isinstance(node.value, VariableNode)
            and self.variables.get(node.value.name.value) is None
        ):
            # null or absent; a default in the definition is caught below
            self.found = self.found or node.value.name.value in self._defaults
            return
        self.found = True

    _defaults: set[str] = set()


def _parse(query: str, documents: DocumentCache | None) -> DocumentNode:
    if documents is None:
        return parse(query, max_tokens=MAX_TOKENS)
    return documents.parse(query, max_tokens=MAX_TOKENS).document  # the schema's one cache


# Never shared (a document naming one runs on its own): `conversationRemoved`'s events
# depend on the subscriber's own membership (a narrowed role's removals), not only on the
# visibility class; the change feed's subscriptions read on from their own position in
# the feed, which a follower taking over from a leader would not have (it would send again
# what the group delivered since it joined).
UNSHARED_SUBSCRIPTIONS = ("conversationRemoved", "conversationUpdated", "messageUpdated")


def resumes(
    query: str, variables: dict[str, Any] | None, documents: DocumentCache | None = None
) -> bool:
    """Whether the operation passes an `after` (a resume point): then it is never shared.

    An unparsable document counts as resuming (not shared; it fails on its own anyway).
    """
    try:
        document = _parse(query, documents)
    except GraphQLError:
        return True
    visitor = _Resumes(variables or {})
    visitor._defaults = {
        definition.variable.name.value
        for operation in document.definitions
        for definition in getattr(operation, "variable_definitions", None) or ()
        if definition.default_value is not None
        and not isinstance(definition.default_value, NullValueNode)
    }
    visit(document, visitor)
    return visitor.found


def _is_transport(candidate: Any) -> bool:
    # uvloop's transports are not asyncio.Transport subclasses: by what they do
    return callable(getattr(candidate, "get_write_buffer_size", None)) and callable(
        getattr(candidate, "is_closing", None)
    )


Server = tuple[Callable[[dict[str, Any]], Awaitable[None]], asyncio.Transport]


def _find_server(send: Any, depth: int = 6) -> Server | None:
    """The server's own ASGI `send` behind a socket's (through middleware closures and
    wrappers naming it `__wrapped__`), and its transport.

    Found once per socket: frames then go straight to the server (the middleware only
    acts on responses' starts), and the transport tells whether a frame can be written
    without waiting. None under a server that hides them: every frame is then sent
    through the socket, queued.
    """
    if send is None or depth == 0:
        return None
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if _is_transport(transport):
        return send, cast("asyncio.Transport", transport)
    wrapped = getattr(send, "__wrapped__", None)  # a wrapper object (`weflux.app`'s)
    if callable(wrapped):
        return _find_server(wrapped, depth - 1)
    for cell in getattr(send, "__closure__", None) or ():
        with contextlib.suppress(ValueError):  # an empty cell
            inner = cell.cell_contents
            if callable(inner):
                found = _find_server(inner, depth - 1)
                if found is not None:
                    return found
    return None


class Sink:
    """One subscription's end of a shared fan-out: its socket and operation id."""

    __slots__ = (
        "_drainer",
        "_outbox",
        "_socket",
        "arguments",
        "closed",
        "context",
        "handler",
        "name",
        "prefix",
        "principal",
        "query",
    )

    def __init__(
        self, handler: Any, operation_id: str, query: str, name: Any, arguments: str
    ) -> None:
        self.handler = handler
        self.context: Context = handler.context
        self.prefix = '{"id":' + json.dumps(operation_id) + ',"type":"next","payload":'
        self.principal: Principal | None = None  # as when it joined
        self.query, self.name, self.arguments = query, name, arguments
        self._outbox: deque[str] | None = None
        self._drainer: asyncio.Task[None] | None = None
        self._socket: Server | bool | None = None  # False: none found
        self.closed = False

    def key(self) -> Hashable | None:
        """Its group: the visibility class of the socket's principal (kept as the one it
        joined with), the document, the operation's name and variables; None unsigned."""
        principal = self.context.principal
        if principal is None:
            return None
        self.principal = principal
        return (visibility_class(principal), self.query, self.name, self.arguments)

    @property
    def changed(self) -> bool:
        """The socket's principal is no longer the one this sink joined with."""
        return self.context.principal is not self.principal

    def _server(self) -> Server | None:
        if self._socket is None:
            self._socket = _find_server(getattr(self.context.request, "_send", None)) or False
        return None if isinstance(self._socket, bool) else self._socket

    async def write(self, payload: str) -> None:
        """Send one `next` frame; queued behind earlier ones if the socket is busy."""
        if self.closed:
            return
        text = self.prefix + payload + "}"
        if self._outbox is None:
            server = self._server()
            if server is not None:
                send, transport = server
                if (
                    not transport.is_closing()
                    and transport.get_write_buffer_size() + len(text) <= WRITE_ROOM
                ):
                    try:
                        await send({"type": "websocket.send", "text": text})
                    except Exception:  # gone meanwhile: its operation ends with the socket
                        self.closed = True
                    return
            self._outbox = deque()
        if len(self._outbox) >= QUEUE_LIMIT:
            self._outbox.clear()
            await self.close_slow()
            return
        self._outbox.append(text)
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain())
            _background.add(self._drainer)
            self._drainer.add_done_callback(_background.discard)

    async def _drain(self) -> None:
        try:
            while self._outbox:
                text = self._outbox[0]
                await cast("WebSocket", self.context.request).send_text(text)
                self._outbox.popleft()
        except Exception:
            self.closed = True
        finally:
            self._outbox = None
            self._drainer = None

    async def close_slow(self) -> None:
        if self.closed:
            return
        self.closed = True
        log.warning("a live subscriber fell behind and is being disconnected")
        with contextlib.suppress(Exception):
            await self.context.close_socket(SLOW_CONSUMER_CLOSE, "Too slow: resume with after")


def sharing_for(
    handler: Any, operation_id: str, query: str, variables: dict[str, Any] | None, name: Any
) -> Sharing | None:
    """How an operation's live listener may share (None: it resumes, never shared)."""
    if not isinstance(query, str) or not isinstance(variables, dict | None):
        return None  # malformed: it fails on its own
    if resumes(query, variables, documents_of(handler.schema)) or any(
        name in query for name in UNSHARED_SUBSCRIPTIONS
    ):
        return None
    try:
        arguments = json.dumps(variables, sort_keys=True) if variables else "{}"
    except (TypeError, ValueError):
        return None
    sink = Sink(handler, operation_id, query, name, arguments)
    return Sharing(sink.key, sink)  # a method, not a closure: no cells per socket


async def broadcast(share: Sharing, payload: dict[str, Any]) -> bool:
    """Send a leader's payload to every member of its group; False if not a leader."""
    listener = share.listener
    group = listener.group if listener is not None else None
    if group is None or group.leader is not listener:
        return False
    sink: Sink = share.member  # type: ignore[assignment]
    if sink.changed:
        group.dissolve()
        return False
    text = json.dumps(payload, separators=(",", ":"))
    await sink.write(text)
    for follower, member in list(group.followers.items()):
        if member.changed:
            group.release(follower)
        else:
            await member.write(text)
    group.delivered()
    return True
