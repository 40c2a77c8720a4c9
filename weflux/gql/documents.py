"""Parsed and validated documents, kept per schema: a client's repeated query costs neither.

Parsing and validating depend only on the document's text and on the schema with its
validation rules (the depth, alias and token limits and the introspection switch are
fixed when the schema is built), never on the variables or the caller. So each schema
keeps its recent documents by text: the parsed document and, once validated, the
validation errors (none, or the same errors every time for an invalid document).

What depends on the variables or the caller is never cached: the cost (page sizes come
in variables), the two-factor and re-authentication screen, the budget charge
(`weflux.gql.guard.OperationGuard` runs them on every operation). A document that does
not parse is parsed again each time (the token limit bounds that work) and never kept.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from graphql import DocumentNode, GraphQLError
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

    def __len__(self) -> int:
        return len(self._known)


class CachedDocuments(SchemaExtension):
    """Skips parsing for a document the schema has parsed before (validation: the guard)."""

    def __init__(self, cache: DocumentCache) -> None:
        self.cache = cache

    def on_parse(self) -> Iterator[None]:
        execution = self.execution_context
        query = execution.query
        known = self.cache.get(query) if query is not None else None
        if known is not None and execution.graphql_document is None:
            execution.graphql_document = known.document
        yield
        document = execution.graphql_document
        if known is None and query is not None and document is not None:
            self.cache.add(query, document)


def validation_errors(known: Known | None) -> list[GraphQLError] | None:
    """The cached verdict of validation (a fresh list each time), or None if unknown."""
    if known is None or known.errors is None:
        return None
    return list(known.errors)
