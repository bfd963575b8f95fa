"""A bounded TTL LRU of key records, plus a bounded negative cache of unknown keys.

Entries past their TTL are not served as fresh, but stay until evicted, so
that KEYGUARD_ON_STORE_ERROR=cached can still serve them during an outage.
Pub/sub invalidation (see runtime/invalidation.py) drops entries the moment the CLI
changes a key.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from keyguard.record import KeyRecord


@dataclass(slots=True)
class CacheEntry:
    record: KeyRecord
    fetched_at: float  # monotonic


class KeyCache:
    def __init__(
        self,
        size: int,
        ttl: float,
        negative_size: int,
        negative_ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.size = size
        self.ttl = ttl
        self.negative_size = negative_size
        self.negative_ttl = negative_ttl
        self.clock = clock
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._negative: OrderedDict[str, float] = OrderedDict()
        # Bumped on every invalidation; a lookup that started before a bump
        # must not store its (possibly stale) answer.
        self.generation = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def negative_len(self) -> int:
        return len(self._negative)

    def get(self, key_hash: str) -> CacheEntry | None:
        """The entry, fresh or not; callers check ``is_fresh``."""
        entry = self._entries.get(key_hash)
        if entry is not None:
            self._entries.move_to_end(key_hash)
        return entry

    def is_fresh(self, entry: CacheEntry) -> bool:
        return self.clock() - entry.fetched_at < self.ttl

    def age(self, entry: CacheEntry) -> float:
        return self.clock() - entry.fetched_at

    def is_known_unknown(self, key_hash: str) -> bool:
        expires = self._negative.get(key_hash)
        if expires is None:
            return False
        if self.clock() >= expires:
            del self._negative[key_hash]
            return False
        return True

    def put(self, record: KeyRecord, generation: int | None = None) -> CacheEntry:
        entry = CacheEntry(record, self.clock())
        if self.size <= 0 or (generation is not None and generation != self.generation):
            return entry
        self._negative.pop(record.key_hash, None)
        self._entries[record.key_hash] = entry
        self._entries.move_to_end(record.key_hash)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return entry

    def put_negative(self, key_hash: str, generation: int | None = None) -> None:
        if self.negative_size <= 0 or (generation is not None and generation != self.generation):
            return
        self._negative[key_hash] = self.clock() + self.negative_ttl
        self._negative.move_to_end(key_hash)
        while len(self._negative) > self.negative_size:
            self._negative.popitem(last=False)

    def invalidate(self, key_hash: str) -> None:
        self.generation += 1
        self._entries.pop(key_hash, None)
        self._negative.pop(key_hash, None)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._negative.clear()
