"""The demo upstream (tools/demo_upstream.py) as a subprocess for tests."""

from __future__ import annotations

import contextlib
import json
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator

from tests.support.envoy import http_get
from tests.support.procs import REPO, free_port, stop_process

DEMO_UPSTREAM = REPO / "tools" / "demo_upstream.py"


class DemoUpstream:
    """`python tools/demo_upstream.py` on a free loopback port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(DEMO_UPSTREAM), "--port", str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while (left := deadline - time.monotonic()) > 0:
                if not sel.select(timeout=left):
                    continue
                line = self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"demo upstream exited with {self.proc.wait(timeout=5)}")
                if line.startswith(b"ready"):
                    return
        raise TimeoutError(f"demo upstream not ready after {timeout}s")

    def requests(self) -> int:
        """How many requests reached the upstream (GET /__stats itself is not counted)."""
        status, body = http_get(f"{self.base_url}/__stats")
        assert status == 200, status
        return int(json.loads(body)["requests"])

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None


@contextlib.contextmanager
def running_upstream() -> Iterator[DemoUpstream]:
    upstream = DemoUpstream()
    try:
        upstream.start()
        yield upstream
    finally:
        upstream.stop()
