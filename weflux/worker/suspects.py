"""Suspects: jobs whose lease ran out, claimed and run alone (delivery, media downloads).

A job whose lease ran out lost its worker, perhaps because of it (a poison). Claimed
with others, it would take them to their last attempt with it, each of its deaths
theirs too. So a run claims its batch without suspects, runs it, then claims and runs up
to `SUSPECTS_PER_RUN` suspects one at a time, nothing else in flight in that worker.

The claim's own SELECT tells them apart (`weflux.auth.crossings.due_outbound`,
`due_media_downloads`): a batch reads due rows that are not suspects (and whether a
suspect is due), a suspect's claim the first suspect. So suspects left by a crash never
fill a batch's read: new jobs go in the next run, while the suspects go
`SUSPECTS_PER_RUN` a run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

# How many suspects a run claims and runs, each alone.
SUSPECTS_PER_RUN = 10


async def run_with_suspects(
    claim: Callable[[bool], Awaitable[tuple[Sequence[T], bool]]],
    run: Callable[[Sequence[T]], Awaitable[int]],
) -> int:
    """Claim (`claim(suspect)`: the claimed, and whether a suspect is due; for a suspect's
    claim, whether it read one: it may end one, abandoned, instead of leasing it) and run
    the batch, then up to `SUSPECTS_PER_RUN` suspects alone while one is due; how many
    were claimed."""
    claimed, suspect_due = await claim(False)
    count = await run(claimed)
    for _ in range(SUSPECTS_PER_RUN if suspect_due else 0):
        alone, read = await claim(True)
        if not read:
            break
        count += await run(alone)
    return count
