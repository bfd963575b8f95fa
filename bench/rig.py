"""Everything a benchmark run measures: redis-server, the floor servicer, the keyguard
servers, the Envoy setups, the keys and the captured Check payloads.

Every process is a harness Child registered here and stopped by its own pid when the run
ends, failed or not.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bench import loadgen
from bench.envoy_setups import (
    EnvoySetup,
    capture_config,
    render_metering_setups,
    render_setups,
    validate_all,
)
from bench.payloads import (
    ALLOWED_MODELS,
    MODEL,
    PLACEHOLDER_KEY,
    PRICE_INPUT,
    PRICE_OUTPUT,
    chat_body_4k,
    small_chat_body,
    with_key,
    write_body,
    write_raw,
)
from bench.plan import Plan, Progress
from bench.probes import http_status
from harness.cli import create_key
from harness.envoy import EnvoyProcess
from harness.keyguard import KeyguardServer
from harness.net import free_port, tcp_open
from harness.paths import REPO
from harness.process import Child, stop_together
from harness.redis import RedisServer

E2E_PATH = "/v1/chat/completions"
C = TypeVar("C", bound=Child)


class FloorServer(Child):
    """bench/floor_server.py as a subprocess (the floor, or with capture_dir the capturer)."""

    def __init__(self, capture_dir: Path | None = None) -> None:
        super().__init__("floor" if capture_dir is None else "capture")
        self.port = free_port()
        self.capture_dir = capture_dir

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "bench.floor_server", "--listen", self.target]
        if self.capture_dir is not None:
            cmd += ["--capture-dir", str(self.capture_dir)]
        self.spawn(cmd, cwd=REPO)

    def wait(self) -> None:
        self.wait_ready(lambda: tcp_open(self.port), 30)


def bench_keyguard(
    name: str, redis_url: str, env: dict[str, str], unix_socket: str | None = None
) -> KeyguardServer:
    # No drain at the end of a run: nothing is in flight by then.
    return KeyguardServer(
        redis_url, {"KEYGUARD_GRACE_SECONDS": "0", **env}, unix_socket=unix_socket, name=name
    )


def set_price(redis_url: str) -> None:
    """`keyguard prices set MODEL` in-process: the metered keys' model gets its price."""
    from keyguard.cli import main

    with contextlib.redirect_stdout(io.StringIO()):
        amounts = ["--input", str(PRICE_INPUT), "--output", str(PRICE_OUTPUT)]
        code = main(["prices", "set", MODEL, *amounts, "--redis-url", redis_url])
    if code != 0:
        raise RuntimeError(f"keyguard prices set {MODEL} exited with {code}")


@dataclass(frozen=True)
class Traffic:
    """What a load sends through an Envoy setup: one key, and a JSON body to POST (a file
    for h2load) or none (GET)."""

    key_name: str
    body: Path | None = None


@dataclass
class RunningSetup:
    setup: EnvoySetup
    envoy: EnvoyProcess
    url: str
    verified: str


class Rig:
    def __init__(self, plan: Plan, say: Progress) -> None:
        self.plan = plan
        self.say = say
        self.started: list[Child] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="kg-bench-"))
        self.keys: dict[str, dict[str, Any]] = {}
        self.payloads: dict[str, bytes] = {}
        self.bodies: dict[str, Path] = {}

    def track(self, child: C) -> C:
        self.started.append(child)
        return child

    def release(self, child: Child) -> None:
        child.close()
        self.started.remove(child)

    # ----- set-up -------------------------------------------------------------------

    def start(self) -> None:
        say = self.say
        self.redis_server = self.track(RedisServer())
        self.redis_server.start()
        self.redis = self.redis_server.client()
        say(f"redis-server on :{self.redis_server.port}")
        url = self.redis_server.url
        unlimited = ["--unlimited"]
        metered = ("--quota", "1000000000000", "--rpm", "100000000")
        self.keys = {
            "unlimited": create_key(url, *unlimited),
            "quota": create_key(url, *metered),
            "models": create_key(url, *unlimited, "--models", ALLOWED_MODELS),
            # Token metering: one key for direct Checks (their holds are never settled),
            # one for the load through Envoy (every hold settled, `used` checked).
            "metered": create_key(url, *metered),
            "metered_e2e": create_key(url, *metered),
        }
        set_price(url)
        say(
            "keys created: unlimited, quota+rpm (3), unlimited+model list; "
            f"price set for {MODEL} (input {PRICE_INPUT:,}, output {PRICE_OUTPUT:,} per 1M)"
        )

        socket = str(self.tmp / "keyguard.sock")
        self.floor = self.track(FloorServer())
        self.capture = self.track(FloorServer(capture_dir=self.tmp))
        self.kg_cost1 = self.track(bench_keyguard("keyguard-cost1", url, {}, socket))
        cost0 = {"KEYGUARD_REQUEST_COST": "0"}
        self.kg_cost0 = self.track(bench_keyguard("keyguard-cost0", url, cost0))
        nolog = {**cost0, "KEYGUARD_LOG_ALLOWS": "false"}
        self.kg_nolog = self.track(bench_keyguard("keyguard-cost0-nolog", url, nolog))
        workers2 = {"KEYGUARD_WORKERS": "2"}
        self.kg_workers2 = self.track(bench_keyguard("keyguard-workers2", url, workers2))
        self.kg_flood = self.track(bench_keyguard("keyguard-flood", url, {}))
        # Token metering on and off: the same server but for KEYGUARD_METERING.
        tokens = {"KEYGUARD_METERING": "tokens"}
        self.kg_meter_on = self.track(bench_keyguard("keyguard-metering-on", url, tokens))
        request = {"KEYGUARD_METERING": "request"}
        self.kg_meter_off = self.track(bench_keyguard("keyguard-metering-off", url, request))
        servers: list[FloorServer | KeyguardServer] = [
            self.floor,
            self.capture,
            self.kg_cost1,
            self.kg_cost0,
            self.kg_nolog,
            self.kg_workers2,
            self.kg_flood,
            self.kg_meter_on,
            self.kg_meter_off,
        ]
        # Start them all at once and wait once: imports dominate start-up.
        for server in servers:
            if isinstance(server, KeyguardServer):
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
            keyguard_socket=socket,
            api_keys={"bench": self.keys["unlimited"]["key"]},
        )
        self.metering_setups = render_metering_setups(
            self.tmp,
            metering_off_port=self.kg_meter_off.port,
            metering_on_port=self.kg_meter_on.port,
        )
        capture_path, cap_listen, cap_admin = capture_config(self.tmp, self.capture.port)
        configs = [s.config for s in self.setups + self.metering_setups] + [capture_path]
        validate_all(configs)
        say(f"{len(configs)} Envoy configs pass `envoy --mode validate`")
        self._capture(capture_path, cap_listen, cap_admin)

    def _capture(self, config: Path, listen_port: int, admin_port: int) -> None:
        """Send one small and one 4 KB request through Envoy; keep the CheckRequests."""
        envoy = self.track(EnvoyProcess(config, listen_port=listen_port, admin_port=admin_port))
        envoy.start()
        bodies = {"small": small_chat_body(), "4k": chat_body_4k()}
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
        self.release(envoy)
        self.release(self.capture)
        sizes = ", ".join(f"{k} {len(v)} B" for k, v in self.payloads.items())
        self.say(f"captured Envoy's CheckRequests ({sizes})")
        self.bodies["chat_small"] = write_raw(self.tmp / "chat-small.json", bodies["small"])
        for name, payload_name, key_name in (
            ("small_unlimited", "small", "unlimited"),
            ("small_quota", "small", "quota"),
            ("4k_models", "4k", "models"),
            ("small_metered", "small", "metered"),
        ):
            message = with_key(self.payloads[payload_name], self.keys[key_name]["key"])
            self.payloads[name] = message
            self.bodies[name] = write_body(self.tmp / f"body-{name}.bin", message)

    # ----- the Envoy setups ----------------------------------------------------------

    def authz_pid(self, setup: EnvoySetup) -> int | None:
        """The authorization server an Envoy setup calls, if any."""
        if setup.name == "floor":
            return self.floor.pid
        if setup.name.startswith("keyguard"):
            return self.kg_cost1.pid
        return None

    def _verify_envoy(self, setup: EnvoySetup, url: str, traffic: Traffic) -> str:
        good = self.headers(traffic)
        bad = {**good, "Authorization": "Bearer sk-" + "Z" * 48}
        body = traffic.body.read_bytes() if traffic.body else None
        status_good = http_status(url, good, body=body)
        status_bad = http_status(url, bad, body=body)
        want_bad = 200 if setup.name in ("none", "floor") else 401
        if status_good != 200 or status_bad != want_bad:
            raise RuntimeError(
                f"{setup.name}: good key → {status_good}, bad key → {status_bad} "
                f"(expected 200 and {want_bad})"
            )
        method = "POST" if body is not None else "GET"
        return f"HTTP {method}: good key {status_good}, unknown key {status_bad}"

    @property
    def good_headers(self) -> dict[str, str]:
        return self.headers(Traffic("unlimited"))

    def headers(self, traffic: Traffic) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.keys[traffic.key_name]['key']}"}
        if traffic.body is not None:
            headers["Content-Type"] = "application/json"
        return headers

    @contextlib.contextmanager
    def envoys(
        self, setups: list[EnvoySetup] | None = None, traffic: Traffic = Traffic("unlimited")
    ) -> Iterator[list[RunningSetup]]:
        """Envoy setups (default: self.setups) up at once (idle ones cost nothing),
        verified and warm with `traffic`."""
        running: list[RunningSetup] = []
        headers = self.headers(traffic)
        body = ["-d", str(traffic.body)] if traffic.body else []
        # On a failure they stay registered: stop() ends them after dump_logs shows them.
        for setup in self.setups if setups is None else setups:
            envoy = self.track(
                EnvoyProcess(
                    setup.config, listen_port=setup.listen_port, admin_port=setup.admin_port
                )
            )
            envoy.start()
            url = f"{envoy.base_url}{E2E_PATH}"
            verified = self._verify_envoy(setup, url, traffic)
            # Warm connections and caches (h2load: quick and not Python).
            loadgen._run(
                ["h2load", "--h1", "-n", "500", "-c", "32", "-t", "1"]
                + [f"-H{k}: {v}" for k, v in headers.items()]
                + body
                + [url],
                timeout=60,
            )
            running.append(RunningSetup(setup, envoy, url, verified))
        yield running
        for one in running:
            self.release(one.envoy)

    # ----- tear-down ----------------------------------------------------------------

    def stop(self) -> None:
        stop_together(self.started)
        for child in self.started:
            child.close()
        self.started.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def dump_logs(self) -> None:
        for child in self.started:
            if child.logs().strip():
                print(child.tail(), file=sys.stderr)
