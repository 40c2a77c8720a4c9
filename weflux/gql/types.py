"""Shared GraphQL types: the Node interface, pages and cursors."""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Generic, TypeVar

import strawberry

from weflux.errors import BadUserInput

MAX_PAGE = 100
DEFAULT_PAGE = 50

T = TypeVar("T")


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


def page_size(first: int | None) -> int:
    """`first` checked against the page cap (100)."""
    if first is None:
        return DEFAULT_PAGE
    if first < 1 or first > MAX_PAGE:
        raise BadUserInput(f"`first` must be between 1 and {MAX_PAGE}")
    return first


def encode_cursor(row_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(row_id.bytes).decode().rstrip("=")


def decode_cursor(cursor: str) -> uuid.UUID:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return uuid.UUID(bytes=raw)
    except (binascii.Error, ValueError):
        raise BadUserInput("Invalid cursor") from None
