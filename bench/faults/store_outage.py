"""Scenario 1: Redis SIGKILLed under load and restarted on the same port, once per
KEYGUARD_ON_STORE_ERROR mode (optionally with keyguard paused every second)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from bench._hardening import Action, LoadResult, decision_counts, outcome_totals, per_second
from bench.faults.common import (
    DEGRADED_SLACK_S,
    FaultConfig,
    Keys,
    compress,
    drive,
    first,
    load_common,
    phase_totals,
    ready_keys,
    round_or_none,
    tail_recovered,
    wait_recovered,
)
from harness.stack import Stack, running_stack


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
    with running_stack(keyguard_env=env, persistent_redis=True) as stack:
        keys, outcomes = ready_keys(stack)
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
            res = drive(stack, keys, cfg.rate, cfg.duration, actions)
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
    first_ok = first(
        s.done for s in allows if s.kind == "valid" and not s.degraded and s.sent > killed
    )
    serving_after = first(t for t, st in res.health if t >= back and st == "SERVING")
    not_serving_seen = any(kill <= t <= back and st == "NOT_SERVING" for t, st in res.health)
    last_degraded = max((s.sent for s in degraded), default=None)
    tail_ok, tail_n, tail_totals = tail_recovered(res, back)
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
        "redis_down_s": round_or_none(back - kill),
        "first_correct_allow_after_redis_back_s": round_or_none(
            None if first_ok is None else first_ok - back
        ),
        "first_correct_allow_after_redis_spawn_s": round_or_none(
            None if first_ok is None else first_ok - back_start
        ),
        "health_serving_after_redis_back_s": round_or_none(
            None if serving_after is None else serving_after - back
        ),
        "health_not_serving_during_outage": not_serving_seen,
        "last_degraded_allow_sent_after_redis_back_s": round_or_none(
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
        **load_common(res),
        "figures": figures,
        "checks": checks,
        "timing_checks": timing,
        "tail": {"requests": tail_n, "totals": tail_totals},
        "phases": phase_totals(samples, bounds),
        "totals": outcome_totals(samples),
        "health_timeline": compress(res.health),
        "per_second": per_second(samples),
    }
