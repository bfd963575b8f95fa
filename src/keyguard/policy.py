"""The decision rules, as pure functions of plain data and ``now``.

No I/O happens here. The metered part of a decision (quota, subscription
cycle, rate limit) must be atomic across replicas, so it runs as one Lua script
in the store; ``interpret_spend`` turns that script's answer into a reason.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from keyguard.reasons import Reason
from keyguard.record import STATUS_ACTIVE, KeyRecord


class ModelLookup:
    """Sentinel answers of a model reader besides a model name."""

    NONE = "\x00none"
    AMBIGUOUS = "\x00ambiguous"
    # A request that cannot name a model (GET /v1/models, GET /v1/files/…):
    # there is nothing to restrict, so a model list does not apply to it.
    NOT_APPLICABLE = "\x00n/a"


def client_ip_allowed(record: KeyRecord, client_ip: str | None) -> bool:
    if record.allowed_ips is None:
        return True
    if not client_ip:
        return False
    try:
        addr = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == net.version and addr in net for net in record.allowed_ips)


def decide_static(
    record: KeyRecord,
    now: float,
    client_ip: str | None,
    read_model: Callable[[], str],
) -> Reason | None:
    """Checks that need only the record: status, expiry, IP, model.

    Returns the deny reason, or None when the request may go on to the metered
    step. ``read_model`` is called only for keys with a model list, so a key
    without one never has its body read.
    """
    if record.status != STATUS_ACTIVE:
        return Reason.KEY_DISABLED
    if record.expires_at is not None and now >= record.expires_at:
        return Reason.KEY_EXPIRED
    if not client_ip_allowed(record, client_ip):
        return Reason.IP_NOT_ALLOWED
    if record.models is not None:
        model = read_model()
        if model == ModelLookup.NOT_APPLICABLE:
            return None
        if model in (ModelLookup.NONE, ModelLookup.AMBIGUOUS):
            return Reason.MODEL_REQUIRED
        if model not in record.models:
            return Reason.MODEL_NOT_ALLOWED
    return None


@dataclass(frozen=True, slots=True)
class SpendResult:
    """What the atomic spend script answered.

    outcome: "ok" | "payg" | "insufficient" | "rate_limited" | "gone" | "disabled"
    """

    outcome: str
    remaining: int = -1
    rl_limit: int = 0
    rl_remaining: int = 0
    rl_reset_ms: int = 0
    retry_after_ms: int = 0


_SPEND_REASONS = {
    "ok": Reason.OK,
    "payg": Reason.OK,
    "insufficient": Reason.INSUFFICIENT_QUOTA,
    "rate_limited": Reason.RATE_LIMIT_EXCEEDED,
    "gone": Reason.INVALID_API_KEY,
    "disabled": Reason.KEY_DISABLED,
}


def interpret_spend(result: SpendResult) -> Reason:
    return _SPEND_REASONS.get(result.outcome, Reason.INTERNAL_ERROR)


def next_cycle_end(cycle_end: float, cycle_seconds: int, now: float) -> float:
    """The first cycle boundary after ``now``, stepping whole cycles from ``cycle_end``.

    Mirrors the reset in the spend script, for the CLI and for tests.
    """
    if cycle_seconds <= 0 or now < cycle_end:
        return cycle_end
    skipped = int((now - cycle_end) // cycle_seconds) + 1
    return cycle_end + skipped * cycle_seconds


def parse_duration(text: str) -> int:
    """Parse "30d", "1h", "15m", "5s" or "90" (seconds) into seconds (> 0)."""
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    if not text:
        raise ValueError("empty duration")
    if text[-1] in units:
        number, unit = text[:-1], units[text[-1]]
    else:
        number, unit = text, 1
    if not (number.isascii() and number.isdigit()):
        raise ValueError(f"bad duration {text!r}: use a number with s, m, h, d or w")
    seconds = int(number) * unit
    if seconds <= 0:
        raise ValueError("duration must be positive")
    return seconds
