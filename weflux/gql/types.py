"""Shared GraphQL types: the Node interface, connections built from pages, enums from the
model enums."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

import strawberry
from strawberry.types.enum import StrawberryEnumDefinition, has_enum_definition

from weflux.pagination import Page

T = TypeVar("T")
Row = TypeVar("Row")
E = TypeVar("E", bound=enum.Enum)


def graphql_enum(
    model_enum: type[E],
    *,
    description: str,
    name: str | None = None,
    values: Mapping[E, str] | None = None,
) -> type[E]:
    """Put a model enum itself in the schema, with descriptions for it and its `values`.

    Resolvers and inputs then deal in the model's own members, and a member added to the
    model is in the schema at once (`tests/gql/test_enums.py` holds them equal). Each
    model enum is exposed once, under one name.
    """
    if has_enum_definition(model_enum):
        raise TypeError(f"{model_enum.__name__} is already a GraphQL enum")
    exposed = strawberry.enum(model_enum, name=name, description=description)
    described = values or {}
    for value in _enum_definition(exposed).values:
        value.description = described.get(model_enum[value.name])
    return exposed


def _enum_definition(cls: object) -> StrawberryEnumDefinition:
    assert has_enum_definition(cls)
    return cls.__strawberry_definition__


@strawberry.interface(description="An object with a global id, resolvable by `node(id:)`.")
class Node:
    id: strawberry.ID = strawberry.field(description="The object's opaque global id.")


@strawberry.type(description="Where a page sits in its list.")
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None


@strawberry.type(description="An item of a page, with the cursor that points at it.")
class Edge(Generic[T]):
    node: T
    cursor: str


@strawberry.type(description="A page of a list, with cursors to move on.")
class Connection(Generic[T]):
    edges: list[Edge[T]]
    page_info: PageInfo


def to_connection(page: Page[Row], convert: Callable[[Row], T]) -> Connection[T]:
    """The GraphQL connection of a page, each row converted to its GraphQL type."""
    edges = [Edge(node=convert(row), cursor=cursor) for row, cursor in page.items]
    return Connection(
        edges=edges,
        page_info=PageInfo(
            has_next_page=page.has_next_page,
            has_previous_page=page.has_previous_page,
            start_cursor=edges[0].cursor if edges else None,
            end_cursor=edges[-1].cursor if edges else None,
        ),
    )
