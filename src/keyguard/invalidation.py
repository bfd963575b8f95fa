"""Listen on kg:events and drop changed keys from the local cache at once.

If the subscription breaks, the cache is flushed when it is re-established:
events sent meanwhile are lost, and a full flush is the only safe answer.
Until then, entries age out within the cache TTL.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from keyguard.cache import KeyCache
from keyguard.store import EVENTS_CHANNEL
from keyguard.store.connect import AsyncClient

log = structlog.get_logger("keyguard.invalidation")


class InvalidationListener:
    def __init__(self, client: AsyncClient, cache: KeyCache, retry_seconds: float = 0.5) -> None:
        self.client = client
        self.cache = cache
        self.retry_seconds = retry_seconds
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="kg-invalidation")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        first = True
        delay = self.retry_seconds
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(EVENTS_CHANNEL)
                # Flush on every (re)subscribe: anything published while we
                # were away was missed.
                self.cache.clear()
                self.connected.set()
                if not first:
                    log.info("invalidation_resubscribed")
                first = False
                delay = self.retry_seconds
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=30.0)
                    if message is not None and message.get("type") == "message":
                        data = message.get("data")
                        if isinstance(data, bytes):
                            data = data.decode("ascii", errors="replace")
                        if isinstance(data, str):
                            if data == "*":
                                self.cache.clear()
                            else:
                                self.cache.invalidate(data)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                raise
            except Exception as exc:  # any failure means: resubscribe later
                if self.connected.is_set() or first:
                    log.warning("invalidation_disconnected", error=type(exc).__name__)
                    first = False
                self.connected.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
