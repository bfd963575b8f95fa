"""The key store: a protocol, Redis key names, and the Redis implementation."""

from __future__ import annotations

from typing import Protocol

from keyguard.policy import SpendResult
from keyguard.record import KeyRecord

EVENTS_CHANNEL = "kg:events"
IDS_SET = "kg:ids"
KEY_PREFIX = "kg:"


def record_key(key_hash: str) -> str:
    # The hash tag {H} puts every key of one API key in one cluster slot.
    return f"kg:{{{key_hash}}}:rec"


def ratelimit_key(key_hash: str) -> str:
    return f"kg:{{{key_hash}}}:rl"


def id_key(key_id: str) -> str:
    return f"kg:id:{key_id}"


class StoreError(Exception):
    """The store could not answer (connection, timeout, cluster down...)."""


class KeyStore(Protocol):
    async def get_record(self, key_hash: str) -> KeyRecord | None: ...

    async def spend(self, key_hash: str, cost: int, rpm: int) -> SpendResult: ...

    def add_usage(self, key_hash: str, units: int) -> None: ...

    async def flush_usage(self) -> None: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
