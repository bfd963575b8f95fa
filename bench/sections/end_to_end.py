"""(2) End to end through Envoy --concurrency 1: wrk at full speed against each setup
(no auth, native api_key_auth, ext_authz to the floor, to keyguard over TCP and over a
Unix socket), in interleaved rounds, with Envoy's and the authz server's CPU."""

from __future__ import annotations

import statistics
from dataclasses import asdict
from typing import Any

from bench import loadgen
from bench.rig import Rig, RunningSetup
from bench.rounds import rounds_row
from bench.system import CpuMeter, OtherLoad


def one_round(rig: Rig, running: RunningSetup, headers: dict[str, str]) -> dict[str, Any]:
    """One wrk run through one Envoy, with Envoy's and the authz server's CPU."""
    setup, envoy = running.setup, running.envoy
    authz = rig.authz_pid(setup)
    other = OtherLoad([envoy.pid, *([authz] if authz else [])])
    other.start()
    stats_before = envoy.stats("ext_authz")
    envoy_meter = CpuMeter([envoy.pid])
    authz_meter = CpuMeter([authz]) if authz else None
    envoy_meter.start()
    if authz_meter:
        authz_meter.start()
    result = loadgen.wrk(running.url, headers, rig.plan.e2e_seconds)
    envoy_cpu = envoy_meter.stop()
    authz_cpu = authz_meter.stop() if authz_meter else None
    other_pct = other.stop()
    stats_after = envoy.stats("ext_authz")
    ext = {
        k.rsplit(".", 1)[-1]: stats_after[k] - stats_before.get(k, 0)
        for k in stats_after
        if k.startswith("http.llm_ingress.ext_authz.")
    }
    if ext.get("denied", 0):
        raise RuntimeError(f"{setup.name}: ext_authz denied a valid key: {ext}")
    if result.non_2xx or result.socket_errors:
        rig.say(
            f"  WARNING {setup.name}: {result.non_2xx} non-2xx answers and "
            f"{result.socket_errors} socket errors (ext_authz {ext})"
        )
    return {
        **asdict(result),
        "envoy_cpu_us_per_request": round(envoy_cpu / max(result.requests, 1) * 1e6, 1),
        "authz_cpu_us_per_request": (
            round(authz_cpu / max(result.requests, 1) * 1e6, 1) if authz_cpu is not None else None
        ),
        "ext_authz": ext,
        "other_load_pct": round(other_pct, 1),
    }


def run(rig: Rig, running: list[RunningSetup]) -> dict[str, Any]:
    plan = rig.plan
    headers = rig.good_headers
    # Rounds take the setups in turn: slow drifts on the machine land on all of them alike.
    rounds: dict[str, list[dict[str, Any]]] = {one.setup.name: [] for one in running}
    for number in range(plan.e2e_rounds):
        for one in running:
            result = one_round(rig, one, headers)
            rounds[one.setup.name].append(result)
            rig.say(
                f"  {one.setup.label:<36} {result['rps']:>9.0f} rps  p50 {result['p50_ms']:.2f} ms"
                f"  p99 {result['p99_ms']:.2f} ms  other load {result['other_load_pct']:.0f}%"
                + (f"  (round {number + 1}/{plan.e2e_rounds})" if plan.e2e_rounds > 1 else "")
            )
    e2e: dict[str, Any] = {}
    for one in running:
        done = rounds[one.setup.name]
        row: dict[str, Any] = {
            "label": one.setup.label,
            **rounds_row(
                done,
                medians=("rps", "p50_ms", "p75_ms", "p90_ms", "p99_ms"),
                sums=("requests", "non_2xx", "socket_errors"),
            ),
        }
        row["rps_runs"] = [round(r["rps"], 1) for r in done]
        for key in ("envoy_cpu_us_per_request", "authz_cpu_us_per_request"):
            values = [r[key] for r in done if r[key] is not None]
            row[key] = round(statistics.median(values), 1) if values else None
        row["ext_authz"] = {
            k: sum(r["ext_authz"].get(k, 0) for r in done) for k in done[-1]["ext_authz"]
        }
        row["other_load_pct_runs"] = [r["other_load_pct"] for r in done]
        row["other_load_pct"] = max(row["other_load_pct_runs"])
        row["verified"] = one.verified
        e2e[one.setup.name] = row
    return e2e
