"""keyguard.policy: the pure decision rules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from keyguard.model import ModelLookup
from keyguard.policy import (
    SpendResult,
    client_ip_allowed,
    interpret_spend,
    judge,
)
from keyguard.reasons import Reason
from keyguard.record import (
    STATUS_ACTIVE,
    STATUS_DISABLED,
    KeyRecord,
    parse_networks,
)
from tests.support.records import make_record as base_record

NOW = 1_750_000_000.0


def make_record(
    *,
    status: str = STATUS_ACTIVE,
    expires_at: float | None = None,
    models: set[str] | None = None,
    allowed_ips: str | None = None,
    **changes: Any,
) -> KeyRecord:
    return base_record(
        status=status,
        created_at=NOW - 86400,
        expires_at=expires_at,
        models=frozenset(models) if models is not None else None,
        allowed_ips=parse_networks(allowed_ips) if allowed_ips is not None else None,
        unlimited=False,
        remaining=10,
        **changes,
    )


def model_is(name: str) -> Callable[[], str]:
    return lambda: name


def must_not_read_model() -> str:
    pytest.fail("read_model was called for a key without a model list")


# ----- judge: order -----------------------------------------------------------------


def test_active_key_without_limits_is_allowed() -> None:
    assert judge(make_record(), NOW, "10.0.0.1", must_not_read_model) is None


def test_everything_wrong_gives_disabled_first() -> None:
    record = make_record(
        status=STATUS_DISABLED,
        expires_at=NOW - 1,
        allowed_ips="192.168.0.0/16",
        models={"gpt-4o"},
    )
    assert judge(record, NOW, "10.0.0.1", must_not_read_model) is Reason.KEY_DISABLED


@pytest.mark.parametrize("status", [STATUS_DISABLED, "revoked", "", "ACTIVE", "unknown"])
def test_any_status_but_active_is_disabled(status: str) -> None:
    record = make_record(status=status)
    assert judge(record, NOW, None, must_not_read_model) is Reason.KEY_DISABLED


def test_expired_beats_ip_and_model() -> None:
    record = make_record(expires_at=NOW - 1, allowed_ips="192.168.0.0/16", models={"gpt-4o"})
    assert judge(record, NOW, "10.0.0.1", must_not_read_model) is Reason.KEY_EXPIRED


def test_ip_beats_model_and_model_is_not_read() -> None:
    record = make_record(allowed_ips="192.168.0.0/16", models={"gpt-4o"})
    assert judge(record, NOW, "10.0.0.1", must_not_read_model) is Reason.IP_NOT_ALLOWED


def test_model_checked_after_ip_passes() -> None:
    record = make_record(allowed_ips="10.0.0.0/8", models={"gpt-4o"})
    assert judge(record, NOW, "10.0.0.1", model_is("o1")) is Reason.MODEL_NOT_ALLOWED
    assert judge(record, NOW, "10.0.0.1", model_is("gpt-4o")) is None


# ----- expiry -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (NOW - 1, None),
        (NOW - 0.001, None),
        (NOW, Reason.KEY_EXPIRED),  # the boundary is already expired
        (NOW + 0.001, Reason.KEY_EXPIRED),
        (NOW + 86400 * 365, Reason.KEY_EXPIRED),
    ],
)
def test_expiry_boundary(now: float, expected: Reason | None) -> None:
    record = make_record(expires_at=NOW)
    assert judge(record, now, None, must_not_read_model) is expected


def test_no_expiry_never_expires() -> None:
    record = make_record(expires_at=None)
    assert judge(record, 1e12, None, must_not_read_model) is None


# ----- IP allow-list --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allowed", "client", "ok"),
    [
        ("10.0.0.1", "10.0.0.1", True),
        ("10.0.0.1", "10.0.0.2", False),
        ("10.0.0.0/8", "10.255.255.255", True),
        ("10.0.0.0/8", "11.0.0.0", False),
        ("10.0.0.0/8", "9.255.255.255", False),
        ("192.168.1.0/24,10.0.0.0/8", "192.168.1.77", True),
        ("192.168.1.0/24,10.0.0.0/8", "10.1.2.3", True),
        ("192.168.1.0/24,10.0.0.0/8", "192.168.2.1", False),
        ("0.0.0.0/0", "203.0.113.9", True),
        ("0.0.0.0/0", "2001:db8::1", False),  # an IPv4 list never admits IPv6
        ("2001:db8::1", "2001:db8::1", True),
        ("2001:db8::1", "2001:0db8:0000:0000:0000:0000:0000:0001", True),
        ("2001:db8::1", "2001:db8::2", False),
        ("2001:db8::/32", "2001:db8:ffff::1", True),
        ("2001:db8::/32", "2001:db9::1", False),
        ("::/0", "10.0.0.1", False),
        # IPv4-mapped IPv6, as a dual-stack listener reports IPv4 clients.
        ("10.0.0.0/8", "::ffff:10.0.0.1", True),
        ("10.0.0.0/8", "::FFFF:10.0.0.1", True),
        ("10.0.0.0/8", "::ffff:a00:1", True),
        ("10.0.0.0/8", "::ffff:11.0.0.1", False),
        ("10.0.0.1", "::ffff:10.0.0.1", True),
        ("10.0.0.0/8,2001:db8::/32", "2001:db8::5", True),
        ("10.0.0.0/8,2001:db8::/32", "10.9.9.9", True),
        ("10.0.0.0/8,2001:db8::/32", "172.16.0.1", False),
        ("127.0.0.1", "127.0.0.1", True),
        ("::1", "::1", True),
        ("::1", "127.0.0.1", False),
    ],
)
def test_ip_allow_list(allowed: str, client: str, ok: bool) -> None:
    record = make_record(allowed_ips=allowed)
    assert client_ip_allowed(record, client) is ok
    expected = None if ok else Reason.IP_NOT_ALLOWED
    assert judge(record, NOW, client, must_not_read_model) is expected


@pytest.mark.parametrize(
    "client",
    [
        None,
        "",
        "garbage",
        "10.0.0",
        "10.0.0.256",
        "10.0.0.1:443",
        "10.0.0.0/8",
        " 10.0.0.1x",
        "unknown",
        "::ffff:999.0.0.1",
        "2001:db8:::1",
        "\x00",
    ],
)
def test_bad_or_missing_client_ip_is_refused_when_a_list_exists(client: str | None) -> None:
    record = make_record(allowed_ips="0.0.0.0/0,::/0")
    assert client_ip_allowed(record, client) is False
    assert judge(record, NOW, client, must_not_read_model) is Reason.IP_NOT_ALLOWED


@pytest.mark.parametrize("client", [None, "", "garbage", "10.0.0.1", "2001:db8::1"])
def test_any_client_ip_is_allowed_without_a_list(client: str | None) -> None:
    record = make_record(allowed_ips=None)
    assert client_ip_allowed(record, client) is True
    assert judge(record, NOW, client, must_not_read_model) is None


# ----- model allow-list -----------------------------------------------------------------------


def test_read_model_is_not_called_without_a_model_list() -> None:
    assert judge(make_record(models=None), NOW, None, must_not_read_model) is None


def test_read_model_is_called_once_with_a_model_list() -> None:
    calls: list[int] = []

    def reader() -> str:
        calls.append(1)
        return "gpt-4o"

    assert judge(make_record(models={"gpt-4o"}), NOW, None, reader) is None
    assert calls == [1]


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ("gpt-4o", None),
        ("claude-3-5-haiku", None),
        ("gpt-4o-mini", Reason.MODEL_NOT_ALLOWED),
        ("GPT-4O", Reason.MODEL_NOT_ALLOWED),  # model names are exact
        ("gpt-4o ", Reason.MODEL_NOT_ALLOWED),
        ("", Reason.MODEL_NOT_ALLOWED),
        (ModelLookup.NONE, Reason.MODEL_REQUIRED),
        (ModelLookup.AMBIGUOUS, Reason.MODEL_REQUIRED),
    ],
)
def test_model_list(requested: str, expected: Reason | None) -> None:
    record = make_record(models={"gpt-4o", "claude-3-5-haiku"})
    assert judge(record, NOW, None, model_is(requested)) is expected


def test_empty_model_list_allows_nothing() -> None:
    record = make_record(models=set())
    assert judge(record, NOW, None, model_is("gpt-4o")) is Reason.MODEL_NOT_ALLOWED
    assert judge(record, NOW, None, model_is(ModelLookup.NONE)) is Reason.MODEL_REQUIRED


def test_model_lookup_sentinels_are_distinct_and_not_plausible_models() -> None:
    assert ModelLookup.NONE != ModelLookup.AMBIGUOUS
    for sentinel in (ModelLookup.NONE, ModelLookup.AMBIGUOUS):
        assert "\x00" in sentinel


# ----- interpret_spend ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        ("ok", Reason.OK),
        ("payg", Reason.OK),
        ("insufficient", Reason.INSUFFICIENT_QUOTA),
        ("rate_limited", Reason.RATE_LIMIT_EXCEEDED),
        ("gone", Reason.INVALID_API_KEY),
        ("disabled", Reason.KEY_DISABLED),
        ("", Reason.INTERNAL_ERROR),
        ("OK", Reason.INTERNAL_ERROR),
        ("something new", Reason.INTERNAL_ERROR),
    ],
)
def test_interpret_spend(outcome: str, reason: Reason) -> None:
    assert interpret_spend(SpendResult(outcome)) is reason
    assert interpret_spend(SpendResult(outcome, remaining=5, rl_limit=10)) is reason


def test_spend_result_defaults() -> None:
    result = SpendResult("ok")
    assert (result.remaining, result.rl_limit, result.rl_remaining) == (-1, 0, 0)
    assert (result.rl_reset_ms, result.retry_after_ms) == (0, 0)
