"""Faults under load: Redis and keyguard killed mid-load, and a quota race, through Envoy.

    python -m bench.faults [--quick] [--out DIR] [--only outage,restart,race]

Each scenario runs the whole stack (redis-server with AOF and fsync always, the demo
upstream, `keyguard serve`, Envoy from envoy/envoy.yaml) on loopback, drives it with an
open-loop schedule (see bench/_hardening.py) and checks:

1. Redis outage, once per KEYGUARD_ON_STORE_ERROR mode (deny, allow, cached): load at a
   fixed rate mixing a valid metered key (80%), an unknown well-formed key (10%) and a
   disabled key (10%). Redis is SIGKILLed at t=20 s and restarted on the same port at
   t=30 s (its AOF brings the keys back). Nothing is allowed that should not be (in
   `allow` mode an unknown key may be let through while Redis is down, marked
   x-keyguard-degraded: these are counted as degraded allows and must fall inside the
   outage), keyguard keeps its pid, health returns to SERVING, every acknowledged spend
   survived the crash, and the time from Redis's return to the first correct
   (non-degraded) allow is measured.
2. keyguard SIGKILLed under load and restarted after 5 s: Envoy answers 503 meanwhile,
   the upstream receives exactly as many requests as the client saw 200s, and the
   restarted keyguard serves again (time to the first allow is measured).
3. Quota race: 8 concurrent clients spend a key with 100 units: exactly 100 get 200,
   the rest 402, and `keyguard keys show` says remaining 0, used 100.

`--quick` shortens everything (12 s of load at 100 rps, Redis down 3 s) for CI. Results go
to DIR/faults[-quick]-<date>.json and .md (default DIR: bench/results). Exit status 0 when
every check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from bench._hardening import (
    RESULTS_DIR,
    Action,
    HttpError,
    LoadResult,
    RawHttpClient,
    Sample,
    Shot,
    Stack,
    chat_shot,
    decision_counts,
    health_status,
    machine_note,
    messages_shot,
    open_loop,
    outcome_totals,
    per_second,
    random_key,
    running_stack,
    write_json,
)

MODES = ("deny", "allow", "cached")
EXPECTED = {"valid": "200", "unknown": "401-invalid_api_key", "disabled": "401-key_disabled"}
# A degraded allow must be decided while Redis is down; one sent this long after Redis
# accepts connections again would mean keyguard did not notice its return.
DEGRADED_SLACK_S = 2.0
STALL_PAUSE_S = 0.4


@dataclass(frozen=True)
class FaultConfig:
    rate: float = 300.0
    duration: float = 60.0
    redis_kill_at: float = 20.0
    redis_down_for: float = 10.0
    restart_duration: float = 30.0
    keyguard_kill_at: float = 10.0
    keyguard_down_for: float = 5.0
    quota: int = 100
    race_clients: int = 8
    race_requests_per_client: int = 40
    recovery_timeout: float = 30.0


FULL = FaultConfig()
QUICK = FaultConfig(
    rate=100.0,
    duration=12.0,
    redis_kill_at=4.0,
    redis_down_for=3.0,
    restart_duration=14.0,
    keyguard_kill_at=3.0,
    keyguard_down_for=5.0,
)


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


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _first(values: Iterable[float]) -> float | None:
    return min(values, default=None)


def _load_common(res: LoadResult) -> dict[str, Any]:
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


def _tail_ok(res: LoadResult, after: float) -> tuple[bool, int, dict[str, dict[str, int]]]:
    """Every answer sent in the last stretch of the load was the healthy one."""
    tail_s = min(10.0, max(1.0, (res.duration - after) / 2))
    tail = [s for s in res.samples if s.sent >= res.duration - tail_s]
    ok = bool(tail) and all(s.outcome == EXPECTED[s.kind] for s in tail)
    return ok, len(tail), outcome_totals(tail)


# ----- scenario 1: Redis outage ------------------------------------------------------------


def _used(stack: Stack, key_id: str) -> int | None:
    """The key's `used` counter per `keyguard keys show`, or None if Redis cannot say."""
    try:
        return int(stack.show(key_id)["used"])
    except Exception:  # reported as a failed check, not a crashed run
        return None


@contextlib.contextmanager
def stuttering(pid: int, pause: float, every: float = 1.0) -> Iterator[None]:
    """SIGSTOP our keyguard child for `pause` s every `every` s: a CPU-starved keyguard.

    Envoy's 0.25 s deadline then cancels Checks in flight, Redis replies arrive late, and
    connections are re-opened: the paths where cancellation bugs live.
    """
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every - pause):
            os.kill(pid, signal.SIGSTOP)
            try:
                stop.wait(pause)
            finally:
                os.kill(pid, signal.SIGCONT)

    thread = threading.Thread(target=run, name="stutter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def run_store_outage(
    mode: str, cfg: FaultConfig, log: Callable[[str], None] = print, stall: float = 0.0
) -> dict[str, Any]:
    """Scenario 1; with `stall` > 0, keyguard is also paused that long every second."""
    env = {"KEYGUARD_ON_STORE_ERROR": mode}
    with running_stack(env) as stack:
        keys = make_keys(stack)
        ok, outcomes = healthy_answers(stack, keys)
        if not ok:
            raise RuntimeError(f"stack not healthy before the load: {outcomes}")
        warm_allows = outcomes.count("200")
        pid = stack.keyguard_pid
        kill_at, back_at = cfg.redis_kill_at, cfg.redis_kill_at + cfg.redis_down_for
        actions = [
            Action(kill_at, "redis_killed", stack.redis.kill),
            Action(back_at, "redis_back", stack.redis.start),
        ]
        log(
            f"outage[{mode}]: {cfg.duration:g} s at {cfg.rate:g} rps,"
            f" Redis down {kill_at:g}-{back_at:g} s"
            + (f", keyguard paused {stall:g} s every second" if stall else "")
        )
        with stuttering(pid, stall) if stall else contextlib.nullcontext():
            res = asyncio.run(
                open_loop(
                    stack.base_url,
                    rate=cfg.rate,
                    duration=cfg.duration,
                    plan=keys.shot,
                    actions=actions,
                    health_target=stack.keyguard.target,
                )
            )
        alive = stack.keyguard_alive() and stack.keyguard_pid == pid
        used = _used(stack, keys.valid_id)  # before the recovery probes spend more
        recovered_s = wait_recovered(stack, keys, cfg.recovery_timeout) if alive else None
        metrics = decision_counts(stack.metrics_text()) if alive else {}
        logs = stack.keyguard.logs()
    out = analyse_store_outage(mode, res, keys, cfg)
    out["keyguard_paused_s_per_second"] = stall
    out["keyguard"] = {
        "pid_unchanged_and_alive": alive,
        "log_check_failed_lines": logs.count('"check_failed"'),
        "log_traceback_lines": logs.count("Traceback"),
        "decisions_metric": metrics,
    }
    seen_allows = out["figures"]["ok_allows_valid"] + warm_allows
    out["billing"] = {
        "used": used,
        "non_degraded_allows_seen": seen_allows,
        # Units spent whose allow the client never saw: Envoy's 0.25 s ext_authz timeout,
        # or a reply lost when Redis died after committing the spend.
        "spent_not_seen": None if used is None else used - seen_allows,
    }
    out["recovered_after_load_s"] = recovered_s
    checks = out["checks"]
    checks["keyguard_alive_same_pid"] = alive
    checks["no_internal_errors"] = (
        out["keyguard"]["log_check_failed_lines"] == 0
        and metrics.get("deny/internal_error", 0) == 0
    )
    checks[f"recovered_within_{cfg.recovery_timeout:g}s"] = recovered_s is not None
    # Every allow the client saw was paid for: acknowledged spends survived SIGKILL (AOF).
    checks["acknowledged_spends_survived"] = used is not None and used >= seen_allows
    return out


def analyse_store_outage(
    mode: str, res: LoadResult, keys: Keys, cfg: FaultConfig
) -> dict[str, Any]:
    m = res.marks
    kill, killed = m.get("redis_killed.start", cfg.redis_kill_at), m.get("redis_killed", 0.0)
    back_start, back = m.get("redis_back.start", 0.0), m.get("redis_back", 0.0)
    samples = res.samples
    allows = [s for s in samples if s.status == 200]
    degraded = [s for s in allows if s.degraded]
    # Allowed when it must not be: a disabled key ever; an unknown key unless this is
    # `allow` mode and the allow is a marked degraded one.
    wrong = [
        s
        for s in allows
        if s.kind == "disabled" or (s.kind == "unknown" and not (mode == "allow" and s.degraded))
    ]
    wrong_identity = [
        s
        for s in allows
        if (s.kind == "valid" and s.key_id != keys.valid_id)
        or (s.kind == "unknown" and s.key_id != "unknown")
    ]
    outside = [s for s in degraded if s.done < kill or s.sent > back + DEGRADED_SLACK_S]
    ok_while_down = [
        s for s in allows if not s.degraded and s.sent > killed and s.done < back_start
    ]
    first_ok = _first(
        s.done for s in allows if s.kind == "valid" and not s.degraded and s.sent > killed
    )
    serving_after = _first(t for t, st in res.health if t >= back and st == "SERVING")
    not_serving_seen = any(kill <= t <= back and st == "NOT_SERVING" for t, st in res.health)
    last_degraded = max((s.sent for s in degraded), default=None)
    tail_ok, tail_n, tail_totals = _tail_ok(res, back)
    figures = {
        "requests": len(samples),
        "ok_allows_valid": sum(1 for s in allows if s.kind == "valid" and not s.degraded),
        "degraded_allows": {
            "valid": sum(1 for s in degraded if s.kind == "valid"),
            "unknown": sum(1 for s in degraded if s.kind == "unknown"),
        },
        "store_unavailable_503": sum(
            1 for s in samples if s.status == 503 and s.reason == "store_unavailable"
        ),
        "envoy_503": sum(1 for s in samples if s.status == 503 and not s.reason),
        "wrong_allows": len(wrong),
        "redis_down_s": _round(back - kill),
        "first_correct_allow_after_redis_back_s": _round(
            None if first_ok is None else first_ok - back
        ),
        "first_correct_allow_after_redis_spawn_s": _round(
            None if first_ok is None else first_ok - back_start
        ),
        "health_serving_after_redis_back_s": _round(
            None if serving_after is None else serving_after - back
        ),
        "health_not_serving_during_outage": not_serving_seen,
        "last_degraded_allow_sent_after_redis_back_s": _round(
            None if last_degraded is None else last_degraded - back
        ),
    }
    checks = {
        "actions_ran": not res.action_errors and {"redis_killed", "redis_back"} <= set(m),
        "no_wrong_allows": not wrong,
        "allows_carry_the_right_key_id": not wrong_identity,
        "degraded_allows_only_while_redis_down": not outside,
        "deny_mode_never_degrades": mode != "deny" or not degraded,
        "no_plain_allow_while_redis_down": not ok_while_down,
        "no_credential_forwarded": not any(s.credential_forwarded for s in samples),
        "correct_allow_after_redis_back": first_ok is not None,
        # Health follows Redis (README): NOT_SERVING during the outage, except in `allow`
        # mode, which keeps serving; back to SERVING is part of the recovery check. A
        # frozen health loop fails one or the other.
        "health_tracks_redis": (
            not any(st == "NOT_SERVING" for _, st in res.health)
            if mode == "allow"
            else not_serving_seen
        ),
    }
    # These depend on the machine as much as on keyguard: reported, not asserted by tests.
    timing = {
        "tail_of_load_fully_recovered": tail_ok,
        "no_client_errors_or_skips": res.skipped == 0 and not any(s.status == 0 for s in samples),
    }
    bounds = [
        ("before", 0.0, kill),
        ("redis_down", kill, back),
        ("after", back, float("inf")),
    ]
    return {
        "scenario": "store_outage",
        "mode": mode,
        **_load_common(res),
        "figures": figures,
        "checks": checks,
        "timing_checks": timing,
        "tail": {"requests": tail_n, "totals": tail_totals},
        "phases": phase_totals(samples, bounds),
        "totals": outcome_totals(samples),
        "health_timeline": _compress(res.health),
        "per_second": per_second(samples),
    }


def _compress(timeline: list[tuple[float, str]]) -> list[tuple[float, str]]:
    """Only the points where the status changed."""
    out: list[tuple[float, str]] = []
    for t, status in timeline:
        if not out or out[-1][1] != status:
            out.append((t, status))
    return out


# ----- scenario 2: keyguard killed and restarted -------------------------------------------


def run_keyguard_restart(cfg: FaultConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    with running_stack() as stack:
        keys = make_keys(stack)
        ok, outcomes = healthy_answers(stack, keys)
        if not ok:
            raise RuntimeError(f"stack not healthy before the load: {outcomes}")
        kill_at, back_at = cfg.keyguard_kill_at, cfg.keyguard_kill_at + cfg.keyguard_down_for
        actions = [
            Action(kill_at, "keyguard_killed", stack.kill_keyguard),
            Action(back_at, "keyguard_back", stack.restart_keyguard),
        ]
        log(
            f"restart: {cfg.restart_duration:g} s at {cfg.rate:g} rps,"
            f" keyguard down {kill_at:g}-{back_at:g} s"
        )
        upstream_before = stack.upstream.requests()
        ext_before = stack.envoy.stats("ext_authz")
        res = asyncio.run(
            open_loop(
                stack.base_url,
                rate=cfg.rate,
                duration=cfg.restart_duration,
                plan=keys.shot,
                actions=actions,
                health_target=stack.keyguard.target,
            )
        )
        upstream_delta = stack.upstream.requests() - upstream_before
        ext_after = stack.envoy.stats("ext_authz")
        alive = stack.keyguard_alive()
        recovered_s = wait_recovered(stack, keys, cfg.recovery_timeout) if alive else None
    out = analyse_keyguard_restart(res, keys, upstream_delta)
    out["envoy_ext_authz_delta"] = {
        k.rsplit(".", 1)[-1]: ext_after.get(k, 0) - ext_before.get(k, 0)
        for k in ext_after
        if k.startswith("http.llm_ingress.ext_authz.")
    }
    out["recovered_after_load_s"] = recovered_s
    out["checks"]["restarted_keyguard_alive"] = alive
    out["checks"][f"recovered_within_{cfg.recovery_timeout:g}s"] = recovered_s is not None
    return out


def analyse_keyguard_restart(res: LoadResult, keys: Keys, upstream_delta: int) -> dict[str, Any]:
    m = res.marks
    kill, killed = m.get("keyguard_killed.start", 0.0), m.get("keyguard_killed", 0.0)
    back_start, back = m.get("keyguard_back.start", 0.0), m.get("keyguard_back", 0.0)
    samples = res.samples
    allows = [s for s in samples if s.status == 200]
    wrong = [s for s in allows if s.kind != "valid" or s.degraded]
    down = [s for s in samples if s.sent > killed and s.done < back_start]
    down_not_503 = [s for s in down if not (s.status == 503 and not s.reason and not s.upstream)]
    first_allow = _first(s.done for s in allows if s.sent > killed)
    tail_ok, tail_n, tail_totals = _tail_ok(res, back)
    figures = {
        "requests": len(samples),
        "allowed_200": len(allows),
        "upstream_requests": upstream_delta,
        "keyguard_down_s": _round(back_start - kill),
        "answered_while_down": len(down),
        "envoy_503_while_down": len(down) - len(down_not_503),
        "first_allow_after_restart_spawn_s": _round(
            None if first_allow is None else first_allow - back_start
        ),
        "first_allow_after_keyguard_listening_s": _round(
            None if first_allow is None else first_allow - back
        ),
        "keyguard_start_to_listening_s": _round(back - back_start),
    }
    checks = {
        "actions_ran": not res.action_errors and {"keyguard_killed", "keyguard_back"} <= set(m),
        "no_wrong_allows": not wrong,
        "envoy_503_while_keyguard_down": bool(down) and not down_not_503,
        "upstream_saw_exactly_the_200s": upstream_delta == len(allows),
        "allows_after_restart": first_allow is not None,
    }
    bounds = [("before", 0.0, kill), ("keyguard_down", kill, back), ("after", back, float("inf"))]
    return {
        "scenario": "keyguard_restart",
        **_load_common(res),
        "figures": figures,
        "checks": checks,
        "timing_checks": {
            "tail_of_load_fully_recovered": tail_ok,
            "no_client_errors_or_skips": res.skipped == 0
            and not any(s.status == 0 for s in samples),
        },
        "tail": {"requests": tail_n, "totals": tail_totals},
        "phases": phase_totals(samples, bounds),
        "totals": outcome_totals(samples),
        "health_timeline": _compress(res.health),
        "per_second": per_second(samples),
    }


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
    with running_stack() as stack:
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


# ----- report ------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _clamp(value: float | None) -> float | None:
    """Times after "port open" can be slightly negative: the port is polled every 20 ms."""
    return None if value is None else max(value, 0.0)


def summary_markdown(doc: dict[str, Any]) -> str:
    cfg = doc["config"]
    lines = [
        f"# keyguard faults under load, {doc['started']}{' (quick)' if doc['quick'] else ''}",
        "",
        f"Driver: {doc['driver']}. Machine: {doc['machine']['before']['cpus']} CPUs, load"
        f" average {doc['machine']['before']['loadavg_1m']} before,"
        f" {doc['machine']['after']['loadavg_1m']} after.",
        "",
    ]
    outages = dict(doc.get("store_outage", {}))
    if "stall_outage" in doc:
        pause = doc["stall_outage"]["keyguard_paused_s_per_second"]
        outages[f"deny, keyguard paused {pause:g} s every second"] = doc["stall_outage"]
    if outages:
        lines += [
            f"## Redis SIGKILLed for {cfg['redis_down_for']:g} s during {cfg['duration']:g} s at"
            f" {cfg['rate']:g} rps (80% valid metered key, 10% unknown key, 10% disabled key)",
            "",
            "| KEYGUARD_ON_STORE_ERROR | requests | plain allows | degraded allows (valid / "
            "unknown) | 503 store_unavailable | 503 from Envoy (ext_authz timeout) |"
            " wrong allows | keyguard crashed |"
            " health SERVING after Redis back | first correct allow after redis-server"
            " start (after its port opened) |",
            "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
        ]
        for mode, r in outages.items():
            f = r["figures"]
            lines.append(
                f"| {mode} | {f['requests']} | {f['ok_allows_valid']} |"
                f" {f['degraded_allows']['valid']} / {f['degraded_allows']['unknown']} |"
                f" {f['store_unavailable_503']} | {f['envoy_503']} | {f['wrong_allows']} |"
                f" {'no' if r['keyguard']['pid_unchanged_and_alive'] else 'YES'} |"
                f" {_fmt(f['health_serving_after_redis_back_s'])} s |"
                f" {_fmt(f['first_correct_allow_after_redis_spawn_s'])} s"
                f" ({_fmt(_clamp(f['first_correct_allow_after_redis_back_s']))} s) |"
            )
        lines.append("")
        lines.append("Answers by phase (key kind: outcome = count):")
        lines.append("")
        for mode, r in outages.items():
            for phase, totals in r["phases"].items():
                flat = ", ".join(
                    f"{kind}: {o}={n}" for kind, c in totals.items() for o, n in c.items()
                )
                lines.append(f"- {mode} / {phase}: {flat}")
        lines.append("")
    restart = doc.get("keyguard_restart")
    if restart:
        f = restart["figures"]
        lines += [
            f"## keyguard SIGKILLed under {cfg['rate']:g} rps, restarted after"
            f" {cfg['keyguard_down_for']:g} s",
            "",
            "| requests | 200 seen by client | requests reaching upstream | answered while down"
            " | of which Envoy 503 | keyguard start → listening | first allow after restart"
            " (from spawn / from listening) |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            f"| {f['requests']} | {f['allowed_200']} | {f['upstream_requests']} |"
            f" {f['answered_while_down']} | {f['envoy_503_while_down']} |"
            f" {_fmt(f['keyguard_start_to_listening_s'])} s |"
            f" {_fmt(f['first_allow_after_restart_spawn_s'])} s /"
            f" {_fmt(_clamp(f['first_allow_after_keyguard_listening_s']))} s |",
            "",
        ]
    race = doc.get("quota_race")
    if race:
        allowed = race["totals"].get("200-ok", 0)
        refused = race["totals"].get("402-insufficient_quota", 0)
        other = race["requests"] - allowed - refused
        lines += [
            f"## Quota race: {race['clients']} concurrent clients, a key with {race['quota']}"
            " units",
            "",
            "| requests | 200 | 402 insufficient_quota | other | upstream requests |"
            " keys show remaining / used |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {race['requests']} | {allowed} | {refused} | {other} |"
            f" {race['upstream_requests']} |"
            f" {race['keys_show']['remaining']} / {race['keys_show']['used']} |",
            "",
        ]
    lines += ["## Checks", "", "| scenario | check | result |", "|---|---|---|"]
    for name, ok in doc["checks"].items():
        scenario, _, check = name.partition(": ")
        lines.append(f"| {scenario} | {check} | {'pass' if ok else 'FAIL'} |")
    lines.append("")
    return "\n".join(lines)


def collect_checks(doc: dict[str, Any]) -> dict[str, bool]:
    checks: dict[str, bool] = {}
    scenarios = [(f"outage/{mode}", r) for mode, r in doc.get("store_outage", {}).items()]
    scenarios += [
        (key, doc[key]) for key in ("keyguard_restart", "quota_race", "stall_outage") if key in doc
    ]
    for label, r in scenarios:
        for name, ok in r["checks"].items():
            checks[f"{label}: {name}"] = bool(ok)
        for name, ok in r["timing_checks"].items():
            checks[f"{label}: {name} (timing)"] = bool(ok)
    return checks


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every `finally`: processes stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short CI variant")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--only",
        default="outage,restart,race",
        help="comma-separated scenarios: outage, restart, race, stall (deny-mode outage with"
        " keyguard paused 0.4 s every second; not in the default set)",
    )
    parser.add_argument("--modes", default=",".join(MODES), help="store-error modes to run")
    args = parser.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not only <= {"outage", "restart", "race", "stall"} or not set(modes) <= set(MODES):
        parser.error("unknown scenario or mode")
    signal.signal(signal.SIGTERM, _on_sigterm)
    cfg = QUICK if args.quick else FULL
    doc: dict[str, Any] = {
        "kind": "faults",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "config": asdict(cfg),
        "driver": "python asyncio, raw HTTP/1.1 keep-alive connections, open loop",
        "machine": {"before": machine_note()},
    }
    if "outage" in only:
        doc["store_outage"] = {mode: run_store_outage(mode, cfg) for mode in modes}
    if "restart" in only:
        doc["keyguard_restart"] = run_keyguard_restart(cfg)
    if "race" in only:
        doc["quota_race"] = run_quota_race(cfg)
    if "stall" in only:
        doc["stall_outage"] = run_store_outage("deny", cfg, stall=STALL_PAUSE_S)
    doc["machine"]["after"] = machine_note()
    doc["checks"] = collect_checks(doc)
    doc["passed"] = all(doc["checks"].values())
    stamp = time.strftime("%Y-%m-%d")
    name = f"faults-quick-{stamp}" if args.quick else f"faults-{stamp}"
    out: Path = args.out
    write_json(out / f"{name}.json", doc)
    md = summary_markdown(doc)
    (out / f"{name}.md").write_text(md)
    print(md)
    print(f"wrote {out / (name + '.json')} and {name}.md")
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
