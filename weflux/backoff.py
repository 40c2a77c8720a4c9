"""Exponential backoff with full jitter: the one formula for every retry and reconnection."""

from __future__ import annotations

import random

# 2**32 times any sane base is past every cap; a larger exponent only risks an overflow.
_MAX_EXPONENT = 32


def exponential_backoff(attempt: int, *, base: float, cap: float, floor: float = 0.0) -> float:
    """Seconds to wait after `attempt` failures: uniform in [0, min(cap, base * 2**attempt)].

    Full jitter (every delay in the range equally likely) spreads retries that failed
    together, so they do not come back together. `floor` keeps a draw near zero from
    turning the retries into a hot loop.
    """
    ceiling = min(cap, base * 2 ** min(max(attempt, 0), _MAX_EXPONENT))
    return max(floor, random.uniform(0, ceiling))  # noqa: S311 (jitter, not secrecy)
