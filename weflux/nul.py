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
    """Whether a JSON value holds a string with NUL, as a key or a value, at any depth."""
    if isinstance(value, str):
        return NUL in value
    if isinstance(value, dict):
        return any(holds_nul(key) or holds_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(holds_nul(item) for item in value)
    return False
