"""The decision: identify → judge → meter, with the outage fallback; no gRPC here.

Each phase is one call:

* identify: ``Identifier.identify`` (format, hash, cache) and ``Identifier.lookup``;
* judge: ``policy.judge`` (status, expiry, IPs, models), once per request;
* meter: ``KeyStore.spend`` (quota, cycle, rate limit: one atomic round trip) read by
  ``policy.interpret_spend``. With KEYGUARD_METERING=request it spends request_cost
  units (unlimited keys without a rate limit count usage locally); with tokens it
  prices the request's model, holds its estimated cost and hands a ``Ticket`` to the
  settlement path (``_ticket``);
* outage: ``policy.on_store_error`` when a store call fails.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable

from keyguard.authz.cache import CacheEntry, KeyCache
from keyguard.authz.decision import Billing, Decision, NeedsRecord, NeedsSpend, Stage, Ticket
from keyguard.authz.identify import Identifier
from keyguard.authz.request import RequestFacts
from keyguard.authz.route import DEFAULT as DEFAULT_ROUTE
from keyguard.errors import StoreError
from keyguard.meter.estimate import hold_for
from keyguard.meter.pricebook import PriceBook
from keyguard.model import ModelLookup
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
from keyguard.store import Hold, KeyStore

_UNAVAILABLE = Decision(Reason.STORE_UNAVAILABLE)
_UNKNOWN = Decision(Reason.INVALID_API_KEY)
_ALLOW_UNKNOWN_DEGRADED = Decision(Reason.OK, billing=Billing.UNMETERED, degraded=True)
# Seconds left before the caller's deadline, None without one (grpc's time_remaining).
Remaining = Callable[[], float | None]
# The spend script's outcomes after which the cached record is wrong.
_STALE_OUTCOMES = frozenset({"gone", "disabled"})


def _billing(record: KeyRecord) -> Billing:
    return Billing.UNLIMITED if record.unlimited else Billing.QUOTA


def _judge_record(record: KeyRecord, facts: RequestFacts) -> Reason | None:
    # The client address is read from the request only for a key with an IP list.
    client_ip = facts.client_ip if record.allowed_ips is not None else None
    return judge(record, time.time(), client_ip, facts.model)


class HoldIds:
    """Hold ids unique across processes and restarts: a random prefix and a counter."""

    def __init__(self) -> None:
        self.prefix = secrets.token_hex(6)
        self.count = itertools.count(1)

    def next(self) -> str:
        return f"{self.prefix}{next(self.count):x}"


class Decider:
    def __init__(
        self,
        settings: Settings,
        store: KeyStore,
        cache: KeyCache,
        metrics: Metrics,
        prices: PriceBook | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.identifier = Identifier(cache, store, metrics)
        self.cache = cache
        self.cost = settings.request_cost
        self.mode = StoreErrorMode(settings.on_store_error)
        self.stale_seconds = settings.stale_seconds
        self.tokens = settings.metering == "tokens"
        self.prices = prices or PriceBook()
        self.hold_ttl_ms = int(settings.hold_ttl * 1000)
        self.default_max_output = settings.default_max_output
        self.require_stream_usage = settings.require_stream_usage
        self.hold_ids = HoldIds()

    def decide_now(self, facts: RequestFacts) -> Decision | Stage:
        """Everything decided without I/O; a stage when the store must be asked."""
        found = self.identifier.identify(facts)
        if type(found) is CacheEntry:
            return self._judged(facts, found)
        return found  # type: ignore[return-value]

    async def finish(self, stage: Stage, remaining: Remaining | None = None) -> Decision:
        """The rest of a decision that needs the store: a lookup, then maybe a spend.

        ``remaining`` gives the seconds left before the caller's deadline (None: no
        deadline); a spend whose deadline has passed is not made (CHECK_TOO_LATE).
        """
        if type(stage) is NeedsSpend:
            return await self._meter(stage, remaining)
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
        return await self._meter(judged, remaining)  # type: ignore[arg-type]

    async def _meter(self, stage: NeedsSpend, remaining: Remaining | None) -> Decision:
        """The metered step: quota (or a hold), cycle and rate limits, atomically."""
        record = stage.entry.record
        if remaining is not None:
            left = remaining()
            if left is not None and left <= 0:
                # Envoy has given up on this Check and answered the client itself: a
                # spend now would be paid for a request that never reaches the upstream.
                return Decision(Reason.CHECK_TOO_LATE, record)
        ticket = stage.ticket
        try:
            if ticket is None:
                spend = await self.store.spend(record.key_hash, stage.cost, record.rpm)
            else:
                hold = Hold(ticket.hold_id, self.hold_ttl_ms, record.tpm)
                spend = await self.store.spend(record.key_hash, ticket.held, record.rpm, hold)
        except StoreError:
            return self._outage_after_judging(stage)
        return self._metered(record, spend, ticket)

    def _judged(self, facts: RequestFacts, entry: CacheEntry) -> Decision | NeedsSpend:
        """Judge a known record; a free key is allowed here, a metered one needs a spend."""
        record = entry.record
        reason = _judge_record(record, facts)
        if reason is not None:
            return Decision(reason, record)
        route = facts.route
        if route is not DEFAULT_ROUTE:
            if route.error:
                return Decision(Reason.ROUTE_CONFIG_INVALID, record)
            if route.key_types is not None and record.type not in route.key_types:
                return Decision(Reason.KEY_TYPE_NOT_ALLOWED, record)
            meter = route.meter
            if meter == "tokens" or (meter is None and self.tokens):
                return self._ticket(facts, entry)
            cost = self.cost if meter is None or route.cost is None else route.cost
            if meter == "off":
                cost = 0
            return self._request_units(facts, entry, cost)
        if self.tokens:
            return self._ticket(facts, entry)
        return self._request_units(facts, entry, self.cost)

    def _request_units(
        self, facts: RequestFacts, entry: CacheEntry, cost: int
    ) -> Decision | NeedsSpend:
        """Request metering: ``cost`` units per request, spent at Check."""
        record = entry.record
        if record.metered and (cost > 0 or record.rpm > 0):
            return NeedsSpend(facts, entry, cost=cost)
        if cost > 0:
            self.store.add_usage(record.key_hash, cost)
        return Decision(Reason.OK, record, Billing.UNLIMITED)

    def _ticket(self, facts: RequestFacts, entry: CacheEntry) -> Decision | NeedsSpend:
        """Token metering: price the request's model and size its hold.

        A request that cannot name a model (GET /v1/models) costs nothing upstream and
        gets no ticket; it still passes the rate limits.
        """
        record = entry.record
        model = facts.model()
        if model == ModelLookup.NOT_APPLICABLE:
            if record.rpm > 0 or record.tpm > 0:
                return NeedsSpend(facts, entry, None, cost=0)
            return Decision(Reason.OK, record, _billing(record))
        if model in (ModelLookup.NONE, ModelLookup.AMBIGUOUS):
            return Decision(Reason.MODEL_REQUIRED, record)
        matched = self.prices.table.match(model)
        if matched is None and not record.unlimited:
            # An unpriced model must never be free by accident.
            return Decision(Reason.MODEL_NOT_PRICED, record, model=model)
        if self.require_stream_usage and facts.streams_chat_without_usage:
            return Decision(Reason.STREAM_USAGE_REQUIRED, record)
        estimate = 0
        if matched is not None:
            estimate = hold_for(
                facts.body_size, facts.options(), matched[1], self.default_max_output
            )
        ticket = Ticket(
            hold_id=self.hold_ids.next(),
            key_hash=record.key_hash,
            held=0 if record.unlimited else estimate,
            estimate=estimate,
            model=model,
            anthropic=facts.anthropic,
        )
        if record.metered:
            return NeedsSpend(facts, entry, ticket)
        return Decision(Reason.OK, record, Billing.UNLIMITED, ticket=ticket)

    def _metered(
        self, record: KeyRecord, spend: SpendResult, ticket: Ticket | None = None
    ) -> Decision:
        reason = interpret_spend(spend)
        if spend.outcome in _STALE_OUTCOMES:
            self.identifier.forget(record.key_hash)
        if spend.holds_expired:
            self.metrics.holds_expired.inc(spend.holds_expired)
        if reason is not Reason.OK:
            return Decision(reason, record, spend=spend)
        billing = Billing.PAYG if spend.outcome == "payg" else _billing(record)
        if ticket is not None and ticket.held > 0:
            self.metrics.count(self.metrics.holds_open)
        return Decision(Reason.OK, record, billing, spend, ticket=ticket)

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
        # No hold was placed; a ticket holding nothing still lets the settlement charge
        # what the request used, once the store answers again.
        ticket = None if stage.ticket is None else stage.ticket._replace(held=0)
        return Decision(Reason.OK, entry.record, Billing.UNMETERED, degraded=True, ticket=ticket)
