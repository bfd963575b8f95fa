"""(e) A flood of distinct unknown, well-formed keys, driven from Python (grpc.aio).

This is the one load in the harness that Python generates: h2load sends a single body,
and this needs a different key in every request. It is labelled as such in the
results. The driver sends pre-serialized bytes (no protobuf work per request) and only
counts response bytes, so it stays cheap; the figures it feeds are the server's own
CPU time, Redis's command counters and the server's RSS, none of which depend on the
driver's speed.

Keys go out in blocks of distinct keys; every `repeat_every`-th block is sent a second
time right after itself. The repeat arrives well within the negative-cache TTL, so a
server that caches unknown keys sends each key to Redis once, repeated or not. Sending
most keys once lets a run of a minute pass the negative cache's size cap, where its RSS
must stop growing.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc

from bench.payloads import CHECK_PATH, KEY_BODY_LEN, with_key

ALNUM = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def unknown_key(run: str, index: int) -> str:
    """A well-formed key ("sk-" + 48 alphanumerics) that no store holds."""
    digits = []
    n = index
    for _ in range(10):
        n, r = divmod(n, len(ALNUM))
        digits.append(ALNUM[r])
    body = (run + "".join(reversed(digits))).rjust(KEY_BODY_LEN, "u")
    return "sk-" + body[:KEY_BODY_LEN]


def run_nonce() -> str:
    return hashlib.sha256(str(time.time_ns()).encode()).hexdigest()[:12]


@dataclass
class FloodResult:
    distinct_keys: int
    repeated_keys: int
    checks: int
    seconds: float
    responses: Counter[bytes] = field(default_factory=Counter)
    # (seconds since start, distinct keys sent so far, server RSS in bytes)
    rss_samples: list[tuple[float, int, int]] = field(default_factory=list)


async def _flood(
    target: str,
    template: bytes,
    max_keys: int,
    seconds: float,
    block: int,
    repeat_every: int,
    concurrency: int,
    sample_rss: Callable[[], int],
    progress: Callable[[str], None],
) -> FloodResult:
    nonce = run_nonce()
    result = FloodResult(0, 0, 0, 0.0)
    deadline = time.monotonic() + seconds
    started = time.monotonic()

    def requests() -> Iterator[bytes]:
        next_key = 0
        blocks = 0
        while next_key < max_keys and time.monotonic() < deadline:
            size = min(block, max_keys - next_key)
            keys = range(next_key, next_key + size)
            bodies = [with_key(template, unknown_key(nonce, i)) for i in keys]
            next_key += size
            result.distinct_keys = next_key
            yield from bodies
            if blocks % repeat_every == 0:
                result.repeated_keys += size
                yield from bodies  # the repeat, well within the negative-cache TTL
            blocks += 1

    source = requests()
    options = [("grpc.max_concurrent_streams", 1000)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        # bytes in, bytes out: no (de)serializing
        call = channel.unary_unary(CHECK_PATH, request_serializer=None, response_deserializer=None)

        async def worker() -> None:
            for body in source:
                reply = await call(body, timeout=10.0)
                result.responses[reply] += 1
                result.checks += 1

        async def sampler() -> None:
            last_report = started
            while True:
                now = time.monotonic()
                result.rss_samples.append((now - started, result.distinct_keys, sample_rss()))
                if now - last_report >= 5.0:
                    last_report = now
                    progress(
                        f"  flood: {result.distinct_keys:,} distinct keys, "
                        f"{result.checks:,} checks, rss {result.rss_samples[-1][2] / 2**20:.1f} MB"
                    )
                await asyncio.sleep(0.25)

        sampling = asyncio.create_task(sampler())
        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            sampling.cancel()
    result.seconds = time.monotonic() - started
    result.rss_samples.append((result.seconds, result.distinct_keys, sample_rss()))
    return result


def flood(
    target: str,
    template: bytes,
    *,
    max_keys: int,
    seconds: float,
    sample_rss: Callable[[], int],
    progress: Callable[[str], None],
    block: int = 512,
    repeat_every: int = 4,
    concurrency: int = 48,
) -> FloodResult:
    return asyncio.run(
        _flood(
            target,
            template,
            max_keys,
            seconds,
            block,
            repeat_every,
            concurrency,
            sample_rss,
            progress,
        )
    )
