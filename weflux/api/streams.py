"""Streamed file answers that start only once their first chunk was read."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from itertools import chain

from weflux.errors import Unavailable


def _deferred(error: Exception) -> Iterator[bytes]:
    raise error
    yield b""  # pragma: no cover (makes this a generator)


async def started(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """`chunks` with its first one read now, in a thread: a store that fails at once is
    answered with Unavailable's 503 (raised here) instead of a response cut after its
    headers. Any other error is raised where it was before: in the started response."""
    try:
        first = await asyncio.to_thread(next, chunks, b"")
    except Unavailable:
        raise
    except Exception as error:
        return _deferred(error)
    return chain([first], chunks)
