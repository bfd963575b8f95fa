"""The whole stack for end-to-end tests: redis-server, keyguard, demo upstream, real Envoy.

`running_stack()` starts the four processes on free loopback ports and stops all of them,
even when a test fails. Modules take it through a module-scoped fixture so each module
pays the start-up once.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import string
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.contract import ANTHROPIC_TYPES
from tests.support.envoy import DEFAULT_CONFIG, EnvoyProcess, running_envoy
from tests.support.procs import (
    KeyguardServer,
    RedisServer,
    run_cli,
    running_keyguard,
    running_redis,
)
from tests.support.upstream import DemoUpstream, running_upstream

ANTHROPIC_VERSION = {"anthropic-version": "2023-06-01"}


def random_key(prefix: str = "sk-") -> str:
    """A well-formed key that no store holds."""
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(40))


@dataclass(frozen=True, repr=False)
class Key:
    id: str
    key: str = field(compare=False)
    type: str

    def __repr__(self) -> str:
        # Failure output shows reprs: never the raw key.
        return f"Key(id={self.id!r}, type={self.type!r})"


def chat_body(model: str | None = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "Hello"}], **extra}
    return {"model": model, **body} if model is not None else body


def messages_body(model: str | None = "claude-3-5-haiku") -> dict[str, Any]:
    body: dict[str, Any] = {"max_tokens": 32, "messages": [{"role": "user", "content": "Hello"}]}
    return {"model": model, **body} if model is not None else body


def echo_headers(resp: httpx.Response) -> dict[str, str]:
    """The request headers the upstream saw (the demo upstream echoes them)."""
    raw = resp.headers.get("x-echo-headers")
    assert raw is not None, f"no upstream echo: {resp.status_code} {resp.text[:300]}"
    headers: dict[str, str] = json.loads(raw)
    return headers


def assert_denied(resp: httpx.Response, status: int, reason: str, *, anthropic: bool) -> None:
    """keyguard's deny, as Envoy relayed it: status, reason header, JSON body of one shape."""
    got = (resp.status_code, resp.headers.get("x-keyguard-reason"))
    assert got == (status, reason), resp.text[:500]
    assert resp.headers["content-type"] == "application/json"
    assert "x-echo-headers" not in resp.headers, "a denied request reached the upstream"
    body = resp.json()
    if anthropic:
        assert body["type"] == "error", body
        assert set(body["error"]) == {"type", "message"}, body
        assert body["error"]["type"] == ANTHROPIC_TYPES[reason], body
        assert body["error"]["message"]
    else:
        assert set(body) == {"error"}, body
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, body
        assert error["code"] == reason and error["param"] is None, body
        assert isinstance(error["type"], str) and error["type"], body
        assert error["message"]


@dataclass
class Stack:
    redis: RedisServer
    keyguard: KeyguardServer
    upstream: DemoUpstream
    envoy: EnvoyProcess
    http: httpx.Client

    @property
    def base_url(self) -> str:
        return self.envoy.base_url

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, redis_url=self.redis.url)

    def key(self, *options: str) -> Key:
        """`keyguard keys create --json OPTIONS`; the key is never shown on failure."""
        result = self.cli("keys", "create", "--json", *options)
        if result.returncode != 0:  # pytest.fail, not assert: the repr would show stdout
            pytest.fail(f"keys create {options} failed: {result.stderr[-2000:]}")
        try:
            data = json.loads(result.stdout)
            return Key(id=str(data["id"]), key=str(data["key"]), type=str(data["type"]))
        except (ValueError, KeyError, TypeError):
            pytest.fail(f"keys create --json printed no JSON with id, key, type: {result.stderr}")

    def admin(self, *args: str) -> None:
        """A `keyguard keys ...` command that must succeed (disable, topup, ...)."""
        result = self.cli("keys", *args, "--json")
        if result.returncode != 0:
            pytest.fail(f"keys {args} failed: {result.stderr[-2000:]}")

    def post(
        self,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        bearer: str | None = None,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        all_headers = dict(headers or {})
        if bearer is not None:
            all_headers["authorization"] = f"Bearer {bearer}"
        if api_key is not None:
            all_headers["x-api-key"] = api_key
        if body is not None:
            kwargs["json"] = body
        return self.http.post(path, headers=all_headers, **kwargs)

    def chat(self, key: Key | str | None, model: str | None = "gpt-4o-mini") -> httpx.Response:
        raw = key.key if isinstance(key, Key) else key
        return self.post("/v1/chat/completions", chat_body(model), bearer=raw)

    def message(
        self, key: Key | str | None, model: str | None = "claude-3-5-haiku"
    ) -> httpx.Response:
        raw = key.key if isinstance(key, Key) else key
        return self.post(
            "/v1/messages", messages_body(model), api_key=raw, headers=ANTHROPIC_VERSION
        )

    @contextlib.contextmanager
    def unreached(self) -> Iterator[None]:
        """Assert that nothing inside the block reached the upstream."""
        before = self.upstream.requests()
        yield
        assert self.upstream.requests() == before, "a request reached the upstream"

    def eventually(
        self, call: Callable[[], httpx.Response], want: int, timeout: float = 5.0
    ) -> httpx.Response:
        """Repeat `call` until it answers `want` (or time is up): admin changes reach
        keyguard's cache by pub/sub, a moment after the CLI returns."""
        deadline = time.monotonic() + timeout
        while True:
            resp = call()
            if resp.status_code == want or time.monotonic() > deadline:
                return resp
            time.sleep(0.1)


def wait_serving(keyguard: KeyguardServer, target: str | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = run_cli(
            "health", "--target", target or keyguard.target, redis_url=keyguard.redis_url
        )
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"keyguard not SERVING after {timeout}s:\n{keyguard.logs()[-3000:]}")
        time.sleep(0.1)


@contextlib.contextmanager
def running_stack(
    *, keyguard_env: Mapping[str, str] | None = None, config: Path = DEFAULT_CONFIG
) -> Iterator[Stack]:
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(running_redis())
        upstream = stack.enter_context(running_upstream())
        keyguard = stack.enter_context(running_keyguard(redis.url, keyguard_env))
        wait_serving(keyguard)
        envoy = stack.enter_context(
            running_envoy(upstream_port=upstream.port, keyguard_port=keyguard.port, source=config)
        )
        http = stack.enter_context(
            httpx.Client(base_url=envoy.base_url, trust_env=False, timeout=10.0)
        )
        yield Stack(redis, keyguard, upstream, envoy, http)


@contextlib.contextmanager
def running_socket_stack(
    config: Path, *, workers: int = 1, envoy_concurrency: int = 1
) -> Iterator[Stack]:
    """The stack with Envoy reaching keyguard on a Unix socket (keyguard also listens on
    TCP, which KeyguardServer waits for, showing both are served at once)."""
    # A short path: Unix socket paths are limited to about 100 bytes.
    sock_dir = Path(tempfile.mkdtemp(prefix="kg-"))
    socket_path = str(sock_dir / "kg.sock")
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, sock_dir, ignore_errors=True)
        redis = stack.enter_context(running_redis())
        upstream = stack.enter_context(running_upstream())
        keyguard = KeyguardServer(redis.url)
        stack.callback(keyguard.close)
        keyguard.extra_env["KEYGUARD_LISTEN"] = f"{keyguard.target},unix:{socket_path}"
        if workers > 1:
            keyguard.extra_env["KEYGUARD_WORKERS"] = str(workers)
        keyguard.start()
        if workers > 1:
            for i in range(workers):
                wait_serving(keyguard, target=f"unix:{socket_path}.{i}")
        else:
            wait_serving(keyguard, target=f"unix:{socket_path}")
        envoy = stack.enter_context(
            running_envoy(
                upstream_port=upstream.port,
                keyguard_socket=socket_path,
                source=config,
                concurrency=envoy_concurrency,
            )
        )
        http = stack.enter_context(
            httpx.Client(base_url=envoy.base_url, trust_env=False, timeout=10.0)
        )
        yield Stack(redis, keyguard, upstream, envoy, http)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack() as running:
        yield running
