"""envoy/envoy-unix.yaml: Envoy reaches keyguard over a Unix domain socket."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Stack, assert_denied, echo_headers, wait_serving
from tests.support.envoy import UNIX_CONFIG, running_envoy
from tests.support.procs import KeyguardServer, running_redis
from tests.support.upstream import running_upstream

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def unix_stack() -> Iterator[Stack]:
    # A short path: Unix socket paths are limited to about 100 bytes.
    sock_dir = Path(tempfile.mkdtemp(prefix="kg-"))
    socket_path = str(sock_dir / "kg.sock")
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, sock_dir, ignore_errors=True)
        redis = stack.enter_context(running_redis())
        upstream = stack.enter_context(running_upstream())
        keyguard = KeyguardServer(redis.url)
        stack.callback(keyguard.close)
        # TCP too: KeyguardServer waits for its port, and it shows both can be served at once.
        keyguard.extra_env["KEYGUARD_LISTEN"] = f"{keyguard.target},unix:{socket_path}"
        keyguard.start()
        wait_serving(keyguard, target=f"unix:{socket_path}")
        envoy = stack.enter_context(
            running_envoy(
                upstream_port=upstream.port, keyguard_socket=socket_path, source=UNIX_CONFIG
            )
        )
        http = stack.enter_context(
            httpx.Client(base_url=envoy.base_url, trust_env=False, timeout=10.0)
        )
        yield Stack(redis, keyguard, upstream, envoy, http)


def test_allow_over_unix_socket(unix_stack: Stack) -> None:
    key = unix_stack.key("--quota", "10")
    resp = unix_stack.chat(key)
    assert resp.status_code == 200, resp.text
    seen = echo_headers(resp)
    assert seen["x-keyguard-key-id"] == key.id
    assert "authorization" not in seen


def test_deny_over_unix_socket(unix_stack: Stack) -> None:
    with unix_stack.unreached():
        assert_denied(unix_stack.message(None), 401, "missing_api_key", anthropic=True)
