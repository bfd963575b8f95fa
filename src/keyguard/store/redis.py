"""The Redis implementation of KeyStore, on redis-py's asyncio client."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.exceptions

from keyguard.metrics import Metrics
from keyguard.policy import SpendResult
from keyguard.record import KeyRecord, record_from_hash
from keyguard.settings import Settings
from keyguard.store import StoreError, ratelimit_key, record_key
from keyguard.store.connect import AsyncClient, async_client, parse_target
from keyguard.store.pipeline import PipelineConnectionError, PipelinedRedis, ReplyError
from keyguard.store.scripts import ADD_USED, SPEND

_ERRORS = (
    redis.exceptions.RedisError,
    OSError,
    asyncio.TimeoutError,
    ReplyError,
    PipelineConnectionError,
)


class RedisKeyStore:
    """KeyStore on Redis. ``fast`` (single-node URLs) carries the hot-path
    commands; redis-py's client carries the rest and every topology it knows."""

    def __init__(
        self, client: AsyncClient, metrics: Metrics, fast: PipelinedRedis | None = None
    ) -> None:
        self.client = client
        self.metrics = metrics
        self.fast = fast
        self._spend = client.register_script(SPEND)
        self._add_used = client.register_script(ADD_USED)
        self._pending_usage: dict[str, int] = {}
        self._spend_duration = metrics.redis_op_duration["spend"]

    async def _timed(self, op: str, coro: Any) -> Any:
        start = time.perf_counter()
        try:
            result = await coro
        except _ERRORS as exc:
            self.metrics.redis_op_errors[op].inc()
            raise StoreError(f"{op}: {type(exc).__name__}") from exc
        self.metrics.observe(self.metrics.redis_op_duration[op], time.perf_counter() - start)
        return result

    async def get_record(self, key_hash: str) -> KeyRecord | None:
        if self.fast is not None:
            flat = await self._timed(
                "get_record", self.fast.execute("HGETALL", record_key(key_hash))
            )
            raw = dict(zip(flat[::2], flat[1::2], strict=True))
        else:
            raw = await self._timed("get_record", self.client.hgetall(record_key(key_hash)))
        if not raw:
            return None
        try:
            return record_from_hash(key_hash, raw)
        except ValueError as exc:
            # A hand-edited, unreadable record: treat as a store fault, fail closed.
            raise StoreError("get_record: unreadable key record") from exc

    async def spend(self, key_hash: str, cost: int, rpm: int) -> SpendResult:
        keys = [record_key(key_hash), ratelimit_key(key_hash)]
        start = time.perf_counter()
        try:
            if self.fast is not None:
                out = await self.fast.evalsha(SPEND, keys, [cost, rpm])
            else:
                out = await self._spend(keys=keys, args=[cost, rpm])
        except _ERRORS as exc:
            self.metrics.redis_op_errors["spend"].inc()
            raise StoreError(f"spend: {type(exc).__name__}") from exc
        # The hot path's own copy of _timed: one coroutine less per metered Check.
        self.metrics.observe(self._spend_duration, time.perf_counter() - start)
        return SpendResult(
            outcome=str(out[0]),
            remaining=int(out[1]),
            rl_limit=int(out[2]),
            rl_remaining=int(out[3]),
            rl_reset_ms=int(out[4]),
            retry_after_ms=int(out[5]),
        )

    def add_usage(self, key_hash: str, units: int) -> None:
        """Count usage of an unlimited key locally; flush_usage writes it in batches."""
        self._pending_usage[key_hash] = self._pending_usage.get(key_hash, 0) + units

    async def flush_usage(self) -> None:
        if not self._pending_usage:
            return
        pending, self._pending_usage = self._pending_usage, {}
        try:
            for key_hash, units in pending.items():
                keys = [record_key(key_hash)]
                if self.fast is not None:
                    call = self.fast.evalsha(ADD_USED, keys, [units])
                else:
                    call = self._add_used(keys=keys, args=[units])
                await self._timed("add_usage", call)
                pending[key_hash] = 0
        except StoreError:
            # Keep what was not written for the next flush.
            for key_hash, units in pending.items():
                if units:
                    self.add_usage(key_hash, units)
            raise

    async def ping(self) -> None:
        if self.fast is not None:
            await self._timed("ping", self.fast.execute("PING"))
        else:
            await self._timed("ping", self.client.ping())

    async def close(self) -> None:
        if self.fast is not None:
            self.fast.close()
        await self.client.aclose()
        # A Sentinel-managed client also holds connections to the sentinels.
        pool = getattr(self.client, "connection_pool", None)
        manager = getattr(pool, "sentinel_manager", None)
        for sentinel in getattr(manager, "sentinels", []):
            await sentinel.aclose()


def make_store(settings: Settings, metrics: Metrics) -> RedisKeyStore:
    """The store for these settings: the lean pipelined path on single-node URLs."""
    fast = PipelinedRedis(settings) if parse_target(settings.redis_url).mode == "single" else None
    return RedisKeyStore(async_client(settings), metrics, fast)
