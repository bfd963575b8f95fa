"""Identify: from the credential to a key record (format, hash, cache, store lookup)."""

from __future__ import annotations

import asyncio

from keyguard.authz.cache import CacheEntry, KeyCache
from keyguard.authz.decision import Decision, NeedsRecord
from keyguard.authz.request import Credential, RequestFacts
from keyguard.keys import hash_key, key_type_of
from keyguard.reasons import Reason
from keyguard.runtime.metrics import Metrics
from keyguard.store import KeyStore

_MISSING = Decision(Reason.MISSING_API_KEY)
_INVALID = Decision(Reason.INVALID_API_KEY)


class Identifier:
    def __init__(self, cache: KeyCache, store: KeyStore, metrics: Metrics) -> None:
        self.cache = cache
        self.store = store
        self.metrics = metrics
        self._inflight: dict[str, asyncio.Future[CacheEntry | None]] = {}

    def identify(self, facts: RequestFacts) -> CacheEntry | Decision | NeedsRecord:
        """The fresh cache entry of the request's key, a denial, or: look it up."""
        credential = facts.credential
        if credential is Credential.MISSING:
            return _MISSING
        if credential is Credential.MALFORMED or not credential.isascii():
            return _INVALID
        key_hash = hash_key(credential)
        cache = self.cache
        entry = cache.get(key_hash)
        # Only a well-formed key is ever looked up, so only such keys are cached:
        # a fresh entry needs no second format check.
        if entry is not None and cache.is_fresh(entry):
            self.metrics.count(self.metrics.cache_hit_positive)
            return entry
        if key_type_of(credential) is None:
            return _INVALID
        if cache.is_known_unknown(key_hash):
            self.metrics.count(self.metrics.cache_hit_negative)
            return _INVALID
        return NeedsRecord(facts, key_hash, entry)

    async def lookup(self, key_hash: str) -> CacheEntry | None:
        """Fetch a record from the store, with one fetch in flight per key.

        Concurrent misses for the same key (a cold cache under load) share one
        round trip instead of stampeding Redis. A fetch that started before an
        invalidation does not store its (possibly stale) answer. Raises StoreError.
        """
        self.metrics.count(self.metrics.cache_miss)
        pending = self._inflight.get(key_hash)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[CacheEntry | None] = asyncio.get_running_loop().create_future()
        self._inflight[key_hash] = future
        try:
            generation = self.cache.generation
            record = await self.store.get_record(key_hash)
            if record is None:
                self.cache.put_negative(key_hash, generation)
                entry = None
            else:
                entry = self.cache.put(record, generation, key_hash)
            future.set_result(entry)
            return entry
        except BaseException as exc:
            future.set_exception(exc)
            # Mark the exception retrieved when nobody else was waiting.
            future.exception()
            raise
        finally:
            del self._inflight[key_hash]

    def forget(self, key_hash: str) -> None:
        """The store says the key is gone or disabled: drop the cached record."""
        self.cache.invalidate(key_hash)
