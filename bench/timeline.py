"""Where process A's time goes on one webhook, and B's on its event: `bench.crossprocess
--timeline DIR`.

Process A runs under `RUN`: `install()` wraps, from outside (weflux's code is unchanged),
the steps of the webhook's path and its drivers' round trips, and stamps each step's
start and end with `time.perf_counter_ns` (wall) and `time.thread_time_ns` (the event
loop thread's CPU); each POST to `/webhooks/…` writes its stamps as one JSON line to
DIR/a.jsonl. `report` prints, over the webhooks that took the most common sequence of
steps, the median wall and CPU between consecutive stamps, the round trips per webhook
(PostgreSQL: BEGIN, each statement, COMMIT, a PREPARE the driver's cache missed; Redis:
each write of commands) and the median of each stage (`STAGES`). The wrappers cost a
few microseconds per stamp (about 60 per webhook): compare runs with the option, not
with runs without it.

B runs under `RUN_B`: `install_b()` stamps the way of each `messageAdded` event from
its Redis reply parsed to the frame written and the read's end (its ROLLBACK and
check-in, after the frame), one JSON line per event to DIR/b.jsonl: the broker's
dispatch, the shared load, the read's checkout, BEGIN and SELECT, the execution, the
frame's write. B's stamps are not per task (the reader's and the subscriber's) but per
event: the bench sends one at a time.

    .venv/bin/python -m bench.timeline DIR/a.jsonl [--skip 5]   # a kept file, again
"""

from __future__ import annotations

import argparse
import atexit
import contextvars
import functools
import inspect
import json
import os
import statistics
import time
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

# Process A's `python -c`: stamps to {path}, then `weflux serve` as `python -m weflux`.
# uvicorn re-raises the stopping signal after its shutdown, which would end the process
# before the last lines are written (`atexit`): as `bench.fanout.PROFILED`.
RUN = (
    "import os, signal, sys; signal.raise_signal = lambda s: None; "
    "os.environ['BENCH_TIMELINE_OUT'] = {path!r}; "
    "import bench.timeline; bench.timeline.install(); "
    "from weflux.cli import main; sys.argv = sys.argv[1:]; sys.exit(main())"
)
RUN_B = RUN.replace("install()", "install_b()")

Stamp = tuple[str, int, int]  # (step, wall ns, thread CPU ns)
_current: contextvars.ContextVar[list[Stamp] | None] = contextvars.ContextVar(
    "bench_timeline", default=None
)
_arrived: list[int] = [0, 0]  # when uvicorn last got bytes (wall, CPU)
_done: list[list[Stamp]] = []
# B's event in flight (its stamps come from the broker's reader and the subscriber's task).
_event: list[list[Stamp] | None] = [None]


def stamp(step: str) -> None:
    steps = _current.get() or _event[0]
    if steps is not None:
        steps.append((step, time.perf_counter_ns(), time.thread_time_ns()))


def _wrap(owner: Any, attribute: str, step: str) -> None:
    """Stamp `step>` and `step<` around each call of `owner.attribute` (async or not)."""
    original = getattr(owner, attribute)
    if inspect.iscoroutinefunction(original):

        @functools.wraps(original)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            stamp(step + ">")
            try:
                return await original(*args, **kwargs)
            finally:
                stamp(step + "<")

        setattr(owner, attribute, timed_async)
    else:

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            stamp(step + ">")
            try:
                result = original(*args, **kwargs)
            except BaseException:
                stamp(step + "<")
                raise
            if not inspect.isawaitable(result):
                stamp(step + "<")
                return result
            return _awaited(result, step)  # e.g. asyncpg's guarded methods

        setattr(owner, attribute, timed)


async def _awaited(awaitable: Awaitable[Any], step: str) -> Any:
    try:
        return await awaitable
    finally:
        stamp(step + "<")


def install() -> None:
    """Wrap the webhook's path in this process (before the app is built)."""
    import asyncpg
    import asyncpg.prepared_stmt
    import redis.asyncio.client
    import redis.asyncio.connection
    from sqlalchemy import event
    from sqlalchemy.dialects.postgresql import asyncpg as sa_asyncpg
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool
    from uvicorn.protocols.http import httptools_impl

    from weflux import db, pg_driver
    from weflux.api import middleware, webhooks
    from weflux.realtime import broker
    from weflux.services import ingest
    from weflux.services.ingest import inbound, process

    received = httptools_impl.HttpToolsProtocol.data_received

    def data_received(self: Any, data: bytes) -> None:
        _arrived[0], _arrived[1] = time.perf_counter_ns(), time.thread_time_ns()
        received(self, data)

    httptools_impl.HttpToolsProtocol.data_received = data_received  # type: ignore[method-assign]

    outermost = middleware.RequestContextMiddleware.__call__

    async def request(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or "/webhooks/" not in scope["path"]
        ):
            await outermost(self, scope, receive, send)
            return
        steps: list[Stamp] = [("bytes in", _arrived[0], _arrived[1])]
        token = _current.set(steps)
        stamp("middleware")

        async def timed_send(message: Any) -> None:
            kind = message["type"].rsplit(".", 1)[-1]  # start, body
            stamp(f"send {kind}>")
            await send(message)
            stamp(f"send {kind}<")

        try:
            await outermost(self, scope, receive, timed_send)
        finally:
            stamp("done")
            _current.reset(token)
            _done.append(steps)
            if len(_done) >= 20:
                _write()

    middleware.RequestContextMiddleware.__call__ = request  # type: ignore[method-assign]

    _wrap(webhooks, "read_body", "read body")
    _wrap(webhooks, "_channel", "channel")
    _wrap(webhooks, "signature_valid", "HMAC")
    _wrap(ingest, "store_and_process", "store_and_process")
    _wrap(process, "_apply", "apply")
    _wrap(process, "_routes", "routes")
    _wrap(process, "_process_share", "share")
    _wrap(process, "_send_held", "send held")
    _wrap(inbound, "_senders", "senders")
    _wrap(db.SerializedSession, "commit", "session commit")
    _wrap(db, "run_after_commit", "after commit")
    _wrap(db, "_close", "session close")
    _wrap(broker.RedisBroker, "publish", "publish")
    _wrap(broker.RedisBroker, "publish_many", "publish_many")
    # Round trips: asyncpg's BEGIN, each statement's execution, COMMIT or ROLLBACK, a
    # PREPARE; Redis: each write of commands and each reply read.
    # weflux's engines connect with weflux.pg_driver's subclass, whose BEGIN carries the scope.
    _wrap(pg_driver.ScopedBeginConnection, "_start_transaction", "pg BEGIN")
    _wrap(sa_asyncpg.AsyncAdapt_asyncpg_connection, "_call_and_discard", "pg COMMIT")
    _wrap(asyncpg.Connection, "prepare", "pg PREPARE")
    _wrap(asyncpg.prepared_stmt.PreparedStatement, "fetch", "pg statement")
    _wrap(redis.asyncio.connection.AbstractConnection, "send_packed_command", "redis write")
    _wrap(redis.asyncio.connection.AbstractConnection, "read_response", "redis read")
    _wrap(redis.asyncio.client.Pipeline, "execute", "redis pipeline")
    event.listen(Pool, "checkout", lambda *_: stamp("pool checkout"))
    event.listen(Pool, "checkin", lambda *_: stamp("pool checkin"))

    def statement(_c: Any, _cur: Any, sql: str, *_: Any) -> None:
        stamp("sql " + " ".join(sql.split())[:32])

    event.listen(Engine, "before_cursor_execute", statement)
    atexit.register(_write)


def install_b() -> None:
    """Wrap the way of each `messageAdded` event in this process (B), before the app is
    built: from its Redis reply parsed to the frame written and the read's end."""
    import asyncpg.prepared_stmt
    import redis.asyncio.connection
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    from weflux import pg_driver
    from weflux.gql import event_memo, fanout
    from weflux.realtime import broker

    parsed = [0, 0]  # when the reader's last reply was parsed (wall, CPU)
    read = redis.asyncio.connection.AbstractConnection.read_response

    async def read_response(self: Any, *args: Any, **kwargs: Any) -> Any:
        reply = await read(self, *args, **kwargs)
        parsed[0], parsed[1] = time.perf_counter_ns(), time.thread_time_ns()
        return reply

    redis.asyncio.connection.AbstractConnection.read_response = read_response  # type: ignore[method-assign]
    dispatch = broker.Broker._dispatch

    async def dispatched(self: Any, channel: str, message: dict[str, Any]) -> None:
        if message.get("event") != "messageAdded":
            stamp("other event>")
            await dispatch(self, channel, message)
            stamp("other event<")
            return
        _event[0] = [("reply parsed", parsed[0], parsed[1])]
        stamp("dispatch>")
        await dispatch(self, channel, message)
        stamp("dispatch<")

    broker.Broker._dispatch = dispatched  # type: ignore[method-assign]
    _wrap(event_memo.SharedEvent, "load", "shared load")
    _wrap(pg_driver.ReadTransaction, "begin", "read begin")
    _wrap(pg_driver.ScopedBeginConnection, "begin_now", "pg BEGIN")
    _wrap(pg_driver.ReadTransaction, "fetch", "read fetch")
    _wrap(asyncpg.prepared_stmt.PreparedStatement, "fetch", "pg statement")
    _wrap(event_memo.SharedEventExecutionContext, "execute_operation", "execute")
    _wrap(fanout.Sink, "write", "frame")
    end = pg_driver.ReadTransaction.end

    async def ended(self: Any) -> None:
        stamp("read end>")
        await end(self)
        stamp("read end<")
        steps, _event[0] = _event[0], None
        if steps is not None:
            _done.append(steps)
            if len(_done) >= 20:
                _write()

    pg_driver.ReadTransaction.end = ended  # type: ignore[method-assign]
    event.listen(Pool, "checkout", lambda *_: stamp("pool checkout"))
    event.listen(Pool, "checkin", lambda *_: stamp("pool checkin"))
    atexit.register(_write)


def _write() -> None:
    path = os.environ.get("BENCH_TIMELINE_OUT")
    if not path or not _done:
        return
    with open(path, "a") as out:
        for steps in _done:
            out.write(json.dumps(steps) + "\n")
    _done.clear()


ROUND_TRIPS = ("pg BEGIN>", "pg statement>", "pg COMMIT>", "pg PREPARE>", "redis write>")

# The steps grouped into stages: (label, first step, last step, a step the first comes
# after). A stage whose steps a webhook does not take (say, no BEGIN of its own) is left out.
STAGES = (
    ("HTTP in: uvicorn, middleware, routing, body read", "bytes in", "read body<", None),
    ("channel, HMAC, the event's id and hash", "read body<", "store_and_process>", None),
    ("session, JSON and webhook parse, routes", "store_and_process>", "send held<", None),
    ("open the transaction (to the scope statement's end)", "send held<", "pg statement<", None),
    ("  of which BEGIN's round trip", "pg BEGIN>", "pg BEGIN<", None),
    ("  of which the scope statement's round trip", "pg statement>", "pg statement<", None),
    ("SQLAlchemy after the scope statement, ingest", "pg statement<", "senders>", None),
    ("the senders' SELECT", "senders>", "senders<", None),
    ("  of which its round trip", "pg statement>", "pg statement<", "senders>"),
    ("rows, contacts, conversations, queued events", "senders<", "send held>", None),
    ("the folded write", "send held>", "send held<", "senders<"),
    ("  of which its round trip", "pg statement>", "pg statement<", "apply<"),
    ("commit: COMMIT, pool check-in, the session", "send held<", "session commit<", "apply<"),
    ("  of which COMMIT's round trip", "pg COMMIT>", "pg COMMIT<", None),
    ("publish, until written to Redis", "session commit<", "redis write>", None),
    ("publish: the write, the replies read", "redis write>", "after commit<", None),
    ("close, answer", "after commit<", "done", None),
    ("total", "bytes in", "done", None),
)


# B's stages: from the event's Redis reply parsed to its frame written, then the read's end.
STAGES_B = (
    ("reader: dispatch to the hub", "reply parsed", "dispatch<", None),
    ("subscriber woken, to its shared load", "dispatch<", "shared load>", None),
    ("the read: checkout, BEGIN with the scope", "shared load>", "read begin<", None),
    ("  of which BEGIN's round trip", "pg BEGIN>", "pg BEGIN<", None),
    ("the read: the SELECT", "read begin<", "read fetch<", None),
    ("  of which its round trip", "pg statement>", "pg statement<", None),
    ("the row made, load returned", "read fetch<", "shared load<", None),
    ("to the execution's end", "shared load<", "execute<", None),
    ("to the frame written", "execute<", "frame<", None),
    ("reply parsed -> frame written", "reply parsed", "frame<", None),
    ("after the frame: ROLLBACK, check-in", "frame<", "read end<", None),
    ("total", "reply parsed", "read end<", None),
)


def _stage(shape: tuple[str, ...], first: str, last: str, after: str | None) -> tuple[int, int]:
    """The stamps' indexes where a stage begins and ends in `shape`; ValueError if absent."""
    start = shape.index(first, shape.index(after) if after else 0)
    return start, shape.index(last, start + 1)


def stages(
    shape: tuple[str, ...], same: list[list[Stamp]], table: tuple[Any, ...] = STAGES
) -> list[str]:
    """Median wall and CPU (ms) of each stage (`STAGES`) the sequence has."""
    lines = [f"{'stage (median of each)':<56}{'wall':>8}{'CPU':>8}"]
    for label, first, last, after in table:
        try:
            start, end = _stage(shape, first, last, after)
        except ValueError:
            continue
        wall = statistics.median((w[end][1] - w[start][1]) / 1e6 for w in same)
        cpu = statistics.median((w[end][2] - w[start][2]) / 1e6 for w in same)
        lines.append(f"{label:<56}{wall:>8.2f}{cpu:>8.2f}")
    return lines


def report(path: Path, skip: int = 0) -> str:
    """The table: median wall and CPU (ms) between consecutive stamps, round trips."""
    webhooks: list[list[Stamp]] = [
        [tuple(s) for s in json.loads(line)] for line in path.read_text().splitlines()
    ][skip:]
    if not webhooks:
        return "timeline: no webhook recorded"
    shapes = Counter(tuple(step for step, _, _ in w) for w in webhooks)
    shape, count = shapes.most_common(1)[0]
    same = [w for w in webhooks if tuple(step for step, _, _ in w) == shape]
    side_b = shape[0] == "reply parsed"
    lines = [
        f"process {'B, one event' if side_b else 'A, one webhook'} step by step: {count} of "
        f"{len(webhooks)} took this sequence; median ms between consecutive stamps",
        f"{'':>3} {'from':<38}{'to':<38}{'wall':>8}{'CPU':>8}",
    ]
    wall_sum = cpu_sum = waited = 0.0
    for i in range(len(shape) - 1):
        wall = statistics.median((w[i + 1][1] - w[i][1]) / 1e6 for w in same)
        cpu = statistics.median((w[i + 1][2] - w[i][2]) / 1e6 for w in same)
        wall_sum, cpu_sum = wall_sum + wall, cpu_sum + cpu
        if shape[i] in ROUND_TRIPS or shape[i] == "redis read>":
            waited += wall - cpu
        lines.append(f"{i:>3} {shape[i]:<38}{shape[i + 1]:<38}{wall:>8.3f}{cpu:>8.3f}")
    total_wall = statistics.median((w[-1][1] - w[0][1]) / 1e6 for w in same)
    total_cpu = statistics.median((w[-1][2] - w[0][2]) / 1e6 for w in same)
    trips = Counter(step for step in shape if step in ROUND_TRIPS)
    lines += [
        f"sum of the medians: wall {wall_sum:.2f}, CPU {cpu_sum:.2f} (of which waiting in "
        f"round trips {waited:.2f}); median of the totals ({shape[0]} -> {shape[-1]}): "
        f"wall {total_wall:.2f}, CPU {total_cpu:.2f}",
        "round trips: " + ", ".join(f"{step.rstrip('>')} {n}" for step, n in sorted(trips.items())),
        *stages(shape, same, STAGES_B if side_b else STAGES),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--skip", type=int, default=0, help="leave out the first N webhooks")
    args = parser.parse_args()
    print(report(args.path, args.skip))


if __name__ == "__main__":
    main()
