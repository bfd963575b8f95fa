from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import replace
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry

from keyguard.authz.cache import KeyCache
from keyguard.authz.service import AuthorizationService
from keyguard.runtime.metrics import Metrics
from keyguard.settings import Settings
from keyguard.store.redis import make_store

T = TypeVar("T")


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(coro_fn())


@contextlib.asynccontextmanager
async def service_for(redis_url: str, **overrides: Any) -> AsyncIterator[AuthorizationService]:
    """The real servicer over a real Redis, called in-process (no gRPC)."""
    # Request units unless a test asks for token metering (which needs prices).
    settings = replace(Settings(), redis_url=redis_url, **{"metering": "request", **overrides})
    metrics = Metrics(CollectorRegistry())
    store = make_store(settings, metrics)
    cache = KeyCache(
        settings.cache_size,
        settings.cache_ttl,
        settings.negative_cache_size,
        settings.negative_cache_ttl,
    )
    try:
        yield AuthorizationService(settings, store, cache, metrics)
    finally:
        await store.close()
