"""The whole stack: redis-server, `keyguard serve`, the demo upstream and Envoy.

An Envoy config is the one source of truth for where each part listens (`Layout`).
`running_stack` either renders a config from envoy/ onto free loopback ports (tests,
benchmarks) or runs a config as it is, on the ports it names (`make run`). Every process
is stopped when the block ends, whatever happened inside it, Envoy first and Redis last.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.cli import create_key, keys_cli
from harness.envoy import EnvoyProcess, cluster_addresses, render_config
from harness.keyguard import KeyguardServer
from harness.net import free_port
from harness.paths import DEFAULT_CONFIG
from harness.process import DEFAULT_RUN, Child, RunOptions, StartError
from harness.redis import PERSISTENT_ARGS, RedisServer
from harness.upstream import DemoUpstream


@dataclass(frozen=True)
class Layout:
    """Where each part listens, as an Envoy config says."""

    envoy_host: str
    envoy_port: int
    admin_port: int
    upstream_port: int
    keyguard_port: int | None  # TCP, or ...
    keyguard_socket: str | None  # ... a Unix socket path
    keyguard_workers: int = 1  # >1: worker i listens on <keyguard_socket>.<i>


def _socket_base(paths: list[str]) -> str:
    """The KEYGUARD_LISTEN socket path of worker sockets PATH.0, PATH.1, ..."""
    base = paths[0].removesuffix(".0")
    if paths != [f"{base}.{i}" for i in range(len(paths))]:
        raise StartError(f"keyguard worker sockets must be PATH.0, PATH.1, ...: got {paths}")
    return base


def read_layout(config: Path) -> Layout:
    doc = yaml.safe_load(config.read_text())
    listener = doc["static_resources"]["listeners"][0]["address"]["socket_address"]
    try:
        keyguard = cluster_addresses(doc, "keyguard")
        upstream = cluster_addresses(doc, "llm_api")[0]["socket_address"]
    except KeyError as err:
        raise StartError(str(err)) from None
    if upstream["address"] not in ("127.0.0.1", "localhost"):
        raise StartError("the llm_api cluster must point at this machine for the demo upstream")
    pipes = [str(a["pipe"]["path"]) for a in keyguard if "pipe" in a]
    if pipes and len(pipes) != len(keyguard):
        raise StartError("the keyguard cluster mixes Unix sockets and TCP")
    if not pipes and len(keyguard) > 1:
        raise StartError("more than one TCP endpoint for keyguard: workers share one port")
    socket = None
    if pipes:
        socket = pipes[0] if len(pipes) == 1 else _socket_base(pipes)
    return Layout(
        envoy_host=str(listener["address"]),
        envoy_port=int(listener["port_value"]),
        admin_port=int(doc["admin"]["address"]["socket_address"]["port_value"]),
        upstream_port=int(upstream["port_value"]),
        keyguard_port=None if pipes else int(keyguard[0]["socket_address"]["port_value"]),
        keyguard_socket=socket,
        keyguard_workers=max(1, len(pipes)),
    )


@dataclass
class Stack:
    layout: Layout
    redis: RedisServer
    keyguard: KeyguardServer
    upstream: DemoUpstream
    envoy: EnvoyProcess

    @property
    def base_url(self) -> str:
        return self.envoy.base_url

    @property
    def children(self) -> list[Child]:
        return [self.redis, self.keyguard, self.upstream, self.envoy]

    def exited(self) -> list[Child]:
        """Children that were started and are no longer running."""
        return [c for c in self.children if c.proc is not None and c.proc.poll() is not None]

    def tail_logs(self, lines: int = 15) -> str:
        return "\n".join(child.tail(lines) for child in self.children)

    @property
    def keyguard_pid(self) -> int:
        return self.keyguard.pid

    def keyguard_alive(self) -> bool:
        return self.keyguard.running()

    def kill_keyguard(self) -> None:
        """SIGKILL our keyguard child (no drain, no flush), like an OOM kill."""
        self.keyguard.kill()

    def restart_keyguard(self) -> None:
        """Start keyguard again on the same port; returns once the port accepts."""
        self.keyguard.start(wait=True)

    def metrics_text(self) -> str:
        return self.keyguard.metrics_text()

    def envoy_stats_text(self) -> str:
        return self.envoy.stats_text()

    def create_key(self, *options: str) -> tuple[str, str]:
        """`keyguard keys create --json OPTIONS` → (public id, raw key)."""
        info = create_key(self.redis.url, *options)
        return str(info["id"]), str(info["key"])

    def keys(self, *args: str) -> str:
        """`keyguard keys ARGS`, which must succeed; its output."""
        code, out = keys_cli(self.redis.url, *args)
        if code != 0:
            raise RuntimeError(f"keyguard keys {args[:1]} failed with {code}")
        return out

    def show(self, key_id: str) -> dict[str, Any]:
        return dict(json.loads(self.keys("show", key_id, "--json")))


def render_free(source: Path, out_dir: Path) -> Path:
    """`source` rendered onto free loopback ports (and a Unix socket in out_dir)."""
    return render_config(
        source,
        out_dir,
        listen_port=free_port(),
        admin_port=free_port(),
        upstream_port=free_port(),
        keyguard_port=free_port(),
        # Short: Unix socket paths are limited to about 100 bytes.
        keyguard_socket=str(out_dir / "kg.sock"),
    )


@contextlib.contextmanager
def running_stack(
    config: Path = DEFAULT_CONFIG,
    *,
    render: bool = True,
    keyguard_env: Mapping[str, str] | None = None,
    persistent_redis: bool = False,
    redis_port: int | None = None,
    metrics_port: int | None = None,
    envoy_concurrency: int = 1,
    run: RunOptions = DEFAULT_RUN,
) -> Iterator[Stack]:
    """The four processes, ready (keyguard SERVING on every address, Envoy LIVE).

    render=False runs `config` as it is, on the ports it names; otherwise it is rendered
    onto free loopback ports first. persistent_redis: AOF with fsync always, so a SIGKILLed
    Redis comes back with every acknowledged write.
    """
    with contextlib.ExitStack() as cleanup:
        if render:
            tmp = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="kg-")))
            config = render_free(config, tmp)
        layout = read_layout(config)
        redis = RedisServer(
            list(PERSISTENT_ARGS) if persistent_redis else None, redis_port, run=run
        )
        cleanup.callback(redis.close)
        redis.start()
        upstream = DemoUpstream(layout.upstream_port, run=run)
        cleanup.callback(upstream.close)
        upstream.start()
        env = {"KEYGUARD_WORKERS": str(layout.keyguard_workers), **(keyguard_env or {})}
        keyguard = KeyguardServer(
            redis.url,
            env,
            port=layout.keyguard_port,
            metrics_port=metrics_port,
            unix_socket=layout.keyguard_socket,
            run=run,
        )
        cleanup.callback(keyguard.close)
        keyguard.start()
        keyguard.wait_serving()
        envoy = EnvoyProcess(
            config,
            listen_port=layout.envoy_port,
            admin_port=layout.admin_port,
            concurrency=envoy_concurrency,
            run=run,
        )
        cleanup.callback(envoy.close)
        envoy.start()
        yield Stack(layout, redis, keyguard, upstream, envoy)
