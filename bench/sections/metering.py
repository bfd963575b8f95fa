"""(5) Token metering through Envoy: one metered key, JSON chat completions with usage.

The deployed envoy.yaml (ext_authz, json_to_metadata / sse_to_metadata, the gRPC access
log to keyguard) in front of keyguard with KEYGUARD_METERING=tokens (a hold at Check in
the one spend.lua call, settlement from the access log in settle.lua batches) and with
KEYGUARD_METERING=request (the same spend.lua call spends one unit; no hold, so nothing
is logged or settled), the same key, in interleaved rounds. Each round sends a fixed
number of POSTs that are all answered (h2load, closed loop over HTTP/1.1 like wrk -c32),
so no request is cut off holding credits that nothing would settle.

Per mode: requests/s, keyguard's CPU per request for Check plus settlement (the meter
runs until the key holds nothing), Envoy's CPU per request, and Redis calls per request:
spend.lua and settle.lua told apart by keyguard's per-operation counts
(keyguard_redis_duration_seconds_count{op=...}), their total cross-checked with Redis's
commandstats. Every round proves what it measured: one allow per request, the key's
`used` grown by exactly the documented cost of the usage settled, and `held` back to 0.
"""

from __future__ import annotations

import json
import time
from typing import Any

from bench import loadgen
from bench.payloads import MODEL, USAGE_COMPLETION_TOKENS, USAGE_PROMPT_TOKENS, usage_cost
from bench.probes import metric_by_label, metric_value, redis_command_calls
from bench.rig import Rig, RunningSetup, Traffic
from bench.rounds import paired_ratio, rounds_row
from bench.system import CpuMeter, OtherLoad
from harness.cli import keys_cli
from harness.keyguard import KeyguardServer

KEY = "metered_e2e"
TRAFFIC_BODY = "chat_small"
CLIENTS = 32
SETTLE_TIMEOUT = 10.0
_REDIS_OPS = ("spend", "settle", "add_usage")
_SCRIPT_COMMANDS = ("evalsha", "eval")


def key_state(rig: Rig) -> dict[str, Any]:
    code, out = keys_cli(rig.redis_server.url, "show", rig.keys[KEY]["id"], "--json")
    if code != 0:
        raise RuntimeError(f"keyguard keys show exited with {code}")
    return dict(json.loads(out))


def _counts(server: KeyguardServer) -> dict[str, Any]:
    text = server.metrics_text()
    out: dict[str, Any] = {
        "allows": metric_value(text, "keyguard_decisions_total", decision="allow", reason="ok"),
        "denies": metric_value(text, "keyguard_decisions_total", decision="deny"),
        "settlements": metric_by_label(text, "keyguard_settlements_total", "outcome"),
    }
    for op in _REDIS_OPS:
        out[op] = metric_value(text, "keyguard_redis_duration_seconds_count", op=op)
    return out


def wait_settled(
    rig: Rig, server: KeyguardServer, timeout: float = SETTLE_TIMEOUT
) -> dict[str, Any]:
    """The key once it holds nothing (every hold placed has been settled: all Checks are
    answered by then) and keyguard's count of settle calls has caught up with Redis."""
    deadline = time.monotonic() + timeout
    calls = -1.0
    while True:
        state = key_state(rig)
        now = metric_value(server.metrics_text(), "keyguard_redis_duration_seconds_count")
        if (state["held"] == 0 and now == calls) or time.monotonic() > deadline:
            return state
        calls = now
        time.sleep(0.05)


def server_for(rig: Rig, setup_name: str) -> KeyguardServer:
    return rig.kg_meter_on if setup_name == "metering_on" else rig.kg_meter_off


def one_round(rig: Rig, running: RunningSetup) -> dict[str, Any]:
    """A fixed number of metered requests through one Envoy, until all are settled."""
    name, envoy = running.setup.name, running.envoy
    server = server_for(rig, name)
    requests = rig.plan.meter_requests
    traffic = Traffic(KEY, rig.bodies[TRAFFIC_BODY])
    # The warm-up's or the other mode's holds are settled before anything is counted.
    for other_server in (rig.kg_meter_on, rig.kg_meter_off):
        wait_settled(rig, other_server)
    state_before = key_state(rig)
    counts_before = _counts(server)
    calls_before = redis_command_calls(rig.redis)
    ext_before = envoy.stats("ext_authz")
    meters = {
        "keyguard": CpuMeter([server.pid]),
        "envoy": CpuMeter([envoy.pid]),
        "redis": CpuMeter([rig.redis_server.pid]),
    }
    other = OtherLoad([server.pid, envoy.pid, rig.redis_server.pid])
    other.start()
    for meter in meters.values():
        meter.start()
    result = loadgen.h2load_http(
        running.url, rig.headers(traffic), requests, traffic.body, clients=CLIENTS
    )
    # Check plus settlement: the meters run until the last hold of the round is settled.
    state_after = wait_settled(rig, server)
    cpu = {who: meter.stop() for who, meter in meters.items()}
    other_pct = other.stop()
    counts_after = _counts(server)
    calls_after = redis_command_calls(rig.redis)
    ext_after = envoy.stats("ext_authz")
    ext = {
        k.rsplit(".", 1)[-1]: ext_after[k] - ext_before.get(k, 0)
        for k in ext_after
        if k.startswith("http.llm_ingress.ext_authz.")
    }
    delta = {op: int(counts_after[op] - counts_before[op]) for op in _REDIS_OPS}
    allows = int(counts_after["allows"] - counts_before["allows"])
    denies = int(counts_after["denies"] - counts_before["denies"])
    settled = {
        outcome: int(n - counts_before["settlements"].get(outcome, 0))
        for outcome, n in counts_after["settlements"].items()
        if n != counts_before["settlements"].get(outcome, 0)
    }
    scripts = sum(calls_after.get(c, 0) - calls_before.get(c, 0) for c in _SCRIPT_COMMANDS)
    used = state_after["used"] - state_before["used"]
    metering_on = name == "metering_on"
    # What this round must show, whatever the figures.
    problems: list[str] = []
    if allows != requests or denies or result.status_2xx != requests:
        problems.append(
            f"{allows} allows, {denies} denies, {result.status_2xx} HTTP 2xx for {requests} "
            "requests"
        )
    if delta["spend"] != requests:
        problems.append(f"{delta['spend']} spend.lua calls for {requests} requests")
    if metering_on:
        expected = settled.get("usage", 0) * usage_cost()
        if settled != {"usage": requests}:
            problems.append(f"settlements {settled}, expected {{'usage': {requests}}}")
        if used != expected:
            problems.append(f"used grew by {used}, expected {expected}")
    else:
        expected = requests  # one request unit each (KEYGUARD_REQUEST_COST=1)
        if used != expected or settled or delta["settle"]:
            problems.append(f"used grew by {used} (expected {expected}), settlements {settled}")
    if state_after["held"] != 0:
        problems.append(f"held {state_after['held']} after {SETTLE_TIMEOUT:g}s")
    if scripts != sum(delta.values()):
        problems.append(
            f"Redis counted {scripts} EVALSHA/EVAL, keyguard {sum(delta.values())} ({delta})"
        )
    for problem in problems:
        rig.say(f"  WARNING {name}: {problem}")
    return {
        "requests": result.requests,
        "seconds": result.seconds,
        "rps": result.rps,
        "non_2xx": result.requests - result.status_2xx,
        "keyguard_cpu_us_per_request": round(cpu["keyguard"] / requests * 1e6, 1),
        "envoy_cpu_us_per_request": round(cpu["envoy"] / requests * 1e6, 1),
        "redis_cpu_us_per_request": round(cpu["redis"] / requests * 1e6, 1),
        "spend_calls_per_request": delta["spend"] / requests,
        "settle_calls_per_request": delta["settle"] / requests,
        "redis_scripts_per_request": scripts / requests,
        "spend_calls": delta["spend"],
        "settle_calls": delta["settle"],
        "add_usage_calls": delta["add_usage"],
        "redis_scripts": scripts,
        "used_delta": used,
        "used_expected": expected,
        "held_after": state_after["held"],
        "settlements": settled,
        "ext_authz": ext,
        "problems": problems,
        "other_load_pct": round(other_pct, 1),
    }


def run(rig: Rig, running: list[RunningSetup]) -> dict[str, Any]:
    plan = rig.plan
    by_name = {one.setup.name: one for one in running}
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in by_name}
    for number in range(plan.meter_rounds):
        # Each round takes both modes, in alternating order.
        order = ["metering_off", "metering_on"]
        if number % 2:
            order.reverse()
        for name in order:
            one = by_name[name]
            result = one_round(rig, one)
            rounds[name].append(result)
            rig.say(
                f"  {one.setup.label:<42} {result['rps']:>7.0f} rps  keyguard "
                f"{result['keyguard_cpu_us_per_request']:.0f} µs CPU/req  spend "
                f"{result['spend_calls_per_request']:.2f}  settle "
                f"{result['settle_calls_per_request']:.4f} calls/req  other load "
                f"{result['other_load_pct']:.0f}%"
                + (f"  (round {number + 1}/{plan.meter_rounds})" if plan.meter_rounds > 1 else "")
            )
    out: dict[str, Any] = {
        "load": (
            f"h2load --h1 -n {plan.meter_requests} -c {CLIENTS} -t 1, POST of a small chat "
            f"completion request ({MODEL}, max_tokens 128), {plan.meter_rounds} interleaved "
            "round(s) per mode, the order alternating"
        ),
        "response": (
            f"chat.completion JSON (application/json) with usage: {USAGE_PROMPT_TOKENS} "
            f"prompt and {USAGE_COMPLETION_TOKENS} completion tokens"
        ),
        "cost_per_response": usage_cost(),
    }
    for name, one in by_name.items():
        done = rounds[name]
        row: dict[str, Any] = {
            "label": one.setup.label,
            **rounds_row(
                done,
                medians=(
                    "rps",
                    "keyguard_cpu_us_per_request",
                    "envoy_cpu_us_per_request",
                    "redis_cpu_us_per_request",
                    "spend_calls_per_request",
                    "settle_calls_per_request",
                    "redis_scripts_per_request",
                ),
                sums=(
                    "requests",
                    "non_2xx",
                    "spend_calls",
                    "settle_calls",
                    "add_usage_calls",
                    "redis_scripts",
                    "used_delta",
                    "used_expected",
                ),
            ),
        }
        row["rps_runs"] = [round(r["rps"], 1) for r in done]
        row["keyguard_cpu_us_per_request_runs"] = [r["keyguard_cpu_us_per_request"] for r in done]
        row["held_after"] = [r["held_after"] for r in done]
        row["settlements"] = {
            k: sum(r["settlements"].get(k, 0) for r in done)
            for k in {k for r in done for k in r["settlements"]}
        }
        row["problems"] = [p for r in done for p in r["problems"]]
        row["other_load_pct_runs"] = [r["other_load_pct"] for r in done]
        calls = row["spend_calls"] + row["settle_calls"] + row["add_usage_calls"]
        row["verified"] = (
            f"{one.verified}; every request an allow; used +{row['used_delta']:,} "
            f"(expected {row['used_expected']:,}); held after each round "
            f"{', '.join(str(h) for h in row['held_after'])}; EVALSHA in commandstats "
            f"{row['redis_scripts']:,} {'=' if row['redis_scripts'] == calls else '≠'} "
            f"keyguard's spend + settle + add_usage {calls:,}"
        )
        out[name] = row
    on, off = out["metering_on"], out["metering_off"]
    # Medians of the per-round ratios, as the targets take them.
    out["rps_ratio"] = round(paired_ratio(on["rps_runs"], off["rps_runs"]), 3)
    out["keyguard_cpu_ratio"] = round(
        paired_ratio(
            on["keyguard_cpu_us_per_request_runs"], off["keyguard_cpu_us_per_request_runs"]
        ),
        3,
    )
    rig.say(
        f"  metering on ÷ off: {out['rps_ratio']:.2f}x requests/s, keyguard CPU per request "
        f"{out['keyguard_cpu_ratio']:.2f}x"
    )
    return out
