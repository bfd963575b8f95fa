"""The values of a key change, from text to the form stored in the record.

Each parser raises ``InvalidChange`` with a one-line message saying what is
expected; the CLI's argument types and the admin API both call these.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from keyguard.errors import InvalidChange
from keyguard.record import parse_networks

# Given for --models or --allowed-ips: no restriction.
ALL = "*"
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,255}$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InvalidChange(f"{text!r} is not a whole number") from None
    if value < 0:
        raise InvalidChange(f"{text!r} is negative; use 0 or more")
    return value


def pos_int(text: str) -> int:
    value = nonneg_int(text)
    if value == 0:
        raise InvalidChange("must be greater than 0")
    return value


def duration(text: str) -> int:
    """Parse "30d", "1h", "15m", "5s" or "90" (seconds) into seconds (> 0)."""
    text = text.strip().lower()
    if not text:
        raise InvalidChange("empty duration")
    if text[-1] in _UNITS:
        number, unit = text[:-1], _UNITS[text[-1]]
    else:
        number, unit = text, 1
    if not (number.isascii() and number.isdigit()):
        raise InvalidChange(f"bad duration {text!r}: use a number with s, m, h, d or w")
    seconds = int(number) * unit
    if seconds <= 0:
        raise InvalidChange("duration must be positive")
    return seconds


def models(text: str) -> str:
    """A comma list of model names, de-duplicated in order; '' for all models."""
    if text.strip() == ALL:
        return ""
    items = [item.strip() for item in text.split(",")]
    for item in items:
        if not _MODEL_NAME.match(item):
            raise InvalidChange(
                f"bad model name {item!r}: use a comma list such as gpt-4o,claude-3-5-haiku"
                " (or '*' for all models)"
            )
    return ",".join(dict.fromkeys(items))


def allowed_ips(text: str) -> str:
    """A comma list of normalised networks; '' for any address."""
    if text.strip() == ALL:
        return ""
    try:
        nets = parse_networks(text)
    except ValueError as exc:
        raise InvalidChange(
            f"bad IP or CIDR in {text!r} ({exc}); use e.g. 10.0.0.0/8,2001:db8::1 (or '*' for any)"
        ) from None
    return ",".join(str(n) for n in nets)


def expires(text: str) -> str:
    """A future moment as whole epoch seconds; '' for never."""
    value = text.strip()
    if value.lower() == "never":
        return ""
    if value.startswith("+"):
        return str(int(time.time()) + duration(value[1:]))
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidChange(
            f"bad date {text!r}: use YYYY-MM-DD, an ISO date-time such as 2027-01-31T12:00:00Z,"
            " +30d, or never"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # dates without a zone are UTC
    stamp = when.timestamp()
    if stamp <= time.time():
        raise InvalidChange(f"expiry {text!r} is in the past")
    return str(int(stamp))
