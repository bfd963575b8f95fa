"""What every fault scenario shares: its settings, its keys and traffic mix, probes
outside the load, and the helpers its analysis uses."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bench._hardening import (
    Action,
    HttpError,
    LoadResult,
    RawHttpClient,
    Sample,
    Shot,
    chat_shot,
    messages_shot,
    open_loop,
    outcome_totals,
)
from bench.plan import quick_variant, setting
from harness.cli import random_key
from harness.keyguard import health_status
from harness.stack import Stack

MODES = ("deny", "allow", "cached")
EXPECTED = {"valid": "200", "unknown": "401-invalid_api_key", "disabled": "401-key_disabled"}
# A degraded allow must be decided while Redis is down; one sent this long after Redis
# accepts connections again would mean keyguard did not notice its return.
DEGRADED_SLACK_S = 2.0
STALL_PAUSE_S = 0.4


@dataclass(frozen=True)
class FaultConfig:
    rate: float = setting(300.0, 100.0)
    duration: float = setting(60.0, 12.0)
    redis_kill_at: float = setting(20.0, 4.0)
    redis_down_for: float = setting(10.0, 3.0)
    restart_duration: float = setting(30.0, 14.0)
    keyguard_kill_at: float = setting(10.0, 3.0)
    keyguard_down_for: float = 5.0
    quota: int = 100
    race_clients: int = 8
    race_requests_per_client: int = 40
    recovery_timeout: float = 30.0


FULL = FaultConfig()
QUICK = quick_variant(FaultConfig)


@dataclass
class Keys:
    valid_id: str
    valid: str
    disabled_id: str
    disabled: str
    unknown: str

    def shot(self, i: int) -> Shot:
        """80% valid (Authorization and x-api-key alternating), 10% unknown, 10% disabled."""
        slot = i % 10
        via = messages_shot if (i // 10) % 2 else chat_shot
        if slot < 8:
            return via("valid", self.valid)
        if slot == 8:
            return via("unknown", self.unknown)
        return via("disabled", self.disabled)


def make_keys(stack: Stack) -> Keys:
    valid_id, valid = stack.create_key("--quota", "10000000", "--name", "faults-valid")
    disabled_id, disabled = stack.create_key("--quota", "1000", "--name", "faults-disabled")
    stack.keys("disable", disabled_id)
    return Keys(valid_id, valid, disabled_id, disabled, random_key())


# ----- probing outside the load ------------------------------------------------------------


async def _probe_async(base_url: str, shots: Iterable[Shot], timeout: float = 3.0) -> list[str]:
    url = urlsplit(base_url)
    client = RawHttpClient(url.hostname or "127.0.0.1", url.port or 80, timeout)
    outcomes = []
    try:
        for shot in shots:
            try:
                status, headers, _ = await client.request(shot.encode())
            except HttpError as exc:
                outcomes.append(f"error-{exc}")
                continue
            if status == 200:
                echo = json.loads(headers.get("x-echo-headers", "{}"))
                degraded = echo.get("x-keyguard-degraded") == "1"
                outcomes.append("200-degraded" if degraded else "200")
            else:
                outcomes.append(f"{status}-{headers.get('x-keyguard-reason') or 'envoy'}")
    finally:
        await client.aclose()
    return outcomes


def probe(base_url: str, shots: list[Shot]) -> list[str]:
    """Send shots one at a time; their outcome labels (as Sample.outcome)."""
    return asyncio.run(_probe_async(base_url, shots))


def ready_keys(stack: Stack) -> tuple[Keys, list[str]]:
    """The scenario's keys, once the stack answers each kind of them correctly."""
    keys = make_keys(stack)
    ok, outcomes = healthy_answers(stack, keys)
    if not ok:
        raise RuntimeError(f"stack not healthy before the load: {outcomes}")
    return keys, outcomes


def drive(
    stack: Stack, keys: Keys, rate: float, duration: float, actions: Sequence[Action]
) -> LoadResult:
    """The open-loop load of `keys.shot` through Envoy, polling keyguard's health."""
    return asyncio.run(
        open_loop(
            stack.base_url,
            rate=rate,
            duration=duration,
            plan=keys.shot,
            actions=actions,
            health_target=stack.keyguard.target,
        )
    )


def healthy_answers(stack: Stack, keys: Keys) -> tuple[bool, list[str]]:
    shots = [keys.shot(i) for i in (0, 10, 8, 9)]  # valid x2 (both headers), unknown, disabled
    outcomes = probe(stack.base_url, shots)
    want = [EXPECTED[s.kind] for s in shots]
    return outcomes == want, outcomes


def wait_recovered(stack: Stack, keys: Keys, timeout: float) -> float | None:
    """Seconds until keyguard is SERVING and answers every key kind correctly, or None."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if health_status(stack.keyguard.target) == "SERVING" and healthy_answers(stack, keys)[0]:
            return round(time.monotonic() - start, 3)
        time.sleep(0.2)
    return None


# ----- analysis helpers --------------------------------------------------------------------


def phase_totals(
    samples: Iterable[Sample], bounds: list[tuple[str, float, float]]
) -> dict[str, dict[str, dict[str, int]]]:
    """Outcome totals by key kind within phases of send time [start, end)."""
    grouped: dict[str, list[Sample]] = {name: [] for name, _, _ in bounds}
    for s in samples:
        for name, start, end in bounds:
            if start <= s.sent < end:
                grouped[name].append(s)
                break
    return {name: outcome_totals(group) for name, group in grouped.items()}


def round_or_none(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def first(values: Iterable[float]) -> float | None:
    return min(values, default=None)


def load_common(res: LoadResult) -> dict[str, Any]:
    return {
        "driver": res.driver,
        "driver_cpu_s": res.driver_cpu_s,
        "rate": res.rate,
        "duration_s": res.duration,
        "planned": res.planned,
        "answered": len(res.samples),
        "skipped": res.skipped,
        "client_errors": sum(1 for s in res.samples if s.status == 0),
        "marks": res.marks,
        "action_errors": res.action_errors,
    }


def tail_recovered(res: LoadResult, after: float) -> tuple[bool, int, dict[str, dict[str, int]]]:
    """Every answer sent in the last stretch of the load was the healthy one."""
    tail_s = min(10.0, max(1.0, (res.duration - after) / 2))
    tail = [s for s in res.samples if s.sent >= res.duration - tail_s]
    ok = bool(tail) and all(s.outcome == EXPECTED[s.kind] for s in tail)
    return ok, len(tail), outcome_totals(tail)


def compress(timeline: list[tuple[float, str]]) -> list[tuple[float, str]]:
    """Only the points where the status changed."""
    out: list[tuple[float, str]] = []
    for t, status in timeline:
        if not out or out[-1][1] != status:
            out.append((t, status))
    return out
