"""envoy/envoy-multiworker.yaml: Envoy spreads Checks over two keyguard worker sockets."""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Stack, assert_denied, wait_serving
from tests.support.envoy import MULTIWORKER_CONFIG, http_get, running_envoy
from tests.support.procs import KeyguardServer, running_redis
from tests.support.upstream import running_upstream

pytestmark = pytest.mark.e2e

WORKERS = 2


@pytest.fixture(scope="module")
def multi_stack() -> Iterator[Stack]:
    sock_dir = Path(tempfile.mkdtemp(prefix="kg-"))
    socket_path = str(sock_dir / "kg.sock")
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, sock_dir, ignore_errors=True)
        redis = stack.enter_context(running_redis())
        upstream = stack.enter_context(running_upstream())
        keyguard = KeyguardServer(redis.url)
        stack.callback(keyguard.close)
        keyguard.extra_env["KEYGUARD_LISTEN"] = f"{keyguard.target},unix:{socket_path}"
        keyguard.extra_env["KEYGUARD_WORKERS"] = str(WORKERS)
        keyguard.start()
        for i in range(WORKERS):
            wait_serving(keyguard, target=f"unix:{socket_path}.{i}")
        envoy = stack.enter_context(
            running_envoy(
                upstream_port=upstream.port,
                keyguard_socket=socket_path,
                source=MULTIWORKER_CONFIG,
                concurrency=2,
            )
        )
        http = stack.enter_context(
            httpx.Client(base_url=envoy.base_url, trust_env=False, timeout=10.0)
        )
        yield Stack(redis, keyguard, upstream, envoy, http)


def _checks_per_socket(stack: Stack) -> dict[str, int]:
    # /clusters lines look like keyguard::/tmp/kg-x/kg.sock.0::rq_total::12
    _, body = http_get(f"{stack.envoy.admin_url}/clusters")
    found: dict[str, int] = {}
    for line in body.decode().splitlines():
        match = re.fullmatch(r"keyguard::(.+)::rq_total::(\d+)", line)
        if match:
            found[match[1]] = int(match[2])
    return found


def test_checks_reach_every_worker(multi_stack: Stack) -> None:
    key = multi_stack.key("--unlimited")
    statuses = [multi_stack.chat(key).status_code for _ in range(30)]
    assert statuses == [200] * 30
    per_socket = _checks_per_socket(multi_stack)
    assert len(per_socket) == WORKERS, per_socket
    assert all(n > 0 for n in per_socket.values()), per_socket


def test_quota_is_shared_across_workers(multi_stack: Stack) -> None:
    key = multi_stack.key("--quota", "5")
    statuses = [multi_stack.chat(key).status_code for _ in range(8)]
    assert statuses == [200] * 5 + [402] * 3
    with multi_stack.unreached():
        assert_denied(multi_stack.chat(key), 402, "insufficient_quota", anthropic=False)
