"""keyguard.authz.render and keyguard.reasons: the outcome table and the CheckResponses."""

from __future__ import annotations

import json
from collections.abc import Iterable

import grpc
import pytest

from keyguard._proto.envoy.config.core.v3.base_pb2 import HeaderValueOption
from keyguard._proto.envoy.service.auth.v3.external_auth_pb2 import CheckResponse
from keyguard.authz.decision import Ticket
from keyguard.authz.render import (
    allow,
    allow_unknown_degraded,
    denial,
    error_body,
    rate_limit_headers,
    rate_limit_suffix,
    rate_limited,
    ticket_suffix,
)
from keyguard.keys import generate_key
from keyguard.policy import SpendResult
from keyguard.reasons import OUTCOMES, Reason
from keyguard.record import TYPE_STANDARD, TYPE_SUBSCRIPTION
from tests.support.records import make_record

OVERWRITE = HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
ANTHROPIC_TYPES = {
    "authentication_error",
    "permission_error",
    "billing_error",
    "rate_limit_error",
    "invalid_request_error",
    "api_error",
}
DENY_REASONS = [r for r in Reason if r is not Reason.OK]

# What the issue asks for, written out independently of the table under test.
EXPECTED: dict[Reason, tuple[int, grpc.StatusCode, str, str]] = {
    Reason.MISSING_API_KEY: (
        401,
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid_request_error",
        "authentication_error",
    ),
    Reason.INVALID_API_KEY: (
        401,
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid_request_error",
        "authentication_error",
    ),
    Reason.KEY_DISABLED: (
        401,
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid_request_error",
        "authentication_error",
    ),
    Reason.KEY_EXPIRED: (
        401,
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid_request_error",
        "authentication_error",
    ),
    Reason.IP_NOT_ALLOWED: (
        403,
        grpc.StatusCode.PERMISSION_DENIED,
        "permission_error",
        "permission_error",
    ),
    Reason.MODEL_NOT_ALLOWED: (
        403,
        grpc.StatusCode.PERMISSION_DENIED,
        "permission_error",
        "permission_error",
    ),
    Reason.MODEL_NOT_PRICED: (
        403,
        grpc.StatusCode.PERMISSION_DENIED,
        "permission_error",
        "permission_error",
    ),
    Reason.STREAM_USAGE_REQUIRED: (
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid_request_error",
        "invalid_request_error",
    ),
    Reason.KEY_TYPE_NOT_ALLOWED: (
        403,
        grpc.StatusCode.PERMISSION_DENIED,
        "permission_error",
        "permission_error",
    ),
    Reason.ROUTE_CONFIG_INVALID: (
        500,
        grpc.StatusCode.INTERNAL,
        "server_error",
        "api_error",
    ),
    Reason.MODEL_REQUIRED: (
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid_request_error",
        "invalid_request_error",
    ),
    Reason.INSUFFICIENT_QUOTA: (
        402,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "insufficient_quota",
        "billing_error",
    ),
    Reason.RATE_LIMIT_EXCEEDED: (
        429,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "requests",
        "rate_limit_error",
    ),
    Reason.STORE_UNAVAILABLE: (503, grpc.StatusCode.UNAVAILABLE, "server_error", "api_error"),
    Reason.CHECK_TOO_LATE: (503, grpc.StatusCode.UNAVAILABLE, "server_error", "api_error"),
    Reason.INTERNAL_ERROR: (500, grpc.StatusCode.INTERNAL, "server_error", "api_error"),
}
ISSUE_CODES = [
    "missing_api_key",
    "invalid_api_key",
    "key_disabled",
    "key_expired",
    "ip_not_allowed",
    "model_not_allowed",
    "model_required",
    "insufficient_quota",
    "store_unavailable",
]
STATUS_TO_GRPC = {
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    402: grpc.StatusCode.RESOURCE_EXHAUSTED,
    400: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}


def header_dict(options: Iterable[HeaderValueOption]) -> dict[str, str]:
    out: dict[str, str] = {}
    for option in options:
        assert option.header.key not in out, f"duplicate header {option.header.key}"
        out[option.header.key] = option.header.value
    return out


# ----- the table ------------------------------------------------------------------------------


def test_every_deny_reason_has_a_row() -> None:
    assert set(OUTCOMES) == set(DENY_REASONS)
    assert set(EXPECTED) == set(DENY_REASONS)


def test_issue_codes_exist() -> None:
    assert {r.value for r in Reason} >= set(ISSUE_CODES)


@pytest.mark.parametrize("reason", DENY_REASONS)
def test_table_row_matches_issue(reason: Reason) -> None:
    outcome = OUTCOMES[reason]
    status, code, openai_type, anthropic_type = EXPECTED[reason]
    assert outcome.http_status == status
    assert outcome.grpc_code == code.value[0]
    assert outcome.openai_type == openai_type
    assert outcome.anthropic_type == anthropic_type
    assert outcome.anthropic_type in ANTHROPIC_TYPES
    if status in STATUS_TO_GRPC:
        assert outcome.grpc_code == STATUS_TO_GRPC[status].value[0]


@pytest.mark.parametrize("reason", DENY_REASONS)
def test_messages_are_short_and_never_look_like_a_key(reason: Reason) -> None:
    message = OUTCOMES[reason].message
    assert 10 <= len(message) <= 200
    assert "sk-" not in message
    assert "\n" not in message


# ----- denial ---------------------------------------------------------------------------------


@pytest.mark.parametrize("anthropic", [False, True], ids=["openai", "anthropic"])
@pytest.mark.parametrize("reason", DENY_REASONS)
def test_denial(reason: Reason, anthropic: bool) -> None:
    outcome = OUTCOMES[reason]
    response = denial(reason, anthropic)
    assert response.WhichOneof("http_response") == "denied_response"
    assert response.status.code == outcome.grpc_code
    assert response.status.code == EXPECTED[reason][1].value[0]
    assert response.status.code != 0
    denied = response.denied_response
    assert denied.status.code == outcome.http_status == EXPECTED[reason][0]
    headers = header_dict(denied.headers)
    assert headers["content-type"] == "application/json"
    assert headers["x-keyguard-reason"] == reason.value
    for option in denied.headers:
        assert option.append_action == OVERWRITE
    body = json.loads(denied.body)
    if anthropic:
        assert body == {
            "type": "error",
            "error": {"type": EXPECTED[reason][3], "message": outcome.message},
        }
    else:
        assert body == {
            "error": {
                "message": outcome.message,
                "type": EXPECTED[reason][2],
                "param": None,
                "code": reason.value,
            }
        }


@pytest.mark.parametrize("reason", DENY_REASONS)
def test_denial_body_is_compact_and_keyed_as_specified(reason: Reason) -> None:
    openai = json.loads(denial(reason, False).denied_response.body)
    assert list(openai) == ["error"]
    assert set(openai["error"]) == {"message", "type", "param", "code"}
    anthropic = json.loads(denial(reason, True).denied_response.body)
    assert set(anthropic) == {"type", "error"}
    assert set(anthropic["error"]) == {"type", "message"}


def test_denials_are_prebuilt_and_shared() -> None:
    assert denial(Reason.INVALID_API_KEY, False) is denial(Reason.INVALID_API_KEY, False)
    assert denial(Reason.INVALID_API_KEY, False) is not denial(Reason.INVALID_API_KEY, True)


def test_denial_for_ok_is_not_available() -> None:
    with pytest.raises(KeyError):
        denial(Reason.OK, False)


@pytest.mark.parametrize("anthropic", [False, True])
def test_serialized_denials_never_contain_a_key(anthropic: bool) -> None:
    keys = [generate_key("standard"), generate_key("subscription")]
    for reason in DENY_REASONS:
        data = denial(reason, anthropic).SerializeToString()
        assert b"sk-" not in data
        for key in keys:
            assert key.encode() not in data
    limited = rate_limited(SpendResult("rate_limited", 3, 60, 0, 900, 1500), anthropic)
    assert b"sk-" not in limited.SerializeToString()


def test_error_body_with_custom_message() -> None:
    body = json.loads(error_body(Reason.MODEL_NOT_ALLOWED, False, "custom"))
    assert body["error"]["message"] == "custom"
    body = json.loads(error_body(Reason.MODEL_NOT_ALLOWED, True, "custom"))
    assert body["error"]["message"] == "custom"


# ----- rate limited ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry_after_ms", "expected"),
    [(0, "1"), (-50, "1"), (1, "1"), (999, "1"), (1000, "1"), (1001, "2"), (59_001, "60")],
)
def test_rate_limited_retry_after(retry_after_ms: int, expected: str) -> None:
    spend = SpendResult("rate_limited", rl_limit=60, retry_after_ms=retry_after_ms)
    response = rate_limited(spend, False)
    headers = header_dict(response.denied_response.headers)
    assert headers["retry-after"] == expected
    assert int(headers["retry-after"]) >= 1


@pytest.mark.parametrize("anthropic", [False, True])
def test_rate_limited_response(anthropic: bool) -> None:
    spend = SpendResult(
        "rate_limited",
        remaining=7,
        rl_limit=60,
        rl_remaining=0,
        rl_reset_ms=1500,
        retry_after_ms=999,
    )
    response = rate_limited(spend, anthropic)
    assert response.status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    denied = response.denied_response
    assert denied.status.code == 429
    headers = header_dict(denied.headers)
    assert headers["content-type"] == "application/json"
    assert headers["x-keyguard-reason"] == "rate_limit_exceeded"
    assert headers["x-ratelimit-limit-requests"] == "60"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "1.500s"
    assert headers["retry-after"] == "1"
    body = json.loads(denied.body)
    if anthropic:
        assert body["error"]["type"] == "rate_limit_error"
    else:
        assert body["error"]["code"] == "rate_limit_exceeded"
        assert body["error"]["type"] == "requests"


def test_rate_limited_negative_counters_are_clamped() -> None:
    spend = SpendResult("rate_limited", rl_limit=5, rl_remaining=-3, rl_reset_ms=-10)
    headers = header_dict(rate_limited(spend, False).denied_response.headers)
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "0.000s"


def test_rate_limited_does_not_mutate_the_shared_denial() -> None:
    before = denial(Reason.RATE_LIMIT_EXCEEDED, False).SerializeToString()
    rate_limited(SpendResult("rate_limited", rl_limit=60, retry_after_ms=5000), False)
    assert denial(Reason.RATE_LIMIT_EXCEEDED, False).SerializeToString() == before
    headers = header_dict(denial(Reason.RATE_LIMIT_EXCEEDED, False).denied_response.headers)
    assert "retry-after" not in headers


# ----- allow ----------------------------------------------------------------------------------


def allow_headers(response: CheckResponse) -> dict[str, str]:
    return header_dict(response.ok_response.headers)


@pytest.mark.parametrize("key_type", [TYPE_STANDARD, TYPE_SUBSCRIPTION])
@pytest.mark.parametrize("billing", ["quota", "payg", "unmetered"])
def test_allow_headers_and_metadata(key_type: str, billing: str) -> None:
    record = make_record(type=key_type)
    response = allow(record, billing=billing, strip_credentials=True)
    assert response.status.code == 0
    assert response.WhichOneof("http_response") == "ok_response"
    headers = allow_headers(response)
    assert headers["x-keyguard-key-id"] == "kg_a1b2c3d4e5f6"
    assert headers["x-keyguard-key-type"] == key_type
    assert headers["x-keyguard-billing"] == billing
    for option in response.ok_response.headers:
        assert option.append_action == OVERWRITE
    metadata = dict(response.dynamic_metadata)
    assert metadata["key_id"] == "kg_a1b2c3d4e5f6"
    assert metadata["key_type"] == key_type
    assert metadata["billing"] == billing


def test_allow_strips_credentials_by_default_setting() -> None:
    response = allow(make_record(), billing="quota", strip_credentials=True)
    removed = set(response.ok_response.headers_to_remove)
    assert {"authorization", "x-api-key"} <= removed


def test_allow_keeps_credentials_when_asked() -> None:
    response = allow(make_record(), billing="quota", strip_credentials=False)
    removed = set(response.ok_response.headers_to_remove)
    assert "authorization" not in removed
    assert "x-api-key" not in removed


def test_allow_removes_client_sent_degraded_header() -> None:
    response = allow(make_record(), billing="quota", strip_credentials=False)
    assert "x-keyguard-degraded" in response.ok_response.headers_to_remove
    assert "x-keyguard-degraded" not in allow_headers(response)


def test_allow_degraded_sets_the_header() -> None:
    response = allow(make_record(), billing="quota", strip_credentials=True, degraded=True)
    assert allow_headers(response)["x-keyguard-degraded"] == "1"
    assert "x-keyguard-degraded" not in response.ok_response.headers_to_remove


def test_allow_headers_never_carry_the_key_or_hash() -> None:
    record = make_record()
    data = allow(record, billing="quota", strip_credentials=True).SerializeToString()
    assert record.key_hash.encode() not in data
    assert b"sk-" not in data


def allow_with_suffix(spend: SpendResult, **record: object) -> CheckResponse:
    """An allow as the service answers a metered key: cached allow + rate-limit suffix."""
    base = allow(make_record(**record), billing="quota", strip_credentials=True)
    return CheckResponse.FromString(base.SerializeToString() + rate_limit_suffix(spend))


def test_allow_rate_limit_response_headers() -> None:
    spend = SpendResult("ok", remaining=3, rl_limit=100, rl_remaining=42, rl_reset_ms=600)
    response = allow_with_suffix(spend, rpm=100)
    headers = header_dict(response.ok_response.response_headers_to_add)
    assert headers == {
        "x-ratelimit-limit-requests": "100",
        "x-ratelimit-remaining-requests": "42",
        "x-ratelimit-reset-requests": "0.600s",
    }


def test_allow_without_rate_limit_adds_no_response_headers() -> None:
    spend = SpendResult("ok", remaining=3)
    response = allow_with_suffix(spend)
    assert len(response.ok_response.response_headers_to_add) == 0
    response = allow(make_record(), billing="quota", strip_credentials=True)
    assert len(response.ok_response.response_headers_to_add) == 0


@pytest.mark.parametrize("strip", [True, False])
def test_allow_unknown_degraded(strip: bool) -> None:
    response = allow_unknown_degraded(strip)
    assert response.status.code == 0
    headers = allow_headers(response)
    assert headers["x-keyguard-degraded"] == "1"
    assert headers["x-keyguard-key-id"] == "unknown"
    for option in response.ok_response.headers:
        assert option.append_action == OVERWRITE
    removed = set(response.ok_response.headers_to_remove)
    assert ({"authorization", "x-api-key"} <= removed) is strip


def test_rate_limit_suffix_merges_into_a_serialized_allow() -> None:
    """Appending the hand-encoded suffix equals building the message with the headers."""
    record = make_record(unlimited=False, rpm=60, remaining=5)
    spend = SpendResult("ok", remaining=5, rl_limit=60, rl_remaining=59, rl_reset_ms=1500)
    base = allow(record, billing="quota", strip_credentials=True)
    merged = CheckResponse.FromString(base.SerializeToString() + rate_limit_suffix(spend))
    built = allow(record, billing="quota", strip_credentials=True)
    built.ok_response.response_headers_to_add.extend(rate_limit_headers(spend))
    assert merged == built
    added = {o.header.key: o.header.value for o in merged.ok_response.response_headers_to_add}
    assert added == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1.500s",
    }
    assert [o.append_action for o in merged.ok_response.response_headers_to_add] == [2, 2, 2]
    assert rate_limit_suffix(SpendResult("ok")) == b""


@pytest.mark.parametrize(
    ("hold_id", "held", "model"),
    [
        ("a1b2c3d4e5f61", 0, "gpt-4o-mini"),
        ("ffffffffffff" + "f" * 16, 10**18, "m" * 200),  # longest id and amount; long model
        ("a1", 7, "m" * 20),  # a short ticket: every length in one byte
    ],
)
def test_ticket_suffix_merges_into_a_serialized_allow(hold_id: str, held: int, model: str) -> None:
    """The hand-encoded ticket equals the same entries set through protobuf, next to the
    allow's own metadata (lengths near and past one varint byte included)."""
    record = make_record(unlimited=False, remaining=5)
    ticket = Ticket(hold_id, "ab" * 32, held, held + 7, model, anthropic=True)
    base = allow(record, billing="quota", strip_credentials=True)
    merged = CheckResponse.FromString(base.SerializeToString() + ticket_suffix(ticket))
    built = allow(record, billing="quota", strip_credentials=True)
    tail = f" {'ab' * 32} anthropic {model}"
    built.dynamic_metadata.update({"hold": f"{hold_id} {held} {held + 7}{tail}"})
    assert merged == built


# ----- key metadata headers (issue 13, item 4) -------------------------------------------

METADATA_HEADERS = ("x-keyguard-key-env", "x-keyguard-key-owner")


@pytest.mark.parametrize("strip", [True, False])
@pytest.mark.parametrize("degraded", [True, False])
def test_allow_sends_the_key_env_and_owner(strip: bool, degraded: bool) -> None:
    record = make_record(env="live", owner="team-a@example", meta='{"cost":"42"}')
    response = allow(record, billing="quota", strip_credentials=strip, degraded=degraded)
    headers = allow_headers(response)
    assert headers["x-keyguard-key-env"] == "live"
    assert headers["x-keyguard-key-owner"] == "team-a@example"
    for option in response.ok_response.headers:
        assert option.append_action == OVERWRITE  # a client-sent copy is overwritten
    removed = set(response.ok_response.headers_to_remove)
    assert not removed & set(METADATA_HEADERS)
    # meta is for people: it never travels upstream.
    assert b"cost" not in response.SerializeToString()


def test_allow_removes_client_sent_env_and_owner_when_the_key_has_none() -> None:
    response = allow(make_record(), billing="quota", strip_credentials=False)
    headers = allow_headers(response)
    removed = set(response.ok_response.headers_to_remove)
    for name in METADATA_HEADERS:
        assert name not in headers
        assert name in removed


def test_allow_with_only_an_owner() -> None:
    response = allow(make_record(owner="team-b"), billing="quota", strip_credentials=True)
    assert allow_headers(response)["x-keyguard-key-owner"] == "team-b"
    assert "x-keyguard-key-env" not in allow_headers(response)
    assert "x-keyguard-key-env" in response.ok_response.headers_to_remove


@pytest.mark.parametrize("bad", ["a b", "a\r\nx-evil: 1", "é", "x" * 65])
def test_allow_never_sends_a_hand_edited_value_envoy_would_refuse(bad: str) -> None:
    response = allow(make_record(env=bad, owner=bad), billing="quota", strip_credentials=True)
    headers = allow_headers(response)
    removed = set(response.ok_response.headers_to_remove)
    for name in METADATA_HEADERS:
        assert name not in headers and name in removed


@pytest.mark.parametrize("strip", [True, False])
def test_allow_unknown_degraded_removes_env_and_owner(strip: bool) -> None:
    response = allow_unknown_degraded(strip)
    removed = set(response.ok_response.headers_to_remove)
    assert set(METADATA_HEADERS) <= removed
    assert not set(METADATA_HEADERS) & set(allow_headers(response))


def test_renderer_memo_follows_the_records_metadata() -> None:
    """A changed record (a new object) renders its new env; the old one keeps its bytes."""
    from keyguard.authz.decision import Billing, Decision
    from keyguard.authz.render import Renderer

    renderer = Renderer(strip_credentials=True)
    facts = None  # an allow never reads the request
    for env in ("live", "test", ""):
        record = make_record(env=env)
        decision = Decision(reason=Reason.OK, record=record, billing=Billing.UNMETERED)
        wire = renderer.render(decision, facts)  # type: ignore[arg-type]
        headers = allow_headers(CheckResponse.FromString(wire))
        assert headers.get("x-keyguard-key-env") == (env or None)
