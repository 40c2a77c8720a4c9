"""Parsed and validated documents, kept per schema: a client's repeated query costs neither.

Parsing and validating depend only on the document's text and on the schema with its
validation rules (the depth, alias and token limits and the introspection switch are
fixed when the schema is built), never on the variables or the caller. So each schema
keeps its recent documents by text: the parsed document and, once validated, the
validation errors (none, or the same errors every time for an invalid document).

This is the schema's only parse cache, for HTTP and WebSocket operations alike (a
subscription parses through the same extensions): many sockets subscribing with one
document share one tree. What depends on the variables or the caller is never cached:
the cost (page sizes come in variables), the two-factor and re-authentication screen,
the budget charge (`weflux.gql.guard.OperationGuard` runs them on every operation). A
document that does not parse is never kept: it is left to Strawberry, which parses it
again (the token limit bounds that work) and answers GRAPHQL_VALIDATION_FAILED.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from graphql import DocumentNode, GraphQLError, parse
from strawberry.extensions import SchemaExtension

MAX_DOCUMENTS = 256


@dataclass
class Known:
    """A document seen before: parsed, and its validation errors once validated."""

    document: DocumentNode
    errors: tuple[GraphQLError, ...] | None = None


class DocumentCache:
    """Recent documents of one schema by their text; the least recently used go first."""

    def __init__(self, limit: int = MAX_DOCUMENTS) -> None:
        self.limit = limit
        self._known: OrderedDict[str, Known] = OrderedDict()

    def get(self, text: str) -> Known | None:
        known = self._known.get(text)
        if known is not None:
            self._known.move_to_end(text)
        return known

    def add(self, text: str, document: DocumentNode) -> Known:
        known = self._known[text] = Known(document)
        while len(self._known) > self.limit:
            self._known.popitem(last=False)
        return known

    def parse(self, text: str, **options: Any) -> Known:
        """The known document of `text`, parsed now (with `options`) if new.

        Raises the parse error of a document that does not parse (never kept).
        """
        known = self.get(text)
        return known if known is not None else self.add(text, parse(text, **options))

    def __len__(self) -> int:
        return len(self._known)


def documents_of(schema: Any) -> DocumentCache | None:
    """The parse cache of a schema built by `weflux.gql.schema.build_schema`."""
    documents = getattr(schema, "documents", None)
    return documents if isinstance(documents, DocumentCache) else None


class CachedDocuments(SchemaExtension):
    """Parses a document once per schema and text (its validation verdict: the guard).

    Parsing takes the operation's parse options (the token limit). A document that does
    not parse is left to Strawberry: its error is answered as any other parse error.
    """

    def __init__(self, cache: DocumentCache) -> None:
        self.cache = cache

    def on_parse(self) -> Iterator[None]:
        execution = self.execution_context
        query = execution.query
        if execution.graphql_document is None and isinstance(query, str) and query:
            # Unparsable: left to Strawberry, which parses it again and answers the error.
            with contextlib.suppress(GraphQLError):
                execution.graphql_document = self.cache.parse(
                    query, **execution.parse_options
                ).document
        yield


def validation_errors(known: Known | None) -> list[GraphQLError] | None:
    """The cached verdict of validation (a fresh list each time), or None if unknown."""
    if known is None or known.errors is None:
        return None
    return list(known.errors)
