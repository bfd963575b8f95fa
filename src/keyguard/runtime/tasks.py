"""Background work as task objects the server starts and stops.

Each task is one loop with one job; a failure inside an iteration is logged and the
loop goes on, since a dead loop would silently stop its job (a frozen health status,
usage never written). Only ``stop()`` ends one.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from keyguard.errors import StoreError
from keyguard.store import KeyStore

log = structlog.get_logger("keyguard.tasks")


class BackgroundTask:
    """A named asyncio task with start() and stop(); subclasses write ``run()``."""

    name = "kg-task"  # the asyncio task's name
    label = "task"  # the log events' prefix

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self.stopping = False

    async def run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=self.name)

    async def stop(self) -> None:
        self.stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class PeriodicTask(BackgroundTask):
    """``tick()`` every ``interval`` seconds, whatever a tick raises."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.interval = interval

    async def tick(self) -> None:
        raise NotImplementedError

    def failed(self, exc: Exception) -> None:
        log.error(f"{self.label}_failed", error=type(exc).__name__)

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                if self.stopping:
                    raise
                # A tick cancelled from elsewhere (not by stop) must not end the loop.
                log.warning(f"{self.label}_cancelled")
            except Exception as exc:
                self.failed(exc)
            await asyncio.sleep(self.interval)


class UsageFlusher(PeriodicTask):
    """Writes the usage of unlimited keys, counted locally, to the store in batches."""

    name = "kg-usage-flush"
    label = "usage_flush"

    def __init__(self, store: KeyStore, interval: float = 1.0) -> None:
        super().__init__(interval)
        self.store = store

    async def tick(self) -> None:
        await self.store.flush_usage()

    def failed(self, exc: Exception) -> None:
        # The store being down is the health probe's news; what was not written is
        # kept for the next tick.
        if not isinstance(exc, StoreError):
            super().failed(exc)

    async def stop(self) -> None:
        await super().stop()
        with contextlib.suppress(Exception):
            await self.store.flush_usage()  # what the last Checks counted
