"""Scenario 3: concurrent clients spend the last units of one key's quota."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from bench._hardening import HttpError, RawHttpClient, chat_shot, messages_shot
from bench.faults.common import FaultConfig
from harness.stack import running_stack

# ----- scenario 3: the quota race ----------------------------------------------------------


async def _race(base_url: str, key: str, clients: int, per_client: int) -> list[list[str]]:
    url = urlsplit(base_url)
    start = asyncio.Event()

    async def client(n: int) -> list[str]:
        conn = RawHttpClient(url.hostname or "127.0.0.1", url.port or 80, 5.0)
        shot = (messages_shot if n % 2 else chat_shot)("quota", key)
        raw = shot.encode()
        got: list[str] = []
        try:
            await start.wait()
            for _ in range(per_client):
                try:
                    status, headers, _ = await conn.request(raw)
                except HttpError as exc:
                    got.append(f"error-{exc}")
                    continue
                got.append(f"{status}-{headers.get('x-keyguard-reason') or 'ok'}")
        finally:
            await conn.aclose()
        return got

    tasks = [asyncio.create_task(client(n)) for n in range(clients)]
    await asyncio.sleep(0.05)
    start.set()
    return list(await asyncio.gather(*tasks))


def run_quota_race(cfg: FaultConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    with running_stack(persistent_redis=True) as stack:
        key_id, key = stack.create_key("--quota", str(cfg.quota), "--name", "faults-race")
        log(
            f"race: {cfg.race_clients} clients x {cfg.race_requests_per_client} requests"
            f" on a key with {cfg.quota} units"
        )
        before = stack.upstream.requests()
        started = time.monotonic()
        per_client = asyncio.run(
            _race(stack.base_url, key, cfg.race_clients, cfg.race_requests_per_client)
        )
        elapsed = time.monotonic() - started
        upstream_delta = stack.upstream.requests() - before
        shown = stack.show(key_id)
    totals = Counter(o for outcomes in per_client for o in outcomes)
    allowed = totals.get("200-ok", 0)
    refused = totals.get("402-insufficient_quota", 0)
    total = cfg.race_clients * cfg.race_requests_per_client
    return {
        "scenario": "quota_race",
        "clients": cfg.race_clients,
        "requests": total,
        "quota": cfg.quota,
        "elapsed_s": round(elapsed, 3),
        "totals": dict(totals),
        "allowed_per_client": [o.count("200-ok") for o in per_client],
        "upstream_requests": upstream_delta,
        "keys_show": {"remaining": shown["remaining"], "used": shown["used"]},
        "checks": {
            "exactly_quota_allowed": allowed == cfg.quota,
            "rest_refused_402": refused == total - cfg.quota,
            "keys_show_remaining_0": shown["remaining"] == 0,
            "keys_show_used_quota": shown["used"] == cfg.quota,
            "upstream_saw_exactly_quota": upstream_delta == cfg.quota,
        },
        "timing_checks": {},
    }
