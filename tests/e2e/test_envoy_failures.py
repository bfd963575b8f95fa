"""When keyguard or Redis fails, Envoy fails closed: 503, and nothing reaches the upstream.

Each test breaks its own stack, so the stack here is per test, not per module.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import HttpStack, assert_denied, running_http_stack

pytestmark = pytest.mark.e2e


@pytest.fixture
def fresh_stack() -> Iterator[HttpStack]:
    with running_http_stack() as running:
        yield running


def test_keyguard_down_gives_503_and_no_upstream_call(fresh_stack: HttpStack) -> None:
    stack = fresh_stack
    key = stack.key("--unlimited")
    assert stack.chat(key).status_code == 200
    stack.keyguard.stop()
    with stack.unreached():
        for _ in range(3):
            resp = stack.chat(key)
            assert resp.status_code == 503, resp.text
            assert "x-keyguard-reason" not in resp.headers
            assert "x-echo-headers" not in resp.headers
        resp = stack.chat(None)
        assert resp.status_code == 503, resp.text
    assert stack.envoy.stats("ext_authz")["http.llm_ingress.ext_authz.error"] >= 4


def test_keyguard_hanging_times_out_to_503(fresh_stack: HttpStack) -> None:
    stack = fresh_stack
    key = stack.key("--unlimited")
    assert stack.chat(key).status_code == 200
    proc = stack.keyguard.proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP)  # our own child; resumed below whatever happens
    try:
        with stack.unreached():
            started = time.monotonic()
            resp = stack.chat(key)
            elapsed = time.monotonic() - started
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert resp.status_code == 503, resp.text
    assert "x-echo-headers" not in resp.headers
    # The ext_authz timeout is 0.25 s; allow for a slow machine, not for waiting forever.
    assert elapsed < 2.0, elapsed
    # And it recovers once keyguard runs again.
    assert stack.eventually(lambda: stack.chat(key), 200).status_code == 200


def test_redis_down_gives_store_unavailable(fresh_stack: HttpStack) -> None:
    stack = fresh_stack
    openai_key = stack.key("--quota", "100")
    anthropic_key = stack.key("--quota", "100")
    stack.redis.kill()
    with stack.unreached():
        # Never used, so not in keyguard's cache: the lookup itself needs Redis.
        assert_denied(stack.chat(openai_key), 503, "store_unavailable", anthropic=False)
        assert_denied(stack.message(anthropic_key), 503, "store_unavailable", anthropic=True)
        # No key at all is decided without the store.
        assert_denied(stack.chat(None), 401, "missing_api_key", anthropic=False)
