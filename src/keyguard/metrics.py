"""Prometheus metrics, as an object bound to a registry so tests get a fresh one.

No label ever carries a key, a key hash or a key id: label values come only
from the fixed reason table and a fixed set of Redis operation names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from keyguard.reasons import OUTCOMES, Reason
from keyguard.startup import StartupError

# Fine buckets at the low end: a Check is expected to take well under 1 ms.
CHECK_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005,
    0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
REDIS_OPS = ("get_record", "spend", "add_usage", "ping")


def serve_metrics(host: str, port: int, registry: CollectorRegistry) -> None:
    """The /metrics endpoint; a port that cannot be had is a StartupError, not a traceback."""
    try:
        start_http_server(port, host, registry=registry)
    except OSError as exc:
        message = f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
        raise StartupError(message) from None


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
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
