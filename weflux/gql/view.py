"""`/graphql`: authentication and limits at the edge, then Strawberry.

Over HTTP, before anything is parsed: no valid access token -> 401; not POST -> 405;
not `application/json` -> 415; too large -> 413; over the rate limits -> 429; a body
that is not UTF-8 JSON, a batch, or not an object -> 400. Then one database session,
scoped to the caller's workspace, serves the whole operation under its deadline and
is committed once, before the response is sent (rolled back when the operation has
errors). Operations over the WebSocket: `weflux.gql.socket`; the cost and deadline of
every operation: `weflux.gql.guard`. A WebSocket handshake over its client IP's rate or
caps (`weflux.realtime.caps`) is refused 429 before it is accepted.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import AsyncGenerator, Coroutine, Iterable, Mapping
from datetime import timedelta
from typing import Any

import orjson
from cross_web import AsyncHTTPRequestAdapter, HTTPException
from starlette.datastructures import ImmutableMultiDict, MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from strawberry.asgi import ASGIWebSocketAdapter, GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.file_uploads.utils import replace_placeholders_with_files
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.http.exceptions import NonJsonMessageReceived, NonTextMessageReceived
from strawberry.schema import BaseSchema
from strawberry.schema.exceptions import InvalidOperationTypeError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types.execution import ExecutionResult
from strawberry.types.unset import UNSET, UnsetType

from weflux.api.security import IDE_CSP
from weflux.api.validation import is_json, read_body
from weflux.auth.permissions import Permission
from weflux.auth.principal import Principal
from weflux.auth.scoping import restrict_to_agent, set_scope
from weflux.auth.tokens import bearer_token
from weflux.client_ip import client_ip
from weflux.db import settle
from weflux.errors import ErrorCode, PayloadTooLarge, WefluxError, graphql_unauthenticated
from weflux.gql.context import Context
from weflux.gql.guard import (
    DeadlineExceeded,
    hit_request_limits,
    operation_scope,
    refused_at_commit,
    timeout_error,
)
from weflux.gql.ide import graphiql_page
from weflux.gql.socket import OperationHandler
from weflux.realtime.caps import ADMISSION, Admission, TooManySockets
from weflux.runtime import Runtime, runtime_of
from weflux.throttle.ratelimit import graphql_rate_limited_response, per_ip

log = logging.getLogger(__name__)

_SESSION = "weflux.graphql_session"
_RETRY_AFTER = "weflux.graphql_retry_after"
_WS_CONTEXT = "weflux.ws_context"
CONNECTION_INIT_TIMEOUT = 10  # seconds to send connection_init before the socket closes (4408)
MAX_SUBSCRIPTIONS = 20  # per connection
FRAME_CACHE = 256  # recent live-event payloads kept serialised
MULTIPART_SHAPE = (
    'A multipart request needs `operations`, one JSON object {"query", "variables"}, and '
    "`map`, a JSON object of lists of paths to null variables (the GraphQL multipart "
    "request spec)"
)
_ECHO_CHARS = 80  # of a map entry's name or path quoted by a 400
SUBSCRIPTION_OVER_HTTP = (
    "Subscriptions run over the WebSocket at /graphql (graphql-transport-ws), not over HTTP"
)


def _graphql_error(status: int, message: str, code: ErrorCode) -> JSONResponse:
    return JSONResponse(
        {"errors": [{"message": message, "extensions": {"code": code}}]},
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )


def _body_problem(body: bytes) -> str | None:
    """Why a body is not one GraphQL request (a JSON object in UTF-8), or None."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        return "The body must be JSON in UTF-8"
    if text.lstrip()[:1] == "[":
        return "Batched operations are not supported"
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested past the parser's stack
        return "The body is not valid JSON"
    if not isinstance(document, dict):
        return 'The body must be a JSON object: {"query": ..., "variables": {...}}'
    return None


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _retry_after(result: ExecutionResult) -> int | None:
    """The seconds to wait when the whole operation was refused for rate, else None."""
    if result.data is not None:
        return None
    waits = [
        wait
        for error in result.errors or ()
        if (error.extensions or {}).get("code") == ErrorCode.RATE_LIMITED
        and isinstance(wait := (error.extensions or {}).get("retryAfter"), int)
    ]
    return max(waits) if waits else None


def is_multipart(content_type: str | None) -> bool:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "multipart/form-data"


def _screen_upload(request: Request, runtime: Runtime) -> Response | None:
    """A multipart request (the GraphQL multipart request spec, for uploadMedia) must
    declare its length, within WEFLUX_GRAPHQL_MAX_UPLOAD_BYTES; the server holds the
    body to it. Its parts are spooled to temporary files as they arrive (Starlette),
    never held whole in memory. Cross-site forms cannot send one: every request needs
    the Authorization header, so a browser always sends a preflight first (CORS)."""
    declared = request.headers.get("content-length")
    if declared is None or not declared.isascii() or not declared.isdigit():
        return _graphql_error(411, "Send the upload's Content-Length", ErrorCode.BAD_REQUEST)
    limit = runtime.settings.graphql_max_upload_bytes
    if int(declared) > limit:
        return _graphql_error(413, f"An upload may be at most {limit} bytes", ErrorCode.BAD_REQUEST)
    # Strawberry compares the media type exactly.
    request.scope["headers"] = [
        (name, b"multipart/form-data" + value[value.index(b";") :] if b";" in value else value)
        if name == b"content-type"
        else (name, value)
        for name, value in request.scope["headers"]
    ]
    return None


def _echo(value: object) -> str:
    """A map entry's name or path as a message quotes it: JSON (control characters
    escaped), at most `_ECHO_CHARS` of it (the `map` part may be a megabyte)."""
    text = json.dumps(value)
    return text if len(text) <= _ECHO_CHARS else text[: _ECHO_CHARS - 1] + "…"


def _repeated(names: Iterable[str]) -> str | None:
    """The first name given twice, or None."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


def _map_entry_problem(
    operations: dict[str, object],
    name: str,
    paths: list[object],
    files: Mapping[str, object],
    taken: dict[str, str],
) -> str | None:
    """Why the `map` entry `name` cannot be followed, naming it, or None: each of its paths
    must lead to a null value under `operations`' variables (the spec's placeholder), no
    other entry's file may go there too (`taken`: path -> entry, filled as they pass), and
    its file part must be in the request."""
    if isinstance(files.get(name, ""), str):  # a text part is not a file
        return f"The `map` entry {_echo(name)} names a file part the request does not carry"
    for path in paths:
        if isinstance(path, str) and path in taken and taken[path] != name:
            return (
                f"The `map` entries {_echo(taken[path])} and {_echo(name)} both put a file "
                f"at {_echo(path)}: one file a path"
            )
        keys = path.split(".") if isinstance(path, str) else []
        target: object = operations if keys[:1] == ["variables"] else None
        for key in keys:
            if isinstance(target, dict) and key in target:
                target = target[key]
            elif (
                isinstance(target, list)
                and key.isascii()
                and key.isdigit()
                and int(key) < len(target)
            ):
                target = target[int(key)]
            else:
                break
        else:
            if target is None and isinstance(path, str) and len(keys) > 1:
                taken[path] = name
                continue
        return (
            f"The `map` entry {_echo(name)}: {_echo(path)} is not the path of a null value "
            'in `operations`\' variables (e.g. "variables.file" for "variables": {"file": null})'
        )
    return None


async def _admit(websocket: WebSocket) -> Admission | None:
    """The handshake's place in its client IP's counts, or None: refused, over the IP's
    handshake rate (every process together) or one of its caps in this process."""
    runtime = runtime_of(websocket)
    ip = per_ip(client_ip(websocket, runtime.trusted_proxies))
    decision = await runtime.limiter.hit("websocket_ip", ip)
    if not decision.allowed:
        await _refuse_handshake(websocket, graphql_rate_limited_response(decision.retry_after))
        return None
    try:
        return runtime.socket_caps.admit(ip)
    except TooManySockets as refused:
        await _refuse_handshake(
            websocket, _graphql_error(429, str(refused), ErrorCode.RATE_LIMITED)
        )
        return None


async def _refuse_handshake(websocket: WebSocket, response: Response) -> None:
    """Answer a handshake with `response` instead of accepting it (the app adds the
    security headers); a server without ASGI's WebSocket Denial Response answers 403."""
    if "websocket.http.response" in (websocket.scope.get("extensions") or {}):
        await websocket.send_denial_response(response)
    else:
        await websocket.close()


class FrameReader(ASGIWebSocketAdapter):
    """Strawberry's reader of a socket's frames, without holding a frame's text.

    Strawberry's kept the text of the last frame in a local variable until the next frame
    came: an idle socket held its `connection_init` (up to 64 KiB) as text, besides the
    decoded frame (`OperationHandler.handle_connection_init` drops that)."""

    async def iter_json(
        self, *, ignore_parsing_errors: bool = False
    ) -> AsyncGenerator[object, None]:
        try:
            while self.ws.application_state != WebSocketState.DISCONNECTED:
                try:
                    yield self.view.decode_json(await self.ws.receive_text())
                except json.JSONDecodeError as error:
                    if not ignore_parsing_errors:
                        raise NonJsonMessageReceived from error
        except KeyError as error:
            raise NonTextMessageReceived from error
        except WebSocketDisconnect:
            pass


class GraphQLApp(GraphQL[Context, None]):
    graphql_transport_ws_handler_class = OperationHandler
    websocket_adapter_class = FrameReader

    def __init__(self, schema: BaseSchema, *, ide: bool, allowed_origins: list[str]) -> None:
        super().__init__(
            schema,
            graphql_ide="graphiql" if ide else None,
            allow_queries_via_get=False,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
            # uploadMedia only; see `_screen_upload` for what a multipart request must be.
            multipart_uploads_enabled=True,
            allowed_origins=allowed_origins,
            connection_init_wait_timeout=timedelta(seconds=CONNECTION_INIT_TIMEOUT),
            max_subscriptions_per_connection=MAX_SUBSCRIPTIONS,
        )
        self.ide = ide
        self._frames: OrderedDict[int, tuple[object, str]] = OrderedDict()

    def encode_json(self, data: object) -> str:
        """JSON; a live event's shared result is serialised once for all its subscribers.

        Subscribers of one visibility class get the very same `data` object (see
        `weflux.gql.event_memo.SharedEventExecutionContext`); only the operation id differs.
        """
        if isinstance(data, dict) and data.get("type") == "next":
            payload = data.get("payload")
            if isinstance(payload, dict) and set(payload) == {"data"}:
                shared = payload["data"]
                cached = self._frames.get(id(shared))
                if cached is None or cached[0] is not shared:
                    cached = (shared, json.dumps(payload, separators=(",", ":")))
                    self._frames[id(shared)] = cached  # holds `shared`: its id stays unique
                    while len(self._frames) > FRAME_CACHE:
                        self._frames.popitem(last=False)
                operation = json.dumps(data.get("id"))
                return f'{{"id":{operation},"type":"next","payload":{cached[1]}}}'
        return orjson.dumps(data).decode()  # a page of 50 rows: a tenth of json.dumps' time

    def decode_json(self, data: str | bytes) -> object:
        """A socket's frame: JSON nested past the parser's stack is malformed JSON too (4400),
        not an exception that drops the socket without a close frame."""
        try:
            return json.loads(data)
        except RecursionError:
            raise json.JSONDecodeError("Nested too deeply", "", 0) from None

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Coroutine[Any, Any, None]:
        """The socket's or the request's own coroutine: a socket holds only its small frame
        for its life (the HTTP path's larger one, with the cells of its closure, was
        about 0.2 KiB more per idle socket)."""
        if scope["type"] == "websocket":
            return self._socket(scope, receive, send)
        return self._http(scope, receive, send)

    async def _socket(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = WebSocket(scope, receive=receive, send=send)
        admission = await _admit(websocket)
        if admission is None:
            return
        scope[ADMISSION] = admission
        try:
            # Strawberry's view itself, not `GraphQL.__call__` and `run` below (HTTP
            # only): each frame on the way stays for the socket's life.
            await super().run(websocket)
        finally:
            admission.release()
            context = scope.get(_WS_CONTEXT)
            if context is not None:
                runtime_of(scope["app"]).sockets.unregister(context)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request = Request(scope, receive)
        if (
            self.ide
            and request.method == "GET"
            and "text/html" in request.headers.get("accept", "")
            and "query" not in request.query_params  # an operation: refused below
        ):
            await super().__call__(scope, receive, send)  # the IDE page itself carries no data
            return
        runtime = runtime_of(request)
        principal: Principal | None = await runtime.authenticator.authenticate(
            bearer_token(request.headers.get("authorization"))
        )
        if principal is None:
            await graphql_unauthenticated()(scope, receive, send)
            return
        refusal, body = await self._screen(request, runtime, principal)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        # This request's own copy of the lifespan state: the ASGI spec asks servers for
        # a copy per request, but not every server or wrapper makes one (asgi-lifespan
        # shares one dict), and the principal and session must never leak between requests.
        scope["state"] = {**scope.get("state", {}), "principal": principal}
        async with runtime.db.sessionmaker() as session:
            set_scope(session, principal.org_id)
            if not principal.can(Permission.SEE_ALL_CONVERSATIONS):
                restrict_to_agent(session, principal.membership_id)
            scope["state"][_SESSION] = session

            async def send_no_store(message: Message) -> None:
                if message["type"] == "http.response.start":
                    headers = MutableHeaders(scope=message)
                    headers["Cache-Control"] = "no-store"
                    retry_after = scope["state"].get(_RETRY_AFTER)
                    if retry_after is not None:
                        message["status"] = 429
                        headers["Retry-After"] = str(retry_after)
                await send(message)

            # A multipart upload streams on (its size was checked); JSON is replayed.
            replay = receive if body is None else _replay(body)
            await super().__call__(scope, replay, send_no_store)

    async def _screen(
        self, request: Request, runtime: Runtime, principal: Principal
    ) -> tuple[Response | None, bytes | None]:
        if request.method != "POST":
            return _graphql_error(405, "Use POST", ErrorCode.BAD_REQUEST), b""
        multipart = is_multipart(request.headers.get("content-type"))
        if not multipart and not is_json(request.headers.get("content-type")):
            return _graphql_error(
                415,
                "Send application/json (multipart/form-data for uploads)",
                ErrorCode.BAD_REQUEST,
            ), b""
        decision = await hit_request_limits(
            runtime.limiter, client_ip(request, runtime.trusted_proxies), principal
        )
        if not decision.allowed:
            return graphql_rate_limited_response(decision.retry_after), b""
        if multipart:
            return _screen_upload(request, runtime), None
        try:
            body = await read_body(request, runtime.settings.graphql_max_body_bytes)
        except PayloadTooLarge as error:
            return _graphql_error(413, error.message, ErrorCode.BAD_REQUEST), b""
        except WefluxError as error:
            return _graphql_error(400, error.message, ErrorCode.BAD_REQUEST), b""
        problem = _body_problem(body)
        if problem is not None:
            return _graphql_error(400, problem, ErrorCode.BAD_REQUEST), b""
        # Media types are case-insensitive; Strawberry compares them exactly.
        request.scope["headers"] = [
            (name, b"application/json") if name == b"content-type" else (name, value)
            for name, value in request.scope["headers"]
        ]
        return None, body

    async def parse_multipart(self, request: AsyncHTTPRequestAdapter) -> dict[str, str]:
        """An upload's operation: `operations` with each file at the paths `map` gives it.

        Strawberry's own followed a path as given: to a key `operations` lacks it added
        one (the variable stayed null: "... not to be None"), through one it failed with
        "File(s) missing". Here a body of another shape is 400, like a JSON body that is
        not one request, and a map entry that points at nothing is 400 naming it."""
        try:
            form = await request.get_form_data()
        except ValueError as error:
            raise HTTPException(400, "Unable to parse the multipart body") from error
        try:
            if "operations" not in form.form or "map" not in form.form:
                raise HTTPException(400, MULTIPART_SHAPE)
            if isinstance(form.form, ImmutableMultiDict):
                twice = _repeated(name for name, _ in form.form.multi_items())
                if twice is not None:  # else one of them is silently left out
                    raise HTTPException(
                        400, f"The part {_echo(twice)} is sent twice: one part a name"
                    )
            operations = self.parse_json(form.form["operations"])
            files_map = self.parse_json(form.form["map"])
            if not isinstance(operations, dict) or not isinstance(files_map, dict):
                raise HTTPException(400, MULTIPART_SHAPE)
            taken: dict[str, str] = {}
            for name, paths in files_map.items():
                if not isinstance(paths, list):
                    raise HTTPException(400, MULTIPART_SHAPE)
                problem = _map_entry_problem(operations, name, paths, form.files, taken)
                if problem is not None:
                    raise HTTPException(400, problem)
            return replace_placeholders_with_files(operations, files_map, form.files)
        except (TypeError, ValueError, LookupError, AttributeError, RecursionError) as error:
            raise HTTPException(400, MULTIPART_SHAPE) from error

    async def run(  # type: ignore[override]
        self,
        request: Request | WebSocket,
        context: Context = UNSET,
        root_value: None = UNSET,
    ) -> Response | WebSocket:
        """Strawberry's refusals of a request, in the GraphQL error shape (not plain text)."""
        try:
            return await super().run(request, context, root_value)
        except HTTPException as error:
            message = error.reason
            if isinstance(error.__cause__, InvalidOperationTypeError):
                message = SUBSCRIPTION_OVER_HTTP
            return _graphql_error(error.status_code, message, ErrorCode.BAD_REQUEST)

    async def execute_single(
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        sub_response: Response,
        context: Context,
        root_value: None,
        request_data: GraphQLRequestData,
    ) -> ExecutionResult:
        """The operation under its deadline: cancelled past it and answered `TIMEOUT`."""
        seconds = context.settings.graphql_timeout.total_seconds()
        scope = None
        try:
            async with operation_scope(context.session, seconds) as scope:
                result = await super().execute_single(
                    request=request,
                    request_adapter=request_adapter,
                    sub_response=sub_response,
                    context=context,
                    root_value=root_value,
                    request_data=request_data,
                )
                if not result.errors:
                    refusal = await refused_at_commit(scope, context.principal)
                    if refusal is not None:  # rolled back by `process_result`
                        return ExecutionResult(
                            data=None, errors=[refusal], extensions=result.extensions
                        )
                return result
        except DeadlineExceeded:
            report = scope.report if scope is not None else None
            return ExecutionResult(
                data=None,
                errors=[timeout_error()],
                extensions={"cost": report} if report is not None else None,
            )

    async def get_context(self, request: Request | WebSocket, response: Any = None) -> Context:
        runtime = runtime_of(request)
        state = request.scope.get("state", {})
        return Context.of(
            request,
            runtime,
            state.get("principal"),
            session=state.get(_SESSION),
            mailer=runtime.mailer,
        )

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        state = request.scope.get("state", {})
        session = state.get(_SESSION)
        if session is not None and not await settle(session, commit=not result.errors):
            return {
                "data": None,
                "errors": [
                    {
                        "message": "Internal server error",
                        "extensions": {"code": ErrorCode.INTERNAL_SERVER_ERROR},
                    }
                ],
            }
        retry_after = _retry_after(result)
        if retry_after is not None:
            state[_RETRY_AFTER] = retry_after  # 429 with Retry-After, as the request limits
        return await super().process_result(request, result)

    @property
    def graphql_ide_html(self) -> str:
        """Our GraphiQL page: a header template, and where the token comes from."""
        return graphiql_page()

    async def render_graphql_ide(self, request: Request) -> Response:
        response = await super().render_graphql_ide(request)
        response.headers["Content-Security-Policy"] = IDE_CSP
        return response

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        """Authenticate the socket in `connection_init`; close 4403 otherwise.

        Of the payload only the token is kept (a re-check reads it again): the rest, up to
        a frame's 64 KiB, stayed with the socket for its life."""
        payload = context.connection_params if isinstance(context.connection_params, dict) else {}
        header = payload.get("authorization") or payload.get("Authorization")
        context.connection_params = {"authorization": header} if isinstance(header, str) else {}
        generation = context.authenticator.generation
        principal = await context.authenticator.authenticate(
            bearer_token(header if isinstance(header, str) else None)
        )
        if principal is None:
            raise ConnectionRejectionError({"message": "Authentication required"})
        context.principal = principal
        context.request.scope[_WS_CONTEXT] = context
        sockets = runtime_of(context.request).sockets
        sockets.register(context)
        # A revocation that arrived while the session was read (before the socket was
        # registered, so it closed nothing) may have missed this socket: read it again,
        # now that any later revocation will find it.
        if context.authenticator.generation != generation and not await sockets.recheck(context):
            raise ConnectionRejectionError({"message": "Authentication required"})
        return None
