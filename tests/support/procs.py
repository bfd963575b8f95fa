"""Real processes for tests: redis-server, keyguard serve.

Every process started here is stopped by its owner fixture, even when a test
fails, and only by the pid we started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("redis-server not found: install the Debian package redis-server")
    return found


class RedisServer:
    """A real redis-server on a free loopback port that can be killed and restarted."""

    def __init__(self, extra_args: list[str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="kg-redis-"))
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=0)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def keyguard_cmd() -> list[str]:
    exe = VENV_BIN / "keyguard"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "keyguard"]


def run_cli(
    *args: str, redis_url: str, check: bool = False, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "KEYGUARD_REDIS_URL": redis_url, **(env or {})}
    return subprocess.run(
        [*keyguard_cmd(), *args],
        capture_output=True,
        text=True,
        env=full_env,
        check=check,
        timeout=60,
    )


class KeyguardServer:
    """`keyguard serve` as a subprocess, with its logs captured to a file."""

    def __init__(self, redis_url: str, env: Mapping[str, str] | None = None) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.redis_url = redis_url
        self.extra_env = dict(env or {})
        self.log_path = Path(tempfile.mkstemp(prefix="kg-serve-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> None:
        env = {
            **os.environ,
            "KEYGUARD_LISTEN": self.target,
            "KEYGUARD_REDIS_URL": self.redis_url,
            "KEYGUARD_METRICS_PORT": str(self.metrics_port),
            "KEYGUARD_METRICS_HOST": "127.0.0.1",
            "KEYGUARD_GRACE_SECONDS": "1",
            **self.extra_env,
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*keyguard_cmd(), "serve"], stdout=log, stderr=subprocess.STDOUT, env=env
            )
        if wait:
            wait_for_port(self.port, timeout=20)
            wait_for_port(self.metrics_port, timeout=20)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        self.stop()
        self.log_path.unlink(missing_ok=True)


@contextlib.contextmanager
def running_redis(extra_args: list[str] | None = None) -> Iterator[RedisServer]:
    server = RedisServer(extra_args)
    try:
        server.start()
        yield server
    finally:
        server.close()


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
