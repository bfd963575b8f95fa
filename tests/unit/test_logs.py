"""The decision line's fast path renders exactly what structlog would."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from keyguard.runtime import logs


@pytest.fixture
def written() -> Iterator[io.StringIO]:
    out = io.StringIO()
    logs.configure("info", out)
    try:
        yield out
    finally:
        logs.reset()


CASES = [
    ("req-1", "allow", "ok", 0.412, "kid_abc", False),
    ('quote " and \\ and ünïcode \u2028 \x00', "deny", "invalid_api_key", 12.0, "", False),
    ("", "allow", "ok", 1e-3, "k2", True),
]


@pytest.mark.parametrize("case", CASES)
def test_decision_line_equals_the_structlog_rendering(
    written: io.StringIO, case: tuple[str, str, str, float, str, bool]
) -> None:
    request_id, decision, reason, latency_ms, key_id, degraded = case
    logs.decision(request_id, decision, reason, latency_ms, key_id, degraded)
    fields = logs.decision_fields(request_id, decision, reason, latency_ms, key_id, degraded)
    structlog.get_logger("keyguard.decision").info("decision", **fields)
    logs.flush()
    fast, slow = written.getvalue().splitlines()
    fast_obj, slow_obj = json.loads(fast), json.loads(slow)
    # Same keys in the same order with the same values; only the timestamps differ.
    assert fast_obj.pop("timestamp")[:10] == slow_obj.pop("timestamp")[:10]
    assert list(fast_obj.items()) == list(slow_obj.items())
    stamp_free = fast.rsplit(', "timestamp"', 1)[0]
    assert stamp_free == slow.rsplit(', "timestamp"', 1)[0]


def test_decisions_follow_the_level(written: io.StringIO) -> None:
    logs.configure("warning", written)
    logs.decision("r", "allow", "ok", 0.1)
    structlog.get_logger("x").warning("kept")
    logs.flush()
    lines = [json.loads(line) for line in written.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["kept"]


def test_unconfigured_logging_falls_back_to_structlog() -> None:
    logs.reset()
    with structlog.testing.capture_logs() as captured:
        logs.decision("r", "deny", "key_revoked", 0.5, "kid")
    assert captured == [
        {
            "request_id": "r",
            "decision": "deny",
            "reason": "key_revoked",
            "latency_ms": 0.5,
            "key_id": "kid",
            "event": "decision",
            "log_level": "info",
        }
    ]
