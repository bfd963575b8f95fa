"""Real Redis topologies for tests: a 3-master Cluster and a Sentinel-watched master."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from harness.net import free_port, tcp_open
from harness.process import Child
from harness.redis import RedisServer, redis_server_binary


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is valid and free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 >= 65536:
            continue
        with contextlib.suppress(OSError), socket.socket() as probe:
            probe.bind(("127.0.0.1", port + 10000))
            return port
    raise RuntimeError("no free port pair for a cluster node")


class Sentinel(Child):
    """redis-server --sentinel with its config file in `directory`."""

    def __init__(self, port: int, directory: Path, monitor: str) -> None:
        super().__init__("sentinel")
        self.port = port
        self.conf = directory / "sentinel.conf"
        self.conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {directory}\n{monitor}")

    def start(self) -> None:
        # The config file must come first: Sentinel rewrites it as it learns the topology.
        self.spawn([redis_server_binary(), str(self.conf), "--sentinel"], cwd=self.conf.parent)
        self.wait_ready(lambda: tcp_open(self.port), 10, f"sentinel on :{self.port}")


@contextlib.contextmanager
def started(children: list[Child]) -> Iterator[list[Child]]:
    """Closes every child appended to the list, whatever happens in the block."""
    try:
        yield children
    finally:
        for child in reversed(children):
            child.close()


@contextlib.contextmanager
def redis_cluster(masters: int = 3) -> Iterator[list[int]]:
    """Start ``masters`` cluster nodes on loopback, join them, yield their ports."""
    node_args = [
        "--cluster-enabled",
        "yes",
        # Relative to the node's own data directory (its working directory).
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        "2000",
    ]
    with started([]) as nodes:
        ports = [cluster_port() for _ in range(masters)]
        for port in ports:
            node = RedisServer(node_args, port)
            nodes.append(node)
            node.start()
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *[f"127.0.0.1:{p}" for p in ports],
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while True:
            client = redis.Redis(port=ports[0], decode_responses=True)
            try:
                info = client.cluster("info")
                state = info.get("cluster_state") if isinstance(info, dict) else None
                if state is None and isinstance(info, str):
                    state = "ok" if "cluster_state:ok" in info else "fail"
            finally:
                client.close()
            if state == "ok":
                break
            if time.monotonic() > deadline:
                raise TimeoutError("cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        yield ports


@contextlib.contextmanager
def redis_with_sentinel(service: str = "kgmaster") -> Iterator[tuple[int, int]]:
    """A master plus one Sentinel watching it; yields (master_port, sentinel_port)."""
    with started([]) as children, tempfile.TemporaryDirectory(prefix="kg-sentinel-") as tmp:
        master = RedisServer()
        children.append(master)
        master.start()
        sentinel = Sentinel(
            free_port(),
            Path(tmp),
            f"sentinel monitor {service} 127.0.0.1 {master.port} 1\n"
            f"sentinel down-after-milliseconds {service} 5000\n",
        )
        children.append(sentinel)
        sentinel.start()
        yield master.port, sentinel.port
