"""(1) Decision CPU cost: h2load sends pre-framed Checks straight to each server.

CPU per Check of the floor servicer and of keyguard in several configurations, the Redis
commands each Check causes, and keyguard's own count of allows as the proof that every
Check sent was an allow.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from bench import loadgen
from bench.probes import (
    allowed,
    grpc_check,
    hold_metadata,
    metric_value,
    redis_command_calls,
    upstream_header,
)
from bench.rig import FloorServer, Rig
from bench.system import CpuMeter, OtherLoad
from harness.keyguard import KeyguardServer

# Redis commands that are background chatter (health probes, stats), not Check traffic.
_BACKGROUND_COMMANDS = frozenset({"ping", "info", "publish", "subscribe", "client|setinfo"})
# Commands keyguard sends itself; commandstats also counts those its Lua scripts run.
_CLIENT_COMMANDS = frozenset({"hgetall", "evalsha", "eval", "script|load"})


@dataclass(frozen=True)
class DecisionSpec:
    name: str
    label: str
    server: FloorServer | KeyguardServer
    body: str  # a key of Rig.payloads / Rig.bodies
    key_name: str | None  # the key it must be allowed as (None: the floor)
    hold: bool = False  # token metering: every allow must carry a hold


def verify_allow(
    rig: Rig, target: str, message: bytes, key_name: str | None, hold: bool = False
) -> str:
    resp = grpc_check(target, message)
    if not allowed(resp):
        raise RuntimeError(f"{target}: expected an allow, got {resp}")
    if key_name is None:
        return "sample: grpc-status OK, allow"
    want = rig.keys[key_name]["id"]
    got = upstream_header(resp, "x-keyguard-key-id")
    if got != want:
        raise RuntimeError(f"{target}: allowed as {got!r}, expected key {want!r}")
    ticket = hold_metadata(resp)
    if hold != bool(ticket.get("hold")):
        raise RuntimeError(
            f"{target}: dynamic_metadata {ticket}, expected {'a' if hold else 'no'} hold"
        )
    if hold:
        return (
            f"sample: grpc-status OK, allow as {want} with a hold in dynamic_metadata "
            f"({', '.join(sorted(ticket))})"
        )
    return f"sample: grpc-status OK, allow as {want}"


def measure(
    rig: Rig, spec: DecisionSpec, checks: int, clients: int, streams: int
) -> dict[str, Any]:
    """One h2load run of `checks` Checks, with the server's and Redis's CPU time."""
    server = spec.server
    keyguard = server if isinstance(server, KeyguardServer) else None
    before = keyguard.metrics_text() if keyguard else ""
    calls_before = redis_command_calls(rig.redis)
    workers = keyguard.worker_pids() if keyguard and keyguard.workers > 1 else []
    meter = CpuMeter([server.pid], include_children=bool(workers))
    worker_meters = [CpuMeter([pid]) for pid in workers]
    redis_meter = CpuMeter([rig.redis_server.pid])
    other = OtherLoad([server.pid, rig.redis_server.pid])
    other.start()
    for m in (meter, redis_meter, *worker_meters):
        m.start()
    result = loadgen.h2load_grpc(server.target, rig.bodies[spec.body], checks, clients, streams)
    cpu = meter.stop()
    redis_cpu = redis_meter.stop()
    worker_cpu = [round(m.stop(), 2) for m in worker_meters]
    other_pct = other.stop()
    calls_after = redis_command_calls(rig.redis)
    commands = {
        cmd: calls_after[cmd] - calls_before.get(cmd, 0)
        for cmd in calls_after
        if cmd not in _BACKGROUND_COMMANDS and calls_after[cmd] != calls_before.get(cmd, 0)
    }
    allows = checks
    holds = 0
    if keyguard:
        # h2load cannot see grpc-status: keyguard's own counters must show one allow
        # per Check sent, and no denial.
        after = keyguard.metrics_text()
        metric = "keyguard_decisions_total"
        allows = int(
            metric_value(after, metric, decision="allow", reason="ok")
            - metric_value(before, metric, decision="allow", reason="ok")
        )
        denies = metric_value(after, metric, decision="deny") - metric_value(
            before, metric, decision="deny"
        )
        if allows != checks or denies:
            raise RuntimeError(
                f"{spec.label}: keyguard counted {allows} allows and {denies:.0f} denies "
                f"for {checks} Checks"
            )
        holds = int(
            metric_value(after, "keyguard_holds_open") - metric_value(before, "keyguard_holds_open")
        )
        if spec.hold and holds != checks:
            raise RuntimeError(f"{spec.label}: {holds} holds placed for {checks} Checks")
    return {
        "cpu_us_per_check": cpu / checks * 1e6,
        "rps": result.rps,
        "redis_calls_per_check": sum(n for cmd, n in commands.items() if cmd in _CLIENT_COMMANDS)
        / checks,
        "redis_commands_per_check": sum(commands.values()) / checks,
        "redis_commands": commands,
        "redis_cpu_us_per_check": redis_cpu / checks * 1e6,
        "allows_counted": allows,
        "holds_placed": holds,
        "worker_cpu_seconds": worker_cpu,
        "other_load_pct": other_pct,
    }


def decision_setups(
    rig: Rig,
    specs: list[DecisionSpec],
    checks: int,
    reps: int,
    clients: int = 4,
    streams: int = 16,
) -> dict[str, dict[str, Any]]:
    """Verify each setup, warm it, then measure all of them in turn `reps` times.

    Interleaving the repetitions and taking medians keeps slow drifts and bursts of
    other work on the machine from landing on one setup only.
    """
    verified: dict[str, str] = {}
    for spec in specs:
        verified[spec.name] = verify_allow(
            rig, spec.server.target, rig.payloads[spec.body], spec.key_name, spec.hold
        )
        loadgen.h2load_grpc(
            spec.server.target, rig.bodies[spec.body], rig.plan.cpu_warmup, clients, streams
        )
    runs: dict[str, list[dict[str, Any]]] = {spec.name: [] for spec in specs}
    for rep in range(reps):
        for spec in specs:
            run = measure(rig, spec, checks, clients, streams)
            runs[spec.name].append(run)
            rig.say(
                f"  {spec.label:<44} {run['cpu_us_per_check']:>7.1f} µs CPU/Check  "
                f"{run['rps']:>8.0f} Checks/s  {run['redis_calls_per_check']:.2f} "
                f"Redis calls/Check  other load {run['other_load_pct']:.0f}%"
                + (f"  (run {rep + 1}/{reps})" if reps > 1 else "")
            )
    rows: dict[str, dict[str, Any]] = {}
    for spec in specs:
        done = runs[spec.name]
        cpu_runs = [r["cpu_us_per_check"] for r in done]
        verification = verified[spec.name]
        if isinstance(spec.server, KeyguardServer):
            counted = sum(r["allows_counted"] for r in done)
            verification += f"; keyguard_decisions_total: {counted}/{checks * reps} allow"
            if spec.hold:
                held = sum(r["holds_placed"] for r in done)
                verification += f"; keyguard_holds_open: +{held} holds"
        row: dict[str, Any] = {
            "label": spec.label,
            "checks": checks * reps,
            "runs": reps,
            "payload_bytes": len(rig.payloads[spec.body]),
            "cpu_us_per_check": round(statistics.median(cpu_runs), 1),
            "cpu_us_per_check_runs": [round(c, 1) for c in cpu_runs],
            "rps": round(statistics.median(r["rps"] for r in done), 1),
            "redis_calls_per_check": round(
                statistics.median(r["redis_calls_per_check"] for r in done), 3
            ),
            "redis_commands_per_check": round(
                statistics.median(r["redis_commands_per_check"] for r in done), 3
            ),
            "redis_commands": done[-1]["redis_commands"],
            # Other work on the machine meanwhile, % of one CPU: the noise indicator.
            "other_load_pct_runs": [round(r["other_load_pct"], 1) for r in done],
            "redis_cpu_us_per_check": round(
                statistics.median(r["redis_cpu_us_per_check"] for r in done), 1
            ),
            "load": (
                f"h2load -n {checks} -c {clients} -m {streams} -t 1 (h2c, pre-framed body),"
                f" {reps} interleaved run(s), median"
            ),
            "verified": verification,
        }
        if done[-1]["worker_cpu_seconds"]:
            # How evenly SO_REUSEPORT spread the connections over the workers.
            row["worker_cpu_seconds"] = [r["worker_cpu_seconds"] for r in done]
        rows[spec.name] = row
    return rows


def run(rig: Rig) -> dict[str, dict[str, Any]]:
    """(1) What one Check costs, side by side with the floor servicer."""
    plan = rig.plan
    rig.say(
        f"(1) decision CPU cost: {plan.cpu_reps} x {plan.cpu_checks:,} Checks per setup, "
        "interleaved, h2load direct"
    )
    specs = [
        DecisionSpec("floor", "(a) floor servicer", rig.floor, "small_unlimited", None),
        DecisionSpec("floor_4k", "(a) floor servicer, 4 KB body", rig.floor, "4k_models", None),
        DecisionSpec(
            "b_unlimited_cost0",
            "(b) keyguard unlimited, cache hit, cost=0",
            rig.kg_cost0,
            "small_unlimited",
            "unlimited",
        ),
        DecisionSpec(
            "b_unlimited_cost1",
            "(b) keyguard unlimited, cost=1 (batched)",
            rig.kg_cost1,
            "small_unlimited",
            "unlimited",
        ),
        DecisionSpec(
            "b_unlimited_cost0_nolog",
            "(b) keyguard cost=0, LOG_ALLOWS=false",
            rig.kg_nolog,
            "small_unlimited",
            "unlimited",
        ),
        DecisionSpec(
            "c_quota_rpm",
            "(c) keyguard quota + rpm (1 Redis call)",
            rig.kg_cost1,
            "small_quota",
            "quota",
        ),
        DecisionSpec(
            "c_tokens_hold",
            "(c) keyguard tokens, hold + rpm (1 call)",
            rig.kg_meter_on,
            "small_metered",
            "metered",
            hold=True,
        ),
        DecisionSpec(
            "d_models_4k",
            "(d) keyguard model list, 4 KB body, cost=0",
            rig.kg_cost0,
            "4k_models",
            "models",
        ),
    ]
    return decision_setups(rig, specs, plan.cpu_checks, plan.cpu_reps)
