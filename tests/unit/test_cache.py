"""keyguard.cache.KeyCache with a fake clock."""

from __future__ import annotations

import dataclasses

import pytest

from keyguard.authz.cache import KeyCache
from keyguard.record import KeyRecord
from tests.support.records import BASE


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def rec(key_hash: str, **changes: object) -> KeyRecord:
    return dataclasses.replace(BASE, key_hash=key_hash, id=f"kg_{key_hash}", **changes)  # type: ignore[arg-type]


def make_cache(
    clock: FakeClock,
    *,
    size: int = 3,
    ttl: float = 30.0,
    negative_size: int = 3,
    negative_ttl: float = 10.0,
) -> KeyCache:
    return KeyCache(size, ttl, negative_size, negative_ttl, clock=clock)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# ----- positive entries -----------------------------------------------------------------------


def test_get_missing_is_none(clock: FakeClock) -> None:
    assert make_cache(clock).get("nope") is None


def test_put_then_get(clock: FakeClock) -> None:
    cache = make_cache(clock)
    record = rec("a")
    entry = cache.put(record)
    assert entry.record is record
    assert entry.fetched_at == clock.now
    assert cache.get("a") is entry
    assert len(cache) == 1


def test_ttl_freshness(clock: FakeClock) -> None:
    cache = make_cache(clock, ttl=30.0)
    cache.put(rec("a"))
    entry = cache.get("a")
    assert entry is not None
    assert cache.is_fresh(entry)
    assert cache.age(entry) == 0
    clock.now = 1029.999
    assert cache.is_fresh(entry)
    clock.now = 1030.0  # exactly the TTL: stale
    assert not cache.is_fresh(entry)
    assert cache.age(entry) == pytest.approx(30.0)
    clock.advance(1000)
    assert not cache.is_fresh(entry)


def test_stale_entries_are_kept_for_outages(clock: FakeClock) -> None:
    cache = make_cache(clock, ttl=1.0)
    cache.put(rec("a"))
    clock.advance(3600)
    entry = cache.get("a")
    assert entry is not None
    assert not cache.is_fresh(entry)
    assert cache.age(entry) == pytest.approx(3600)


def test_put_refreshes_an_existing_entry(clock: FakeClock) -> None:
    cache = make_cache(clock, ttl=10.0)
    cache.put(rec("a", remaining=1))
    clock.advance(20)
    fresh = cache.put(rec("a", remaining=2))
    assert cache.get("a") is fresh
    assert cache.is_fresh(fresh)
    assert fresh.record.remaining == 2
    assert len(cache) == 1


def test_lru_bound_evicts_least_recently_put(clock: FakeClock) -> None:
    cache = make_cache(clock, size=3)
    for h in "abcd":
        cache.put(rec(h))
    assert len(cache) == 3
    assert cache.get("a") is None
    assert all(cache.get(h) is not None for h in "bcd")


def test_lru_get_protects_from_eviction(clock: FakeClock) -> None:
    cache = make_cache(clock, size=3)
    for h in "abc":
        cache.put(rec(h))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put(rec("d"))
    assert cache.get("b") is None
    assert cache.get("a") is not None
    cache.put(rec("e"))  # least recent first: c, d, a; c goes
    assert cache.get("c") is None
    assert {h for h in "ade" if cache.get(h) is not None} == set("ade")


def test_lru_re_put_protects_from_eviction(clock: FakeClock) -> None:
    cache = make_cache(clock, size=2)
    cache.put(rec("a"))
    cache.put(rec("b"))
    cache.put(rec("a"))
    cache.put(rec("c"))
    assert cache.get("b") is None
    assert cache.get("a") is not None
    assert cache.get("c") is not None


def test_lru_size_one(clock: FakeClock) -> None:
    cache = make_cache(clock, size=1)
    cache.put(rec("a"))
    cache.put(rec("b"))
    assert len(cache) == 1
    assert cache.get("a") is None
    assert cache.get("b") is not None


def test_eviction_order_with_many_entries(clock: FakeClock) -> None:
    cache = make_cache(clock, size=100)
    for i in range(250):
        cache.put(rec(f"k{i}"))
    assert len(cache) == 100
    assert cache.get("k149") is None
    assert all(cache.get(f"k{i}") is not None for i in range(150, 250))


@pytest.mark.parametrize("size", [0, -1])
def test_size_zero_disables_the_cache(clock: FakeClock, size: int) -> None:
    cache = make_cache(clock, size=size)
    entry = cache.put(rec("a"))
    assert entry.record.key_hash == "a"  # still usable by the caller
    assert cache.get("a") is None
    assert len(cache) == 0


# ----- negative cache -------------------------------------------------------------------------


def test_negative_cache_ttl(clock: FakeClock) -> None:
    cache = make_cache(clock, negative_ttl=10.0)
    assert not cache.is_known_unknown("x")
    cache.put_negative("x")
    assert cache.is_known_unknown("x")
    clock.now = 1009.999
    assert cache.is_known_unknown("x")
    clock.now = 1010.0  # exactly the TTL: forgotten
    assert not cache.is_known_unknown("x")
    assert cache.negative_len == 0


def test_negative_cache_bound(clock: FakeClock) -> None:
    cache = make_cache(clock, negative_size=3)
    for h in "abcd":
        cache.put_negative(h)
    assert cache.negative_len == 3
    assert not cache.is_known_unknown("a")
    assert all(cache.is_known_unknown(h) for h in "bcd")


def test_negative_re_put_extends_and_moves_to_end(clock: FakeClock) -> None:
    cache = make_cache(clock, negative_size=2, negative_ttl=10.0)
    cache.put_negative("a")
    cache.put_negative("b")
    clock.advance(5)
    cache.put_negative("a")  # a is renewed and newest
    cache.put_negative("c")  # b goes
    assert not cache.is_known_unknown("b")
    clock.advance(6)  # 11 s after the first put of a, 6 s after the renewal
    assert cache.is_known_unknown("a")
    assert cache.is_known_unknown("c")


@pytest.mark.parametrize("size", [0, -1])
def test_negative_size_zero_disables(clock: FakeClock, size: int) -> None:
    cache = make_cache(clock, negative_size=size)
    cache.put_negative("x")
    assert not cache.is_known_unknown("x")
    assert cache.negative_len == 0


def test_negative_and_positive_are_separate_bounds(clock: FakeClock) -> None:
    cache = make_cache(clock, size=1, negative_size=1)
    cache.put(rec("a"))
    cache.put_negative("b")
    assert len(cache) == 1
    assert cache.negative_len == 1


def test_put_clears_a_negative_entry(clock: FakeClock) -> None:
    cache = make_cache(clock)
    cache.put_negative("a")
    cache.put(rec("a"))
    assert not cache.is_known_unknown("a")
    assert cache.get("a") is not None


# ----- invalidation and the generation guard -------------------------------------------------


def test_invalidate(clock: FakeClock) -> None:
    cache = make_cache(clock)
    cache.put(rec("a"))
    cache.put(rec("b"))
    cache.put_negative("c")
    generation = cache.generation
    cache.invalidate("a")
    cache.invalidate("c")
    assert cache.generation == generation + 2
    assert cache.get("a") is None
    assert cache.get("b") is not None
    assert not cache.is_known_unknown("c")


def test_invalidate_unknown_hash_still_bumps_generation(clock: FakeClock) -> None:
    cache = make_cache(clock)
    generation = cache.generation
    cache.invalidate("never-seen")
    assert cache.generation == generation + 1


def test_clear(clock: FakeClock) -> None:
    cache = make_cache(clock)
    cache.put(rec("a"))
    cache.put_negative("b")
    generation = cache.generation
    cache.clear()
    assert cache.generation == generation + 1
    assert len(cache) == 0
    assert cache.negative_len == 0
    assert cache.get("a") is None
    assert not cache.is_known_unknown("b")


def test_put_with_current_generation_is_stored(clock: FakeClock) -> None:
    cache = make_cache(clock)
    generation = cache.generation
    cache.put(rec("a"), generation)
    assert cache.get("a") is not None


def test_put_with_stale_generation_is_not_stored(clock: FakeClock) -> None:
    cache = make_cache(clock)
    cache.put(rec("a", remaining=1))
    generation = cache.generation  # a lookup starts...
    cache.invalidate("a")  # ...the CLI changes the key meanwhile...
    entry = cache.put(rec("a", remaining=1), generation)  # ...and the old answer arrives
    assert entry.record.remaining == 1  # the caller may still use it for this request
    assert cache.get("a") is None


def test_put_with_stale_generation_after_clear(clock: FakeClock) -> None:
    cache = make_cache(clock)
    generation = cache.generation
    cache.clear()
    cache.put(rec("a"), generation)
    assert cache.get("a") is None


def test_stale_generation_guard_also_covers_unrelated_keys(clock: FakeClock) -> None:
    # The generation is global: any invalidation voids every lookup in flight.
    cache = make_cache(clock)
    generation = cache.generation
    cache.invalidate("other")
    cache.put(rec("a"), generation)
    assert cache.get("a") is None


def test_put_negative_with_stale_generation_is_not_stored(clock: FakeClock) -> None:
    cache = make_cache(clock)
    generation = cache.generation
    cache.invalidate("x")  # the key was just created
    cache.put_negative("x", generation)
    assert not cache.is_known_unknown("x")
    cache.put_negative("x", cache.generation)
    assert cache.is_known_unknown("x")


def test_default_clock_is_monotonic() -> None:
    cache = KeyCache(10, 30.0, 10, 10.0)
    entry = cache.put(rec("a"))
    assert cache.is_fresh(entry)
    assert 0 <= cache.age(entry) < 5
