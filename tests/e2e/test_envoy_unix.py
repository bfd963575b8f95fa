"""envoy/envoy-unix.yaml: Envoy reaches keyguard over a Unix domain socket."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Stack, assert_denied, echo_headers, running_socket_stack
from tests.support.envoy import UNIX_CONFIG

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def unix_stack() -> Iterator[Stack]:
    with running_socket_stack(UNIX_CONFIG) as stack:
        yield stack


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
