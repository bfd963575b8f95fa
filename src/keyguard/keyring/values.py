"""The values of a key change, from text to the form stored in the record.

Each parser raises ``InvalidChange`` with a one-line message saying what is
expected; the CLI's argument types and the admin API both call these.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from datetime import UTC, datetime

from keyguard.errors import InvalidChange
from keyguard.record import parse_networks

# Given for --models or --allowed-ips: no restriction.
ALL = "*"
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,255}$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# --env, --owner and the keys of --meta: short identifiers (safe in a header value).
_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$")
_IDENTIFIER_RULE = "up to 64 of A-Z a-z 0-9 . _ : @ -, starting with a letter or digit"
META_MAX_PAIRS = 16
META_MAX_VALUE = 256  # characters
META_MAX_BYTES = 4096  # the stored JSON, UTF-8


def nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InvalidChange(f"{text!r} is not a whole number") from None
    if value < 0:
        raise InvalidChange(f"{text!r} is negative; use 0 or more")
    return value


# A quota, a top-up and the balance a top-up leaves are at most this many credits (10^15:
# a billion dollars at 1 credit = 1 micro-dollar, like a price). Redis's Lua compares
# balances as doubles, exact only below 2^53 (about 9 x 10^15).
MAX_BALANCE = 10**15


def credits(value: int, what: str = "quota") -> int:
    """A quota or top-up in whole credits: 0 to MAX_BALANCE."""
    if value < 0:
        raise InvalidChange(f"{what} {value} is negative; use 0 or more")
    if value > MAX_BALANCE:
        raise InvalidChange(f"{what} {value} is larger than the limit of {MAX_BALANCE} credits")
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


def _identifier(what: str, text: str, example: str) -> str:
    """A short identifier, or '' (which removes the setting)."""
    value = text.strip()
    if value and not _IDENTIFIER.match(value):
        raise InvalidChange(
            f"bad {what} {text[:80]!r}: use {_IDENTIFIER_RULE}, such as {example} ('' removes it)"
        )
    return value


def env(text: str) -> str:
    """The key's environment (``live``, ``test``); '' for none."""
    return _identifier("env", text, "live")


def owner(text: str) -> str:
    """Who the key belongs to (``team-a``); '' for nobody."""
    return _identifier("owner", text, "team-a")


def meta_entry(key: str, value: str) -> tuple[str, str]:
    """One metadata pair; an empty value means: remove this key."""
    if not _IDENTIFIER.match(key):
        raise InvalidChange(f"bad meta key {key[:80]!r}: use {_IDENTIFIER_RULE}")
    if len(value) > META_MAX_VALUE:
        raise InvalidChange(
            f"meta value of {key!r} is {len(value)} characters; at most {META_MAX_VALUE}"
        )
    if not value.isprintable():
        raise InvalidChange(f"meta value of {key!r} has a control character; use printable text")
    return key, value


def meta_item(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` (``KEY=`` removes KEY), as ``--meta`` takes it."""
    key, sep, value = text.partition("=")
    if not sep:
        raise InvalidChange(f"bad meta {text[:80]!r}: use KEY=VALUE (KEY= removes KEY)")
    return meta_entry(key.strip(), value)


def merge_meta(current: dict[str, str], pairs: Iterable[tuple[str, str]]) -> str:
    """``current`` with ``pairs`` applied (an empty value removes its key), as the record
    stores it: compact JSON, '' when nothing is left. Bounded in pairs and in size."""
    merged = dict(current)
    for key, value in pairs:
        if value:
            merged[key] = value
        else:
            merged.pop(key, None)
    if len(merged) > META_MAX_PAIRS:
        raise InvalidChange(
            f"a key has at most {META_MAX_PAIRS} meta pairs; this would give it {len(merged)}"
            " (KEY= removes one)"
        )
    if not merged:
        return ""
    text = json.dumps(merged, separators=(",", ":"), ensure_ascii=False)
    if len(text.encode()) > META_MAX_BYTES:
        raise InvalidChange(
            f"a key's meta is at most {META_MAX_BYTES} bytes as JSON;"
            f" this would make it {len(text.encode())}"
        )
    return text


def grace(text: str) -> int:
    """A rotation's grace: a duration (24h, 30m) or 0, at most 30 days."""
    if text.strip() == "0":
        return 0
    seconds = duration(text)
    if seconds > 30 * 86400:
        raise InvalidChange(f"grace {text!r} is longer than 30d")
    return seconds


def alert_below(text: str) -> str:
    """A low-balance threshold: whole credits ("50000") or a percentage of the quota
    ("10%", 1 to 99); "" or "0" removes it."""
    value = text.strip()
    if value in ("", "0"):
        return ""
    if value.endswith("%"):
        number = value[:-1]
        if number.isascii() and number.isdigit() and 1 <= int(number) <= 99:
            return str(int(number)) + "%"
        raise InvalidChange(f"bad threshold {text!r}: a percentage is 1% to 99%")
    if value.isascii() and value.isdigit() and len(value) <= 18:
        return str(int(value))
    raise InvalidChange(f"bad threshold {text!r}: use whole credits (50000) or a percentage (10%)")


# Plans (``keyguard plans …``): a name is part of Redis key names, so a short safe one.
_PLAN_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def plan_name(text: str) -> str:
    """A plan's name: up to 64 of a-z 0-9 . _ -, starting with a letter or digit."""
    if not _PLAN_NAME.match(text):
        raise InvalidChange(
            f"bad plan name {text[:80]!r}: use up to 64 of a-z 0-9 . _ -,"
            " starting with a letter or digit, such as pro or team-2025"
        )
    return text


def key_plan(text: str) -> str:
    """The plan a key follows (``keys create/set --plan``); '' on ``set``: leave its plan."""
    return "" if text == "" else plan_name(text)
