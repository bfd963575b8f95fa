"""Property-based fuzzing of the Check handler (issue 6), in-process over a real Redis.

Each example is generated as a *description* of a request whose meaning is known (which
header carries which key, where the model sits in the body, which address the client has),
and is then turned into a CheckRequest. An oracle written here, from that description and
the documented rules rather than from keyguard's code, says what the answer must be:

1. every answer is a well-formed CheckResponse: one of ok_response / denied_response; a
   denial has an HTTP status keyguard documents and a JSON body in the OpenAI shape, or the
   Anthropic shape for `/messages` paths; never an exception, never a 500;
2. an allow happens only for the one effective credential header (Authorization wins over
   x-api-key) carrying a known, active key whose policy admits the request, and it names
   that key; every deny has the reason the oracle expects;
3. no answer (allow or deny) contains a real key, a key body or a presented credential, and
   no log line a real key or key body;
4. duplicated credential headers are 401 invalid_api_key.

Two x-api-key values are ambiguous even beside one Authorization header (401), and a
bodyless method (GET/HEAD/OPTIONS/DELETE) that does carry a body has its model read.

The oracle (tests/support/oracle.py) and the request strategies (tests/support/strategies.py)
live in tests/support; this file wires them to the real servicer and holds the tests.

The example budget comes from KEYGUARD_FUZZ_EXAMPLES (default 20,000, shared by the two
fuzz tests); run a long profile with e.g. KEYGUARD_FUZZ_EXAMPLES=500000.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from keyguard._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from keyguard.authz.service import AuthorizationService
from keyguard.keys import hash_key
from keyguard.runtime import logs
from keyguard.store import record_key
from tests.integration.conftest import run, service_for
from tests.support.checks import check_request, create_key, http_status, keys_cli, reason
from tests.support.contract import ANTHROPIC_TYPES
from tests.support.fuzz_spec import KEY_SPECS, FuzzKey, Spec
from tests.support.oracle import Outcome, expected_outcomes
from tests.support.strategies import Requests

TOTAL_EXAMPLES = max(2, int(os.environ.get("KEYGUARD_FUZZ_EXAMPLES", "20000")))
GENERAL_EXAMPLES = TOTAL_EXAMPLES * 3 // 4
DUPLICATE_EXAMPLES = TOTAL_EXAMPLES - GENERAL_EXAMPLES

# pytest-timeout's 300 s default would cut a long local profile short.
pytestmark = pytest.mark.timeout(max(300, TOTAL_EXAMPLES // 25))

FUZZ_SETTINGS: dict[str, Any] = {
    "deadline": None,
    "print_blob": True,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
}

DENY_STATUSES = frozenset({400, 401, 402, 403, 429, 500, 503})


def create_keys(redis_url: str) -> dict[str, FuzzKey]:
    keys: dict[str, FuzzKey] = {}
    for label, options in KEY_SPECS.items():
        data = create_key(redis_url, "--name", f"fuzz-{label}", *options)
        keys[label] = FuzzKey(label, str(data["id"]), str(data["key"]))
    code, out = keys_cli(redis_url, "disable", keys["disabled"].id)
    assert code == 0, out
    client = redis.Redis.from_url(redis_url)
    try:
        expired = record_key(hash_key(keys["expired"].key))
        client.hset(expired, "expires_at", str(int(time.time()) - 100))
    finally:
        client.close()
    return keys


# ----- checking one answer -----------------------------------------------------------------


def header_dict(options: Any) -> dict[str, str]:
    return {o.header.key: o.header.value for o in options}


def outcome_of(resp: CheckResponse, anthropic: bool) -> Outcome:
    """Assert property 1 (a well-formed answer) and return what it decided."""
    kind = resp.WhichOneof("http_response")
    if kind == "ok_response":
        assert resp.status.code == 0, resp
        headers = header_dict(resp.ok_response.headers)
        assert {"authorization", "x-api-key"} <= set(resp.ok_response.headers_to_remove)
        return (200, "ok", headers.get("x-keyguard-key-id", ""))
    assert kind == "denied_response", f"no http_response at all: {resp}"
    denied = resp.denied_response
    status = http_status(resp)
    assert status in DENY_STATUSES, status
    assert resp.status.code != 0, "a denial with gRPC status OK"
    why = reason(resp)
    headers = header_dict(denied.headers)
    assert headers.get("content-type") == "application/json", headers
    body = json.loads(denied.body)
    if anthropic:
        assert body.get("type") == "error", body
        assert set(body["error"]) == {"type", "message"}, body
        assert body["error"]["type"] == ANTHROPIC_TYPES[why], body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    else:
        assert set(body) == {"error"}, body
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, body
        assert error["code"] == why and error["param"] is None, body
        assert isinstance(error["message"], str) and error["message"]
    if why == "rate_limit_exceeded":
        assert int(headers["retry-after"]) >= 1, headers
    return (status, why, "")


def leaks(secrets: list[str], blobs: list[bytes]) -> list[str]:
    return [s for s in secrets for blob in blobs if s.encode("utf-8", "replace") in blob]


@dataclass
class Harness:
    loop: asyncio.AbstractEventLoop
    service: AuthorizationService
    keys: dict[str, FuzzKey]
    log: io.StringIO  # what keyguard's configured logger wrote
    secrets: list[str]

    def check(self, request: CheckRequest) -> CheckResponse:
        return self.loop.run_until_complete(self.service.check(request))

    def verify(self, spec: Spec) -> Outcome:
        expected = expected_outcomes(spec, self.keys)
        self.log.seek(0)
        self.log.truncate()
        resp = self.check(spec.build())
        logs.flush()
        written = self.log.getvalue()
        got = outcome_of(resp, spec.anthropic)
        note(f"expected one of {sorted(expected)}, got {got}")
        assert got in expected, f"got {got}, expected one of {sorted(expected)}"
        # Property 3: no real key or key body in the answer or the logs, and no presented
        # credential in the answer (a log line may carry a request id equal to some text).
        answer = resp.SerializeToString()
        found = leaks(self.secrets, [answer, written.encode()])
        presented = [p.strip() for p in spec.presented()]
        shown = [p for p in presented if len(p) >= 32 or (len(p) >= 8 and p.startswith("sk-"))]
        found += leaks(shown, [answer])
        assert not found, f"credential material in the answer or logs: {found[:1]!r}"
        # Every line is a JSON object, and each Check logged exactly one decision.
        entries = [json.loads(line) for line in written.splitlines()]
        assert [e["event"] for e in entries].count("decision") == 1, written
        return got


@contextlib.contextmanager
def harness(redis_url: str) -> Iterator[Harness]:
    """The real servicer over a real Redis, on one event loop for all examples."""
    keys = create_keys(redis_url)
    secrets = [k.key for k in keys.values()] + [k.body for k in keys.values()]
    loop = asyncio.new_event_loop()
    # A generous Redis timeout: a loaded CI machine must not turn into 503s here.
    manager = service_for(redis_url, redis_timeout=5.0)
    try:
        service = loop.run_until_complete(manager.__aenter__())
        try:
            log = io.StringIO()
            logs.configure("debug", log)
            try:
                yield Harness(loop, service, keys, log, secrets)
            finally:
                logs.reset()
        finally:
            loop.run_until_complete(manager.__aexit__(None, None, None))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


# ----- the tests ---------------------------------------------------------------------------


def run_property(
    redis_url: str,
    examples: int,
    strategy: Callable[[Requests], st.SearchStrategy[Spec]],
    extra: Callable[[Spec, Outcome], None] | None = None,
) -> None:
    with harness(redis_url) as h:

        @settings(max_examples=examples, **FUZZ_SETTINGS)
        @given(spec=strategy(Requests(h.keys)))
        def prop(spec: Spec) -> None:
            got = h.verify(spec)
            if extra is not None:
                extra(spec, got)

        prop()


def test_fuzz_check_answers_match_the_oracle(redis_url: str) -> None:
    """Properties 1-3 over arbitrary requests."""
    run_property(redis_url, GENERAL_EXAMPLES, lambda requests: requests.specs())


def test_fuzz_duplicate_credential_headers_are_invalid(redis_url: str) -> None:
    """Property 4: two or more Authorization, or x-api-key without Authorization → 401."""

    def strategy(requests: Requests) -> st.SearchStrategy[Spec]:
        return st.one_of(requests.specs("authorization"), requests.specs("x-api-key"))

    def must_be_invalid(spec: Spec, got: Outcome) -> None:
        assert got == (401, "invalid_api_key", ""), got

    run_property(redis_url, DUPLICATE_EXAMPLES, strategy, must_be_invalid)


# ----- regression tests for what fuzzing turned up -----------------------------------------


def test_duplicate_x_api_key_beside_authorization_is_ambiguous(redis_url: str) -> None:
    first = create_key(redis_url, "--unlimited")["key"]
    second = create_key(redis_url, "--unlimited")["key"]
    request = check_request(
        raw_headers=[
            ("authorization", f"Bearer {first}"),
            ("x-api-key", second),
            ("x-api-key", first),
        ]
    )

    async def scenario() -> tuple[int, str]:
        async with service_for(redis_url) as svc:
            resp = await svc.check(request)
            return http_status(resp), reason(resp)

    assert run(scenario) == (401, "invalid_api_key")
