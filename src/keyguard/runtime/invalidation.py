"""Listen for key changes and drop changed keys from the local cache at once.

If the subscription breaks, the cache is flushed when it is re-established:
events sent meanwhile are lost, and a full flush is the only safe answer.
Until then, entries age out within the cache TTL.
"""

from __future__ import annotations

import asyncio

import structlog

from keyguard.authz.cache import KeyCache
from keyguard.runtime.tasks import BackgroundTask
from keyguard.store import ALL_KEYS, KeyStore

log = structlog.get_logger("keyguard.invalidation")


class InvalidationListener(BackgroundTask):
    name = "kg-invalidation"

    def __init__(self, store: KeyStore, cache: KeyCache, retry_seconds: float = 0.5) -> None:
        super().__init__()
        self.store = store
        self.cache = cache
        self.retry_seconds = retry_seconds
        self.connected = asyncio.Event()

    async def run(self) -> None:
        first = True
        delay = self.retry_seconds
        while True:
            try:
                async with self.store.changes() as changes:
                    # Flush on every (re)subscribe: anything published while we
                    # were away was missed.
                    self.cache.clear()
                    self.connected.set()
                    if not first:
                        log.info("invalidation_resubscribed")
                    first = False
                    delay = self.retry_seconds
                    async for key_hash in changes:
                        if key_hash == ALL_KEYS:
                            self.cache.clear()
                        else:
                            self.cache.invalidate(key_hash)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure means: resubscribe later
                if self.connected.is_set() or first:
                    log.warning("invalidation_disconnected", error=type(exc).__name__)
                    first = False
                self.connected.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
