"""A price change reaches every replica within a second, through the change feed."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import redis
from prometheus_client import CollectorRegistry

from keyguard.authz.cache import KeyCache
from keyguard.keyring.prices import PriceEditor
from keyguard.meter.pricebook import PriceBook
from keyguard.runtime.invalidation import InvalidationListener
from keyguard.runtime.metrics import Metrics
from keyguard.settings import Settings
from keyguard.store.redis import make_store


def test_every_replica_sees_a_price_change_within_one_second(redis_url: str) -> None:
    async def go() -> None:
        settings = replace(Settings(), redis_url=redis_url)
        replicas = []
        for _ in range(3):
            store = make_store(settings, Metrics(CollectorRegistry()))
            book = PriceBook()
            listener = InvalidationListener(store, KeyCache(10, 30, 10, 10), prices=book)
            listener.start()
            replicas.append((store, book, listener))
        try:
            for _, _, listener in replicas:
                await asyncio.wait_for(listener.connected.wait(), 5)
            editor = PriceEditor(redis.Redis.from_url(redis_url, decode_responses=True))
            for round_ in range(1, 4):
                editor.set("gpt-4o*", {"input": round_, "output": 2 * round_})
                changed = time.monotonic()
                while True:
                    seen = [book.table.match("gpt-4o-mini") for _, book, _ in replicas]
                    if all(m is not None and m[1].input == round_ for m in seen):
                        break
                    assert time.monotonic() - changed < 1.0, f"round {round_}: {seen}"
                    await asyncio.sleep(0.01)
            editor.remove("gpt-4o*")
            changed = time.monotonic()
            while any(book.table.match("gpt-4o") is not None for _, book, _ in replicas):
                assert time.monotonic() - changed < 1.0
                await asyncio.sleep(0.01)
            editor.client.close()
        finally:
            for store, _, listener in replicas:
                await listener.stop()
                await store.close()

    asyncio.run(go())
