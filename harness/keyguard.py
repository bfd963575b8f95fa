"""`keyguard serve` as a subprocess: on a loopback TCP port, optionally also on a Unix
socket, with one or more workers, and its gRPC health."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.cli import keyguard_cmd
from harness.net import LOOPBACK, free_port, http_get, listening_sockets, tcp_open
from harness.process import DEFAULT_RUN, Child, RunOptions, StartError, children, kill_if_still


def health_status(target: str, timeout: float = 1.0) -> str:
    """keyguard's gRPC health (SERVING, NOT_SERVING) or the RPC error code name."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def wait_serving(target: str, timeout: float = 20.0) -> float:
    """Block until keyguard at `target` reports SERVING; returns the seconds it took."""
    start = time.monotonic()
    while (status := health_status(target)) != "SERVING":
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"keyguard at {target} not SERVING after {timeout}s: {status}")
        time.sleep(0.05)
    return time.monotonic() - start


class KeyguardServer(Child):
    """`keyguard serve`, logs to a file. It always serves a loopback TCP port (given or
    free); with `unix_socket` also that socket (per worker: `<socket>.<i>`)."""

    def __init__(
        self,
        redis_url: str,
        env: Mapping[str, str] | None = None,
        *,
        port: int | None = None,
        metrics_port: int | None = None,
        unix_socket: str | None = None,
        name: str = "keyguard",
        run: RunOptions = DEFAULT_RUN,
    ) -> None:
        super().__init__(name, run)
        self.port = port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.redis_url = redis_url
        self.unix_socket = unix_socket
        self.extra_env = dict(env or {})
        self._workers: list[int] = []

    @property
    def target(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def workers(self) -> int:
        return int(self.extra_env.get("KEYGUARD_WORKERS", "1"))

    @property
    def sockets(self) -> list[str]:
        """The Unix socket paths served: one, or one per worker."""
        if self.unix_socket is None:
            return []
        if self.workers == 1:
            return [self.unix_socket]
        return [f"{self.unix_socket}.{i}" for i in range(self.workers)]

    @property
    def targets(self) -> list[str]:
        """Every gRPC address keyguard serves on."""
        return [self.target, *(f"unix:{path}" for path in self.sockets)]

    def start(self, wait: bool = True) -> None:
        listen = self.target + (f",unix:{self.unix_socket}" if self.unix_socket else "")
        env = {
            **os.environ,
            "KEYGUARD_LISTEN": listen,
            "KEYGUARD_REDIS_URL": self.redis_url,
            "KEYGUARD_METRICS_PORT": str(self.metrics_port),
            "KEYGUARD_METRICS_HOST": LOOPBACK,
            "KEYGUARD_GRACE_SECONDS": "1",
            # Request units unless a caller asks for token metering: most tests and
            # benchmarks measure the per-request rules, and token metering needs prices.
            "KEYGUARD_METERING": "request",
            **self.extra_env,
        }
        self.spawn([*keyguard_cmd(), "serve"], env=env)
        if wait:
            self.wait()

    def wait(self, timeout: float = 60.0) -> None:
        """Until every worker listens on every address (not yet: SERVING, see wait_serving)."""

        def listening() -> bool:
            # Workers share the port with SO_REUSEPORT: each one must be listening.
            return (
                tcp_open(self.metrics_port)
                and listening_sockets(self.port) >= self.workers
                and all(Path(path).exists() for path in self.sockets)
            )

        self.wait_ready(listening, timeout, f"{self.name} on {self.target}")

    def wait_serving(self, timeout: float = 30.0) -> None:
        """Until every address answers gRPC health with SERVING."""
        try:
            self.wait_ready(
                lambda: all(health_status(t) == "SERVING" for t in self.targets),
                timeout,
                f"{self.name} SERVING",
            )
        except StartError as err:
            raise TimeoutError(str(err)) from None

    def metrics_text(self) -> str:
        if self.workers > 1:
            from keyguard.runtime.metrics import APPLY_DELAY

            # A worker applies its per-Check metric updates up to APPLY_DELAY late (one
            # process scrapes them from files, so a scrape cannot hurry the others).
            time.sleep(APPLY_DELAY * 4)
        status, body = http_get(f"http://{LOOPBACK}:{self.metrics_port}/metrics", timeout=5)
        if status != 200:
            raise RuntimeError(f"{self.name}: /metrics answered {status}")
        return body.decode()

    def worker_pids(self) -> list[int]:
        return children(self.pid) if self.running() else []

    def terminate(self) -> None:
        # Workers are stopped by their supervisor; remember them in case it died first.
        self._workers = self.worker_pids()
        super().terminate()

    def reap(self, timeout: float = 10.0) -> None:
        super().reap(timeout)
        kill_if_still(self._workers, b"keyguard")
        self._workers = []


@contextlib.contextmanager
def running_keyguard(
    redis_url: str, env: Mapping[str, str] | None = None
) -> Iterator[KeyguardServer]:
    server = KeyguardServer(redis_url, env)
    try:
        server.start()
        yield server
    finally:
        server.close()
