"""Text with the NUL character (U+0000) is refused at the edge, on both engines.

PostgreSQL cannot store or compare it in a `text` value (asyncpg raises, so the request
would end as a masked 500), and SQLite would store it, or cut a search pattern short at
it. The GraphQL edge (`weflux.gql.nul`) and the JSON bodies of `/auth/*`
(`weflux.api.validation`) refuse it as the client's fault.
"""

from __future__ import annotations

from typing import Any

NUL = "\x00"
NUL_MESSAGE = "Text must not contain the NUL character (U+0000)"


def holds_nul(value: Any) -> bool:
    """Whether a JSON value holds a string with NUL, as a key or a value, at any depth.
    A walk with a stack of its own, not recursion: a client's variables may nest deeper
    than Python's stack (a RecursionError was a masked 500)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if NUL in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False
