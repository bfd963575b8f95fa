"""The processes a run starts: Redis, the floor servicer, keyguard servers, Envoy.

Everything started here is registered with a `Processes` set and stopped by its own
pid when the run ends, failed or not.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import grpc
import redis

from bench.payloads import CHECK_PATH
from bench.system import children
from keyguard._proto.envoy.service.auth.v3.external_auth_pb2 import CheckResponse
from keyguard.metrics import APPLY_DELAY
from tests.support.envoy import EnvoyProcess, http_get
from tests.support.procs import REPO, KeyguardServer, RedisServer, free_port, wait_for_port


class FloorServer:
    """bench/floor_server.py as a subprocess (the floor, or with capture_dir the capturer)."""

    def __init__(self, capture_dir: Path | None = None) -> None:
        self.port = free_port()
        self.capture_dir = capture_dir
        self.log_path = Path(tempfile.mkstemp(prefix="kg-bench-floor-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        cmd = [sys.executable, "-m", "bench.floor_server", "--listen", self.target]
        if self.capture_dir is not None:
            cmd += ["--capture-dir", str(self.capture_dir)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    def wait(self) -> None:
        wait_for_port(self.port, timeout=30)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


class Keyguard(KeyguardServer):
    """`keyguard serve` with bench settings; optionally also on a Unix socket."""

    def __init__(
        self, name: str, redis_url: str, env: Mapping[str, str], unix_socket: str = ""
    ) -> None:
        # No drain at the end of a run: nothing is in flight by then.
        super().__init__(redis_url, {"KEYGUARD_GRACE_SECONDS": "0", **env})
        self.name = name
        self.unix_socket = unix_socket
        if unix_socket:
            self.extra_env["KEYGUARD_LISTEN"] = f"{self.target},unix:{unix_socket}"
        self.workers = int(self.extra_env.get("KEYGUARD_WORKERS", "1"))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait(self) -> None:
        wait_for_port(self.port, timeout=60)
        wait_for_port(self.metrics_port, timeout=60)
        if self.workers > 1:
            # Workers share the port with SO_REUSEPORT: wait until every one listens.
            deadline = time.monotonic() + 60
            while listening_sockets(self.port) < self.workers:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name}: not all {self.workers} workers listen")
                time.sleep(0.05)
        if self.unix_socket:
            deadline = time.monotonic() + 30
            while not Path(self.unix_socket).exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name}: no socket at {self.unix_socket}")
                time.sleep(0.02)

    def metrics(self) -> str:
        if self.workers > 1:
            # A worker applies its per-Check metric updates up to APPLY_DELAY late (one
            # process scrapes them from files, so a scrape cannot hurry the others).
            time.sleep(APPLY_DELAY * 4)
        status, body = http_get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5)
        if status != 200:
            raise RuntimeError(f"{self.name}: /metrics answered {status}")
        return body.decode()

    def worker_pids(self) -> list[int]:
        return children(self.pid)


def listening_sockets(port: int) -> int:
    """How many TCP sockets listen on `port` (one per SO_REUSEPORT worker).

    grpc binds "127.0.0.1:PORT" as an IPv6 socket with a v4-mapped address, so both
    tables are read.
    """
    suffix = f":{port:04X}"
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[1].endswith(suffix) and fields[3] == "0A":  # 0A = LISTEN
                    count += 1
    return count


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        named = head == name or head.startswith(name + "{")
        if named and all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def redis_command_calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(entry["calls"])
        for name, entry in stats.items()
        if isinstance(entry, dict)
    }


def grpc_check(target: str, message: bytes, timeout: float = 5.0) -> CheckResponse:
    """One Check with a Python gRPC client: reads what h2load cannot, the grpc-status."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(CHECK_PATH, request_serializer=None, response_deserializer=None)
        reply = call(message, timeout=timeout)  # raises on any non-OK grpc-status
    return CheckResponse.FromString(reply)


def http_status(url: str, headers: Mapping[str, str], timeout: float = 5.0) -> int:
    """One HTTP/1.1 GET, with curl when installed, ignoring proxy settings."""
    if shutil.which("curl"):
        cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--noproxy", "*"]
        cmd += ["--max-time", str(timeout)]
        for name, value in headers.items():
            cmd += ["-H", f"{name}: {value}"]
        out = subprocess.run([*cmd, url], capture_output=True, text=True, check=False)
        return int(out.stdout.strip() or 0)
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers=dict(headers))  # noqa: S310 (http:// only)
    try:
        with opener.open(request, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


class Processes:
    """Every process of a run; stop_all() signals each by its own pid, then waits."""

    def __init__(self) -> None:
        self.redis: RedisServer | None = None
        self.servers: list[FloorServer | Keyguard] = []
        self.envoys: list[EnvoyProcess] = []

    def stop_envoy(self, envoy: EnvoyProcess) -> None:
        envoy.close()
        if envoy in self.envoys:
            self.envoys.remove(envoy)

    def stop_server(self, server: FloorServer | Keyguard) -> None:
        _terminate([server])
        if server in self.servers:
            self.servers.remove(server)

    def stop_all(self) -> None:
        for envoy in list(self.envoys):
            with contextlib.suppress(Exception):
                envoy.close()
        self.envoys.clear()
        _terminate(self.servers)
        self.servers.clear()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                self.redis.close()
            self.redis = None


def _terminate(servers: list[FloorServer | Keyguard]) -> None:
    procs = [s.proc for s in servers if s.proc is not None]
    # Workers of a supervisor: stopped by it, but checked on in case it died first.
    workers = [pid for proc in procs for pid in children(proc.pid)]
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    for pid in workers:
        with contextlib.suppress(OSError):
            # Only if that pid is still a keyguard worker (not a reused pid).
            if b"keyguard" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
    for server in servers:
        server.proc = None
        with contextlib.suppress(OSError):
            server.log_path.unlink()
