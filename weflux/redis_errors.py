"""What a call to Redis raises when Redis is away or slow: for code that degrades then.

redis-py costs a process about a second to import and only a deployment with
`WEFLUX_REDIS_URL` uses it (docs/development.md, "Optional libraries load late"), so its
error class is looked up here, by code that holds a Redis client, and not at import.
"""

from __future__ import annotations


def redis_errors() -> tuple[type[Exception], ...]:
    """`(RedisError, OSError)`; OSError covers TimeoutError. Imports redis-py: call it
    where a Redis client exists (its import has been paid already)."""
    from redis.exceptions import RedisError

    return (RedisError, OSError)
