"""Suspects: jobs whose lease ran out, claimed and run alone (delivery, media downloads).

A job whose lease ran out lost its worker, perhaps because of it (a poison). Claimed
with others, it would take them to their last attempt with it, each of its deaths
theirs too. So a run claims its batch without suspects, runs it, then claims and runs up
to `SUSPECTS_PER_RUN` suspects one at a time, nothing else in flight in that worker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

# How many suspects a run claims and runs, each alone.
SUSPECTS_PER_RUN = 10


class Pick:
    """Which due rows one claim leases, in due order: without `suspect`, every row but the
    suspects (left due, `left` says so); with it, the first suspect alone."""

    def __init__(self, *, suspect: bool) -> None:
        self.suspect = suspect
        self.left = False  # a suspect was left due for a suspect's claim
        self.taken = False  # a suspect's claim has its one

    def takes(self, expired: bool) -> bool:
        """Whether to lease a due row (`expired`: its lease ran out); call `took` once leased."""
        if expired and (not self.suspect or self.taken):
            self.left = True
            return False
        return expired or not self.suspect

    def took(self) -> None:
        self.taken = True


async def run_with_suspects(
    claim: Callable[[bool], Awaitable[tuple[Sequence[T], bool]]],
    run: Callable[[Sequence[T]], Awaitable[int]],
) -> int:
    """Claim (`claim(suspect)`: the claimed, and whether a suspect was left) and run the
    batch, then up to `SUSPECTS_PER_RUN` suspects alone; how many were claimed."""
    claimed, suspects = await claim(False)
    count = await run(claimed)
    for _ in range(SUSPECTS_PER_RUN if suspects else 0):
        alone, _ = await claim(True)
        if not alone:
            break
        count += await run(alone)
    return count
