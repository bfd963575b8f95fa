"""(4) Workers: Checks per second of `keyguard serve --workers 2` against one worker."""

from __future__ import annotations

from typing import Any

from bench.rig import Rig
from bench.sections.decision import DecisionSpec, decision_setups


def run(rig: Rig) -> dict[str, Any]:
    plan = rig.plan
    rig.say(
        f"(4) workers: {plan.cpu_reps} x {plan.workers_checks:,} Checks over 16 connections,"
        " keyguard cost=1"
    )
    specs = [
        DecisionSpec(
            f"workers_{count}",
            f"keyguard --workers {count}",
            server,
            "small_unlimited",
            "unlimited",
        )
        for count, server in (("1", rig.kg_cost1), ("2", rig.kg_workers2))
    ]
    rows = decision_setups(rig, specs, plan.workers_checks, plan.cpu_reps, clients=16, streams=8)
    out: dict[str, Any] = {}
    for count in ("1", "2"):
        row = rows[f"workers_{count}"]
        out[count] = {
            key: row[key]
            for key in ("rps", "cpu_us_per_check", "checks", "load", "verified")
            + (("worker_cpu_seconds",) if "worker_cpu_seconds" in row else ())
        }
    out["speedup"] = round(out["2"]["rps"] / out["1"]["rps"], 2)
    rig.say(f"  --workers 2 gives {out['speedup']}x the Checks/s of --workers 1")
    return out
