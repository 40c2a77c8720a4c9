"""Errors in GraphQL responses: coded errors pass, everything else is masked.

And in logs: one line per error naming the operation and the error, never a value.
"""

from __future__ import annotations

import logging
from typing import Any

from graphql import GraphQLError, ValueNode, VariableDefinitionNode, get_operation_ast
from strawberry.extensions import MaskErrors
from strawberry.types import ExecutionContext

from weflux import db_errors
from weflux.errors import ErrorCode, RateLimited, Unavailable, WefluxError
from weflux.logs import describe_exception

log = logging.getLogger(__name__)

MASKED_MESSAGE = "Internal server error"


def _is_variable_error(error: GraphQLError) -> bool:
    """A variable's value that cannot be coerced to its type: the client's fault.

    A validation error may point at a variable's definition too (one never used, one of
    an output type): the guard's validation codes those GRAPHQL_VALIDATION_FAILED first.
    """
    return (
        bool(error.nodes)
        and "code" not in (error.extensions or {})
        and all(isinstance(node, VariableDefinitionNode) for node in error.nodes or ())
    )


def _coded(error: GraphQLError) -> dict[str, Any] | None:
    """The extensions of an error that may be shown, or None to mask it."""
    original = error.original_error
    if _is_variable_error(error):
        return {"code": ErrorCode.BAD_USER_INPUT}
    if isinstance(original, WefluxError):
        extensions: dict[str, Any] = {"code": original.graphql_code}
        if original.details is not None:
            extensions["details"] = original.details
        if isinstance(original, RateLimited | Unavailable):
            extensions["retryAfter"] = original.retry_after  # seconds, as HTTP's Retry-After
        return extensions
    if db_errors.is_service_outage(original):
        return {"code": ErrorCode.UPSTREAM_UNAVAILABLE, "retryAfter": db_errors.RETRY_AFTER}
    if isinstance(original, GraphQLError):
        # A permission class's refusal: strawberry raises it as a GraphQLError with a code.
        code = (original.extensions or {}).get("code")
        return {"code": code} if code else None
    if original is None:
        # Raised by graphql-core itself, a permission class or the operation guard: no
        # internals inside. A refusal for rate gives the seconds to wait.
        given = error.extensions or {}
        coded: dict[str, Any] = {"code": given.get("code", ErrorCode.GRAPHQL_VALIDATION_FAILED)}
        if coded["code"] == ErrorCode.RATE_LIMITED and "retryAfter" in given:
            coded["retryAfter"] = given["retryAfter"]
        return coded
    if error.path is None and error.nodes and all(isinstance(n, ValueNode) for n in error.nodes):
        # A literal of the document that its type's parser raised on, wrapped by
        # graphql-core's validation (an Int of more digits than int() converts): the
        # client's fault, before anything ran.
        return {"code": ErrorCode.GRAPHQL_VALIDATION_FAILED}
    return None


def should_mask_error(error: GraphQLError) -> bool:
    return _coded(error) is None


def failed_to_run(error: GraphQLError) -> bool:
    """An error of ours or a dependency's outage (not an answer: it may work next time)."""
    extensions = _coded(error)
    return extensions is None or extensions["code"] == ErrorCode.UPSTREAM_UNAVAILABLE


class CodedErrors(MaskErrors):
    """MaskErrors that keeps coded errors (with `extensions.code`) and masks the rest."""

    def __init__(self) -> None:
        super().__init__(should_mask_error=should_mask_error, error_message=MASKED_MESSAGE)

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        masked = super().anonymise_error(error)  # logged by `log_errors`
        masked.extensions = {"code": ErrorCode.INTERNAL_SERVER_ERROR}
        return masked

    def _process_errors(self, errors: list[GraphQLError]) -> list[GraphQLError]:
        processed: list[GraphQLError] = []
        for error in errors:
            extensions = _coded(error)
            if extensions is None:
                processed.append(self.anonymise_error(error))
                continue
            outage = extensions["code"] == ErrorCode.UPSTREAM_UNAVAILABLE
            processed.append(
                GraphQLError(
                    # a driver's message names hosts and statements: never shown
                    message=db_errors.MESSAGE if outage else error.message,
                    nodes=error.nodes,
                    source=error.source,
                    positions=error.positions,
                    path=error.path,
                    original_error=None,
                    extensions=extensions,
                )
            )
        return processed


def _operation(context: ExecutionContext | None) -> tuple[str | None, str | None]:
    """The operation's name (as its document defines it) and type, once parsed."""
    document = context.graphql_document if context is not None else None
    if context is None or document is None:
        return None, None
    operation = get_operation_ast(document, context.operation_name)
    if operation is None:
        return None, None
    return (operation.name.value if operation.name else None), operation.operation.value


def log_errors(errors: list[GraphQLError], context: ExecutionContext | None) -> None:
    """Log each error of an operation: its operation, code, class and path, nothing else.

    An error's message (and an exception's) can quote what the client sent: a password
    literal, a variable's value, a document. Those never reach a log line; an unexpected
    error is logged with its stack of frames and classes, without messages.
    """
    name, kind = _operation(context)
    for error in errors:
        original = error.original_error
        coded = _coded(error)
        fields: dict[str, Any] = {
            "operation": name,
            "operation_type": kind,
            "code": coded["code"] if coded else ErrorCode.INTERNAL_SERVER_ERROR,
            "error": type(original or error).__name__,
            "path": ".".join(str(part) for part in error.path) if error.path else None,
        }
        if coded is None:
            stack = describe_exception(original) if original is not None else None
            log.error("unexpected error in a GraphQL operation", extra=fields | {"stack": stack})
        elif db_errors.is_service_outage(original):
            stack = describe_exception(original) if original is not None else None
            log.warning(
                "a service was unavailable to a GraphQL operation", extra=fields | {"stack": stack}
            )
        else:
            log.info("GraphQL operation error", extra=fields)
