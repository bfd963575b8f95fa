"""redis-server on a loopback port, in its own data directory, that can be killed and
started again on the same port (with AOF, with the same keys)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import redis

from harness.net import LOOPBACK, free_port, tcp_open
from harness.process import DEFAULT_RUN, Child, RunOptions

# Every acknowledged write is on disk before the reply: a SIGKILLed Redis loses nothing
# it has confirmed, like a production Redis with AOF (or a replica promoted in its place).
PERSISTENT_ARGS = ("--appendonly", "yes", "--appendfsync", "always")


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("redis-server not found: install the Debian package redis-server")
    return found


class RedisServer(Child):
    """A real redis-server on a free (or given) loopback port."""

    def __init__(
        self,
        extra_args: list[str] | None = None,
        port: int | None = None,
        *,
        run: RunOptions = DEFAULT_RUN,
    ) -> None:
        super().__init__("redis", run)
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="kg-redis-"))
        self.extra_args = list(extra_args or [])

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        args = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            LOOPBACK,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
            *self.extra_args,  # later options win: PERSISTENT_ARGS turn the AOF on
        ]
        self.spawn(args, cwd=self.dir)
        self.wait_ready(lambda: tcp_open(self.port), timeout, f"redis-server on :{self.port}")

    def client(self) -> redis.Redis:
        return redis.Redis(host=LOOPBACK, port=self.port, db=0)

    def close(self) -> None:
        super().close()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def running_redis(extra_args: list[str] | None = None) -> Iterator[RedisServer]:
    server = RedisServer(extra_args)
    try:
        server.start()
        yield server
    finally:
        server.close()
