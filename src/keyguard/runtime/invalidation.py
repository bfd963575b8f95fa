"""Listen for key and price changes: drop changed keys from the local cache at once,
and reload the price table when it changed.

If the subscription breaks, the cache is flushed when it is re-established:
events sent meanwhile are lost, and a full flush is the only safe answer.
Until then, entries age out within the cache TTL.
"""

from __future__ import annotations

import asyncio

import structlog

from keyguard.authz.cache import KeyCache
from keyguard.meter.pricebook import PriceBook
from keyguard.runtime.tasks import BackgroundTask
from keyguard.store import ALL_KEYS, PRICES_CHANGED, KeyStore

log = structlog.get_logger("keyguard.invalidation")


class InvalidationListener(BackgroundTask):
    name = "kg-invalidation"

    def __init__(
        self,
        store: KeyStore,
        cache: KeyCache,
        retry_seconds: float = 0.5,
        prices: PriceBook | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.cache = cache
        self.prices = prices
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
                    await self._reload_prices()
                    self.connected.set()
                    if not first:
                        log.info("invalidation_resubscribed")
                    first = False
                    delay = self.retry_seconds
                    async for key_hash in changes:
                        if key_hash == ALL_KEYS:
                            self.cache.clear()
                        elif key_hash == PRICES_CHANGED:
                            await self._reload_prices()
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

    async def _reload_prices(self) -> None:
        if self.prices is not None:
            await self.prices.reload(self.store)
            log.info("prices_loaded", models=len(self.prices.table))
