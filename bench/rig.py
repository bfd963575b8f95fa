"""Everything a benchmark run measures: redis-server, the floor servicer, the keyguard
servers, the Envoy setups, the keys and the captured Check payloads.

Every process is a harness Child registered here and stopped by its own pid when the run
ends, failed or not.
"""

from __future__ import annotations

import contextlib
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
from bench.envoy_setups import EnvoySetup, capture_config, render_setups, validate_all
from bench.payloads import (
    ALLOWED_MODELS,
    PLACEHOLDER_KEY,
    chat_body_4k,
    small_chat_body,
    with_key,
    write_body,
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
        self.keys = {
            "unlimited": create_key(url, *unlimited),
            "quota": create_key(url, "--quota", "1000000000000", "--rpm", "100000000"),
            "models": create_key(url, *unlimited, "--models", ALLOWED_MODELS),
        }
        say("keys created: unlimited, quota+rpm, unlimited+model list")

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
        servers: list[FloorServer | KeyguardServer] = [
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
        capture_path, cap_listen, cap_admin = capture_config(self.tmp, self.capture.port)
        validate_all([s.config for s in self.setups] + [capture_path])
        say(f"{len(self.setups) + 1} Envoy configs pass `envoy --mode validate`")
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
        for name, payload_name, key_name in (
            ("small_unlimited", "small", "unlimited"),
            ("small_quota", "small", "quota"),
            ("4k_models", "4k", "models"),
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

    @property
    def good_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys['unlimited']['key']}"}

    @contextlib.contextmanager
    def envoys(self) -> Iterator[list[RunningSetup]]:
        """Every Envoy setup up at once (idle ones cost nothing), verified and warm."""
        running: list[RunningSetup] = []
        # On a failure they stay registered: stop() ends them after dump_logs shows them.
        for setup in self.setups:
            envoy = self.track(
                EnvoyProcess(
                    setup.config, listen_port=setup.listen_port, admin_port=setup.admin_port
                )
            )
            envoy.start()
            url = f"{envoy.base_url}{E2E_PATH}"
            verified = self._verify_envoy(setup, url)
            # Warm connections and caches (h2load: quick and not Python).
            loadgen._run(
                ["h2load", "--h1", "-n", "500", "-c", "32", "-t", "1"]
                + [f"-H{k}: {v}" for k, v in self.good_headers.items()]
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
