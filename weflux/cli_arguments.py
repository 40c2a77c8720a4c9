"""Argument types of the `weflux` commands: a value that does not fit is a usage error.

argparse refuses it before anything runs (no setting is read, no database opened):
`weflux incident open: error: argument --workspace: `x` is not the id of an
Organization ...`, with the command's usage, exit code 2. Never a "configuration
error" (those are the WEFLUX_* variables') nor a traceback.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from weflux.config import parse_duration
from weflux.errors import NotFound
from weflux.ids import decode_global_id


def row_id(type_name: str) -> Callable[[str], uuid.UUID]:
    """An argument naming a row of `type_name`: its global id (as printed) or a bare UUID."""
    article = "an" if type_name[:1] in "AEIOU" else "a"

    def parse(value: str) -> uuid.UUID:
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
        try:
            return decode_global_id(value, type_name)
        except NotFound:
            raise argparse.ArgumentTypeError(
                f"`{value}` is not the id of {article} {type_name} (its global id, or a UUID)"
            ) from None

    return parse


def listed_id(value: str) -> uuid.UUID:
    """An argument naming a row by the UUID a listing printed."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"`{value}` is not an id (a UUID, as listed)") from None


def aware_time(value: str) -> datetime:
    """An ISO time with its zone, in UTC."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError("use an ISO time such as 2026-12-05T10:00:00Z") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError("give the time zone (e.g. a trailing Z for UTC)")
    return moment.astimezone(UTC)


def since(value: str) -> datetime:
    """An ISO time (UTC when it names no zone), or a duration back from now (`2h`)."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        try:
            return datetime.now(UTC) - parse_duration(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"`{value}` is neither an ISO time nor a duration such as 2h or 7d"
            ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
