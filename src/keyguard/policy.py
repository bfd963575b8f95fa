"""The decision rules, as pure functions of plain data and ``now``.

No I/O happens here. ``judge`` holds the rules that need only the record; the
metered part of a decision (quota, subscription cycle, rate limit) must be atomic
across replicas, so it runs as one Lua script in the store, and ``interpret_spend``
turns that script's answer into a reason. ``on_store_error`` is the outage fallback
(KEYGUARD_ON_STORE_ERROR, KEYGUARD_STALE_SECONDS).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable
from typing import NamedTuple

from keyguard.model import ModelLookup
from keyguard.reasons import Reason
from keyguard.record import STATUS_ACTIVE, KeyRecord


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


def judge(
    record: KeyRecord,
    now: float,
    client_ip: str | None,
    read_model: Callable[[], str],
) -> Reason | None:
    """Checks that need only the record: the secret's validity, status, expiry, IP, model.

    Returns the deny reason, or None when the request may go on to the metered
    step. ``read_model`` is called only for keys with a model list, so a key
    without one never has its body read.
    """
    if record.secret_expires_at is not None and now >= record.secret_expires_at:
        return Reason.INVALID_API_KEY  # a rotated-away secret, past its grace
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


class SpendResult(NamedTuple):
    """What the atomic spend script answered (a named tuple: one is made per metered
    Check, and a frozen dataclass costs twice as much to make).

    outcome: "ok" | "payg" | "insufficient" | "rate_limited" | "tokens_limited" | "gone"
    | "disabled"
    """

    outcome: str
    remaining: int = -1
    rl_limit: int = 0
    rl_remaining: int = 0
    rl_reset_ms: int = 0
    retry_after_ms: int = 0
    held: int = 0  # credits held by open requests, this one's hold included
    tl_limit: int = 0  # tokens per minute (0: no token limit)
    tl_remaining: int = 0
    tl_reset_ms: int = 0
    holds_expired: int = 0  # holds this call found expired and released


_SPEND_REASONS = {
    "ok": Reason.OK,
    "payg": Reason.OK,
    "insufficient": Reason.INSUFFICIENT_QUOTA,
    "rate_limited": Reason.RATE_LIMIT_EXCEEDED,
    "tokens_limited": Reason.RATE_LIMIT_EXCEEDED,
    "gone": Reason.INVALID_API_KEY,
    "disabled": Reason.KEY_DISABLED,
}


def interpret_spend(result: SpendResult) -> Reason:
    return _SPEND_REASONS.get(result.outcome, Reason.INTERNAL_ERROR)


class StoreErrorMode(enum.StrEnum):
    """KEYGUARD_ON_STORE_ERROR: what a Check answers while the store cannot."""

    DENY = "deny"  # 503 for every request that needs the store
    ALLOW = "allow"  # allow, on the cached record if any (judged), else as an unknown key
    CACHED = "cached"  # allow on a cached record at most stale_seconds old (judged)


class Fallback(enum.Enum):
    """What to do with a request whose store call failed."""

    UNAVAILABLE = "unavailable"  # deny: 503 store_unavailable
    ALLOW_UNKNOWN = "allow_unknown"  # allow without a record, marked degraded
    USE_RECORD = "use_record"  # judge the record at hand; allow degraded if it passes


def on_store_error(
    mode: StoreErrorMode, record_age: float | None, stale_seconds: float, record_fresh: bool
) -> Fallback:
    """The outage fallback for a request whose store call failed.

    ``record_age`` is the age in seconds of the record at hand (None: there is none);
    ``record_fresh`` says it is fresh (read on this request, or within the cache TTL),
    so that only the spend failed.
    """
    if mode is StoreErrorMode.DENY:
        return Fallback.UNAVAILABLE
    if record_age is None:
        return Fallback.ALLOW_UNKNOWN if mode is StoreErrorMode.ALLOW else Fallback.UNAVAILABLE
    if mode is StoreErrorMode.ALLOW or record_fresh or record_age <= stale_seconds:
        return Fallback.USE_RECORD
    return Fallback.UNAVAILABLE
