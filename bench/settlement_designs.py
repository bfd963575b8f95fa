"""Settlement design (a) against design (b), through Envoy, in one sitting.

(b) is keyguard as shipped: envoy.yaml's json_to_metadata / sse_to_metadata and gRPC
access log, settled in batches. (a) is the same Envoy config with the access log and
the two usage filters replaced by an ext_proc filter in observability mode
(response body STREAMED, the ext_authz metadata forwarded) calling the probe of
``bench/extproc_probe.py``, which reads every response body and its usage and settles
nothing (a lower bound for (a)). Both Envoys answer every request with the same JSON
chat completion with usage (direct_response), in front of one keyguard with token
metering: the Check and its hold are the same in both. The designs take turns; per
round: requests/s, and CPU per request of Envoy, keyguard (Check, plus settlement in
(b)), the probe (a) and Redis. Every round checks what it measured: every request
allowed, and in (a) a body with readable usage and a hold id read for every request.

    python -m bench.settlement_designs [--rounds 5] [--requests 15000] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench import loadgen
from bench.envoy_setups import hcm_of, usage_answering_config
from bench.payloads import (
    MODEL,
    PRICE_INPUT,
    PRICE_OUTPUT,
    small_chat_body,
    write_raw,
)
from bench.rounds import paired_ratio
from bench.system import CpuMeter
from harness.cli import create_key
from harness.envoy import EnvoyProcess, write_config
from harness.keyguard import KeyguardServer
from harness.net import free_port
from harness.paths import REPO
from harness.process import Child
from harness.redis import RedisServer

EXT_PROC_CLUSTER = "keyguard_ext_proc"
_USAGE_FILTERS = ("envoy.filters.http.json_to_metadata", "envoy.filters.http.sse_to_metadata")


class ExtProcProbe(Child):
    def __init__(self, stats: Path) -> None:
        super().__init__("extproc-probe")
        self.port = free_port()
        self.stats = stats

    def start(self) -> None:
        self.spawn(
            [sys.executable, "-m", "bench.extproc_probe", str(self.port), str(self.stats)],
            cwd=REPO,
        )
        self.wait_ready(self.stats.exists, 30)

    def counts(self) -> dict[str, int]:
        return dict(json.loads(self.stats.read_text()))


def ext_proc_config(doc: dict[str, Any], probe_port: int) -> None:
    """Design (a): no access log and no usage filters; ext_proc before the router."""
    hcm = hcm_of(doc)
    hcm.pop("access_log")
    filters = [f for f in hcm["http_filters"] if f["name"] not in _USAGE_FILTERS]
    router = next(i for i, f in enumerate(filters) if f["name"] == "envoy.filters.http.router")
    filters.insert(
        router,
        {
            "name": "envoy.filters.http.ext_proc",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3"
                ".ExternalProcessor",
                "grpc_service": {"envoy_grpc": {"cluster_name": EXT_PROC_CLUSTER}},
                "observability_mode": True,
                "processing_mode": {
                    "request_header_mode": "SEND",
                    "response_header_mode": "SKIP",
                    "response_body_mode": "STREAMED",
                },
                "metadata_options": {
                    "forwarding_namespaces": {"untyped": ["envoy.filters.http.ext_authz"]}
                },
            },
        },
    )
    hcm["http_filters"] = filters
    keyguard = next(c for c in doc["static_resources"]["clusters"] if c["name"] == "keyguard")
    cluster = copy.deepcopy(keyguard)
    cluster["name"] = EXT_PROC_CLUSTER
    cluster["load_assignment"]["cluster_name"] = EXT_PROC_CLUSTER
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": probe_port}}
    doc["static_resources"]["clusters"].append(cluster)


def envoy_for(design: str, out: Path, keyguard_port: int, probe_port: int) -> EnvoyProcess:
    doc, listen, admin = usage_answering_config(keyguard_port)
    if design == "a":
        ext_proc_config(doc, probe_port)
    path = write_config(doc, out / f"envoy-design-{design}.yaml")
    return EnvoyProcess(path, listen_port=listen, admin_port=admin, name=f"envoy-{design}")


def held(redis_url: str, key_id: str) -> int:
    from harness.cli import keys_cli

    code, text = keys_cli(redis_url, "show", key_id, "--json")
    if code != 0:
        raise RuntimeError(f"keys show exited with {code}")
    return int(json.loads(text)["held"])


def measure(
    envoy: EnvoyProcess,
    pids: dict[str, int],
    headers: dict[str, str],
    body: Path,
    requests: int,
    settled: Any,
) -> dict[str, Any]:
    meters = {name: CpuMeter([pid]) for name, pid in pids.items()}
    for meter in meters.values():
        meter.start()
    result = loadgen.h2load_http(
        f"{envoy.base_url}/v1/chat/completions", headers, requests, body=body
    )
    settled()  # until the settlement work of these requests is done
    row: dict[str, Any] = {"rps": result.rps, "ok": result.status_2xx}
    for name, meter in meters.items():
        row[f"{name}_us"] = meter.stop() / requests * 1e6
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.settlement_designs")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=15000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    out = Path(tempfile.mkdtemp(prefix="kg-designs-"))
    with ExitStack() as stack:
        redis = RedisServer()
        redis.start()
        stack.callback(redis.close)
        from keyguard.cli import main as keyguard_main

        price = ["--input", str(PRICE_INPUT), "--output", str(PRICE_OUTPUT)]
        if keyguard_main(["prices", "set", MODEL, *price, "--redis-url", redis.url]) != 0:
            raise RuntimeError("prices set failed")
        key = create_key(redis.url, "--quota", str(10**15), "--rpm", str(10**8))
        keyguard = KeyguardServer(
            redis.url, {"KEYGUARD_METERING": "tokens", "KEYGUARD_LOG_ALLOWS": "false"}
        )
        stack.callback(keyguard.close)
        keyguard.start()
        keyguard.wait_serving()
        probe = ExtProcProbe(out / "probe.json")
        stack.callback(probe.close)
        probe.start()
        envoys = {d: envoy_for(d, out, keyguard.port, probe.port) for d in ("a", "b")}
        for envoy in envoys.values():
            stack.callback(envoy.close)
            envoy.start()
        headers = {"authorization": f"Bearer {key['key']}", "content-type": "application/json"}
        body = write_raw(out / "body.json", small_chat_body())
        pids = {"keyguard": keyguard.pid, "probe": probe.pid, "redis": redis.pid}

        def b_settled() -> None:
            deadline = time.monotonic() + 15
            while held(redis.url, key["id"]) != 0 and time.monotonic() < deadline:
                time.sleep(0.05)

        def a_settled() -> None:
            time.sleep(0.3)  # the probe's last streams finish; it writes nothing

        rows: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
        for d in ("a", "b"):  # warm-up, not counted
            measure(envoys[d], {}, headers, body, 2000, b_settled if d == "b" else a_settled)
        for index in range(args.rounds):
            for d in ("a", "b") if index % 2 == 0 else ("b", "a"):
                before = probe.counts()
                row = measure(
                    envoys[d],
                    {"envoy": envoys[d].pid, **pids},
                    headers,
                    body,
                    args.requests,
                    b_settled if d == "b" else a_settled,
                )
                after = probe.counts()
                for name in ("streams", "with_hold", "usage_read"):
                    row[name] = after[name] - before[name]
                rows[d].append(row)
                print(d, {k: round(v, 1) for k, v in row.items()}, flush=True)
    summary = summarize(rows, args.requests)
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
    return summary


def summarize(rows: dict[str, list[dict[str, Any]]], requests: int) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for d, done in rows.items():
        medians = {k: round(statistics.median(r[k] for r in done), 1) for k in done[0]}
        medians["settlement_us"] = medians["probe_us"] if d == "a" else None
        summary[d] = medians
        problems = [r for r in done if r["ok"] != requests]
        if d == "a":
            problems += [r for r in done if r["usage_read"] != requests]
        summary[d]["rounds_with_problems"] = len(problems)
    summary["rps_a_over_b"] = round(
        paired_ratio([r["rps"] for r in rows["a"]], [r["rps"] for r in rows["b"]]), 3
    )
    return summary


if __name__ == "__main__":
    main()
