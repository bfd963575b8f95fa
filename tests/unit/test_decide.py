"""The decision core and the servicer over the in-memory store: outage modes, single
flight, the invalidation race, and that no rule runs twice. No gRPC server, no Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any, TypeVar

import pytest
from prometheus_client import CollectorRegistry

from keyguard._proto.envoy.service.auth.v3.external_auth_pb2 import CheckResponse
from keyguard.authz import decide as decide_module
from keyguard.authz.cache import KeyCache
from keyguard.authz.decision import Billing, NeedsRecord, NeedsSpend
from keyguard.authz.request import extract
from keyguard.authz.service import AuthorizationService
from keyguard.keys import generate_key, generate_key_id, hash_key
from keyguard.reasons import Reason
from keyguard.record import TYPE_STANDARD, new_record_fields
from keyguard.runtime.metrics import Metrics
from keyguard.settings import Settings
from keyguard.store.memory import MemoryKeyStore, next_cycle_end
from tests.support.checks import check_request, http_status

T = TypeVar("T")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """One servicer over a MemoryKeyStore, with a cache on a clock the test moves."""

    def __init__(self, **overrides: Any) -> None:
        # Request units: these tests are about identify, judge and the outage fallback.
        self.settings = replace(Settings(), **{"metering": "request", **overrides})
        self.store = MemoryKeyStore()
        self.clock = Clock()
        s = self.settings
        self.cache = KeyCache(
            s.cache_size, s.cache_ttl, s.negative_cache_size, s.negative_cache_ttl, self.clock
        )
        self.metrics = Metrics(CollectorRegistry())
        self.service = AuthorizationService(s, self.store, self.cache, self.metrics)

    def key(self, **fields: str) -> str:
        key = generate_key(TYPE_STANDARD)
        record = new_record_fields(generate_key_id(), TYPE_STANDARD, int(time.time()))
        self.store.put(hash_key(key), {**record, **fields})
        return key


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(coro_fn())


async def decide(h: Harness, key: str) -> tuple[int, Reason, bool]:
    decision, wire = await h.service.answer(check_request({"authorization": f"Bearer {key}"}))
    return http_status(CheckResponse.FromString(wire)), decision.reason, decision.degraded


# ----- outage modes ---------------------------------------------------------------------------


def test_deny_mode_answers_503_for_an_uncached_key_while_the_store_fails() -> None:
    async def go() -> None:
        h = Harness(on_store_error="deny")
        key = h.key()
        h.store.failing = True
        assert await decide(h, key) == (503, Reason.STORE_UNAVAILABLE, False)

    run(go)


def test_deny_mode_answers_503_when_only_the_spend_fails() -> None:
    async def go() -> None:
        h = Harness(on_store_error="deny")
        key = h.key(unlimited="0", remaining="10")
        assert (await decide(h, key))[1] is Reason.OK  # cached now
        h.store.failing = True
        assert await decide(h, key) == (503, Reason.STORE_UNAVAILABLE, False)

    run(go)


def test_allow_mode_allows_an_unknown_key_degraded_without_a_record() -> None:
    async def go() -> None:
        h = Harness(on_store_error="allow")
        h.store.failing = True
        status, reason, degraded = await decide(h, generate_key(TYPE_STANDARD))
        assert (status, reason, degraded) == (200, Reason.OK, True)

    run(go)


def test_allow_mode_still_judges_a_stale_record() -> None:
    async def go() -> None:
        h = Harness(on_store_error="allow", cache_ttl=1.0)
        key = h.key(models="gpt-4o")
        # Cached, then stale, then the store fails: the stale record's rules still apply.
        assert (await decide(h, key))[1] is Reason.MODEL_REQUIRED
        h.clock.now += 5
        h.store.failing = True
        assert (await decide(h, key))[1] is Reason.MODEL_REQUIRED
        h.store.update(hash_key(key), models="")
        assert (await decide(h, key))[1] is Reason.MODEL_REQUIRED  # store unreadable

    run(go)


@pytest.mark.parametrize(("age", "expected"), [(10.0, 200), (400.0, 503)])
def test_cached_mode_serves_a_stale_record_only_within_stale_seconds(
    age: float, expected: int
) -> None:
    async def go() -> None:
        h = Harness(on_store_error="cached", cache_ttl=1.0, stale_seconds=300.0)
        key = h.key()
        assert (await decide(h, key))[0] == 200
        h.clock.now += age
        h.store.failing = True
        status, _reason, degraded = await decide(h, key)
        assert status == expected
        assert degraded is (expected == 200)

    run(go)


def test_cached_mode_allows_a_fresh_record_whose_spend_failed_as_unmetered() -> None:
    async def go() -> None:
        h = Harness(on_store_error="cached")
        key = h.key(unlimited="0", remaining="10")
        assert (await decide(h, key))[1] is Reason.OK
        h.store.failing = True
        decision, _ = await h.service.answer(check_request({"authorization": f"Bearer {key}"}))
        assert decision.reason is Reason.OK
        assert decision.billing is Billing.UNMETERED
        assert decision.degraded

    run(go)


def test_cached_mode_denies_an_unknown_key_while_the_store_fails() -> None:
    async def go() -> None:
        h = Harness(on_store_error="cached")
        h.store.failing = True
        assert (await decide(h, generate_key(TYPE_STANDARD)))[0] == 503

    run(go)


# ----- single flight and the invalidation race -------------------------------------------------


def test_concurrent_misses_for_one_key_share_one_lookup() -> None:
    async def go() -> None:
        h = Harness()
        key = h.key()
        h.store.gate = asyncio.Event()
        tasks = [asyncio.create_task(decide(h, key)) for _ in range(20)]
        await asyncio.sleep(0.01)
        assert h.store.lookups == 1
        h.store.gate.set()
        results = await asyncio.gather(*tasks)
        assert {r[1] for r in results} == {Reason.OK}
        assert h.store.lookups == 1

    run(go)


def test_a_failed_shared_lookup_fails_every_waiter_and_is_not_cached() -> None:
    async def go() -> None:
        h = Harness(on_store_error="deny")
        key = h.key()
        h.store.gate = asyncio.Event()
        h.store.failing = True
        tasks = [asyncio.create_task(decide(h, key)) for _ in range(5)]
        await asyncio.sleep(0.01)
        h.store.gate.set()
        assert {r[0] for r in await asyncio.gather(*tasks)} == {503}
        h.store.failing = False
        assert (await decide(h, key))[0] == 200
        assert h.store.lookups == 2

    run(go)


def test_a_lookup_that_raced_an_invalidation_is_used_once_but_not_cached() -> None:
    async def go() -> None:
        h = Harness()
        key = h.key()
        h.store.gate = asyncio.Event()
        task = asyncio.create_task(decide(h, key))
        await asyncio.sleep(0.01)
        # The key changes while its lookup is in flight: the answer may be stale.
        h.cache.invalidate(hash_key(key))
        h.store.gate.set()
        assert (await task)[1] is Reason.OK
        assert h.cache.get(hash_key(key)) is None
        assert (await decide(h, key))[1] is Reason.OK
        assert h.store.lookups == 2

    run(go)


def test_a_published_change_reaches_the_next_decision() -> None:
    async def go() -> None:
        h = Harness()
        key = h.key()
        assert (await decide(h, key))[0] == 200
        h.store.update(hash_key(key), status="disabled")
        # Still cached: the store is not asked again within the TTL ...
        assert (await decide(h, key))[0] == 200
        h.cache.invalidate(hash_key(key))  # ... until the listener drops the entry.
        assert (await decide(h, key))[1] is Reason.KEY_DISABLED

    run(go)


# ----- phases ---------------------------------------------------------------------------------


def test_each_rule_is_judged_once_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = decide_module.judge

    def counting(*args: Any) -> Reason | None:
        calls.append("judge")
        return real(*args)

    monkeypatch.setattr(decide_module, "judge", counting)

    async def go() -> None:
        h = Harness(on_store_error="cached")
        key = h.key(unlimited="0", remaining="10")
        for failing in (False, True):  # a lookup + spend, then a cached record whose spend fails
            h.store.failing = failing
            calls.clear()
            await decide(h, key)
            assert calls == ["judge"]

    run(go)


def test_decide_now_answers_without_io_or_names_what_it_needs() -> None:
    async def go() -> None:
        h = Harness()
        free, metered = h.key(), h.key(unlimited="0", remaining="3")
        decider = h.service.decider

        def stage(key: str) -> object:
            return decider.decide_now(extract(check_request({"x-api-key": key}), 0))

        assert type(stage(free)) is NeedsRecord
        await decide(h, free)
        assert stage(free).reason is Reason.OK  # type: ignore[attr-defined]
        await decide(h, metered)
        assert type(stage(metered)) is NeedsSpend
        assert stage("sk-short").reason is Reason.INVALID_API_KEY  # type: ignore[attr-defined]
        assert h.store.spends == 1

    run(go)


def test_a_metered_key_spends_until_its_quota_is_used_up() -> None:
    async def go() -> None:
        h = Harness(request_cost=2)
        key = h.key(unlimited="0", remaining="5")
        statuses = [(await decide(h, key))[0] for _ in range(4)]
        assert statuses == [200, 200, 402, 402]
        assert h.store.records[hash_key(key)]["remaining"] == "1"

    run(go)


@pytest.mark.parametrize("cached", [True, False], ids=["cached record", "record looked up"])
def test_nothing_is_spent_for_a_check_whose_deadline_has_passed(cached: bool) -> None:
    """Envoy has answered the client itself once its Check deadline passed: a spend then
    would be paid for a request that never reaches the upstream."""

    async def go() -> None:
        h = Harness()
        key = h.key(unlimited="0", remaining="5")
        request = check_request({"authorization": f"Bearer {key}"})
        if cached:
            await h.service.answer(request)  # the record is in the cache; spends 1
        spent = h.store.records[hash_key(key)]["remaining"]
        for left in (0.0, -0.3):
            decision, wire = await h.service.answer(request, lambda left=left: left)
            assert decision.reason is Reason.CHECK_TOO_LATE
            assert http_status(CheckResponse.FromString(wire)) == 503
            assert h.store.records[hash_key(key)]["remaining"] == spent
        # Time left, or no deadline at all: the spend is made.
        for left_or_none in (0.2, None):
            decision, _ = await h.service.answer(request, lambda v=left_or_none: v)
            assert decision.reason is Reason.OK
        assert int(h.store.records[hash_key(key)]["remaining"]) == int(spent) - 2

    run(go)


def test_a_free_key_is_allowed_after_its_deadline_as_nothing_is_spent() -> None:
    """Only a spend waits on the deadline: a free key's answer costs nothing."""

    async def go() -> None:
        h = Harness()
        key = h.key()
        request = check_request({"authorization": f"Bearer {key}"})
        await h.service.answer(request)
        decision, _ = await h.service.answer(request, lambda: 0.0)
        assert decision.reason is Reason.OK

    run(go)


# ----- next_cycle_end: the memory store's copy of the spend script's reset -----------------


@pytest.mark.parametrize(
    ("cycle_end", "seconds", "now", "expected"),
    [
        (1000.0, 100, 999.0, 1000.0),  # before the boundary: unchanged
        (1000.0, 100, 999.999, 1000.0),
        (1000.0, 100, 1000.0, 1100.0),  # at the boundary: the next cycle has begun
        (1000.0, 100, 1000.5, 1100.0),
        (1000.0, 100, 1099.999, 1100.0),
        (1000.0, 100, 1100.0, 1200.0),
        (1000.0, 100, 1250.0, 1300.0),  # two cycles skipped
        (1000.0, 100, 1000.0 + 100 * 57 + 3, 1000.0 + 100 * 58),
        (1000.0, 30 * 86400, 1000.0 + 30 * 86400 * 12, 1000.0 + 30 * 86400 * 13),
        (1000.0, 5, 1000.0 + 5 * 1_000_000, 1000.0 + 5 * 1_000_001),
        (1000.0, 0, 5000.0, 1000.0),  # no cycle length: nothing to step
        (1000.0, -5, 5000.0, 1000.0),
    ],
)
def test_next_cycle_end(cycle_end: float, seconds: int, now: float, expected: float) -> None:
    assert next_cycle_end(cycle_end, seconds, now) == expected


@pytest.mark.parametrize("now", [1000.0, 1001.0, 1234.5, 5000.0, 99_999.9])
def test_next_cycle_end_is_the_first_boundary_after_now(now: float) -> None:
    end = next_cycle_end(1000.0, 60, now)
    assert end > now
    assert end - 60 <= now
    assert (end - 1000.0) % 60 == 0
