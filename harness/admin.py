"""`keyguard admin serve` (the admin API and dashboard) on a loopback port."""

from __future__ import annotations

import os

from harness.cli import keyguard_cmd
from harness.net import LOOPBACK, free_port, tcp_open
from harness.process import DEFAULT_RUN, Child, RunOptions


class AdminServer(Child):
    """The admin server against `redis_url`, on a free (or given) loopback port."""

    def __init__(
        self, redis_url: str, port: int | None = None, *, run: RunOptions = DEFAULT_RUN
    ) -> None:
        super().__init__("admin", run)
        self.redis_url = redis_url
        self.port = port or free_port()

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        env = {**os.environ, "KEYGUARD_REDIS_URL": self.redis_url}
        listen = f"{LOOPBACK}:{self.port}"
        self.spawn([*keyguard_cmd(), "admin", "serve", "--listen", listen], env=env)
        self.wait_ready(lambda: tcp_open(self.port), timeout, f"admin server on :{self.port}")
