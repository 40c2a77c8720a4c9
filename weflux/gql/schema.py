"""The GraphQL schema and its guard rails."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated, Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    AddValidationRules,
    DisableIntrospection,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
    SchemaExtension,
)
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext, ExecutionResult, Info
from strawberry.types.base import get_object_definition
from strawberry.types.graphql import OperationType

from weflux.auth.permissions import Permission
from weflux.gql.channels.mutations import ChannelMutation
from weflux.gql.channels.queries import ChannelQuery
from weflux.gql.channels.templates import MessageTemplate, TemplateMutation, TemplateQuery
from weflux.gql.channels.types import WhatsAppAccount
from weflux.gql.context import Context
from weflux.gql.documents import CachedDocuments, DocumentCache
from weflux.gql.errors import CodedErrors, log_errors
from weflux.gql.event_memo import SharedEventExecutionContext
from weflux.gql.guard import OperationGuard
from weflux.gql.identity.mutations import IdentityMutation
from weflux.gql.identity.queries import IdentityQuery
from weflux.gql.identity.two_factor import TwoFactorMutation
from weflux.gql.identity.types import AuditEvent, Invitation, Member, Organization, Session
from weflux.gql.inbox.counts import InboxCountsQuery, InboxCountsSubscription
from weflux.gql.inbox.media_mutations import MediaMutation
from weflux.gql.inbox.mutations import InboxMutation
from weflux.gql.inbox.queries import InboxQuery
from weflux.gql.inbox.sending import SendingMutation
from weflux.gql.inbox.teamtools import TeamToolsMutation, TeamToolsQuery
from weflux.gql.inbox.types import Contact, Conversation, Message
from weflux.gql.incidents.queries import IncidentQuery
from weflux.gql.lifecycle.mutations import LifecycleMutation
from weflux.gql.lifecycle.queries import LifecycleQuery
from weflux.gql.lifecycle.types import DataRequest
from weflux.gql.live import Subscription as LiveSubscription
from weflux.gql.node import resolve_node
from weflux.gql.nul import NoNulInStrings
from weflux.gql.operations import SpecExecutionContext
from weflux.gql.permissions import guarded, mark_sensitive, root_permissions
from weflux.gql.prefetch import call_directly
from weflux.gql.security.mutations import SecurityMutation
from weflux.gql.security.queries import SecurityQuery
from weflux.gql.types import Node

MAX_DEPTH = 10
MAX_ALIASES = 15
MAX_TOKENS = 2000


@strawberry.type(description="Every read. All of it is scoped to the caller's workspace and role.")
class Query(
    IdentityQuery,
    ChannelQuery,
    TemplateQuery,
    InboxQuery,
    InboxCountsQuery,
    TeamToolsQuery,
    IncidentQuery,
    SecurityQuery,
    LifecycleQuery,
):
    @strawberry.field(
        **guarded(
            Permission.READ_WORKSPACE,
            "Any object by its global id; NOT_FOUND outside the caller's reach.",
        )
    )
    async def node(
        self,
        info: Info[Context, None],
        id: Annotated[strawberry.ID, strawberry.argument(description="A global id.")],
    ) -> Node | None:
        return await resolve_node(info, id)


@strawberry.type(
    description="Every write. A document's mutations run in one transaction: all or none."
)
class Mutation(
    IdentityMutation,
    TwoFactorMutation,
    ChannelMutation,
    TemplateMutation,
    InboxMutation,
    SendingMutation,
    MediaMutation,
    TeamToolsMutation,
    SecurityMutation,
    LifecycleMutation,
):
    pass


mark_sensitive(Mutation)
# What each mutation requires: the re-authentication rule asks only for what the role may run.
MUTATION_PERMISSIONS = root_permissions(Mutation)


@strawberry.type(description=get_object_definition(LiveSubscription, strict=True).description)
class Subscription(LiveSubscription, InboxCountsSubscription):
    pass


class QuietExecutionContext(SharedEventExecutionContext):
    """Execution errors (variable values) never suggest a name either."""

    @classmethod
    def build(cls, *args: Any, **kwargs: Any) -> Any:
        kwargs["hide_suggestions"] = True
        return super().build(*args, **kwargs)


class WefluxSchema(strawberry.Schema):
    """Strawberry's schema: one result per execution (never a subscription, which needs
    the socket), and an error log that never quotes a document or a variable."""

    async def execute(
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        allowed_operation_types: Iterable[OperationType] | None = None,
        operation_extensions: dict[str, Any] | None = None,
    ) -> ExecutionResult:
        """One result: never a subscription, which needs a stream (the WebSocket)."""
        allowed = set(allowed_operation_types or OperationType) - {OperationType.SUBSCRIPTION}
        return await super().execute(
            query,
            variable_values,
            context_value,
            root_value,
            operation_name,
            allowed,
            operation_extensions,
        )

    def _create_execution_context(  # Strawberry's signature
        self,
        query: str | None,
        allowed_operation_types: Iterable[OperationType],
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        operation_extensions: dict[str, Any] | None = None,
    ) -> ExecutionContext:
        """The spec's choice of the operation to run (`weflux.gql.operations`).

        Strawberry's private hook, as Strawberry builds it: HTTP and the socket both
        build their execution context here."""
        return SpecExecutionContext(
            query=query,
            schema=self,
            allowed_operations=allowed_operation_types,
            context=context_value,
            root_value=root_value,
            variables=variable_values,
            provided_operation_name=operation_name,
            operation_extensions=operation_extensions,
        )

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        log_errors(errors, execution_context)


def build_schema(*, introspection: bool = True) -> strawberry.Schema:
    """The schema with its limits; extensions are passed as factories (one per request)."""
    # The depth and alias rules are classes built per limiter instance (about 2 KiB each,
    # held as long as a subscription lives): built once here, added by a light extension.
    rules = [
        *QueryDepthLimiter(max_depth=MAX_DEPTH).validation_rules,
        *MaxAliasesLimiter(max_alias_count=MAX_ALIASES).validation_rules,
        NoNulInStrings,
    ]
    extensions: list[type[SchemaExtension] | Callable[[], SchemaExtension]] = [
        lambda: AddValidationRules(rules),
        lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
    ]
    if not introspection:
        extensions.append(DisableIntrospection)
    # The one parse cache: parsed documents (with the token limit) and validation
    # verdicts, kept for this schema and its rules alone, shared by HTTP and sockets
    # (many sockets subscribe with the same document and would each hold a tree).
    documents = DocumentCache()
    extensions += [
        lambda: CachedDocuments(documents),
        CodedErrors,
        # The guard validates: after the rule adders.
        lambda: OperationGuard(documents, MUTATION_PERMISSIONS),
    ]
    built = WefluxSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        execution_context_class=QuietExecutionContext,
        types=[
            Member,
            Organization,
            Session,
            Invitation,
            AuditEvent,
            WhatsAppAccount,
            MessageTemplate,
            Contact,
            Conversation,
            Message,
            DataRequest,
        ],
        extensions=extensions,
        config=StrawberryConfig(disable_field_suggestions=True),
    )
    built.documents = documents  # type: ignore[attr-defined]  # fan-out parses through it
    call_directly(built)  # per-row fields of a page: no Strawberry wrapper per call
    return built


schema = build_schema()
