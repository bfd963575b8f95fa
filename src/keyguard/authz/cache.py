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
        # Record hash → the other secrets' hashes its record is cached under.
        self._aliases: dict[str, set[str]] = {}
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

    def put(
        self, record: KeyRecord, generation: int | None = None, secret_hash: str | None = None
    ) -> CacheEntry:
        """Cache ``record`` under the hash of the secret it was found by (by default its
        own: a rotated key's newer secrets find the record through an alias)."""
        entry = CacheEntry(record, self.clock())
        if self.size <= 0 or (generation is not None and generation != self.generation):
            return entry
        key = secret_hash or record.key_hash
        self._negative.pop(key, None)
        self._entries[key] = entry
        self._entries.move_to_end(key)
        if key != record.key_hash:
            self._aliases.setdefault(record.key_hash, set()).add(key)
        while len(self._entries) > self.size:
            old_key, old = self._entries.popitem(last=False)
            if old_key != old.record.key_hash:
                self._aliases.get(old.record.key_hash, set()).discard(old_key)
        return entry

    def put_negative(self, key_hash: str, generation: int | None = None) -> None:
        if self.negative_size <= 0 or (generation is not None and generation != self.generation):
            return
        self._negative[key_hash] = self.clock() + self.negative_ttl
        self._negative.move_to_end(key_hash)
        while len(self._negative) > self.negative_size:
            self._negative.popitem(last=False)

    def invalidate(self, key_hash: str) -> None:
        """Drop a key: its record, and its copies cached under other secrets' hashes."""
        self.generation += 1
        self._entries.pop(key_hash, None)
        self._negative.pop(key_hash, None)
        for alias in self._aliases.pop(key_hash, ()):
            self._entries.pop(alias, None)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._negative.clear()
        self._aliases.clear()
