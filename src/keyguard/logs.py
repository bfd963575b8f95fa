"""structlog JSON logs: one object per line on stdout.

The raw API key is never handed to the logger, so redaction does not depend
on a filter. Tracebacks are rendered without local variables for the same
reason.

Lines are gathered and written together at most FLUSH_DELAY (20 ms) after the
first of them: a decision log line per Check then costs a list append instead
of a system call and an event-loop iteration, and lines still reach
`kubectl logs` at once for any human purpose.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
from typing import Any, TextIO

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


FLUSH_DELAY = 0.02  # seconds


class TickBufferedLogger:
    """A structlog logger that batches lines and writes them within FLUSH_DELAY."""

    def __init__(self, file: TextIO) -> None:
        self._file = file
        self._lines: list[str] = []
        self._scheduled = False

    def msg(self, message: str) -> None:
        self._lines.append(message)
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (CLI, start-up): write now
            self.flush()
            return
        self._scheduled = True
        # A short delay gathers the lines of many Checks into one write; an
        # immediate callback would cost an extra loop iteration per Check.
        loop.call_later(FLUSH_DELAY, self.flush)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg

    def flush(self) -> None:
        self._scheduled = False
        if not self._lines:
            return
        data = "\n".join(self._lines) + "\n"
        self._lines.clear()
        self._file.write(data)
        self._file.flush()


_logger: TickBufferedLogger | None = None


def _factory(*_args: Any) -> TickBufferedLogger:
    assert _logger is not None
    return _logger


def configure(level: str = "info", file: TextIO | None = None) -> None:
    global _logger
    _logger = TickBufferedLogger(file or sys.stdout)
    atexit.register(_logger.flush)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level.lower()]),
        logger_factory=_factory,
        cache_logger_on_first_use=True,
    )


def flush() -> None:
    if _logger is not None:
        _logger.flush()
