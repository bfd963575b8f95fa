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
from dataclasses import replace
from typing import Any, NamedTuple, Protocol

from keyguard.errors import StoreError
from keyguard.policy import SpendResult
from keyguard.record import KeyRecord, record_from_hash

EVENTS_CHANNEL = "kg:events"
# Published on EVENTS_CHANNEL instead of a key hash: every cached record is stale.
ALL_KEYS = "*"
IDS_SET = "kg:ids"
# The price table: a hash of model pattern → Price JSON (keyguard.prices). A change
# publishes PRICES_CHANGED on EVENTS_CHANNEL; every server then reloads the table.
PRICES_KEY = "kg:prices"
# Low-balance alerts: a bounded stream of crossings and the set of key ids below their
# threshold now; one hash tag, so one script can write both on a cluster.
ALERTS_STREAM = "kg:{alerts}:stream"
ALERTS_BELOW = "kg:{alerts}:below"
ALERTS_MAXLEN = 10_000
PRICES_CHANGED = "prices"
KEY_PREFIX = "kg:"


def record_key(key_hash: str) -> str:
    # The hash tag {H} puts every key of one API key in one cluster slot.
    return f"kg:{{{key_hash}}}:rec"


def ratelimit_key(key_hash: str) -> str:
    return f"kg:{{{key_hash}}}:rl"


def holds_key(key_hash: str) -> str:
    return f"kg:{{{key_hash}}}:holds"


def settled_key(key_hash: str) -> str:
    return f"kg:{{{key_hash}}}:settled"


def tpm_key(key_hash: str) -> str:
    return f"kg:{{{key_hash}}}:tpm"


def expired_key(key_hash: str) -> str:
    """Holds released unsettled: hold id → when (ms), so a late settlement still charges."""
    return f"kg:{{{key_hash}}}:expired"


def metered_keys(key_hash: str) -> tuple[str, str, str, str, str]:
    """The keys the spend script touches, in its KEYS order."""
    return (
        record_key(key_hash),
        ratelimit_key(key_hash),
        holds_key(key_hash),
        tpm_key(key_hash),
        expired_key(key_hash),
    )


def usage_key(key_hash: str, day: str) -> str:
    """One UTC day (YYYY-MM-DD) of a key's usage history: "<model>|<kind>" → count."""
    return f"kg:{{{key_hash}}}:use:{day}"


def id_key(key_id: str) -> str:
    return f"kg:id:{key_id}"


class Hold(NamedTuple):
    """A hold to place with a spend: its id (minted by keyguard), lifetime and the
    key's token limit."""

    id: str
    ttl_ms: int
    tpm: int = 0


class Settlement(NamedTuple):
    """What one finished request costs: its hold (0 credits: none was placed), the
    credits to charge and the tokens to count. (A named tuple: one is made per settled
    request, and a frozen dataclass costs three times as much to make.)"""

    hold_id: str
    held: int
    charge: int
    tokens_in: int = 0
    cached_tokens: int = 0
    tokens_out: int = 0
    model: str = "other"  # the price pattern that priced it, for the usage history


# A secret made by `keys rotate` is an alias record at its own hash: ALIAS_FIELD names the
# hash the key's record lives under, and secret_expires_at ends it (a later rotation's grace).
ALIAS_FIELD = "alias_of"


def read_record(key_hash: str, raw: dict[str, str]) -> KeyRecord:
    try:
        return record_from_hash(key_hash, raw)
    except ValueError as exc:
        # A hand-edited, unreadable record: treat as a store fault, fail closed.
        raise StoreError("get_record: unreadable key record") from exc


def resolve_alias(target: str, raw: dict[str, str], alias: dict[str, str]) -> KeyRecord | None:
    """The record an alias leads to, judged by the alias's own secret validity."""
    if not raw or raw.get("id") != alias.get("id"):
        return None  # revoked (or an alias left behind)
    record = read_record(target, raw)
    expires = alias.get("secret_expires_at", "")
    try:
        return replace(record, secret_expires_at=float(expires) if expires else None)
    except ValueError as exc:
        raise StoreError("get_record: unreadable key alias") from exc


# Entering subscribes (StoreError if it cannot); iterating yields what was published
# (a key hash, or ALL_KEYS) and raises StoreError when the subscription breaks.
ChangeFeed = AbstractAsyncContextManager[AsyncIterator[str]]


class KeyStore(Protocol):
    async def get_record(self, key_hash: str) -> KeyRecord | None: ...

    async def spend(
        self, key_hash: str, cost: int, rpm: int, hold: Hold | None = None
    ) -> SpendResult:
        """The metered step: spend ``cost`` now, or (with ``hold``) hold ``cost`` credits."""
        ...

    async def settle(
        self, key_hash: str, items: Sequence[Settlement], history_days: int = 0
    ) -> list[str]:
        """Charge settled requests and release their holds, at most once per hold id, and
        count them in today's usage history (kept ``history_days``); one word per item:
        "settled", "unheld" or "duplicate" (settle.lua)."""
        ...

    async def get_prices(self) -> dict[str, str]:
        """The stored price table: model pattern → Price JSON."""
        ...

    async def note_alert(self, kind: str, key_id: str, remaining: int, threshold: int) -> int:
        """Record a low-balance crossing ("alert") or its end ("rearm"); answers how many
        keys are below their threshold now."""
        ...

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
    "ALERTS_BELOW",
    "ALERTS_MAXLEN",
    "ALERTS_STREAM",
    "ALIAS_FIELD",
    "ALL_KEYS",
    "EVENTS_CHANNEL",
    "PRICES_CHANGED",
    "PRICES_KEY",
    "ChangeFeed",
    "Commands",
    "Hold",
    "KeyStore",
    "Settlement",
    "StoreError",
    "id_key",
    "ratelimit_key",
    "read_record",
    "record_key",
    "resolve_alias",
    "usage_key",
]
