"""structlog JSON logs: one object per line on stdout.

The raw API key is never handed to the logger, so redaction does not depend
on a filter. Tracebacks are rendered without local variables for the same
reason.

A decision line is logged on every Check, so the hot path only collects the
event dict (structlog's processors run as usual, minus the final JSON
rendering). Lines are rendered and written together at most FLUSH_DELAY after
the first of a batch: one write instead of a system call and an event-loop
iteration per Check, and rendering in a tight loop instead of between Checks.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import sys
import time
from collections.abc import MutableMapping
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


class BatchingLogger:
    """The structlog logger: keeps event dicts and writes them as JSON lines in batches."""

    def __init__(self, file: TextIO) -> None:
        self._file = file
        self._events: list[dict[str, Any]] = []
        self._scheduled = False
        self._iso = _Iso()

    def msg(self, **event: Any) -> None:
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
            stamp = event.get("timestamp")
            if isinstance(stamp, float):
                event["timestamp"] = self._iso(stamp)
            lines.append(json.dumps(event, default=repr))
        self._file.write("\n".join(lines) + "\n")
        self._file.flush()


_logger: BatchingLogger | None = None


def _factory(*_args: Any) -> BatchingLogger:
    assert _logger is not None
    return _logger


def configure(level: str = "info", file: TextIO | None = None) -> None:
    global _logger
    if _logger is not None:
        _logger.flush()
    _logger = BatchingLogger(file or sys.stdout)
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
