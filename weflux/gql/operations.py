"""Which operation of a document runs: the GraphQL spec's GetOperation.

The operation `operationName` names; without a name, the document's only operation. A
document of several operations without a name, or a name that none of its operations
has, runs nothing: the request is refused GRAPHQL_VALIDATION_FAILED like an invalid
document (200 over HTTP, an `error` frame over the socket), after validation and
before anything is costed or charged (`weflux.gql.guard.OperationGuard`).

Strawberry instead ran the first operation when none was named (its execution context
names the first one), and refused an unknown name before validation (HTTP 400, and
over the socket a close 4400). The execution context below names only what the client
named (or the only operation), and lets a document without an operation to run reach
validation, which refuses it.
"""

from __future__ import annotations

from graphql import DocumentNode, GraphQLError, OperationDefinitionNode, get_operation_ast
from strawberry.types.execution import ExecutionContext
from strawberry.types.graphql import OperationType

from weflux.errors import ErrorCode

SEVERAL_OPERATIONS = "Must provide operation name if query contains multiple operations."


class SpecExecutionContext(ExecutionContext):
    """Strawberry's execution context, choosing the operation as the GraphQL spec does."""

    @property
    def operation_name(self) -> str | None:
        """The name the client gave, or the name of the document's only operation."""
        if self._provided_operation_name is not None:
            return self._provided_operation_name
        document = self.graphql_document
        operation = get_operation_ast(document) if document is not None else None
        return operation.name.value if operation is not None and operation.name else None

    @property
    def operation_type(self) -> OperationType:
        """The type of the operation that runs.

        A document with no operation to run is refused by validation (`operation_error`);
        to get there it must pass Strawberry's check of the type, so it takes an allowed one.
        """
        document = self.graphql_document
        if document is None:
            raise RuntimeError("No GraphQL document available")
        operation = get_operation_ast(document, self._provided_operation_name)
        if operation is None:
            return next(iter(self.allowed_operations))
        return OperationType(operation.operation.value)


def operation_error(document: DocumentNode, operation_name: str | None) -> GraphQLError | None:
    """Why `document` has no operation to run under `operation_name`, or None."""
    if get_operation_ast(document, operation_name) is not None:
        return None
    if operation_name is not None:
        message = f'Unknown operation named "{operation_name}".'
    elif any(isinstance(node, OperationDefinitionNode) for node in document.definitions):
        message = SEVERAL_OPERATIONS
    else:
        message = "Must provide an operation."
    return GraphQLError(message, extensions={"code": ErrorCode.GRAPHQL_VALIDATION_FAILED})
