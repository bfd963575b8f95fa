"""The whole stack for end-to-end tests: redis-server, keyguard, demo upstream, real Envoy.

`running_http_stack()` starts the four processes (harness.stack) on free loopback ports,
with an HTTP client on Envoy, and stops all of them even when a test fails. Modules take
it through a module-scoped fixture so each module pays the start-up once.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.cli import run_cli
from harness.paths import DEFAULT_CONFIG
from harness.stack import Stack, running_stack
from tests.support.contract import ANTHROPIC_TYPES

ANTHROPIC_VERSION = {"anthropic-version": "2023-06-01"}


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
class HttpStack(Stack):
    """The harness's Stack with an HTTP client on Envoy and the tests' helpers."""

    http: httpx.Client

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


@contextlib.contextmanager
def running_http_stack(
    config: Path = DEFAULT_CONFIG,
    *,
    keyguard_env: Mapping[str, str] | None = None,
    envoy_concurrency: int = 1,
) -> Iterator[HttpStack]:
    """harness.stack.running_stack on `config` (a Unix socket config makes Envoy reach
    keyguard on a socket; keyguard serves loopback TCP as well), plus an HTTP client."""
    with (
        running_stack(
            config, keyguard_env=keyguard_env, envoy_concurrency=envoy_concurrency
        ) as base,
        httpx.Client(base_url=base.base_url, trust_env=False, timeout=10.0) as http,
    ):
        parts = {f.name: getattr(base, f.name) for f in fields(base)}
        yield HttpStack(**parts, http=http)


@pytest.fixture(scope="module")
def stack() -> Iterator[HttpStack]:
    with running_http_stack() as running:
        yield running
