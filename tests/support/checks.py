"""Build CheckRequests and read CheckResponses the way Envoy would."""

from __future__ import annotations

import json
from typing import Any

from harness.cli import create_key, keys_cli
from keyguard._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse

# The in-process `keyguard keys` helpers live in the harness (benchmarks use them too).
__all__ = ["create_key", "keys_cli"]


def check_request(
    headers: dict[str, str] | None = None,
    *,
    path: str = "/v1/chat/completions",
    body: bytes = b"",
    method: str = "POST",
    source_ip: str = "127.0.0.1",
    raw_headers: list[tuple[str, str]] | None = None,
) -> CheckRequest:
    """A CheckRequest; ``raw_headers`` fills header_map as with encode_raw_headers."""
    req = CheckRequest()
    http = req.attributes.request.http
    http.path = path
    http.method = method
    http.host = "api.example"
    for name, value in (headers or {}).items():
        http.headers[name.lower()] = value
    for name, value in raw_headers or []:
        entry = http.header_map.headers.add()
        entry.key = name
        entry.raw_value = value.encode()
    if body:
        http.raw_body = body
        http.size = len(body)
    if source_ip:
        req.attributes.source.address.socket_address.address = source_ip
        req.attributes.source.address.socket_address.port_value = 40000
    return req


def chat_body(model: str, extra: int = 0) -> bytes:
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "hello " + "x" * extra}],
    }
    return json.dumps(payload).encode()


def http_status(resp: CheckResponse) -> int:
    if resp.HasField("denied_response"):
        return int(resp.denied_response.status.code)
    return 200


def reason(resp: CheckResponse) -> str:
    if not resp.HasField("denied_response"):
        return "ok"
    for opt in resp.denied_response.headers:
        if opt.header.key == "x-keyguard-reason":
            return opt.header.value
    raise AssertionError("denial without x-keyguard-reason")


def body(resp: CheckResponse) -> dict[str, Any]:
    return dict(json.loads(resp.denied_response.body))


def upstream_headers(resp: CheckResponse) -> dict[str, str]:
    return {o.header.key: o.header.value for o in resp.ok_response.headers}


def response_headers(resp: CheckResponse) -> dict[str, str]:
    if resp.HasField("denied_response"):
        return {o.header.key: o.header.value for o in resp.denied_response.headers}
    return {o.header.key: o.header.value for o in resp.ok_response.response_headers_to_add}


def store_snapshot(client: Any) -> dict[str, object]:
    """Every key in a Redis and its value (hashes, sets, strings), but the audit trail, so a
    test can check that a refused change changed nothing."""
    from keyguard.audit import AUDIT_STREAM

    out: dict[str, object] = {}
    for key in client.scan_iter("*"):
        if key == AUDIT_STREAM:  # the trail of changes; tests/integration/test_admin_api.py
            continue
        kind = client.type(key)
        if kind == "hash":
            out[key] = client.hgetall(key)
        elif kind == "set":
            out[key] = sorted(client.smembers(key))
        else:
            out[key] = client.get(key)
    return out
