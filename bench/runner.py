"""One benchmark run: start everything, measure every section side by side, stop everything."""

from __future__ import annotations

import datetime as dt
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import loadgen
from bench.envoy_setups import EnvoySetup, capture_config, render_setups, validate_all
from bench.flood import flood
from bench.payloads import (
    ALLOWED_MODELS,
    PLACEHOLDER_KEY,
    chat_body_4k,
    small_chat_body,
    with_key,
    write_body,
)
from bench.procs import (
    FloorServer,
    Keyguard,
    Processes,
    grpc_check,
    http_status,
    metric_value,
    redis_command_calls,
)
from bench.system import CpuMeter, OtherLoad, loadavg, rss_bytes, versions
from keyguard._proto.envoy.service.auth.v3.external_auth_pb2 import CheckResponse
from keyguard.cache import KeyCache
from keyguard.keys import hash_key
from keyguard.settings import DEFAULTS
from tests.support.checks import create_key
from tests.support.envoy import EnvoyProcess
from tests.support.procs import RedisServer

E2E_PATH = "/v1/chat/completions"
FIXED_RATE = 1000
MB = 2**20
# Redis commands that are background chatter (health probes, stats), not Check traffic.
_BACKGROUND_COMMANDS = frozenset({"ping", "info", "publish", "subscribe", "client|setinfo"})
# Commands keyguard sends itself; commandstats also counts those its Lua scripts run.
_CLIENT_COMMANDS = frozenset({"hgetall", "evalsha", "eval", "script|load"})


@dataclass(frozen=True)
class DecisionSpec:
    name: str
    label: str
    server: FloorServer | Keyguard
    body: str  # a key of Run.payloads / Run.bodies
    key_name: str | None  # the key it must be allowed as (None: the floor)


@dataclass(frozen=True)
class Plan:
    quick: bool
    cpu_checks: int
    cpu_reps: int
    cpu_warmup: int
    workers_checks: int
    flood_seconds: float
    flood_max_keys: int
    e2e_seconds: float
    e2e_rounds: int
    rate_seconds: float
    rate_warmup: float
    rate_setups: tuple[str, ...]
    rate_rounds: int

    @classmethod
    def full(cls) -> Plan:
        return cls(
            quick=False,
            cpu_checks=8_000,
            cpu_reps=7,
            cpu_warmup=2_000,
            workers_checks=6_000,
            flood_seconds=50.0,
            flood_max_keys=1_000_000,
            e2e_seconds=3.0,
            e2e_rounds=5,
            rate_seconds=4.0,
            rate_warmup=1.0,
            rate_setups=("api_key_auth", "floor", "keyguard_tcp"),
            rate_rounds=3,
        )

    @classmethod
    def fast(cls) -> Plan:
        return cls(
            quick=True,
            cpu_checks=2_000,
            cpu_reps=1,
            cpu_warmup=200,
            workers_checks=2_000,
            flood_seconds=2.0,
            flood_max_keys=1_000_000,
            e2e_seconds=1.0,
            e2e_rounds=1,
            rate_seconds=1.5,
            rate_warmup=0.3,
            rate_setups=("api_key_auth", "keyguard_tcp"),
            rate_rounds=1,
        )


class Progress:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {message}", flush=True)


def _allowed(resp: CheckResponse) -> bool:
    return resp.status.code == 0 and resp.HasField("ok_response")


def _upstream_header(resp: CheckResponse, name: str) -> str:
    for option in resp.ok_response.headers:
        if option.header.key == name:
            return option.header.value
    return ""


def _deny_reason(resp: CheckResponse) -> str:
    for option in resp.denied_response.headers:
        if option.header.key == "x-keyguard-reason":
            return option.header.value
    return ""


def _rounds_row(
    done: list[dict[str, Any]], medians: tuple[str, ...], sums: tuple[str, ...]
) -> dict[str, Any]:
    """One setup's rounds as one row: medians of the figures, totals of the counts."""
    row: dict[str, Any] = {"rounds": len(done)}
    for key in medians:
        row[key] = round(statistics.median(r[key] for r in done), 3)
    for key in sums:
        row[key] = sum(r[key] for r in done)
    row["seconds"] = round(sum(r["seconds"] for r in done), 2)
    return row


class Run:
    def __init__(self, plan: Plan, progress: Progress) -> None:
        self.plan = plan
        self.say = progress
        self.procs = Processes()
        self.tmp = Path(tempfile.mkdtemp(prefix="kg-bench-"))
        self.results: dict[str, Any] = {}
        self.keys: dict[str, dict[str, Any]] = {}
        self.payloads: dict[str, bytes] = {}
        self.bodies: dict[str, Path] = {}

    # ----- set-up -------------------------------------------------------------------

    def start(self) -> None:
        say = self.say
        redis_server = RedisServer()
        self.procs.redis = redis_server
        redis_server.start()
        self.redis = redis_server.client()
        say(f"redis-server on :{redis_server.port}")
        url = redis_server.url
        unlimited = ["--unlimited"]
        self.keys = {
            "unlimited": create_key(url, *unlimited),
            "quota": create_key(url, "--quota", "1000000000000", "--rpm", "100000000"),
            "models": create_key(url, *unlimited, "--models", ALLOWED_MODELS),
        }
        say("keys created: unlimited, quota+rpm, unlimited+model list")

        self.floor = FloorServer()
        self.capture = FloorServer(capture_dir=self.tmp)
        self.kg_cost1 = Keyguard(
            "keyguard cost=1", url, {}, unix_socket=str(self.tmp / "keyguard.sock")
        )
        self.kg_cost0 = Keyguard("keyguard cost=0", url, {"KEYGUARD_REQUEST_COST": "0"})
        self.kg_nolog = Keyguard(
            "keyguard cost=0 no allow logs",
            url,
            {"KEYGUARD_REQUEST_COST": "0", "KEYGUARD_LOG_ALLOWS": "false"},
        )
        self.kg_workers2 = Keyguard("keyguard --workers 2", url, {"KEYGUARD_WORKERS": "2"})
        self.kg_flood = Keyguard("keyguard (flood)", url, {})
        servers: list[FloorServer | Keyguard] = [
            self.floor,
            self.capture,
            self.kg_cost1,
            self.kg_cost0,
            self.kg_nolog,
            self.kg_workers2,
            self.kg_flood,
        ]
        # Start them all at once and wait once: imports dominate start-up.
        for server in servers:
            self.procs.servers.append(server)
            if isinstance(server, Keyguard):
                server.start(wait=False)
            else:
                server.start()
        for server in servers:
            server.wait()
        say(f"floor servicer and {len(servers) - 2} keyguard servers up")

        self.setups = render_setups(
            self.tmp,
            floor_port=self.floor.port,
            keyguard_port=self.kg_cost1.port,
            keyguard_socket=str(self.tmp / "keyguard.sock"),
            api_keys={"bench": self.keys["unlimited"]["key"]},
        )
        capture_path, cap_listen, cap_admin = capture_config(self.tmp, self.capture.port)
        validate_all([s.config for s in self.setups] + [capture_path])
        say(f"{len(self.setups) + 1} Envoy configs pass `envoy --mode validate`")
        self._capture(capture_path, cap_listen, cap_admin)

    def _capture(self, config: Path, listen_port: int, admin_port: int) -> None:
        """Send one small and one 4 KB request through Envoy; keep the CheckRequests."""
        envoy = EnvoyProcess(config, listen_port=listen_port, admin_port=admin_port)
        self.procs.envoys.append(envoy)
        envoy.start()
        bodies = {"small": small_chat_body(), "4k": chat_body_4k()}
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        for index, (name, body) in enumerate(bodies.items()):
            request = urllib.request.Request(  # noqa: S310 (http:// to our Envoy)
                f"{envoy.base_url}{E2E_PATH}",
                data=body,
                headers={
                    "Authorization": f"Bearer {PLACEHOLDER_KEY}",
                    "Content-Type": "application/json",
                    "User-Agent": "OpenAI/Python 1.40.0",
                    "Accept": "application/json",
                },
                method="POST",
            )
            with opener.open(request, timeout=10) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"capture request answered {resp.status}")
            path = self.tmp / f"{index}.bin"
            deadline = time.monotonic() + 10
            while not path.exists():
                if time.monotonic() > deadline:
                    raise RuntimeError("the capture servicer wrote no request")
                time.sleep(0.02)
            self.payloads[name] = path.read_bytes()
        self.procs.stop_envoy(envoy)
        self.procs.stop_server(self.capture)
        sizes = ", ".join(f"{k} {len(v)} B" for k, v in self.payloads.items())
        self.say(f"captured Envoy's CheckRequests ({sizes})")
        for name, payload_name, key_name in (
            ("small_unlimited", "small", "unlimited"),
            ("small_quota", "small", "quota"),
            ("4k_models", "4k", "models"),
        ):
            message = with_key(self.payloads[payload_name], self.keys[key_name]["key"])
            self.payloads[name] = message
            self.bodies[name] = write_body(self.tmp / f"body-{name}.bin", message)

    # ----- (1) decision CPU cost ----------------------------------------------------

    def _verify_allow(self, target: str, message: bytes, key_name: str | None) -> str:
        resp = grpc_check(target, message)
        if not _allowed(resp):
            raise RuntimeError(f"{target}: expected an allow, got {resp}")
        if key_name is None:
            return "sample: grpc-status OK, allow"
        want = self.keys[key_name]["id"]
        got = _upstream_header(resp, "x-keyguard-key-id")
        if got != want:
            raise RuntimeError(f"{target}: allowed as {got!r}, expected key {want!r}")
        return f"sample: grpc-status OK, allow as {want}"

    def _measure(
        self, spec: DecisionSpec, checks: int, clients: int, streams: int
    ) -> dict[str, Any]:
        """One h2load run of `checks` Checks, with the server's and Redis's CPU time."""
        server = spec.server
        keyguard = server if isinstance(server, Keyguard) else None
        before = keyguard.metrics() if keyguard else ""
        calls_before = redis_command_calls(self.redis)
        workers = keyguard.worker_pids() if keyguard and keyguard.workers > 1 else []
        meter = CpuMeter([server.pid], include_children=bool(workers))
        worker_meters = [CpuMeter([pid]) for pid in workers]
        assert self.procs.redis is not None and self.procs.redis.proc is not None
        redis_meter = CpuMeter([self.procs.redis.proc.pid])
        other = OtherLoad([server.pid, self.procs.redis.proc.pid])
        other.start()
        for m in (meter, redis_meter, *worker_meters):
            m.start()
        result = loadgen.h2load_grpc(
            server.target, self.bodies[spec.body], checks, clients, streams
        )
        cpu = meter.stop()
        redis_cpu = redis_meter.stop()
        worker_cpu = [round(m.stop(), 2) for m in worker_meters]
        other_pct = other.stop()
        calls_after = redis_command_calls(self.redis)
        commands = {
            cmd: calls_after[cmd] - calls_before.get(cmd, 0)
            for cmd in calls_after
            if cmd not in _BACKGROUND_COMMANDS and calls_after[cmd] != calls_before.get(cmd, 0)
        }
        allows = checks
        if keyguard:
            # h2load cannot see grpc-status: keyguard's own counters must show one allow
            # per Check sent, and no denial.
            after = keyguard.metrics()
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
        return {
            "cpu_us_per_check": cpu / checks * 1e6,
            "rps": result.rps,
            "redis_calls_per_check": sum(
                n for cmd, n in commands.items() if cmd in _CLIENT_COMMANDS
            )
            / checks,
            "redis_commands_per_check": sum(commands.values()) / checks,
            "redis_commands": commands,
            "redis_cpu_us_per_check": redis_cpu / checks * 1e6,
            "allows_counted": allows,
            "worker_cpu_seconds": worker_cpu,
            "other_load_pct": other_pct,
        }

    def _decision_setups(
        self,
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
            verified[spec.name] = self._verify_allow(
                spec.server.target, self.payloads[spec.body], spec.key_name
            )
            loadgen.h2load_grpc(
                spec.server.target, self.bodies[spec.body], self.plan.cpu_warmup, clients, streams
            )
        runs: dict[str, list[dict[str, Any]]] = {spec.name: [] for spec in specs}
        for rep in range(reps):
            for spec in specs:
                run = self._measure(spec, checks, clients, streams)
                runs[spec.name].append(run)
                self.say(
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
            if isinstance(spec.server, Keyguard):
                counted = sum(r["allows_counted"] for r in done)
                verification += f"; keyguard_decisions_total: {counted}/{checks * reps} allow"
            row: dict[str, Any] = {
                "label": spec.label,
                "checks": checks * reps,
                "runs": reps,
                "payload_bytes": len(self.payloads[spec.body]),
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

    def decision_cpu(self) -> None:
        plan = self.plan
        self.say(
            f"(1) decision CPU cost: {plan.cpu_reps} x {plan.cpu_checks:,} Checks per setup, "
            "interleaved, h2load direct"
        )
        specs = [
            DecisionSpec("floor", "(a) floor servicer", self.floor, "small_unlimited", None),
            DecisionSpec(
                "floor_4k", "(a) floor servicer, 4 KB body", self.floor, "4k_models", None
            ),
            DecisionSpec(
                "b_unlimited_cost0",
                "(b) keyguard unlimited, cache hit, cost=0",
                self.kg_cost0,
                "small_unlimited",
                "unlimited",
            ),
            DecisionSpec(
                "b_unlimited_cost1",
                "(b) keyguard unlimited, cost=1 (batched)",
                self.kg_cost1,
                "small_unlimited",
                "unlimited",
            ),
            DecisionSpec(
                "b_unlimited_cost0_nolog",
                "(b) keyguard cost=0, LOG_ALLOWS=false",
                self.kg_nolog,
                "small_unlimited",
                "unlimited",
            ),
            DecisionSpec(
                "c_quota_rpm",
                "(c) keyguard quota + rpm (1 Redis call)",
                self.kg_cost1,
                "small_quota",
                "quota",
            ),
            DecisionSpec(
                "d_models_4k",
                "(d) keyguard model list, 4 KB body, cost=0",
                self.kg_cost0,
                "4k_models",
                "models",
            ),
        ]
        self.results["decision_cpu"] = self._decision_setups(specs, plan.cpu_checks, plan.cpu_reps)

    # ----- (4) workers --------------------------------------------------------------

    def workers(self) -> None:
        plan = self.plan
        self.say(
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
            for count, server in (("1", self.kg_cost1), ("2", self.kg_workers2))
        ]
        rows = self._decision_setups(
            specs, plan.workers_checks, plan.cpu_reps, clients=16, streams=8
        )
        out: dict[str, Any] = {}
        for count in ("1", "2"):
            row = rows[f"workers_{count}"]
            out[count] = {
                key: row[key]
                for key in ("rps", "cpu_us_per_check", "checks", "load", "verified")
                + (("worker_cpu_seconds",) if "worker_cpu_seconds" in row else ())
            }
        out["speedup"] = round(out["2"]["rps"] / out["1"]["rps"], 2)
        self.say(f"  --workers 2 gives {out['speedup']}x the Checks/s of --workers 1")
        self.results["workers"] = out

    # ----- (e) unknown-key flood ------------------------------------------------------

    def unknown_flood(self) -> None:
        plan = self.plan
        server = self.kg_flood
        self.say(
            f"(e) unknown-key flood: up to {plan.flood_max_keys:,} distinct keys for "
            f"{plan.flood_seconds:.0f}s, 1 block in 4 sent twice (Python grpc.aio driver)"
        )
        template = self.payloads["small"]
        calls_before = redis_command_calls(self.redis)
        metrics_before = server.metrics()
        meter = CpuMeter([server.pid])
        meter.start()
        result = flood(
            server.target,
            template,
            max_keys=plan.flood_max_keys,
            seconds=plan.flood_seconds,
            sample_rss=lambda: rss_bytes(server.pid),
            progress=self.say,
        )
        cpu = meter.stop()
        calls_after = redis_command_calls(self.redis)
        metrics_after = server.metrics()
        # Every answer must be the invalid_api_key denial.
        for reply, count in result.responses.items():
            resp = CheckResponse.FromString(reply)
            if _deny_reason(resp) != "invalid_api_key" or resp.denied_response.status.code != 401:
                raise RuntimeError(f"flood: {count} answers were not invalid_api_key: {resp}")
        lookups = calls_after.get("hgetall", 0) - calls_before.get("hgetall", 0)
        negative_hits = metric_value(
            metrics_after, "keyguard_cache_hits_total", kind="negative"
        ) - metric_value(metrics_before, "keyguard_cache_hits_total", kind="negative")
        samples = result.rss_samples
        distinct = result.distinct_keys
        rss_start, rss_end = samples[0][2], samples[-1][2]
        rss_max = max(rss for _, _, rss in samples)
        neg_size = DEFAULTS.negative_cache_size
        entry_bytes = negative_entry_bytes()
        target_keys = 1_000_000
        projected = distinct < target_keys
        growth = max(0.0, (rss_end - rss_start) / distinct)
        if distinct > neg_size:
            # Past the cap the LRU evicts one entry per new key: growth there must be ~0.
            at_cap = next(rss for _, keys, rss in samples if keys >= neg_size)
            after_cap = max(0.0, (rss_end - at_cap) / (distinct - neg_size))
            rss_1m = rss_end + (target_keys - distinct) * after_cap
            how = (
                f"past the negative cache's cap of {neg_size:,} entries RSS grew "
                f"{after_cap:,.0f} B per key ({at_cap / MB:.1f} → {rss_end / MB:.1f} MB); "
                f"1M = measured RSS + the remaining keys at that rate"
            )
        else:
            per_entry = max(entry_bytes, growth)
            more = max(0, min(target_keys, neg_size) - distinct)
            rss_1m = rss_end + more * per_entry
            how = (
                f"1M = measured RSS + {more:,} more negative-cache entries x {per_entry:,.0f} B"
                f" (the larger of the measured RSS growth per key and the entry size measured "
                f"with tracemalloc); the negative cache is an LRU capped at {neg_size:,} "
                f"entries, so RSS stops growing there"
            )
        note = (
            f"sent {distinct:,} distinct unknown keys ({result.repeated_keys:,} of them twice; "
            f"{result.checks:,} Checks) in {result.seconds:.0f}s at "
            f"{distinct / result.seconds:,.0f} new keys/s"
            + (
                f"; 1,000,000 keys do not fit the time budget at that rate (they would take "
                f"{target_keys / (distinct / result.seconds) / 60:.0f} min), so the RSS at 1M "
                f"is extrapolated: {how}"
                if projected
                else "; all 1,000,000 keys were sent"
            )
        )
        out = {
            "driver": "Python grpc.aio (pre-serialized bytes), the one Python-driven load",
            "distinct_keys": distinct,
            "repeated_keys": result.repeated_keys,
            "checks": result.checks,
            "seconds": round(result.seconds, 2),
            "new_keys_per_second": round(distinct / result.seconds, 1),
            "checks_per_second": round(result.checks / result.seconds, 1),
            "cpu_us_per_check": round(cpu / result.checks * 1e6, 1),
            "cpu_us_per_distinct_key": round(cpu / distinct * 1e6, 1),
            "redis_lookups": lookups,
            "redis_lookups_per_distinct_key": round(lookups / distinct, 4),
            "negative_cache_hits": int(negative_hits),
            "negative_cache_ttl_s": DEFAULTS.negative_cache_ttl,
            "negative_cache_size": neg_size,
            "rss_start_mb": round(rss_start / MB, 1),
            "rss_max_mb": round(rss_max / MB, 1),
            "rss_end_mb": round(rss_end / MB, 1),
            "rss_growth_bytes_per_key": round(growth, 1),
            "negative_entry_bytes": round(entry_bytes, 1),
            "rss_projected_1m_mb": round(rss_1m / MB, 1),
            "projected": projected,
            "rss_by_keys": [[keys, round(rss / MB, 2)] for _, keys, rss in samples],
            "note": note,
        }
        self.say(
            f"  {distinct:,} keys, {out['cpu_us_per_check']} µs CPU/Check, "
            f"{out['redis_lookups_per_distinct_key']} Redis lookups/key, RSS "
            f"{out['rss_start_mb']}→{out['rss_end_mb']} MB (1M: {out['rss_projected_1m_mb']} MB"
            f"{', extrapolated' if projected else ''})"
        )
        self.results["unknown_key_flood"] = out

    # ----- (2) end to end, (3) fixed rate --------------------------------------------

    def _verify_envoy(self, setup: EnvoySetup, url: str) -> str:
        good = {"Authorization": f"Bearer {self.keys['unlimited']['key']}"}
        bad = {"Authorization": "Bearer sk-" + "Z" * 48}
        status_good = http_status(url, good)
        status_bad = http_status(url, bad)
        want_bad = 200 if setup.name in ("none", "floor") else 401
        if status_good != 200 or status_bad != want_bad:
            raise RuntimeError(
                f"{setup.name}: good key → {status_good}, bad key → {status_bad} "
                f"(expected 200 and {want_bad})"
            )
        return f"HTTP: good key {status_good}, unknown key {status_bad}"

    def _authz_pid(self, setup: EnvoySetup) -> int | None:
        if setup.name == "floor":
            return self.floor.pid
        if setup.name.startswith("keyguard"):
            return self.kg_cost1.pid
        return None

    def _e2e_round(
        self, setup: EnvoySetup, envoy: EnvoyProcess, url: str, headers: dict[str, str]
    ) -> dict[str, Any]:
        """One wrk run through one Envoy, with Envoy's and the authz server's CPU."""
        assert envoy.proc is not None
        authz = self._authz_pid(setup)
        other = OtherLoad([envoy.proc.pid, *([authz] if authz else [])])
        other.start()
        stats_before = envoy.stats("ext_authz")
        envoy_meter = CpuMeter([envoy.proc.pid])
        authz_meter = CpuMeter([authz]) if authz else None
        envoy_meter.start()
        if authz_meter:
            authz_meter.start()
        result = loadgen.wrk(url, headers, self.plan.e2e_seconds)
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
            self.say(
                f"  WARNING {setup.name}: {result.non_2xx} non-2xx answers and "
                f"{result.socket_errors} socket errors (ext_authz {ext})"
            )
        return {
            **asdict(result),
            "envoy_cpu_us_per_request": round(envoy_cpu / max(result.requests, 1) * 1e6, 1),
            "authz_cpu_us_per_request": (
                round(authz_cpu / max(result.requests, 1) * 1e6, 1)
                if authz_cpu is not None
                else None
            ),
            "ext_authz": ext,
            "other_load_pct": round(other_pct, 1),
        }

    def envoy_runs(self) -> None:
        plan = self.plan
        self.say(
            f"(2) end to end through Envoy --concurrency 1: {plan.e2e_rounds} interleaved "
            f"round(s) of wrk -t1 -c32 -d{plan.e2e_seconds:.0f}s per setup; "
            f"(3) fixed {FIXED_RATE} rps with h2load: {plan.rate_rounds} interleaved round(s) "
            f"of {plan.rate_seconds:.0f}s per setup"
        )
        headers = {"Authorization": f"Bearer {self.keys['unlimited']['key']}"}
        # Every Envoy up at once (idle ones cost nothing), then rounds that take the
        # setups in turn: slow drifts on the machine land on all of them alike.
        running: list[tuple[EnvoySetup, EnvoyProcess, str, str]] = []
        for setup in self.setups:
            envoy = EnvoyProcess(
                setup.config, listen_port=setup.listen_port, admin_port=setup.admin_port
            )
            self.procs.envoys.append(envoy)
            envoy.start()
            url = f"{envoy.base_url}{E2E_PATH}"
            verified = self._verify_envoy(setup, url)
            # Warm connections and caches (h2load: quick and not Python).
            loadgen._run(
                ["h2load", "--h1", "-n", "500", "-c", "32", "-t", "1"]
                + [f"-H{k}: {v}" for k, v in headers.items()]
                + [url],
                timeout=60,
            )
            running.append((setup, envoy, url, verified))
        rounds: dict[str, list[dict[str, Any]]] = {setup.name: [] for setup in self.setups}
        for number in range(plan.e2e_rounds):
            for setup, envoy, url, _ in running:
                run = self._e2e_round(setup, envoy, url, headers)
                rounds[setup.name].append(run)
                self.say(
                    f"  {setup.label:<36} {run['rps']:>9.0f} rps  p50 {run['p50_ms']:.2f} ms  "
                    f"p99 {run['p99_ms']:.2f} ms  other load {run['other_load_pct']:.0f}%"
                    + (f"  (round {number + 1}/{plan.e2e_rounds})" if plan.e2e_rounds > 1 else "")
                )
        e2e: dict[str, Any] = {}
        for setup, _, _, verified in running:
            done = rounds[setup.name]
            row: dict[str, Any] = {
                "label": setup.label,
                **_rounds_row(
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
            row["verified"] = verified
            e2e[setup.name] = row

        # Fixed rate: setups take turns too, so that one burst of other work on the
        # machine cannot land on one setup's tail only.
        rate_runs: dict[str, list[dict[str, Any]]] = {name: [] for name in plan.rate_setups}
        for number in range(plan.rate_rounds):
            for setup, envoy, url, _ in running:
                if setup.name not in plan.rate_setups:
                    continue
                assert envoy.proc is not None
                authz = self._authz_pid(setup)
                other = OtherLoad([envoy.proc.pid, *([authz] if authz else [])])
                other.start()
                rate = loadgen.h2load_fixed_rate(
                    url,
                    headers,
                    FIXED_RATE,
                    plan.rate_seconds,
                    plan.rate_warmup,
                    self.tmp / f"rate-{setup.name}-{number}.log",
                )
                if rate.non_200 or rate.failed:
                    self.say(
                        f"  WARNING {setup.name}: {rate.non_200} non-200 answers and "
                        f"{rate.failed} failed requests at {FIXED_RATE} rps"
                    )
                rate_runs[setup.name].append({**asdict(rate), "other_load_pct": other.stop()})
                self.say(
                    f"  {setup.label:<36} @{FIXED_RATE} rps: p50 {rate.p50_ms:.2f}  "
                    f"p99 {rate.p99_ms:.2f}  p99.9 {rate.p999_ms:.2f} ms "
                    f"({rate.achieved_rps:.0f} rps achieved)"
                    + (f"  (round {number + 1}/{plan.rate_rounds})" if plan.rate_rounds > 1 else "")
                )
        fixed: dict[str, Any] = {}
        for setup in self.setups:
            done = rate_runs.get(setup.name)
            if not done:
                continue
            row = {
                "label": setup.label,
                **done[-1],
                **_rounds_row(
                    done,
                    medians=("achieved_rps", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"),
                    sums=("sent", "measured", "non_200", "failed"),
                ),
            }
            row["p99_ms_runs"] = [r["p99_ms"] for r in done]
            row["other_load_pct"] = round(max(r["other_load_pct"] for r in done), 1)
            fixed[setup.name] = row
        for _, envoy, _, _ in running:
            self.procs.stop_envoy(envoy)
        self.results["e2e"] = e2e
        self.results["fixed_rate"] = fixed
        self.results["fixed_rate_tool"] = (
            "h2load (nghttp2) open loop over h2c: 50 connections opened 1 ms apart, each at "
            f"{FIXED_RATE // 50} req/s with up to 16 streams in flight, latency per request from "
            "--log-file (send to end of response). wrk2 is not packaged in Debian."
        )

    # ----- whole run ------------------------------------------------------------------

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
        steps: list[Callable[[], None]] = [
            self.start,
            self.decision_cpu,
            self.workers,
            self.unknown_flood,
            self.envoy_runs,
        ]
        try:
            for step in steps:
                step()
        except BaseException:
            self._dump_logs()
            raise
        finally:
            self.say("stopping every process started")
            self.procs.stop_all()
            shutil.rmtree(self.tmp, ignore_errors=True)
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

    def _dump_logs(self) -> None:
        for server in self.procs.servers:
            try:
                text = server.log_path.read_text(errors="replace")
            except OSError:
                continue
            if text.strip():
                name = getattr(server, "name", "floor")
                print(f"--- last lines of {name} log ---", file=sys.stderr)
                print("\n".join(text.splitlines()[-15:]), file=sys.stderr)
        for envoy in self.procs.envoys:
            print("--- last lines of envoy log ---", file=sys.stderr)
            print("\n".join(envoy.logs().splitlines()[-15:]), file=sys.stderr)


def negative_entry_bytes(entries: int = 20_000) -> float:
    """Bytes one negative-cache entry (key hash → expiry) costs, measured with tracemalloc."""
    cache = KeyCache(10, 30.0, entries * 2, 10.0)
    hashes = [hash_key(f"sk-{i:048d}") for i in range(entries)]
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for h in hashes:
        cache.put_negative(h)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    # The hash strings themselves are allocated by keyguard per request, so count them too.
    return used / entries + sum(sys.getsizeof(h) for h in hashes) / entries
