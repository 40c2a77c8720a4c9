"""Shared GraphQL types: the Node interface, and connections built from pages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import strawberry

from weflux.pagination import Page

T = TypeVar("T")
Row = TypeVar("Row")


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
