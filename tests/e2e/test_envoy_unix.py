"""envoy/envoy-unix.yaml: Envoy reaches keyguard over a Unix domain socket."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.paths import UNIX_CONFIG
from tests.e2e.conftest import HttpStack, assert_denied, echo_headers, running_http_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def unix_stack() -> Iterator[HttpStack]:
    with running_http_stack(UNIX_CONFIG) as stack:
        yield stack


def test_allow_over_unix_socket(unix_stack: HttpStack) -> None:
    key = unix_stack.key("--quota", "10")
    resp = unix_stack.chat(key)
    assert resp.status_code == 200, resp.text
    seen = echo_headers(resp)
    assert seen["x-keyguard-key-id"] == key.id
    assert "authorization" not in seen


def test_deny_over_unix_socket(unix_stack: HttpStack) -> None:
    with unix_stack.unreached():
        assert_denied(unix_stack.message(None), 401, "missing_api_key", anthropic=True)
