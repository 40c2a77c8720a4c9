"""GraphQL text holding NUL (U+0000) is refused before anything runs (`weflux.nul`)."""

from __future__ import annotations

from typing import Any

from graphql import GraphQLError, StringValueNode, ValidationRule

from weflux.errors import ErrorCode
from weflux.nul import NUL, NUL_MESSAGE


def nul_error() -> GraphQLError:
    """The refusal of an operation whose variables hold NUL."""
    return GraphQLError(NUL_MESSAGE, extensions={"code": ErrorCode.BAD_USER_INPUT})


class NoNulInStrings(ValidationRule):
    """A string literal of the document holding NUL (written `\\u0000`) is refused."""

    def enter_string_value(self, node: StringValueNode, *_args: Any) -> None:
        if NUL in node.value:
            self.report_error(
                GraphQLError(NUL_MESSAGE, node, extensions={"code": ErrorCode.BAD_USER_INPUT})
            )
