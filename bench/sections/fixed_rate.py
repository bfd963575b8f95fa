"""(3) Latency at a fixed 1,000 requests/s through Envoy, open loop (h2load), per setup."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from bench import loadgen
from bench.rig import Rig, RunningSetup
from bench.rounds import rounds_row
from bench.system import OtherLoad

FIXED_RATE = 1000
TOOL = (
    "h2load (nghttp2) open loop over h2c: 50 connections opened 1 ms apart, each at "
    f"{FIXED_RATE // 50} req/s with up to 16 streams in flight, latency per request from "
    "--log-file (send to end of response). wrk2 is not packaged in Debian."
)


def run(rig: Rig, running: list[RunningSetup]) -> dict[str, Any]:
    plan = rig.plan
    # Setups take turns, so that one burst of other work on the machine cannot land on
    # one setup's tail only.
    rate_runs: dict[str, list[dict[str, Any]]] = {name: [] for name in plan.rate_setups}
    for number in range(plan.rate_rounds):
        for one in running:
            setup = one.setup
            if setup.name not in plan.rate_setups:
                continue
            authz = rig.authz_pid(setup)
            other = OtherLoad([one.envoy.pid, *([authz] if authz else [])])
            other.start()
            rate = loadgen.h2load_fixed_rate(
                one.url,
                rig.good_headers,
                FIXED_RATE,
                plan.rate_seconds,
                plan.rate_warmup,
                rig.tmp / f"rate-{setup.name}-{number}.log",
            )
            if rate.non_200 or rate.failed:
                rig.say(
                    f"  WARNING {setup.name}: {rate.non_200} non-200 answers and "
                    f"{rate.failed} failed requests at {FIXED_RATE} rps"
                )
            rate_runs[setup.name].append({**asdict(rate), "other_load_pct": other.stop()})
            rig.say(
                f"  {setup.label:<36} @{FIXED_RATE} rps: p50 {rate.p50_ms:.2f}  "
                f"p99 {rate.p99_ms:.2f}  p99.9 {rate.p999_ms:.2f} ms "
                f"({rate.achieved_rps:.0f} rps achieved)"
                + (f"  (round {number + 1}/{plan.rate_rounds})" if plan.rate_rounds > 1 else "")
            )
    fixed: dict[str, Any] = {}
    for one in running:
        done = rate_runs.get(one.setup.name)
        if not done:
            continue
        row = {
            "label": one.setup.label,
            **done[-1],
            **rounds_row(
                done,
                medians=("achieved_rps", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"),
                sums=("sent", "measured", "non_200", "failed"),
            ),
        }
        row["p99_ms_runs"] = [r["p99_ms"] for r in done]
        row["other_load_pct"] = round(max(r["other_load_pct"] for r in done), 1)
        fixed[one.setup.name] = row
    return fixed
