"""`/graphql`: authentication at the edge, then Strawberry."""

from __future__ import annotations

from typing import Any, Protocol

from starlette.requests import Request
from starlette.types import Receive, Scope, Send
from strawberry.asgi import GraphQL
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL

from weflux.errors import graphql_unauthenticated
from weflux.gql.schema import schema


class Authenticator(Protocol):
    async def __call__(self, request: Request) -> Any | None:
        """The caller's principal, or None when the request carries no valid credential."""


async def deny_all(request: Request) -> None:
    """No credential can be verified yet: every request is unauthenticated."""
    return None


class GraphQLApp(GraphQL[Any, None]):
    """Strawberry behind an edge check: no valid access token, HTTP 401, nothing parsed."""

    def __init__(
        self, *, authenticator: Authenticator, ide: bool, allowed_origins: list[str]
    ) -> None:
        super().__init__(
            schema,
            graphql_ide="graphiql" if ide else None,
            allow_queries_via_get=False,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
            multipart_uploads_enabled=False,
            allowed_origins=allowed_origins,
        )
        self.authenticator = authenticator
        self.ide = ide

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            request = Request(scope, receive)
            if (
                self.ide
                and request.method == "GET"
                and "text/html" in request.headers.get("accept", "")
            ):
                await super().__call__(scope, receive, send)  # the IDE page carries no data
                return
            principal = await self.authenticator(request)
            if principal is None:
                await graphql_unauthenticated()(scope, receive, send)
                return
            scope.setdefault("state", {})["principal"] = principal
        await super().__call__(scope, receive, send)
