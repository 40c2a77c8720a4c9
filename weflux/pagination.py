"""Cursor pagination: page sizes, opaque cursors and pages, for every list that has pages.

Two cursor shapes, both opaque to clients: an id cursor names a row by its time-ordered
id (messages, audit events, the `after` of `messageAdded`); a keyset cursor names a row
by its sort key and id (contacts by name, conversations by last activity). A page is
read with `limit(size + 1)`: the extra row only says that another page follows.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from weflux.errors import BadUserInput

DEFAULT_PAGE = 50
MAX_PAGE = 100
MAX_CURSOR = 1024  # characters: longer is never one of ours

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list: rows in order, each with its cursor."""

    items: list[tuple[T, str]]
    has_next_page: bool
    has_previous_page: bool


def page_size(value: int | None, name: str = "first") -> int:
    """A page size (`first` or `last`) checked against the cap: default 50, at most 100."""
    if value is None:
        return DEFAULT_PAGE
    if value < 1 or value > MAX_PAGE:
        message = f"`{name}` must be between 1 and {MAX_PAGE}"
        raise BadUserInput(message, details=[{"field": name, "message": message}])
    return value


def page_of(
    rows: Sequence[T], size: int, cursor: Callable[[T], str], *, has_previous_page: bool
) -> Page[T]:
    """The page of `rows` read forwards with `limit(size + 1)`."""
    return Page(
        items=[(row, cursor(row)) for row in rows[:size]],
        has_next_page=len(rows) > size,
        has_previous_page=has_previous_page,
    )


def invalid_cursor(name: str = "after") -> BadUserInput:
    """The error for a cursor that is not one of ours (or not for this list)."""
    return BadUserInput("Invalid cursor", details=[{"field": name, "message": "Invalid"}])


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str, name: str) -> bytes:
    if not cursor or len(cursor) > MAX_CURSOR:
        raise invalid_cursor(name)
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise invalid_cursor(name) from None


def encode_cursor(row_id: uuid.UUID) -> str:
    """An id cursor: the row's time-ordered id."""
    return _encode(row_id.bytes)


def decode_cursor(cursor: str, name: str = "after") -> uuid.UUID:
    """The row id of an id cursor; `name` is the argument it came in, for the error."""
    try:
        return uuid.UUID(bytes=_decode(cursor, name))
    except ValueError:
        raise invalid_cursor(name) from None


def encode_keyset(kind: str, key: str | None, row_id: uuid.UUID) -> str:
    """A keyset cursor: the list's `kind`, the row's sort key and id (never an offset)."""
    return _encode(json.dumps([kind, key, str(row_id)], separators=(",", ":")).encode())


def decode_keyset(kind: str, cursor: str, name: str = "after") -> tuple[str | None, uuid.UUID]:
    """(sort key, row id) of a cursor made by `encode_keyset` for `kind`."""
    raw = _decode(cursor, name)
    try:
        decoded: Any = json.loads(raw)
        found_kind, key, row_id = decoded
        if found_kind != kind or not (key is None or isinstance(key, str)):
            raise invalid_cursor(name)
        return key, uuid.UUID(row_id)
    except (UnicodeDecodeError, ValueError, TypeError, AttributeError):
        raise invalid_cursor(name) from None


# The feed's positions are 64-bit integers (bigint): nothing past the largest is one.
MAX_FEED_POSITION = 2**63 - 1


def encode_update_cursor(position: int) -> str:
    """An `updateCursor`: a position in the workspace's change feed."""
    return _encode(f"feed:{position}".encode())


def decode_update_cursor(cursor: str, name: str = "after") -> int:
    """The change-feed position of an `updateCursor`."""
    raw = _decode(cursor, name)
    kind, _, number = raw.partition(b":")
    if kind != b"feed" or not number.isdigit() or len(number) > 19:
        raise invalid_cursor(name)
    position = int(number)
    if position > MAX_FEED_POSITION:  # never handed out; PostgreSQL's bigint overflows
        raise invalid_cursor(name)
    return position
