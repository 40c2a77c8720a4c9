"""Shared GraphQL types: the Node interface, connections built from pages, enums from the
model enums."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Annotated, Generic, TypeVar

import strawberry
from strawberry.types.enum import StrawberryEnumDefinition, has_enum_definition

from weflux.pagination import DEFAULT_PAGE, MAX_PAGE, Page

# The arguments of a connection, described once.
First = Annotated[
    int | None,
    strawberry.argument(
        description=f"How many items to read forwards, from the start or from `after`: 1 to "
        f"{MAX_PAGE}, {DEFAULT_PAGE} when omitted."
    ),
]
After = Annotated[
    str | None,
    strawberry.argument(
        description="A cursor of this list (`endCursor`, or an edge's `cursor`): the page "
        "starts after that item. Null: from the start."
    ),
]
Last = Annotated[
    int | None,
    strawberry.argument(
        description=f"How many items to read backwards, from the end or from `before`: 1 to "
        f"{MAX_PAGE}."
    ),
]
Before = Annotated[
    str | None,
    strawberry.argument(
        description="A cursor of this list (`startCursor`, or an edge's `cursor`): the page "
        "ends before that item. Null: up to the end."
    ),
]

T = TypeVar("T")
Row = TypeVar("Row")
E = TypeVar("E", bound=enum.Enum)


def graphql_enum(
    model_enum: type[E],
    *,
    description: str,
    values: Mapping[E, str],
    name: str | None = None,
) -> type[E]:
    """Put a model enum itself in the schema, with its `description` and one for each value.

    The `values` mapping is defined once, next to the model enum (say
    `MESSAGE_STATUS_MEANINGS` beside `MessageStatus`); every member needs one. Resolvers
    and inputs then deal in the model's own members, and a member added to the model is
    in the schema at once (`tests/gql/test_enums.py` holds them equal). Each model enum is
    exposed once, under one name.
    """
    if has_enum_definition(model_enum):
        raise TypeError(f"{model_enum.__name__} is already a GraphQL enum")
    missing = [member.name for member in model_enum if not values.get(member)]
    if missing:
        raise TypeError(f"{model_enum.__name__}: no description for {', '.join(missing)}")
    exposed = strawberry.enum(model_enum, name=name, description=description)
    for value in _enum_definition(exposed).values:
        value.description = values[model_enum[value.name]]
    return exposed


def _enum_definition(cls: object) -> StrawberryEnumDefinition:
    assert has_enum_definition(cls)
    return cls.__strawberry_definition__


@strawberry.interface(description="An object with a global id, resolvable by `node(id:)`.")
class Node:
    id: strawberry.ID = strawberry.field(description="The object's opaque global id.")


@strawberry.type(description="Where a page sits in its list, and the cursors to move on from it.")
class PageInfo:
    has_next_page: bool = strawberry.field(
        description="Whether items follow this page: pass `endCursor` as `after` to read them."
    )
    has_previous_page: bool = strawberry.field(
        description="Whether items precede this page: pass `startCursor` as `before` (where "
        "the list pages backwards) to read them."
    )
    start_cursor: str | None = strawberry.field(
        description="The cursor of the page's first item; null when the page is empty."
    )
    end_cursor: str | None = strawberry.field(
        description="The cursor of the page's last item; null when the page is empty."
    )


@strawberry.type(description="An item of a page, with the cursor that points at it.")
class Edge(Generic[T]):
    node: T = strawberry.field(description="The item.")
    cursor: str = strawberry.field(
        description="The item's opaque position in the list: `after` or `before` of the "
        "same list to page from it."
    )


@strawberry.type(description="A page of a list, with cursors to move on.")
class Connection(Generic[T]):
    edges: list[Edge[T]] = strawberry.field(description="The page's items, in the list's order.")
    page_info: PageInfo = strawberry.field(description="Whether more pages follow or precede.")


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
