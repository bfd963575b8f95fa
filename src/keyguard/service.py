"""The Authorization servicer: extract, look up, decide, answer; record once.

``Check`` never raises: any unexpected failure becomes a 500-class denial, so
that Envoy can never turn a gRPC error into an allow via failure_mode_allow.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc
import structlog

from keyguard import logs, responses
from keyguard._proto.envoy.service.auth.v3 import external_auth_pb2_grpc
from keyguard._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from keyguard.cache import CacheEntry, KeyCache
from keyguard.keys import hash_key, key_type_of
from keyguard.metrics import Metrics
from keyguard.policy import SpendResult, decide_static, interpret_spend
from keyguard.reasons import Reason
from keyguard.record import KeyRecord
from keyguard.request import Credential, RequestFacts, extract
from keyguard.settings import Settings
from keyguard.store import KeyStore, StoreError

log = structlog.get_logger("keyguard.decision")


@dataclass(slots=True)
class Verdict:
    wire: bytes  # the serialized CheckResponse: most are prebuilt, none re-encoded
    reason: Reason
    key_id: str = ""
    degraded: bool = False

    @property
    def response(self) -> CheckResponse:
        return CheckResponse.FromString(self.wire)


@dataclass(slots=True)
class _Pending:
    """A decision waiting for Redis: a record lookup (``lookup``) or a spend."""

    facts: RequestFacts
    key_hash: str
    entry: CacheEntry | None  # the cached entry, if any (stale when lookup is True)
    lookup: bool


def _client_ip(record: KeyRecord, facts: RequestFacts) -> str | None:
    """The client address, read from the request only for a key with an IP list."""
    return facts.client_ip if record.allowed_ips is not None else None


class AuthorizationService(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(
        self, settings: Settings, store: KeyStore, cache: KeyCache, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.store = store
        self.cache = cache
        self.metrics = metrics
        self.cost = settings.request_cost
        self.strip = settings.strip_credentials
        self.hops = settings.xff_trusted_hops
        self.log_allows = settings.log_allows
        self._inflight: dict[str, asyncio.Future[CacheEntry | None]] = {}

    async def Check(
        self, request: CheckRequest, context: grpc.aio.ServicerContext[CheckRequest, CheckResponse]
    ) -> bytes:
        """The gRPC method: answers serialized bytes (see server.py's passthrough)."""
        return (await self.decide(request)).wire

    async def check(self, request: CheckRequest) -> CheckResponse:
        """The answer as a message, for callers in the same process (tests, tools)."""
        return (await self.decide(request)).response

    async def decide(self, request: CheckRequest) -> Verdict:
        start = time.perf_counter()
        request_id = ""
        try:
            facts = extract(request, self.hops)
            request_id = facts.request_id
            outcome = self._decide_local(facts)
            # Only a cache miss or a metered key needs Redis (and a suspension).
            verdict = (
                outcome if isinstance(outcome, Verdict) else await self._decide_remote(outcome)
            )
        except Exception:
            log.exception("check_failed", request_id=request_id)
            verdict = Verdict(
                responses.denial_wire(Reason.INTERNAL_ERROR, False), Reason.INTERNAL_ERROR
            )
        elapsed = time.perf_counter() - start
        self._record(verdict, request_id, elapsed)
        return verdict

    def _record(self, verdict: Verdict, request_id: str, elapsed: float) -> None:
        m = self.metrics
        m.observe(m.check_duration, elapsed)
        reason = verdict.reason
        if reason is Reason.OK:
            m.count(m.allow_degraded if verdict.degraded else m.allow_ok)
            if not self.log_allows:
                return
            decision = "allow"
        else:
            m.count(m.deny_by_reason[reason])
            decision = "deny"
        logs.decision(
            request_id,
            decision,
            reason.value,
            round(elapsed * 1000, 3),
            verdict.key_id,
            verdict.degraded,
        )

    def _deny(self, reason: Reason, facts: RequestFacts, key_id: str = "") -> Verdict:
        return Verdict(responses.denial_wire(reason, facts.anthropic), reason, key_id)

    def _decide_local(self, facts: RequestFacts) -> Verdict | _Pending:
        """Everything decided without I/O: format, cache, static checks, free keys."""
        credential = facts.credential
        if credential is Credential.MISSING:
            return self._deny(Reason.MISSING_API_KEY, facts)
        if credential is Credential.MALFORMED or not credential.isascii():
            return self._deny(Reason.INVALID_API_KEY, facts)
        key_hash = hash_key(credential)
        cache = self.cache
        entry = cache.get(key_hash)
        # Only a well-formed key is ever looked up, so only such keys are cached:
        # a fresh entry needs no second format check.
        if entry is None or not cache.is_fresh(entry):
            if key_type_of(credential) is None:
                return self._deny(Reason.INVALID_API_KEY, facts)
            if cache.is_known_unknown(key_hash):
                self.metrics.count(self.metrics.cache_hit_negative)
                return self._deny(Reason.INVALID_API_KEY, facts)
            return _Pending(facts, key_hash, entry, lookup=True)
        self.metrics.count(self.metrics.cache_hit_positive)
        return self._judge(facts, key_hash, entry)

    def _judge(self, facts: RequestFacts, key_hash: str, entry: CacheEntry) -> Verdict | _Pending:
        """The decision for a known record: static checks, then free or metered."""
        record = entry.record
        reason = decide_static(record, time.time(), _client_ip(record, facts), facts.model)
        if reason is not None:
            return self._deny(reason, facts, record.id)
        if record.metered and (self.cost > 0 or record.rpm > 0):
            return _Pending(facts, key_hash, entry, lookup=False)
        if self.cost > 0:
            self.store.add_usage(key_hash, self.cost)
        return Verdict(self._allow(entry, "unlimited"), Reason.OK, record.id)

    async def _decide_remote(self, pending: _Pending) -> Verdict:
        """The rest of a decision that needs Redis: a record lookup, then maybe a spend."""
        facts, key_hash, entry = pending.facts, pending.key_hash, pending.entry
        if pending.lookup:
            self.metrics.count(self.metrics.cache_miss)
            try:
                looked_up = await self._lookup(key_hash)
            except StoreError:
                return self._store_failed(facts, entry)
            if looked_up is None:
                return self._deny(Reason.INVALID_API_KEY, facts)
            judged = self._judge(facts, key_hash, looked_up)
            if isinstance(judged, Verdict):
                return judged
            entry = looked_up
        assert entry is not None
        try:
            spend = await self.store.spend(key_hash, self.cost, entry.record.rpm)
        except StoreError:
            return self._store_failed(facts, entry, fresh_record=True)
        return self._after_spend(facts, entry, spend)

    async def _lookup(self, key_hash: str) -> CacheEntry | None:
        """Fetch a record from Redis, with one fetch in flight per key.

        Concurrent misses for the same key (a cold cache under load) share
        one round trip instead of stampeding Redis.
        """
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
                entry = self.cache.put(record, generation)
            future.set_result(entry)
            return entry
        except BaseException as exc:
            future.set_exception(exc)
            # Mark the exception retrieved when nobody else was waiting.
            future.exception()
            raise
        finally:
            del self._inflight[key_hash]

    def _allow(self, entry: CacheEntry, billing: str) -> bytes:
        wire = entry.responses.get(billing)
        if wire is None:
            message = responses.allow(entry.record, billing=billing, strip_credentials=self.strip)
            wire = entry.responses[billing] = message.SerializeToString()
        return wire

    def _after_spend(self, facts: RequestFacts, entry: CacheEntry, spend: SpendResult) -> Verdict:
        record = entry.record
        reason = interpret_spend(spend)
        if spend.outcome in ("gone", "disabled"):
            self.cache.invalidate(record.key_hash)
        if reason is Reason.RATE_LIMIT_EXCEEDED:
            wire = responses.rate_limited(spend, facts.anthropic).SerializeToString()
            return Verdict(wire, reason, record.id)
        if reason is not Reason.OK:
            return self._deny(reason, facts, record.id)
        billing = (
            "payg" if spend.outcome == "payg" else "unlimited" if record.unlimited else "quota"
        )
        wire = self._allow(entry, billing)
        if spend.rl_limit:
            wire += responses.rate_limit_suffix(spend)
        return Verdict(wire, Reason.OK, record.id)

    def _store_failed(
        self, facts: RequestFacts, entry: CacheEntry | None, fresh_record: bool = False
    ) -> Verdict:
        """Redis did not answer: apply KEYGUARD_ON_STORE_ERROR."""
        mode = self.settings.on_store_error
        usable = entry is not None and (
            fresh_record or mode == "allow" or self.cache.age(entry) <= self.settings.stale_seconds
        )
        if mode == "deny" or (mode == "cached" and not usable):
            return self._deny(Reason.STORE_UNAVAILABLE, facts)
        if entry is None:  # mode == "allow", key never seen
            return Verdict(
                responses.allow_unknown_degraded(self.strip).SerializeToString(),
                Reason.OK,
                degraded=True,
            )
        record = entry.record
        reason = decide_static(record, time.time(), _client_ip(record, facts), facts.model)
        if reason is not None:
            return self._deny(reason, facts, record.id)
        response = responses.allow(
            record, billing="unmetered", strip_credentials=self.strip, degraded=True
        )
        return Verdict(response.SerializeToString(), Reason.OK, record.id, degraded=True)
