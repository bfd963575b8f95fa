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
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
# Run as a script (`python tools/devstack.py`), so the repository root, where the shared
# `harness` package lives, is not on sys.path by itself.
sys.path.insert(0, str(REPO))

from harness.admin import AdminServer  # noqa: E402
from harness.cli import keyguard_cmd, run_cli  # noqa: E402
from harness.net import free_port, port_is_free, unix_socket_in_use  # noqa: E402
from harness.paths import DEFAULT_CONFIG  # noqa: E402
from harness.process import RunOptions, StartError  # noqa: E402
from harness.stack import Layout, Stack, read_layout, running_stack  # noqa: E402

# Any proxy settings in the environment must not catch loopback calls.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
PRICES_FILE = REPO / "deploy" / "prices.example.yaml"


class StackError(StartError):
    """Something in the stack did not come up; the message says what and where to look."""


def check_ports_free(layout: Layout, redis_port: int, metrics_port: int) -> None:
    """Fail early, naming each busy port: another `make run` is the usual reason."""
    busy = [
        f"{what} {port}"
        for what, port, host in (
            ("Redis", redis_port, "127.0.0.1"),
            ("keyguard", layout.keyguard_port, "127.0.0.1"),
            ("keyguard metrics", metrics_port, "127.0.0.1"),
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
    if layout.keyguard_socket is None:
        return
    sockets = [layout.keyguard_socket]
    if layout.keyguard_workers > 1:
        sockets = [f"{layout.keyguard_socket}.{i}" for i in range(layout.keyguard_workers)]
    for path in sockets:
        if unix_socket_in_use(path):
            raise StackError(f"something already serves {path}")
        with contextlib.suppress(FileNotFoundError):
            Path(path).unlink()


def envoy_url(layout: Layout) -> str:
    """The URL to show: `localhost` reads better in a curl line than an address."""
    host = "localhost" if layout.envoy_host in ("0.0.0.0", "127.0.0.1") else layout.envoy_host
    return f"http://{host}:{layout.envoy_port}"


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class DemoKey:
    var: str  # shell variable the curl lines use
    key: str
    id: str
    about: str


def keyguard_cli(redis_url: str, *args: str) -> str:
    result = run_cli(*args, redis_url=redis_url)
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
    # Token metering: a balance in credits (1 credit = 1 micro-dollar), priced by
    # deploy/prices.example.yaml, loaded first.
    keyguard_cli(redis_url, "prices", "import", str(PRICES_FILE))
    demo = create_key(
        redis_url,
        "KG_DEMO_KEY",
        "models gpt-4o-mini and claude-3-5-haiku, balance 1000000 credits ($1)",
        "--name",
        "demo",
        "--models",
        "gpt-4o-mini,claude-3-5-haiku",
        "--quota",
        "1000000",
    )
    broke = create_key(
        redis_url, "KG_NO_QUOTA_KEY", "quota 0", "--name", "demo-no-quota", "--quota", "0"
    )
    disabled = create_key(
        redis_url, "KG_DISABLED_KEY", "disabled", "--name", "demo-disabled", "--quota", "1000000"
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


def _send_body(req: urllib.request.Request) -> tuple[int, str | None]:
    """Like _send, but answers the body of a success."""
    try:
        with OPENER.open(req, timeout=10) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as err:
        err.read()
        err.close()
        return int(err.code), None


def mask(key: str) -> str:
    return f"{key[:7]}…{key[-4:]}" if len(key) > 12 else "…"


# --------------------------------------------------------------------------- main


def print_intro(stack: Stack, keys: Mapping[str, DemoKey], show_keys: bool, workdir: Path) -> None:
    layout = stack.layout
    print(f"Envoy         {envoy_url(layout)}   (admin {stack.envoy.admin_url})")
    metrics = f"http://127.0.0.1:{stack.keyguard.metrics_port}/metrics"
    print(f"keyguard      {', '.join(stack.keyguard.targets)}   (metrics {metrics})")
    print(f"demo upstream {stack.upstream.base_url}")
    print(f"Redis         {stack.redis.url}")
    print(f"logs          {workdir}/*.log")
    cli = " ".join(keyguard_cmd())
    print(f"manage keys   KEYGUARD_REDIS_URL={stack.redis.url} {cli} keys list")
    print()
    print("# Demo keys (paste these first):")
    for k in keys.values():
        shown = k.key if show_keys else mask(k.key)
        print(f"export {k.var}={shown}   # {k.about}, id {k.id}")
    print()
    for s in SCENARIOS:
        expected = f"{s.status} {s.reason}" if s.reason else str(s.status)
        print(f"# expect {expected}: {s.title}")
        print(curl_line(s, envoy_url(layout)))
        print()


def check(stack: Stack, keys: Mapping[str, DemoKey]) -> bool:
    ok = True
    for s in SCENARIOS:
        status, reason = run_scenario(s, stack.base_url, keys)
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
    parser.add_argument("--envoy-config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument(
        "--redis-port", type=int, help="0 = any free port; default: 6379 if free, else any"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        help="keyguard metrics; 0 = any; default: 9090 if free, else any",
    )
    parser.add_argument(
        "--admin-port",
        type=int,
        help="the admin API and dashboard; 0 = any; default: 8080 if free, else any",
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


def tail_logs(workdir: Path, lines: int = 15) -> str:
    out = []
    for log in sorted(workdir.glob("*.log")):
        text = log.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {log.name} (last {len(text)} lines)\n" + "\n".join(text))
    return "\n".join(out)


def show_balance(redis_url: str, key: DemoKey) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(keyguard_cli(redis_url, "keys", "show", key.id, "--json"))
    return info


def demo_metering(stack: Stack, key: DemoKey) -> bool:
    """One chat completion on the demo key; its balance drops by what the usage costs."""
    before = show_balance(stack.redis.url, key)
    body = _chat("gpt-4o-mini") | {"max_tokens": 64}
    req = urllib.request.Request(  # noqa: S310 (always http://127.0.0.1:<port>/...)
        f"{envoy_url(stack.layout)}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"authorization": f"Bearer {key.key}", "content-type": "application/json"},
    )
    status, text = _send_body(req)
    if status != 200 or text is None:
        print(f"FAIL metering demo: the request answered {status}")
        return False
    usage = json.loads(text)["usage"]
    cached = usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)
    price = demo_price("gpt-4o-mini")
    cost = -(
        -(
            (usage["prompt_tokens"] - cached) * price["input"]
            + cached * price.get("cached_input", price["input"])
            + usage["completion_tokens"] * price["output"]
        )
        // 1_000_000
    )
    deadline = time.monotonic() + 5
    after = show_balance(stack.redis.url, key)
    while (after["held"] or after["used"] == before["used"]) and time.monotonic() < deadline:
        time.sleep(0.1)
        after = show_balance(stack.redis.url, key)
    dropped = before["remaining"] - after["remaining"]
    print(
        f"# Metering: one gpt-4o-mini chat completion ({usage['prompt_tokens']} tokens in,"
        f" {usage['completion_tokens']} out) cost {cost} credits at the demo prices;"
        f" {key.var}'s balance went {before['remaining']} -> {after['remaining']}"
        f" ({dropped} credits). Watch it with: keyguard keys show {key.id}",
        flush=True,
    )
    return dropped == cost


def demo_price(model: str) -> dict[str, int]:
    table: dict[str, dict[str, int]] = yaml.safe_load(PRICES_FILE.read_text())
    return table[model + "*"]


def start_admin(stack: Stack, args: argparse.Namespace, run: RunOptions) -> AdminServer:
    """The admin API and dashboard on the same Redis, and a first admin token."""
    admin = AdminServer(stack.redis.url, pick_port(args.admin_port, 8080), run=run)
    admin.start()
    return admin


def first_admin_token(redis_url: str) -> str:
    out = keyguard_cli(redis_url, "admin", "tokens", "create", "--role", "admin", "--name",
                       "devstack", "--json")  # fmt: skip
    try:
        return str(json.loads(out)["token"])
    except (ValueError, KeyError, TypeError):
        raise StackError("`keyguard admin tokens create --json` printed no token") from None


def check_admin(admin: AdminServer, token: str, keys: int) -> bool:
    """The admin API answers with the demo keys for the printed token."""
    req = urllib.request.Request(  # noqa: S310 (always http://127.0.0.1:<port>/...)
        f"{admin.base_url}/v1/keys", headers={"authorization": f"Bearer {token}"}
    )
    status, text = _send_body(req)
    listed = len(json.loads(text)["items"]) if status == 200 and text else 0
    good = listed == keys
    print(f"admin API: {'ok' if good else 'FAIL'} ({status}, {listed} keys listed)", flush=True)
    return good


def print_admin(admin: AdminServer, token: str, show: bool) -> None:
    shown = token if show else mask(token)
    print(f"admin         {admin.base_url}/   (dashboard and /v1 API; sign in with the token)")
    print(f"admin token   {shown}   (an admin token; shown once)")
    print()


def serve(stack: Stack, args: argparse.Namespace, stop: threading.Event, run: RunOptions) -> int:
    keys = create_demo_keys(stack.redis.url)
    admin = start_admin(stack, args, run)
    try:
        return _serve(stack, admin, keys, args, stop)
    finally:
        admin.close()


def _serve(
    stack: Stack,
    admin: AdminServer,
    keys: Mapping[str, DemoKey],
    args: argparse.Namespace,
    stop: threading.Event,
) -> int:
    # --check output may land in CI logs: never show raw keys or tokens there.
    print_intro(stack, keys, show_keys=not args.check, workdir=stack.redis.log_path.parent)
    token = first_admin_token(stack.redis.url)
    print_admin(admin, token, show=not args.check)
    metered = demo_metering(stack, keys["KG_DEMO_KEY"])
    if args.check:
        admin_ok = check_admin(admin, token, len(keys))
        return 0 if check(stack, keys) and metered and admin_ok else 1
    print("Ctrl-C stops everything.", flush=True)
    while not stop.wait(0.5):
        if dead := stack.exited():
            names = ", ".join(c.name for c in dead)
            raise StackError(f"{names} stopped unexpectedly")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = args.envoy_config.resolve()
    workdir = Path(tempfile.mkdtemp(prefix="keyguard-devstack-"))
    code = 1
    with stop_signals() as stop:
        # Own process groups: Ctrl-C reaches only this script, which then stops the
        # children in order (Envoy first, Redis last).
        run = RunOptions(log_dir=workdir, own_group=True, abort=stop)
        try:
            layout = read_layout(config)
            redis_port = pick_port(args.redis_port, 6379)
            metrics_port = pick_port(args.metrics_port, 9090)
            check_ports_free(layout, redis_port, metrics_port)
            print("starting redis, keyguard, the demo upstream and Envoy ...", flush=True)
            with running_stack(
                config,
                render=False,
                keyguard_env={"KEYGUARD_METERING": "tokens"},
                redis_port=redis_port,
                metrics_port=metrics_port,
                run=run,
            ) as stack:
                try:
                    code = serve(stack, args, stop, run)
                finally:
                    print("stopping ...", flush=True)
        except (StartError, TimeoutError) as err:
            print(f"error: {err}", file=sys.stderr)
        finally:
            if code:
                print(tail_logs(workdir), file=sys.stderr)
            shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
