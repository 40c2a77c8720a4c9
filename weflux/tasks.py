"""Ending background tasks without losing the caller's own cancellation."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Task[Any] | asyncio.Future[Any]) -> None:
    """Cancel `tasks` and wait until each has ended; their cancellation is expected and
    swallowed, any other error they end with is raised.

    `with suppress(CancelledError): await task` swallowed a cancellation of the caller
    too (a shutdown cancelled while it waited for a task went on as if nothing happened).
    Here a caller cancelled while it waits is cancelled: its CancelledError is raised
    (the tasks were cancelled already). A cancellation the caller had before it came (a
    clean-up in the `finally` of a cancelled task) is not a new one: all are waited for."""
    current = asyncio.current_task()
    before = current.cancelling() if current is not None else 0
    for task in tasks:
        task.cancel()
    for task in tasks:
        try:
            await task
        except asyncio.CancelledError:
            if current is not None and current.cancelling() > before:
                raise
