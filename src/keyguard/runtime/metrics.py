"""Prometheus metrics, as an object bound to a registry so tests get a fresh one.

No label ever carries a key, a key hash or a key id: label values come only
from the fixed reason table and a fixed set of Redis operation names.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics_core import Metric

from keyguard.errors import StartupError
from keyguard.reasons import OUTCOMES, Reason

# Fine buckets at the low end: a Check is expected to take well under 1 ms.
CHECK_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005,
    0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
REDIS_OPS = ("get_record", "spend", "settle", "add_usage", "ping", "prices")
# Per-Check updates wait at most this long (or until a scrape) to be applied.
APPLY_DELAY = 0.05  # seconds
_T = TypeVar("_T")


def serve_metrics(host: str, port: int, registry: CollectorRegistry) -> None:
    """The /metrics endpoint; a port that cannot be had is a StartupError, not a traceback."""
    try:
        start_http_server(port, host, registry=registry)
    except OSError as exc:
        message = f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
        raise StartupError(message) from None


def _observe_many(histogram: Histogram, values: list[float]) -> None:
    """Histogram.observe for each value, with one update per bucket touched.

    Uses the histogram's bucket values directly (prometheus_client has no
    batch observe); tests/unit/test_metrics.py checks the exposition is the
    same as observing one by one.
    """
    bounds = histogram._upper_bounds
    per_bucket = [0] * len(bounds)
    for value in values:
        # observe() counts a value in the first bucket whose bound is >= it.
        per_bucket[bisect_left(bounds, value)] += 1
    histogram._sum.inc(sum(values))
    for bucket, count in zip(histogram._buckets, per_bucket, strict=True):
        if count:
            bucket.inc(count)


def _drain(queue: deque[_T]) -> list[_T]:
    """What the queue holds now, taken out; another thread may be draining it too."""
    taken: list[_T] = []
    for _ in range(len(queue)):
        try:
            taken.append(queue.popleft())
        except IndexError:  # the other thread took the rest
            break
    return taken


class _ApplyFirst:
    """Registered before every metric, so each collection sees what is queued."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        self._metrics.apply()
        return ()


class Metrics:
    """The metrics, with per-Check updates queued and applied in batches.

    A Check only appends to a deque (``count``, ``observe``). The queue is
    applied on the event loop at most APPLY_DELAY after its first entry, and
    before every collection (a scrape, or a test reading the registry), from
    whichever thread collects: deque appends and pops are thread-safe, and the
    prometheus values take their own locks.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._counts: deque[Counter | Gauge] = deque()
        self._observations: deque[tuple[Histogram, float]] = deque()
        self._armed = False
        registry.register(_ApplyFirst(self))
        self.decisions = Counter(
            "keyguard_decisions",
            "Check decisions by result and reason.",
            ["decision", "reason"],
            registry=registry,
        )
        self.check_duration = Histogram(
            "keyguard_check_duration_seconds",
            "Time to decide one Check, from request to response.",
            buckets=CHECK_BUCKETS,
            registry=registry,
        )
        self.redis_duration = Histogram(
            "keyguard_redis_duration_seconds",
            "Redis round-trip time by operation.",
            ["op"],
            buckets=CHECK_BUCKETS,
            registry=registry,
        )
        self.redis_errors = Counter(
            "keyguard_redis_errors",
            "Redis calls that failed, by operation.",
            ["op"],
            registry=registry,
        )
        self.cache_hits = Counter(
            "keyguard_cache_hits",
            "Key lookups answered from the local cache, by kind (positive|negative).",
            ["kind"],
            registry=registry,
        )
        self.cache_misses = Counter(
            "keyguard_cache_misses",
            "Key lookups that went to Redis.",
            ["kind"],
            registry=registry,
        )
        self.store_up = Gauge(
            "keyguard_store_up",
            "1 when the last Redis health probe succeeded, else 0.",
            registry=registry,
            multiprocess_mode="liveall",
        )
        # Token metering. The model label takes only patterns of the price table (the
        # one that priced the request), everything else is "other": never a key.
        self.tokens = Counter(
            "keyguard_tokens",
            "Tokens settled, by priced model and kind (input|cached_input|cache_write|output).",
            ["model", "kind"],
            registry=registry,
        )
        self.credits = Counter(
            "keyguard_credits_charged",
            "Credits charged at settlement, by priced model.",
            ["model"],
            registry=registry,
        )
        self.settlements = Counter(
            "keyguard_settlements",
            "Settled requests by outcome (usage|estimate|upstream_error|not_served|duplicate"
            "|unreadable).",
            ["outcome"],
            registry=registry,
        )
        self.holds_open = Gauge(
            "keyguard_holds_open",
            "Holds placed by this process and not yet settled (expired ones included"
            " until their settlement would have come).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.holds_expired = Counter(
            "keyguard_holds_expired",
            "Holds released unsettled after KEYGUARD_HOLD_TTL (charging nothing).",
            registry=registry,
        )
        self.alerts = Counter(
            "keyguard_low_balance_alerts",
            "Low-balance crossings found at settlement (one per crossing).",
            registry=registry,
        )
        self.keys_below_alert = Gauge(
            "keyguard_keys_below_alert",
            "Keys whose balance is below their alert threshold now (fleet-wide, from Redis).",
            registry=registry,
            multiprocess_mode="max",
        )
        self.alert_webhooks = Counter(
            "keyguard_alert_webhooks",
            "Low-balance webhook deliveries by result (delivered|failed|dropped).",
            ["result"],
            registry=registry,
        )
        # Resolve label children once: labels() is a dict lookup plus locking.
        allow = {r: self.decisions.labels("allow", r.value) for r in (Reason.OK,)}
        self.allow_ok = allow[Reason.OK]
        self.allow_degraded = self.decisions.labels("allow", "store_unavailable")
        self.deny_by_reason = {r: self.decisions.labels("deny", r.value) for r in OUTCOMES}
        self.redis_op_duration = {op: self.redis_duration.labels(op) for op in REDIS_OPS}
        self.redis_op_errors = {op: self.redis_errors.labels(op) for op in REDIS_OPS}
        self.cache_hit_positive = self.cache_hits.labels("positive")
        self.cache_hit_negative = self.cache_hits.labels("negative")
        self.cache_miss = self.cache_misses.labels("positive")

    def count(self, counter: Counter | Gauge) -> None:
        """counter.inc(), applied later."""
        self._counts.append(counter)
        if not self._armed:
            self._arm()

    def observe(self, histogram: Histogram, seconds: float) -> None:
        """histogram.observe(seconds), applied later."""
        self._observations.append((histogram, seconds))
        if not self._armed:
            self._arm()

    def _arm(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a CLI or a test): apply now
            self.apply()
            return
        self._armed = True
        loop.call_later(APPLY_DELAY, self._tick)

    def _tick(self) -> None:
        self._armed = False
        self.apply()

    def apply(self) -> None:
        """Apply what is queued now; safe from any thread, and concurrently."""
        counts: dict[Counter | Gauge, int] = {}
        for counter in _drain(self._counts):
            counts[counter] = counts.get(counter, 0) + 1
        observed: dict[Histogram, list[float]] = {}
        for histogram, value in _drain(self._observations):
            observed.setdefault(histogram, []).append(value)
        for counter, number in counts.items():
            counter.inc(number)
        for histogram, values in observed.items():
            _observe_many(histogram, values)
