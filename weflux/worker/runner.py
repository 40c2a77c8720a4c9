"""The worker: periodic jobs that run until stopped, each failure logged and survived."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from weflux.tasks import cancel_and_wait

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    name: str
    every: float  # seconds between the end of one run and the start of the next
    run: Callable[[], Awaitable[object]]


class Worker:
    """Runs its jobs concurrently, each on its own interval."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        self._stopping.clear()
        self._tasks = [
            asyncio.create_task(self._loop(job), name=f"weflux-job-{job.name}") for job in self.jobs
        ]

    async def stop(self, grace: float = 10.0) -> None:
        """Let running jobs finish (up to `grace` seconds), then cancel what is left."""
        self._stopping.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=grace)
        await cancel_and_wait(*self._tasks)
        self._tasks = []

    async def _loop(self, job: Job) -> None:
        while not self._stopping.is_set():
            try:
                await job.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("worker job failed", extra={"job": job.name})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=job.every)
