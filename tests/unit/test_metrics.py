"""keyguard.metrics: per-Check updates are queued, then applied exactly once."""

from __future__ import annotations

import asyncio
import threading

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from keyguard.runtime.metrics import APPLY_DELAY, CHECK_BUCKETS, Metrics, _observe_many

# Values on, just under and just over every bound, plus zero and past the last one.
edges = [b * f for b in CHECK_BUCKETS for f in (1.0, 0.999999, 1.000001)]
seconds = st.one_of(st.sampled_from([0.0, 5.0, *edges]), st.floats(0, 3, allow_nan=False))


def histograms(labelled: bool) -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    histogram = Histogram(
        "h", "h", ["op"] if labelled else [], buckets=CHECK_BUCKETS, registry=registry
    )
    return registry, histogram.labels("x") if labelled else histogram


@settings(max_examples=200, deadline=None)
@given(values=st.lists(seconds, max_size=40), labelled=st.booleans())
def test_observe_many_exposes_what_observing_one_by_one_does(
    values: list[float], labelled: bool
) -> None:
    one_by_one, single = histograms(labelled)
    batched, batch = histograms(labelled)
    for value in values:
        single.observe(value)
    _observe_many(batch, values)
    assert exposition(batched) == exposition(one_by_one)


def exposition(registry: CollectorRegistry) -> list[str]:
    """The text exposition minus the creation timestamps, which differ."""
    lines = generate_latest(registry).decode().splitlines()
    return [line for line in lines if "_created" not in line]


def decisions(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value(
        "keyguard_decisions_total", {"decision": "allow", "reason": "ok"}
    )
    return value or 0.0


def checks(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("keyguard_check_duration_seconds_count") or 0.0


def test_without_an_event_loop_updates_apply_at_once() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.count(metrics.allow_ok)
    metrics.observe(metrics.check_duration, 0.0002)
    # Read the values directly: a collection would apply the queue itself.
    assert metrics.allow_ok._value.get() == 1
    assert metrics.check_duration._sum.get() == 0.0002


def test_on_a_loop_updates_wait_for_the_tick_or_a_collection() -> None:
    async def scenario() -> None:
        metrics = Metrics(CollectorRegistry())
        metrics.count(metrics.allow_ok)
        metrics.observe(metrics.check_duration, 0.0002)
        assert metrics.allow_ok._value.get() == 0  # queued
        # A collection applies the queue before reading it.
        assert (decisions(metrics), checks(metrics)) == (1, 1)
        metrics.count(metrics.allow_ok)
        await asyncio.sleep(APPLY_DELAY * 3)
        assert metrics.allow_ok._value.get() == 2  # applied by the tick, nothing read
        assert not metrics._counts and not metrics._observations

    asyncio.run(scenario())


def test_concurrent_collections_never_lose_or_double_an_update() -> None:
    metrics = Metrics(CollectorRegistry())
    total = 50_000
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            generate_latest(metrics.registry)

    async def scenario() -> None:
        for i in range(total):
            metrics.count(metrics.allow_ok)
            metrics.observe(metrics.check_duration, 0.0001)
            if i % 1000 == 0:
                await asyncio.sleep(0)

    scrapers = [threading.Thread(target=scrape) for _ in range(2)]
    for thread in scrapers:
        thread.start()
    try:
        asyncio.run(scenario())
    finally:
        done.set()
        for thread in scrapers:
            thread.join()
    assert (decisions(metrics), checks(metrics)) == (total, total)
