"""(e) Unknown-key flood: a stream of distinct well-formed keys no store holds.

Redis lookups per key (the negative cache must absorb repeats), CPU per Check, and
keyguard's RSS as the negative cache fills up to its cap (projected to 1M keys when the
time budget does not allow sending them all).
"""

from __future__ import annotations

import sys
import tracemalloc
from typing import Any

from bench.flood import flood
from bench.probes import deny_reason, metric_value, redis_command_calls
from bench.rig import Rig
from bench.system import CpuMeter, rss_bytes
from keyguard._proto.envoy.service.auth.v3.external_auth_pb2 import CheckResponse
from keyguard.authz.cache import KeyCache
from keyguard.keys import hash_key
from keyguard.settings import DEFAULTS

MB = 2**20


def run(rig: Rig) -> dict[str, Any]:
    plan = rig.plan
    server = rig.kg_flood
    rig.say(
        f"(e) unknown-key flood: up to {plan.flood_max_keys:,} distinct keys for "
        f"{plan.flood_seconds:.0f}s, 1 block in 4 sent twice (Python grpc.aio driver)"
    )
    template = rig.payloads["small"]
    calls_before = redis_command_calls(rig.redis)
    metrics_before = server.metrics_text()
    meter = CpuMeter([server.pid])
    meter.start()
    result = flood(
        server.target,
        template,
        max_keys=plan.flood_max_keys,
        seconds=plan.flood_seconds,
        sample_rss=lambda: rss_bytes(server.pid),
        progress=rig.say,
    )
    cpu = meter.stop()
    calls_after = redis_command_calls(rig.redis)
    metrics_after = server.metrics_text()
    # Every answer must be the invalid_api_key denial.
    for reply, count in result.responses.items():
        resp = CheckResponse.FromString(reply)
        if deny_reason(resp) != "invalid_api_key" or resp.denied_response.status.code != 401:
            raise RuntimeError(f"flood: {count} answers were not invalid_api_key: {resp}")
    lookups = calls_after.get("hgetall", 0) - calls_before.get("hgetall", 0)
    negative_hits = metric_value(
        metrics_after, "keyguard_cache_hits_total", kind="negative"
    ) - metric_value(metrics_before, "keyguard_cache_hits_total", kind="negative")
    samples = result.rss_samples
    distinct = result.distinct_keys
    rss_start, rss_end = samples[0][2], samples[-1][2]
    rss_max = max(rss for _, _, rss in samples)
    neg_size = DEFAULTS.negative_cache_size
    entry_bytes = negative_entry_bytes()
    target_keys = 1_000_000
    projected = distinct < target_keys
    growth = max(0.0, (rss_end - rss_start) / distinct)
    if distinct > neg_size:
        # Past the cap the LRU evicts one entry per new key: growth there must be ~0.
        at_cap = next(rss for _, keys, rss in samples if keys >= neg_size)
        after_cap = max(0.0, (rss_end - at_cap) / (distinct - neg_size))
        rss_1m = rss_end + (target_keys - distinct) * after_cap
        past = distinct - neg_size
        how = (
            f"past the negative cache's cap of {neg_size:,} entries RSS grew "
            f"{after_cap:,.0f} B per key over {past:,} keys ({at_cap / MB:.1f} → "
            f"{rss_end / MB:.1f} MB); 1M = measured RSS + the remaining keys at that rate"
            + (" (a short window past the cap: a noisy rate)" if past < 20_000 else "")
        )
    else:
        per_entry = max(entry_bytes, growth)
        more = max(0, min(target_keys, neg_size) - distinct)
        rss_1m = rss_end + more * per_entry
        how = (
            f"1M = measured RSS + {more:,} more negative-cache entries x {per_entry:,.0f} B"
            f" (the larger of the measured RSS growth per key and the entry size measured "
            f"with tracemalloc); the negative cache is an LRU capped at {neg_size:,} "
            f"entries, so RSS stops growing there"
        )
    note = (
        f"sent {distinct:,} distinct unknown keys ({result.repeated_keys:,} of them twice; "
        f"{result.checks:,} Checks) in {result.seconds:.0f}s at "
        f"{distinct / result.seconds:,.0f} new keys/s"
        + (
            f"; 1,000,000 keys do not fit the time budget at that rate (they would take "
            f"{target_keys / (distinct / result.seconds) / 60:.0f} min), so the RSS at 1M "
            f"is extrapolated: {how}"
            if projected
            else "; all 1,000,000 keys were sent"
        )
    )
    out = {
        "driver": "Python grpc.aio (pre-serialized bytes), the one Python-driven load",
        "distinct_keys": distinct,
        "repeated_keys": result.repeated_keys,
        "checks": result.checks,
        "seconds": round(result.seconds, 2),
        "new_keys_per_second": round(distinct / result.seconds, 1),
        "checks_per_second": round(result.checks / result.seconds, 1),
        "cpu_us_per_check": round(cpu / result.checks * 1e6, 1),
        "cpu_us_per_distinct_key": round(cpu / distinct * 1e6, 1),
        "redis_lookups": lookups,
        "redis_lookups_per_distinct_key": round(lookups / distinct, 4),
        "negative_cache_hits": int(negative_hits),
        "negative_cache_ttl_s": DEFAULTS.negative_cache_ttl,
        "negative_cache_size": neg_size,
        "rss_start_mb": round(rss_start / MB, 1),
        "rss_max_mb": round(rss_max / MB, 1),
        "rss_end_mb": round(rss_end / MB, 1),
        "rss_growth_bytes_per_key": round(growth, 1),
        "negative_entry_bytes": round(entry_bytes, 1),
        "rss_projected_1m_mb": round(rss_1m / MB, 1),
        "projected": projected,
        "rss_by_keys": [[keys, round(rss / MB, 2)] for _, keys, rss in samples],
        "note": note,
    }
    rig.say(
        f"  {distinct:,} keys, {out['cpu_us_per_check']} µs CPU/Check, "
        f"{out['redis_lookups_per_distinct_key']} Redis lookups/key, RSS "
        f"{out['rss_start_mb']}→{out['rss_end_mb']} MB (1M: {out['rss_projected_1m_mb']} MB"
        f"{', extrapolated' if projected else ''})"
    )
    return out


def negative_entry_bytes(entries: int = 20_000) -> float:
    """Bytes one negative-cache entry (key hash → expiry) costs, measured with tracemalloc."""
    cache = KeyCache(10, 30.0, entries * 2, 10.0)
    hashes = [hash_key(f"sk-{i:048d}") for i in range(entries)]
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for h in hashes:
        cache.put_negative(h)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    # The hash strings themselves are allocated by keyguard per request, so count them too.
    return used / entries + sum(sys.getsizeof(h) for h in hashes) / entries
