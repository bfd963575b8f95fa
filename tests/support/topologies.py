"""Real Redis topologies for tests: a 3-master Cluster and a Sentinel-watched master."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.support.procs import free_port, redis_server_binary, stop_process, wait_for_port


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


def _start(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [redis_server_binary(), *args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def redis_cluster(masters: int = 3) -> Iterator[list[int]]:
    """Start ``masters`` cluster nodes on loopback, join them, yield their ports."""
    base = Path(tempfile.mkdtemp(prefix="kg-cluster-"))
    procs: list[subprocess.Popen[bytes]] = []
    ports = [cluster_port() for _ in range(masters)]
    try:
        for port in ports:
            node_dir = base / str(port)
            node_dir.mkdir()
            procs.append(
                _start(
                    [
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(node_dir / "nodes.conf"),
                        "--cluster-node-timeout",
                        "2000",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(node_dir),
                    ],
                    node_dir,
                )
            )
        for port in ports:
            wait_for_port(port)
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
    finally:
        for proc in procs:
            stop_process(proc)
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def redis_with_sentinel(service: str = "kgmaster") -> Iterator[tuple[int, int]]:
    """A master plus one Sentinel watching it; yields (master_port, sentinel_port)."""
    base = Path(tempfile.mkdtemp(prefix="kg-sentinel-"))
    master_port, sentinel_port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            _start(
                [
                    "--port",
                    str(master_port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--dir",
                    str(base),
                ],
                base,
            )
        )
        wait_for_port(master_port)
        conf = base / "sentinel.conf"
        conf.write_text(
            f"port {sentinel_port}\nbind 127.0.0.1\ndir {base}\n"
            f"sentinel monitor {service} 127.0.0.1 {master_port} 1\n"
            f"sentinel down-after-milliseconds {service} 5000\n"
        )
        procs.append(_start([str(conf), "--sentinel"], base))
        wait_for_port(sentinel_port)
        yield master_port, sentinel_port
    finally:
        for proc in procs:
            stop_process(proc)
        shutil.rmtree(base, ignore_errors=True)
