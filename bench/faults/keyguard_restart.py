"""Scenario 2: keyguard SIGKILLed under load and restarted after a few seconds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench._hardening import Action, LoadResult, outcome_totals, per_second
from bench.faults import common
from bench.faults.common import FaultConfig, Keys
from harness.stack import running_stack


def run_keyguard_restart(cfg: FaultConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    with running_stack(persistent_redis=True) as stack:
        keys, _ = common.ready_keys(stack)
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
        res = common.drive(stack, keys, cfg.rate, cfg.restart_duration, actions)
        upstream_delta = stack.upstream.requests() - upstream_before
        ext_after = stack.envoy.stats("ext_authz")
        alive = stack.keyguard_alive()
        recovered_s = common.wait_recovered(stack, keys, cfg.recovery_timeout) if alive else None
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
    first_allow = common.first(s.done for s in allows if s.sent > killed)
    tail_ok, tail_n, tail_totals = common.tail_recovered(res, back)
    figures = {
        "requests": len(samples),
        "allowed_200": len(allows),
        "upstream_requests": upstream_delta,
        "keyguard_down_s": common.round_or_none(back_start - kill),
        "answered_while_down": len(down),
        "envoy_503_while_down": len(down) - len(down_not_503),
        "first_allow_after_restart_spawn_s": common.round_or_none(
            None if first_allow is None else first_allow - back_start
        ),
        "first_allow_after_keyguard_listening_s": common.round_or_none(
            None if first_allow is None else first_allow - back
        ),
        "keyguard_start_to_listening_s": common.round_or_none(back - back_start),
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
        **common.load_common(res),
        "figures": figures,
        "checks": checks,
        "timing_checks": {
            "tail_of_load_fully_recovered": tail_ok,
            "no_client_errors_or_skips": res.skipped == 0
            and not any(s.status == 0 for s in samples),
        },
        "tail": {"requests": tail_n, "totals": tail_totals},
        "phases": common.phase_totals(samples, bounds),
        "totals": outcome_totals(samples),
        "health_timeline": common.compress(res.health),
        "per_second": per_second(samples),
    }
