"""weflux.tasks: background tasks ended without losing the caller's own cancellation."""

from __future__ import annotations

import asyncio

import pytest

from weflux.tasks import cancel_and_wait


async def test_the_tasks_cancellation_is_swallowed_and_each_has_ended() -> None:
    """Given two running tasks, when cancelled and waited for, then both have ended
    cancelled and nothing is raised."""
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    tasks = [asyncio.create_task(forever()) for _ in range(2)]
    await started.wait()
    await cancel_and_wait(*tasks)
    assert all(task.cancelled() for task in tasks)


async def test_a_task_that_ends_with_another_error_raises_it() -> None:
    """Given a task that fails as it is cancelled, then its error is raised."""
    started = asyncio.Event()

    async def failing() -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    task = asyncio.create_task(failing())
    await started.wait()
    with pytest.raises(RuntimeError, match="cleanup failed"):
        await cancel_and_wait(task)


async def test_a_caller_cancelled_while_it_waits_is_cancelled() -> None:
    """Given a task that takes a moment to end once cancelled (its clean-up awaits),
    when the caller waiting for it is cancelled meanwhile,
    then the caller ends cancelled (`suppress(CancelledError)` around the wait let it go
    on as if nothing happened: a shutdown that could not be cancelled)."""
    started, cleaning, release = asyncio.Event(), asyncio.Event(), asyncio.Event()
    after_wait: list[str] = []

    async def slow_to_end() -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        finally:
            cleaning.set()
            await release.wait()

    async def caller(task: asyncio.Task[None]) -> None:
        await cancel_and_wait(task)
        after_wait.append("went on")

    task = asyncio.create_task(slow_to_end())
    await started.wait()
    stopping = asyncio.create_task(caller(task))
    await cleaning.wait()
    stopping.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert after_wait == []
    await asyncio.gather(task, return_exceptions=True)


async def test_in_the_clean_up_of_a_cancelled_caller_every_task_is_waited_for() -> None:
    """Given a caller already cancelled, stopping its tasks in its `finally`,
    then every task has ended before the clean-up goes on (its old cancellation is not
    a new one: the clean-up would stop at the first task)."""
    started = asyncio.Event()
    cleaned: list[str] = []

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    async def caller() -> None:
        tasks = [asyncio.create_task(forever()) for _ in range(3)]
        try:
            await asyncio.Event().wait()
        finally:
            await cancel_and_wait(*tasks)
            cleaned.append("done" if all(task.done() for task in tasks) else "left")

    running = asyncio.create_task(caller())
    await started.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert cleaned == ["done"]
