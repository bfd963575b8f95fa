"""Health before the first Redis probe has answered (found while testing fail-closed TLS).

The design says NOT_SERVING until Redis answers. grpc's health servicer starts with the
overall service ("") at SERVING, and keyguard only changes it when its first probe returns,
which takes up to KEYGUARD_REDIS_TIMEOUT when Redis does not answer. Until then a load
balancer or an Envoy health check sees SERVING from a keyguard that can only deny.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.support.checks import check_request, http_status, reason
from tests.support.grpc_client import Client
from tests.support.procs import running_keyguard


@pytest.fixture
def silent_redis() -> Iterator[int]:
    """A port that accepts TCP connections and never answers, like a hung Redis."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield int(listener.getsockname()[1])


def test_not_serving_before_the_first_probe_answers(silent_redis: int) -> None:
    env = {"KEYGUARD_REDIS_TIMEOUT": "3"}
    with (
        running_keyguard(f"redis://127.0.0.1:{silent_redis}/0", env) as server,
        Client(server.target) as client,
    ):
        status = client.health_status()
        resp = client.check(check_request({"x-api-key": "sk-" + "h" * 40}), timeout=10)
        assert (http_status(resp), reason(resp)) == (503, "store_unavailable")
        assert status == "NOT_SERVING"
