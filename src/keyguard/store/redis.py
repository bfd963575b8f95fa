"""``KeyStore`` on Redis, over one ``Commands`` client.

This is the one place where a backend's failure becomes a ``StoreError``: every
command below is awaited inside ``try … except _FAILURES`` and handed to
``_failed``, which counts it and names the operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import redis.exceptions
from prometheus_client import Histogram

from keyguard.errors import BackendError, StoreError
from keyguard.policy import SpendResult
from keyguard.record import KeyRecord
from keyguard.runtime.metrics import Metrics
from keyguard.settings import Settings
from keyguard.store import (
    ALERTS_BELOW,
    ALERTS_MAXLEN,
    ALERTS_STREAM,
    ALIAS_FIELD,
    EVENTS_CHANNEL,
    PRICES_KEY,
    Commands,
    Hold,
    Settlement,
    expired_key,
    holds_key,
    metered_keys,
    read_record,
    record_key,
    resolve_alias,
    settled_key,
    tpm_key,
    usage_key,
)
from keyguard.store.commands import make_commands
from keyguard.store.scripts import ADD_USED, ALERT, SETTLE, SPEND

# How long the id of a settled request that held nothing (an unlimited key, a degraded
# allow) is remembered: delivered again within this time (a batch retried after its reply
# was lost), it charges nothing the second time. A request that held credits is settled
# once however late a repeat comes: its hold is gone (settle.lua).
SETTLED_MEMORY_MS = 300_000
# What any Commands implementation raises when Redis cannot answer.
_FAILURES = (redis.exceptions.RedisError, OSError, asyncio.TimeoutError, BackendError)


class RedisKeyStore:
    def __init__(self, commands: Commands, metrics: Metrics) -> None:
        self.commands = commands
        self.metrics = metrics
        self._pending_usage: dict[str, int] = {}
        self._durations = metrics.redis_op_duration

    def _failed(self, op: str, exc: BaseException) -> StoreError:
        self.metrics.redis_op_errors[op].inc()
        return StoreError(f"{op}: {type(exc).__name__}")

    def _took(self, histogram: Histogram, start: float) -> None:
        self.metrics.observe(histogram, time.perf_counter() - start)

    async def get_record(self, key_hash: str) -> KeyRecord | None:
        start = time.perf_counter()
        try:
            raw = await self.commands.hgetall(record_key(key_hash))
        except _FAILURES as exc:
            raise self._failed("get_record", exc) from exc
        self._took(self._durations["get_record"], start)
        if raw and ALIAS_FIELD in raw:
            # A secret made by a rotation: the record lives under the key's first hash.
            alias, target = raw, raw[ALIAS_FIELD]
            try:
                raw = await self.commands.hgetall(record_key(target))
            except _FAILURES as exc:
                raise self._failed("get_record", exc) from exc
            return resolve_alias(target, raw, alias)
        if not raw:
            return None
        return read_record(key_hash, raw)

    async def spend(
        self, key_hash: str, cost: int, rpm: int, hold: Hold | None = None
    ) -> SpendResult:
        start = time.perf_counter()
        if hold is None:
            args: tuple[object, ...] = (cost, rpm)
        else:
            args = (cost, rpm, hold.id, hold.ttl_ms, hold.tpm)
        try:
            out = await self.commands.evalsha(SPEND, metered_keys(key_hash), args)
        except _FAILURES as exc:
            raise self._failed("spend", exc) from exc
        self._took(self._durations["spend"], start)
        # outcome, remaining, rate limit (3), retry after, held, token limit (3), expired
        return SpendResult(str(out[0]), *map(int, out[1:11]))

    async def settle(
        self, key_hash: str, items: Sequence[Settlement], history_days: int = 0
    ) -> list[str]:
        # One argument per hold (settle.lua splits it): encoding seven arguments each
        # was most of the Python cost of a settlement write.
        args: list[object] = [SETTLED_MEMORY_MS, history_days * 86_400_000]
        args += [
            f"{i.hold_id} {i.held} {i.charge} {i.tokens_in} {i.cached_tokens} {i.tokens_out} "
            f"{i.model}"
            for i in items
        ]
        today = datetime.now(UTC).date().isoformat()
        keys = (
            record_key(key_hash),
            holds_key(key_hash),
            settled_key(key_hash),
            tpm_key(key_hash),
            usage_key(key_hash, today),
            expired_key(key_hash),
        )
        start = time.perf_counter()
        try:
            out = await self.commands.evalsha(SETTLE, keys, args)
        except _FAILURES as exc:
            raise self._failed("settle", exc) from exc
        self._took(self._durations["settle"], start)
        return [word.decode() if isinstance(word, bytes) else str(word) for word in out]

    async def get_prices(self) -> dict[str, str]:
        start = time.perf_counter()
        try:
            raw = await self.commands.hgetall(PRICES_KEY)
        except _FAILURES as exc:
            raise self._failed("prices", exc) from exc
        self._took(self._durations["prices"], start)
        return raw

    async def note_alert(self, kind: str, key_id: str, remaining: int, threshold: int) -> int:
        args = (kind, key_id, remaining, threshold, ALERTS_MAXLEN)
        try:
            out = await self.commands.evalsha(ALERT, (ALERTS_STREAM, ALERTS_BELOW), args)
        except _FAILURES as exc:
            raise self._failed("settle", exc) from exc
        return int(out)

    def add_usage(self, key_hash: str, units: int) -> None:
        """Count usage of an unlimited key locally; flush_usage writes it in batches."""
        self._pending_usage[key_hash] = self._pending_usage.get(key_hash, 0) + units

    async def flush_usage(self) -> None:
        if not self._pending_usage:
            return
        pending, self._pending_usage = self._pending_usage, {}
        histogram = self._durations["add_usage"]
        try:
            for key_hash, units in pending.items():
                start = time.perf_counter()
                try:
                    await self.commands.evalsha(ADD_USED, (record_key(key_hash),), (units,))
                except _FAILURES as exc:
                    raise self._failed("add_usage", exc) from exc
                self._took(histogram, start)
                pending[key_hash] = 0
        except StoreError:
            # Keep what was not written for the next flush.
            for key_hash, units in pending.items():
                if units:
                    self.add_usage(key_hash, units)
            raise

    async def ping(self) -> None:
        start = time.perf_counter()
        try:
            await self.commands.ping()
        except _FAILURES as exc:
            raise self._failed("ping", exc) from exc
        self._took(self._durations["ping"], start)

    @contextlib.asynccontextmanager
    async def changes(self) -> AsyncIterator[AsyncIterator[str]]:
        try:
            async with self.commands.subscribe(EVENTS_CHANNEL) as messages:
                yield messages
        except _FAILURES as exc:
            raise StoreError(f"subscribe: {type(exc).__name__}") from exc

    async def close(self) -> None:
        await self.commands.close()


def make_store(settings: Settings, metrics: Metrics) -> RedisKeyStore:
    return RedisKeyStore(make_commands(settings), metrics)
