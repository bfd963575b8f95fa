"""One benchmark run: start everything, measure every section side by side, stop everything."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict
from typing import Any

from bench.plan import Plan, Progress
from bench.rig import Rig, Traffic
from bench.sections import decision, end_to_end, fixed_rate, metering, unknown_flood, workers
from bench.system import loadavg, versions


class Run:
    def __init__(self, plan: Plan, progress: Progress) -> None:
        self.plan = plan
        self.say = progress
        self.rig = Rig(plan, progress)
        self.results: dict[str, Any] = {}

    def _measure(self) -> None:
        rig, plan = self.rig, self.plan
        rig.start()
        self.results["decision_cpu"] = decision.run(rig)
        self.results["workers"] = workers.run(rig)
        self.results["unknown_key_flood"] = unknown_flood.run(rig)
        self.say(
            f"(2) end to end through Envoy --concurrency 1: {plan.e2e_rounds} interleaved "
            f"round(s) of wrk -t1 -c32 -d{plan.e2e_seconds:.0f}s per setup; "
            f"(3) fixed {fixed_rate.FIXED_RATE} rps with h2load: {plan.rate_rounds} "
            f"interleaved round(s) of {plan.rate_seconds:.0f}s per setup"
        )
        # (2) and (3) share one set of running Envoys.
        with rig.envoys() as running:
            self.results["e2e"] = end_to_end.run(rig, running)
            self.results["fixed_rate"] = fixed_rate.run(rig, running)
        self.results["fixed_rate_tool"] = fixed_rate.TOOL
        self.say(
            f"(5) token metering through Envoy: {plan.meter_rounds} interleaved round(s) of "
            f"{plan.meter_requests:,} POSTs per mode, one metered key, JSON responses with usage"
        )
        traffic = Traffic(metering.KEY, rig.bodies[metering.TRAFFIC_BODY])
        with rig.envoys(rig.metering_setups, traffic) as running:
            self.results["metering"] = metering.run(rig, running)

    def execute(self) -> dict[str, Any]:
        started = dt.datetime.now(dt.UTC)
        t0 = time.monotonic()
        env = versions()
        load_before = loadavg()
        self.say(
            f"keyguard bench ({'quick' if self.plan.quick else 'full'}): Python {env['python']}, "
            f"grpcio {env['grpcio']}, protobuf {env['protobuf']} ({env['protobuf_backend']}), "
            f"Envoy {env['envoy']}, Redis {env['redis']}, {env['cpu_count']} CPUs"
        )
        try:
            self._measure()
        except BaseException:
            self.rig.dump_logs()
            raise
        finally:
            self.say("stopping every process started")
            self.rig.stop()
        return {
            "schema": 1,
            "date": started.date().isoformat(),
            "started": started.isoformat(timespec="seconds"),
            "wall_seconds": round(time.monotonic() - t0, 1),
            "mode": "quick" if self.plan.quick else "full",
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
            "environment": env,
            "plan": asdict(self.plan),
            **self.results,
        }
