"""structlog JSON logs: one object per line on stdout.

The raw API key is never handed to the logger, so redaction does not depend
on a filter. Tracebacks are rendered without local variables for the same
reason.

A decision line is logged on every Check, so it skips structlog's processor
chain: ``decision()`` only appends a tuple, and the line is rendered later as
the same JSON object structlog would produce (tests/unit/test_logs.py compares
the two). Every other event goes through structlog as usual, minus the final
JSON rendering. Lines are rendered and written together at most FLUSH_DELAY
after the first of a batch: one write instead of a system call and an
event-loop iteration per Check, and rendering in a tight loop instead of
between Checks.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import sys
import time
from collections.abc import MutableMapping
from json.encoder import encode_basestring_ascii as _quote
from typing import Any, TextIO

import structlog

FLUSH_DELAY = 0.02  # seconds
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _stamp(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event["timestamp"] = time.time()  # rendered as ISO 8601 UTC at flush
    return event


class _Iso:
    """Format epoch seconds as ISO 8601 UTC, formatting the date part once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, stamp: float) -> str:
        second = int(stamp)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((stamp - second) * 1_000_000):06d}Z"


# A decision, as logged: (time.time(), request_id, decision, reason, latency_ms,
# key_id, degraded).
Decision = tuple[float, str, str, str, float, str, bool]


class BatchingLogger:
    """The structlog logger: keeps event dicts and writes them as JSON lines in batches."""

    def __init__(self, file: TextIO) -> None:
        self._file = file
        self._events: list[dict[str, Any] | Decision] = []
        self._scheduled = False
        self._iso = _Iso()

    def msg(self, **event: Any) -> None:
        self._append(event)

    def _append(self, event: dict[str, Any] | Decision) -> None:
        self._events.append(event)
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (CLI, start-up, shutdown): write now
            self.flush()
            return
        self._scheduled = True
        loop.call_later(FLUSH_DELAY, self.flush)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg

    def flush(self) -> None:
        self._scheduled = False
        if not self._events:
            return
        events, self._events = self._events, []
        lines = []
        for event in events:
            if isinstance(event, tuple):
                lines.append(self._render_decision(event))
                continue
            stamp = event.get("timestamp")
            if isinstance(stamp, float):
                event["timestamp"] = self._iso(stamp)
            lines.append(json.dumps(event, default=repr))
        self._file.write("\n".join(lines) + "\n")
        self._file.flush()

    def _render_decision(self, entry: Decision) -> str:
        """The line structlog would render for log.info("decision", ...), key for key."""
        stamp, request_id, decision, reason, latency_ms, key_id, degraded = entry
        line = (
            f'{{"request_id": {_quote(request_id)}, "decision": {_quote(decision)}, '
            f'"reason": {_quote(reason)}, "latency_ms": {latency_ms!r}'
        )
        if key_id:
            line += f', "key_id": {_quote(key_id)}'
        if degraded:
            line += ', "degraded": true'
        return line + f', "event": "decision", "level": "info", "timestamp": "{self._iso(stamp)}"}}'


_logger: BatchingLogger | None = None
_decisions_on = True  # decision lines are at info level
_fallback = structlog.get_logger("keyguard.decision")


def decision(
    request_id: str,
    decision: str,
    reason: str,
    latency_ms: float,
    key_id: str = "",
    degraded: bool = False,
) -> None:
    """Log one Check's decision line (the hot path's only log call)."""
    logger = _logger
    if logger is not None:
        if _decisions_on:
            logger._append(
                (time.time(), request_id, decision, reason, latency_ms, key_id, degraded)
            )
        return
    # Logging not configured (a library use, some tests): plain structlog.
    _fallback.info(
        "decision", **decision_fields(request_id, decision, reason, latency_ms, key_id, degraded)
    )


def decision_fields(
    request_id: str,
    decision: str,
    reason: str,
    latency_ms: float,
    key_id: str = "",
    degraded: bool = False,
) -> dict[str, Any]:
    """A decision line's fields as structlog receives them (no key id or degraded flag
    when there is none)."""
    fields: dict[str, Any] = {
        "request_id": request_id,
        "decision": decision,
        "reason": reason,
        "latency_ms": latency_ms,
    }
    if key_id:
        fields["key_id"] = key_id
    if degraded:
        fields["degraded"] = True
    return fields


def _factory(*_args: Any) -> BatchingLogger:
    assert _logger is not None
    return _logger


def configure(level: str = "info", file: TextIO | None = None) -> None:
    global _logger, _decisions_on
    if _logger is not None:
        _logger.flush()
    _logger = BatchingLogger(file or sys.stdout)
    _decisions_on = _LEVELS[level.lower()] <= logging.INFO
    atexit.register(_logger.flush)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _stamp,
            structlog.processors.format_exc_info,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level.lower()]),
        logger_factory=_factory,
        cache_logger_on_first_use=True,
    )


def flush() -> None:
    if _logger is not None:
        _logger.flush()


def reset() -> None:
    """Write what is pending and go back to structlog's defaults (for tests)."""
    global _logger, _decisions_on
    if _logger is not None:
        _logger.flush()
        atexit.unregister(_logger.flush)
    _logger = None
    _decisions_on = True
    structlog.reset_defaults()
