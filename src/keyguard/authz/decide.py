"""The decision: identify → judge → meter, with the outage fallback; no gRPC here.

Each phase is one call:

* identify: ``Identifier.identify`` (format, hash, cache) and ``Identifier.lookup``;
* judge: ``policy.judge`` (status, expiry, IPs, models), once per request;
* meter: ``KeyStore.spend`` (quota, cycle, rate limit: one atomic round trip) read by
  ``policy.interpret_spend``; unlimited keys without a rate limit count usage locally;
* outage: ``policy.on_store_error`` when a store call fails.
"""

from __future__ import annotations

import time

from keyguard.authz.cache import CacheEntry, KeyCache
from keyguard.authz.decision import Billing, Decision, NeedsRecord, NeedsSpend, Stage
from keyguard.authz.identify import Identifier
from keyguard.authz.request import RequestFacts
from keyguard.errors import StoreError
from keyguard.policy import (
    Fallback,
    SpendResult,
    StoreErrorMode,
    interpret_spend,
    judge,
    on_store_error,
)
from keyguard.reasons import Reason
from keyguard.record import KeyRecord
from keyguard.runtime.metrics import Metrics
from keyguard.settings import Settings
from keyguard.store import KeyStore

_UNAVAILABLE = Decision(Reason.STORE_UNAVAILABLE)
_UNKNOWN = Decision(Reason.INVALID_API_KEY)
_ALLOW_UNKNOWN_DEGRADED = Decision(Reason.OK, billing=Billing.UNMETERED, degraded=True)
# The spend script's outcomes after which the cached record is wrong.
_STALE_OUTCOMES = frozenset({"gone", "disabled"})


def _judge_record(record: KeyRecord, facts: RequestFacts) -> Reason | None:
    # The client address is read from the request only for a key with an IP list.
    client_ip = facts.client_ip if record.allowed_ips is not None else None
    return judge(record, time.time(), client_ip, facts.model)


class Decider:
    def __init__(
        self, settings: Settings, store: KeyStore, cache: KeyCache, metrics: Metrics
    ) -> None:
        self.store = store
        self.identifier = Identifier(cache, store, metrics)
        self.cache = cache
        self.cost = settings.request_cost
        self.mode = StoreErrorMode(settings.on_store_error)
        self.stale_seconds = settings.stale_seconds

    def decide_now(self, facts: RequestFacts) -> Decision | Stage:
        """Everything decided without I/O; a stage when the store must be asked."""
        found = self.identifier.identify(facts)
        if type(found) is CacheEntry:
            return self._judged(facts, found)
        return found  # type: ignore[return-value]

    async def finish(self, stage: Stage) -> Decision:
        """The rest of a decision that needs the store: a lookup, then maybe a spend."""
        if type(stage) is NeedsSpend:
            return await self._meter(stage)
        assert type(stage) is NeedsRecord
        try:
            entry = await self.identifier.lookup(stage.key_hash)
        except StoreError:
            return self._outage_without_record(stage)
        if entry is None:
            return _UNKNOWN
        judged = self._judged(stage.facts, entry)
        if type(judged) is Decision:
            return judged
        return await self._meter(judged)  # type: ignore[arg-type]

    async def _meter(self, stage: NeedsSpend) -> Decision:
        """The metered step: quota, cycle and rate limit, atomically in the store."""
        record = stage.entry.record
        try:
            spend = await self.store.spend(record.key_hash, self.cost, record.rpm)
        except StoreError:
            return self._outage_after_judging(stage)
        return self._metered(record, spend)

    def _judged(self, facts: RequestFacts, entry: CacheEntry) -> Decision | NeedsSpend:
        """Judge a known record; a free key is allowed here, a metered one needs a spend."""
        record = entry.record
        reason = _judge_record(record, facts)
        if reason is not None:
            return Decision(reason, record)
        if record.metered and (self.cost > 0 or record.rpm > 0):
            return NeedsSpend(facts, entry)
        if self.cost > 0:
            self.store.add_usage(record.key_hash, self.cost)
        return Decision(Reason.OK, record, Billing.UNLIMITED)

    def _metered(self, record: KeyRecord, spend: SpendResult) -> Decision:
        reason = interpret_spend(spend)
        if spend.outcome in _STALE_OUTCOMES:
            self.identifier.forget(record.key_hash)
        if reason is not Reason.OK:
            return Decision(reason, record, spend=spend)
        if spend.outcome == "payg":
            billing = Billing.PAYG
        else:
            billing = Billing.UNLIMITED if record.unlimited else Billing.QUOTA
        return Decision(Reason.OK, record, billing, spend)

    # ----- outage: KEYGUARD_ON_STORE_ERROR --------------------------------------------------

    def _outage_without_record(self, stage: NeedsRecord) -> Decision:
        """The lookup failed; the record at hand, if any, is an expired cache entry."""
        stale = stage.stale
        age = self.cache.age(stale) if stale is not None else None
        fallback = on_store_error(self.mode, age, self.stale_seconds, record_fresh=False)
        if fallback is Fallback.UNAVAILABLE:
            return _UNAVAILABLE
        if fallback is Fallback.ALLOW_UNKNOWN or stale is None:
            return _ALLOW_UNKNOWN_DEGRADED
        # This record has not been judged on this request yet.
        reason = _judge_record(stale.record, stage.facts)
        if reason is not None:
            return Decision(reason, stale.record)
        return Decision(Reason.OK, stale.record, Billing.UNMETERED, degraded=True)

    def _outage_after_judging(self, stage: NeedsSpend) -> Decision:
        """The spend failed; the record is fresh, was judged on this request and admitted it."""
        entry = stage.entry
        fallback = on_store_error(
            self.mode, self.cache.age(entry), self.stale_seconds, record_fresh=True
        )
        if fallback is not Fallback.USE_RECORD:
            return _UNAVAILABLE
        return Decision(Reason.OK, entry.record, Billing.UNMETERED, degraded=True)
