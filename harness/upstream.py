"""The demo LLM API (tools/demo_upstream.py) on a loopback port."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator

from harness.net import LOOPBACK, free_port, http_get, tcp_open
from harness.paths import DEMO_UPSTREAM
from harness.process import DEFAULT_RUN, Child, RunOptions


class DemoUpstream(Child):
    """`python tools/demo_upstream.py` on a free (or given) loopback port."""

    def __init__(self, port: int | None = None, *, run: RunOptions = DEFAULT_RUN) -> None:
        super().__init__("upstream", run)
        self.port = port or free_port()

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        self.spawn([sys.executable, str(DEMO_UPSTREAM), "--port", str(self.port)])
        self.wait_ready(lambda: tcp_open(self.port), timeout, f"demo upstream on :{self.port}")

    def requests(self) -> int:
        """How many requests reached the upstream (GET /__stats itself is not counted)."""
        status, body = http_get(f"{self.base_url}/__stats")
        if status != 200:
            raise RuntimeError(f"demo upstream /__stats answered {status}")
        return int(json.loads(body)["requests"])


@contextlib.contextmanager
def running_upstream() -> Iterator[DemoUpstream]:
    upstream = DemoUpstream()
    try:
        upstream.start()
        yield upstream
    finally:
        upstream.close()
