"""Holds and settlement in the store: spend.lua / settle.lua on a real redis-server, and
the in-memory store that mirrors them for unit tests, held to the same expectations."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import replace
from typing import Any, TypeVar

import pytest
import redis
from prometheus_client import CollectorRegistry

from keyguard.keys import generate_key, generate_key_id, hash_key
from keyguard.record import TYPE_STANDARD, new_record_fields, record_from_hash
from keyguard.runtime.metrics import Metrics
from keyguard.settings import Settings
from keyguard.store import (
    Hold,
    KeyStore,
    Settlement,
    expired_key,
    holds_key,
    record_key,
    settled_key,
    usage_key,
)
from keyguard.store.memory import MemoryKeyStore
from keyguard.store.redis import make_store

T = TypeVar("T")
BACKENDS = ("redis", "memory")


class Backend:
    """One store to test, and a way to write and read its raw record fields."""

    def __init__(self, store: KeyStore, put: Callable[[str, dict[str, str]], None],
                 get: Callable[[str], dict[str, str]], url: str = "") -> None:  # fmt: skip
        self.store = store
        self.put = put
        self.get = get
        self.url = url

    def key(self, **fields: str) -> str:
        key_hash = hash_key(generate_key(TYPE_STANDARD))
        base = new_record_fields(generate_key_id(), TYPE_STANDARD, int(time.time()))
        self.put(key_hash, {**base, "unlimited": "0", "remaining": "1000", **fields})
        return key_hash

    def field(self, key_hash: str, name: str) -> int:
        return int(self.get(key_hash).get(name) or 0)


@contextlib.asynccontextmanager
async def backend(kind: str, redis_url: str) -> AsyncIterator[Backend]:
    if kind == "memory":
        memory = MemoryKeyStore()
        yield Backend(memory, memory.put, lambda h: memory.records[h])
        return
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    # A generous timeout: these tests are about what the scripts do, and a busy machine
    # must not turn hundreds of concurrent calls into timeouts.
    settings = replace(Settings(), redis_url=redis_url, redis_timeout=5.0)
    store = make_store(settings, Metrics(CollectorRegistry()))
    try:
        yield Backend(
            store,
            lambda h, fields: client.hset(record_key(h), mapping=fields),  # type: ignore[arg-type]
            lambda h: client.hgetall(record_key(h)),  # type: ignore[return-value]
            redis_url,
        )
    finally:
        await store.close()
        client.close()


def run(kind: str, redis_url: str, body: Callable[[Backend], Coroutine[Any, Any, T]]) -> T:
    async def go() -> T:
        async with backend(kind, redis_url) as b:
            return await body(b)

    return asyncio.run(go())


def hold(hold_id: str, ttl_ms: int = 3_600_000, tpm: int = 0) -> Hold:
    return Hold(hold_id, ttl_ms, tpm)


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_hold_reduces_what_is_available_and_settling_charges_the_actual(
    kind: str, redis_url: str
) -> None:
    async def body(b: Backend) -> None:
        h = b.key(remaining="1000")
        first = await b.store.spend(h, 600, 0, hold("a"))
        assert (first.outcome, first.held, first.remaining) == ("ok", 600, 1000)
        # 1000 left, 600 held: a second hold of 600 does not fit.
        assert (await b.store.spend(h, 600, 0, hold("b"))).outcome == "insufficient"
        assert (await b.store.spend(h, 400, 0, hold("c"))).outcome == "ok"
        out = await b.store.settle(h, [Settlement("a", 600, 250, 100, 20, 30)])
        assert out == ["settled"]
        assert (b.field(h, "held"), b.field(h, "remaining"), b.field(h, "used")) == (400, 750, 250)
        assert (b.field(h, "tokens_in"), b.field(h, "cached_tokens"), b.field(h, "tokens_out")) == (
            100, 20, 30,
        )  # fmt: skip

    run(kind, redis_url, body)


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_settlement_delivered_twice_charges_once(kind: str, redis_url: str) -> None:
    async def body(b: Backend) -> None:
        h = b.key(remaining="1000")
        await b.store.spend(h, 100, 0, hold("a"))
        item = Settlement("a", 100, 70)
        assert await b.store.settle(h, [item, item]) == ["settled", "duplicate"]
        assert await b.store.settle(h, [item]) == ["duplicate"]
        assert (b.field(h, "remaining"), b.field(h, "used"), b.field(h, "held")) == (930, 70, 0)

    run(kind, redis_url, body)


@pytest.mark.parametrize("kind", BACKENDS)
def test_an_expired_hold_is_released_charging_nothing_and_a_late_settlement_still_charges(
    kind: str, redis_url: str
) -> None:
    async def body(b: Backend) -> None:
        h = b.key(remaining="1000")
        await b.store.spend(h, 900, 0, hold("a", ttl_ms=50))
        await asyncio.sleep(0.08)
        # The next spend finds the hold expired: released, nothing charged.
        result = await b.store.spend(h, 900, 0, hold("b"))
        assert (result.outcome, result.held, result.holds_expired) == ("ok", 900, 1)
        assert b.field(h, "used") == 0
        # The request behind the expired hold did finish after all: charged once.
        assert await b.store.settle(h, [Settlement("a", 900, 10)]) == ["unheld"]
        assert await b.store.settle(h, [Settlement("a", 900, 10)]) == ["duplicate"]
        assert (b.field(h, "remaining"), b.field(h, "held")) == (990, 900)

    run(kind, redis_url, body)


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_repeat_charges_nothing_however_late_it_comes(kind: str, redis_url: str) -> None:
    """A request that held credits is settled once with no memory of settled ids: its
    hold is gone once settled, also after the 5 minutes ids of unheld requests are kept."""

    async def body(b: Backend) -> None:
        h = b.key(remaining="1000")
        await b.store.spend(h, 100, 0, hold("a"))
        await b.store.spend(h, 100, 0, hold("b", ttl_ms=50))
        await asyncio.sleep(0.08)
        assert (await b.store.spend(h, 100, 0, hold("c"))).holds_expired == 1  # "b"
        first = [Settlement("a", 100, 70), Settlement("b", 100, 60), Settlement("u", 0, 5)]
        assert await b.store.settle(h, first) == ["settled", "unheld", "unheld"]
        forget_settled_ids(b, h)  # as if the 5 minutes had passed
        assert await b.store.settle(h, first[:2]) == ["duplicate", "duplicate"]
        assert (b.field(h, "remaining"), b.field(h, "used"), b.field(h, "held")) == (865, 135, 100)

    run(kind, redis_url, body)


def forget_settled_ids(b: Backend, key_hash: str) -> None:
    if isinstance(b.store, MemoryKeyStore):
        b.store.settled.pop(key_hash, None)
        return
    client = redis.Redis.from_url(b.url)
    try:
        client.delete(settled_key(key_hash))
    finally:
        client.close()


def test_a_settled_request_that_held_credits_leaves_no_id_behind(redis_url: str) -> None:
    async def body(b: Backend) -> None:
        h = b.key(remaining="1000")
        for i in range(50):
            await b.store.spend(h, 10, 0, hold(f"h{i}"))
        words = await b.store.settle(h, [Settlement(f"h{i}", 10, 9) for i in range(50)])
        assert words == ["settled"] * 50
        client = redis.Redis.from_url(redis_url)
        try:
            assert client.exists(settled_key(h), holds_key(h), expired_key(h)) == 0
        finally:
            client.close()

    run("redis", redis_url, body)


def test_thousands_of_holds_expiring_at_once_each_settle_once_later(redis_url: str) -> None:
    """A long outage of settlement expires many holds in one sweep (written in slices);
    each one that is settled late is charged once."""

    async def body(b: Backend) -> None:
        h = b.key(remaining="1000000")
        count = 5000  # 10,000 values: past what one unpack takes
        await asyncio.gather(
            *(b.store.spend(h, 2, 0, hold(f"x{i:x}", ttl_ms=300)) for i in range(count))
        )
        assert b.field(h, "held") == 2 * count
        await asyncio.sleep(0.35)
        result = await b.store.spend(h, 2, 0, hold("y"))
        assert (result.outcome, result.holds_expired, result.held) == ("ok", count, 2)
        late = [Settlement(f"x{i:x}", 2, 1) for i in range(count)]
        words = []
        for start in range(0, count, 1000):  # as the Settler sends them (MAX_PER_CALL)
            words += await b.store.settle(h, late[start : start + 1000])
        assert words == ["unheld"] * count
        assert await b.store.settle(h, late[:10]) == ["duplicate"] * 10
        assert (b.field(h, "used"), b.field(h, "remaining")) == (count, 1000000 - count)

    run("redis", redis_url, body)


def test_holds_lost_with_their_set_hold_nothing(redis_url: str) -> None:
    """The set of open holds is gone (Redis dropped it: evicted, or expired by an older
    version's TTL after a key sat unused past KEYGUARD_HOLD_TTL) while the record still
    counts what it held: nothing is open, so nothing may stay held. Before, the stale
    amount was held for good and the key was refused what its balance covers (402)."""

    async def body(b: Backend) -> None:
        h = b.key(remaining="1000")
        assert (await b.store.spend(h, 900, 0, hold("a", ttl_ms=50))).outcome == "ok"
        client = redis.Redis.from_url(redis_url)
        try:
            assert client.delete(holds_key(h)) == 1
        finally:
            client.close()
        result = await b.store.spend(h, 900, 0, hold("b"))
        assert (result.outcome, result.held) == ("ok", 900)
        assert b.field(h, "held") == 900
        # Nothing is left that says "a" was never settled: it is taken for a repeat and
        # charged nothing (README, Redis: never evict keyguard's keys).
        assert await b.store.settle(h, [Settlement("a", 900, 10)]) == ["duplicate"]
        assert (b.field(h, "remaining"), b.field(h, "held")) == (1000, 900)

    run("redis", redis_url, body)


@pytest.mark.parametrize("kind", BACKENDS)
def test_the_balance_goes_below_zero_only_by_what_exceeded_the_holds(
    kind: str, redis_url: str
) -> None:
    async def body(b: Backend) -> None:
        h = b.key(remaining="100")
        assert (await b.store.spend(h, 100, 0, hold("a"))).outcome == "ok"
        await b.store.settle(h, [Settlement("a", 100, 130)])  # cost 30 beyond its hold
        assert b.field(h, "remaining") == -30
        assert (await b.store.spend(h, 1, 0, hold("b"))).outcome == "insufficient"

    run(kind, redis_url, body)


@pytest.mark.parametrize("kind", BACKENDS)
def test_payg_admits_beyond_the_balance_and_bills_the_excess_as_payg(
    kind: str, redis_url: str
) -> None:
    async def body(b: Backend) -> None:
        h = b.key(remaining="50", payg="1")
        assert (await b.store.spend(h, 80, 0, hold("a"))).outcome == "payg"
        await b.store.settle(h, [Settlement("a", 80, 75)])
        assert (b.field(h, "remaining"), b.field(h, "payg_used"), b.field(h, "used")) == (0, 25, 75)

    run(kind, redis_url, body)


@pytest.mark.parametrize("kind", BACKENDS)
def test_unlimited_keys_place_no_hold_but_settlement_counts_usage(
    kind: str, redis_url: str
) -> None:
    async def body(b: Backend) -> None:
        h = b.key(unlimited="1", remaining="0")
        assert (await b.store.spend(h, 0, 0, hold("a"))).outcome == "ok"
        assert await b.store.settle(h, [Settlement("a", 0, 42, 5, 0, 6)]) == ["unheld"]
        assert (b.field(h, "used"), b.field(h, "remaining"), b.field(h, "tokens_out")) == (42, 0, 6)

    run(kind, redis_url, body)


@pytest.mark.parametrize("kind", BACKENDS)
def test_tokens_per_minute_are_charged_at_settlement(kind: str, redis_url: str) -> None:
    async def body(b: Backend) -> None:
        h = b.key(unlimited="1", tpm="1000")
        first = await b.store.spend(h, 0, 0, hold("a", tpm=1000))
        assert (first.outcome, first.tl_limit, first.tl_remaining) == ("ok", 1000, 1000)
        await b.store.settle(h, [Settlement("a", 0, 0, 600, 100, 300)])  # 1000 tokens
        limited = await b.store.spend(h, 0, 0, hold("b", tpm=1000))
        assert limited.outcome == "tokens_limited"
        assert 0 < limited.retry_after_ms <= 1000
        assert 59_000 <= limited.tl_reset_ms <= 60_000

    run(kind, redis_url, body)


def test_holds_live_beside_the_record_in_one_slot(redis_url: str) -> None:
    async def body(b: Backend) -> None:
        h = b.key()
        await b.store.spend(h, 5, 0, hold("a"))
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            assert client.zrange(holds_key(h), 0, -1) == ["a:5"]
            # No lifetime of its own: a TTL would drop holds the record still counts.
            # Each hold expires by its score, released by the key's next request.
            assert client.pttl(holds_key(h)) == -1
        finally:
            client.close()
        assert record_from_hash(h, b.get(h)).held == 5

    run("redis", redis_url, body)


@pytest.mark.parametrize("kind", BACKENDS)
def test_racing_holds_never_overspend(kind: str, redis_url: str) -> None:
    async def body(b: Backend) -> None:
        h = b.key(remaining="1000")
        results = await asyncio.gather(
            *(b.store.spend(h, 30, 0, hold(f"h{i}")) for i in range(100))
        )
        admitted = [f"h{i}" for i, r in enumerate(results) if r.outcome == "ok"]
        assert len(admitted) == 33  # 33 * 30 = 990 <= 1000 < 34 * 30
        # Every admitted request used exactly what it held or less: never below zero.
        await b.store.settle(h, [Settlement(i, 30, 29) for i in admitted])
        assert b.field(h, "remaining") == 1000 - 33 * 29
        assert b.field(h, "held") == 0

    run(kind, redis_url, body)


def test_keys_show_counts_only_live_holds(redis_url: str) -> None:
    from keyguard.keyring import Keyring
    from keyguard.store import id_key

    async def body(b: Backend) -> None:
        h = b.key(remaining="1000")
        key_id = b.get(h)["id"]
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            client.set(id_key(key_id), h)
            keyring = Keyring(client)
            await b.store.spend(h, 300, 0, hold("long"))
            await b.store.spend(h, 200, 0, hold("short", ttl_ms=50))
            assert keyring.show(key_id)["held"] == 500
            await asyncio.sleep(0.08)
            # The record still says 500 until the key's next request; show says what is live.
            assert b.field(h, "held") == 500
            assert keyring.show(key_id)["held"] == 300
        finally:
            client.close()

    run("redis", redis_url, body)


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.parametrize("rpm", [7000, 90_000])
def test_a_burst_admits_the_whole_rpm(kind: str, redis_url: str, rpm: int) -> None:
    # The GCRA state was rounded up to whole milliseconds on every allow, so each
    # request used at least 1 ms of the minute: rpm 7000 admitted about 6,667 at once
    # and any rpm above 60,000 was capped at 60,000.
    async def body(b: Backend) -> None:
        h = b.key(unlimited="1")
        allowed = 0
        began = time.monotonic()
        for start in range(0, rpm + 50, 500):
            batch = await asyncio.gather(
                *(b.store.spend(h, 0, rpm) for _ in range(min(500, rpm + 50 - start)))
            )
            allowed += sum(r.outcome == "ok" for r in batch)
        # The burst is rpm; the time the loop takes refills a few more.
        refill = (time.monotonic() - began) * rpm / 60
        assert rpm <= allowed <= rpm + refill + 1

    run(kind, redis_url, body)


def test_settlement_writes_the_usage_history_by_day_and_model(redis_url: str) -> None:
    from keyguard.keyring import Keyring
    from keyguard.store import id_key

    async def body(b: Backend) -> None:
        h = b.key(remaining="100000")
        key_id = b.get(h)["id"]
        items = [
            Settlement("a", 0, 30, 100, 20, 10, "gpt-4o*"),
            Settlement("b", 0, 12, 40, 0, 5, "gpt-4o*"),
            Settlement("c", 0, 7, 3, 0, 2, "claude*"),
            Settlement("d", 0, 0, 0, 0, 0, "gpt-4o*"),  # an upstream error: a request, free
        ]
        await b.store.settle(h, items, history_days=90)
        await b.store.settle(h, items[:1], history_days=90)  # a duplicate: not counted again
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            client.set(id_key(key_id), h)
            days = Keyring(client).usage(key_id, days=7)["days"]
            ttl = client.pttl(usage_key(h, days[0]["date"]))
        finally:
            client.close()
        assert [(d["model"], d["requests"], d["credits"]) for d in days] == [
            ("claude*", 1, 7),
            ("gpt-4o*", 3, 42),
        ]
        gpt = days[1]
        assert (gpt["input_tokens"], gpt["cached_tokens"], gpt["output_tokens"]) == (140, 20, 15)
        assert 89 * 86_400_000 < ttl <= 90 * 86_400_000

    run("redis", redis_url, body)


def test_no_history_is_written_when_retention_is_zero(redis_url: str) -> None:
    async def body(b: Backend) -> None:
        h = b.key()
        await b.store.settle(h, [Settlement("a", 0, 5, 1, 0, 1, "gpt-4o*")], history_days=0)
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            assert not list(client.scan_iter(match=f"kg:{{{h}}}:use:*"))
        finally:
            client.close()

    run("redis", redis_url, body)


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_low_balance_crossing_is_reported_once(kind: str, redis_url: str) -> None:
    async def body(b: Backend) -> None:
        h = b.key(remaining="1000", alert_below="30%")
        key_id = b.get(h)["id"]
        assert await b.store.settle(h, [Settlement("a", 0, 600)]) == ["unheld"]
        crossed = await b.store.settle(h, [Settlement("b", 0, 150)])
        assert crossed == ["unheld", f"alert|{key_id}|250|300"]
        assert await b.store.settle(h, [Settlement("c", 0, 10)]) == ["unheld"]
        assert await b.store.note_alert("alert", key_id, 250, 300) == 1
        assert await b.store.note_alert("rearm", key_id, 0, 0) == 0

    run(kind, redis_url, body)


def test_batched_settlement_matches_one_by_one_settlement_on_both_stores(
    redis_url: str,
) -> None:
    """settle.lua sums a batch before it writes; the in-memory store applies each hold in
    turn. Random batches (duplicates inside and across batches, expired or never placed
    holds, charges beyond the balance, pay-as-you-go, subscriptions) must leave both
    with the same record and the same answers."""
    fields = ("held", "remaining", "used", "payg_used", "cycle_used", "tokens_in",
              "cached_tokens", "tokens_out")  # fmt: skip

    async def go() -> None:
        rng = random.Random(20261205)
        async with backend("redis", redis_url) as r, backend("memory", redis_url) as m:
            for case in range(25):
                extra = {"remaining": str(rng.randint(0, 3000)), "payg": rng.choice("01")}
                if case % 3 == 0:
                    extra.update(type="subscription", cycle_quota="3000", cycle_seconds="86400",
                                 cycle_end=str(int(time.time()) + 86_400))  # fmt: skip
                hashes = {b: b.key(**extra) for b in (r, m)}
                ids = [f"c{case}h{n}" for n in range(rng.randint(1, 40))]
                amounts = {i: rng.randint(1, 200) for i in ids}
                for hold_id in ids:
                    if rng.random() < 0.8:  # the rest were never placed (or expired)
                        for b, h in hashes.items():
                            await b.store.spend(h, amounts[hold_id], 0, hold(hold_id))
                settled: list[Settlement] = []
                for _batch in range(rng.randint(1, 4)):
                    batch = []
                    for _ in range(rng.randint(1, 30)):
                        if settled and rng.random() < 0.15:
                            batch.append(rng.choice(settled))  # delivered again
                            continue
                        hold_id = rng.choice(ids)
                        charge = rng.choice([0, rng.randint(1, 300)])
                        tokens = [rng.randint(0, 500) for _ in range(3)]
                        model = rng.choice(["gpt-4o*", "claude*"])
                        batch.append(Settlement(hold_id, amounts[hold_id], charge, *tokens, model))
                    settled += batch
                    words = {b: await b.store.settle(h, batch, 30) for b, h in hashes.items()}
                    assert words[r] == words[m], case
                    state = {b: [b.field(h, f) for f in fields] for b, h in hashes.items()}
                    assert state[r] == state[m], (case, dict(zip(fields, state[r], strict=True)))

    asyncio.run(go())


def test_a_backlog_is_settled_in_calls_of_at_most_max_per_call(redis_url: str) -> None:
    from keyguard.meter.service import MAX_PER_CALL, Settler
    from keyguard.meter.settle import Assessed, Outcome

    calls: list[int] = []

    async def body(b: Backend) -> None:
        h = b.key(remaining="1000000")
        count = 2 * MAX_PER_CALL + 500
        for n in range(count):
            await b.store.spend(h, 3, 0, hold(f"h{n}"))
        assert b.field(h, "held") == 3 * count
        real_settle = b.store.settle

        async def counted(key_hash: str, items: Any, history_days: int = 0) -> list[str]:
            calls.append(len(items))
            return await real_settle(key_hash, items, history_days)

        b.store.settle = counted  # type: ignore[method-assign]
        settler = Settler(b.store, Metrics(CollectorRegistry()))
        for n in range(count):
            item = Settlement(f"h{n}", 3, 2, 1, 0, 1)
            settler.add(Assessed(h, item, Outcome.USAGE, None, "other"))
        await settler.flush()
        assert sorted(calls) == [500, MAX_PER_CALL, MAX_PER_CALL]
        assert (b.field(h, "held"), b.field(h, "used")) == (0, 2 * count)
        assert b.field(h, "remaining") == 1_000_000 - 2 * count

    run("redis", redis_url, body)


@pytest.mark.parametrize("kind", BACKENDS)
def test_amounts_of_10_to_the_15_are_held_and_charged_exactly(kind: str, redis_url: str) -> None:
    """Amounts at the price table's limit (10^15) stay exact through the hold, the
    batched settlement sums and request units (Lua's numbers are doubles)."""
    big = 10**15 + 7

    async def body(b: Backend) -> None:
        h = b.key(remaining=str(10**17))
        result = await b.store.spend(h, big, 0, hold("big"))
        assert (result.outcome, result.held) == ("ok", big)
        assert await b.store.settle(h, [Settlement("big", big, big - 3, 0, 0, 0)]) == ["settled"]
        assert (b.field(h, "held"), b.field(h, "used")) == (0, big - 3)
        assert b.field(h, "remaining") == 10**17 - big + 3
        request = await b.store.spend(h, big, 0)  # request units: spent at once
        assert request.outcome == "ok"
        assert b.field(h, "remaining") == 10**17 - 2 * big + 3

    run(kind, redis_url, body)
