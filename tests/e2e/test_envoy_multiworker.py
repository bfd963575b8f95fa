"""envoy/envoy-multiworker.yaml: Envoy spreads Checks over two keyguard worker sockets."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from harness.net import http_get
from harness.paths import MULTIWORKER_CONFIG
from tests.e2e.conftest import HttpStack, assert_denied, running_http_stack

pytestmark = pytest.mark.e2e

WORKERS = 2


@pytest.fixture(scope="module")
def multi_stack() -> Iterator[HttpStack]:
    with running_http_stack(MULTIWORKER_CONFIG, envoy_concurrency=2) as stack:
        yield stack


def _checks_per_socket(stack: HttpStack) -> dict[str, int]:
    # /clusters lines look like keyguard::/tmp/kg-x/kg.sock.0::rq_total::12
    _, body = http_get(f"{stack.envoy.admin_url}/clusters")
    found: dict[str, int] = {}
    for line in body.decode().splitlines():
        match = re.fullmatch(r"keyguard::(.+)::rq_total::(\d+)", line)
        if match:
            found[match[1]] = int(match[2])
    return found


def test_checks_reach_every_worker(multi_stack: HttpStack) -> None:
    key = multi_stack.key("--unlimited")
    statuses = [multi_stack.chat(key).status_code for _ in range(30)]
    assert statuses == [200] * 30
    per_socket = _checks_per_socket(multi_stack)
    assert len(per_socket) == WORKERS, per_socket
    assert all(n > 0 for n in per_socket.values()), per_socket


def test_quota_is_shared_across_workers(multi_stack: HttpStack) -> None:
    key = multi_stack.key("--quota", "5")
    statuses = [multi_stack.chat(key).status_code for _ in range(8)]
    assert statuses == [200] * 5 + [402] * 3
    with multi_stack.unreached():
        assert_denied(multi_stack.chat(key), 402, "insufficient_quota", anthropic=False)
