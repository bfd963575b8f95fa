"""The key store: its two interfaces and the Redis key names.

* ``KeyStore`` is what a decision needs (look a record up, spend, count usage, hear
  about changes). ``store.redis.RedisKeyStore`` implements it on Redis,
  ``store.memory.MemoryKeyStore`` in memory for unit tests of the decision.
* ``Commands`` is the one client interface ``RedisKeyStore`` talks through; the
  implementations in ``store.commands`` sit on redis-py (every topology) or on the
  auto-pipelining connection of ``store.pipeline`` (single node).

Nothing here imports a Redis client, so the decision core imports without one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from keyguard.errors import StoreError
from keyguard.policy import SpendResult
from keyguard.record import KeyRecord

EVENTS_CHANNEL = "kg:events"
# Published on EVENTS_CHANNEL instead of a key hash: every cached record is stale.
ALL_KEYS = "*"
IDS_SET = "kg:ids"
# The price table: a hash of model pattern → Price JSON (keyguard.prices). A change
# publishes PRICES_CHANGED on EVENTS_CHANNEL; every server then reloads the table.
PRICES_KEY = "kg:prices"
PRICES_CHANGED = "prices"
KEY_PREFIX = "kg:"


def record_key(key_hash: str) -> str:
    # The hash tag {H} puts every key of one API key in one cluster slot.
    return f"kg:{{{key_hash}}}:rec"


def ratelimit_key(key_hash: str) -> str:
    return f"kg:{{{key_hash}}}:rl"


def id_key(key_id: str) -> str:
    return f"kg:id:{key_id}"


# Entering subscribes (StoreError if it cannot); iterating yields what was published
# (a key hash, or ALL_KEYS) and raises StoreError when the subscription breaks.
ChangeFeed = AbstractAsyncContextManager[AsyncIterator[str]]


class KeyStore(Protocol):
    async def get_record(self, key_hash: str) -> KeyRecord | None: ...

    async def spend(self, key_hash: str, cost: int, rpm: int) -> SpendResult: ...

    def add_usage(self, key_hash: str, units: int) -> None: ...

    async def flush_usage(self) -> None: ...

    async def ping(self) -> None: ...

    def changes(self) -> ChangeFeed: ...

    async def close(self) -> None: ...


class Commands(Protocol):
    """The Redis commands keyguard's server sends. Failures surface as the client's
    own exceptions; ``RedisKeyStore`` alone turns them into ``StoreError``."""

    async def hgetall(self, key: str) -> dict[str, str]: ...

    async def evalsha(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any: ...

    async def ping(self) -> None: ...

    def subscribe(self, channel: str) -> AbstractAsyncContextManager[AsyncIterator[str]]: ...

    async def close(self) -> None: ...


__all__ = [
    "ALL_KEYS",
    "EVENTS_CHANNEL",
    "PRICES_CHANGED",
    "PRICES_KEY",
    "ChangeFeed",
    "Commands",
    "KeyStore",
    "StoreError",
    "id_key",
    "ratelimit_key",
    "record_key",
]
