"""Global object ids (Relay): opaque strings naming a type and a row."""

from __future__ import annotations

import base64
import binascii
import uuid

from weflux.errors import NotFound


def encode_global_id(type_name: str, row_id: uuid.UUID) -> str:
    raw = f"{type_name}:{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_global_id(value: str) -> tuple[str, uuid.UUID]:
    """(type name, row id); NotFound for anything that is not an id of ours."""
    if not value or len(value) > 128:
        raise NotFound("Not found")
    try:
        padded = value + "=" * (-len(value) % 4)
        type_name, _, raw_id = base64.urlsafe_b64decode(padded).decode().partition(":")
        return type_name, uuid.UUID(raw_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise NotFound("Not found") from None


def decode_global_id(value: str, expected: str) -> uuid.UUID:
    """The row id of a global id of type `expected`; NotFound otherwise."""
    type_name, row_id = parse_global_id(value)
    if type_name != expected:
        raise NotFound("Not found")
    return row_id


def decode_optional_global_id(value: str | None, expected: str) -> uuid.UUID | None:
    """`decode_global_id` of an optional argument: None for null only; an empty string is
    a malformed id like any other (NotFound), never taken for "no id"."""
    return None if value is None else decode_global_id(value, expected)
