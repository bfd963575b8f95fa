"""The key record schema: what a key allows, as stored in Redis (a hash of string
fields at ``kg:{H}:rec``) and held in the cache. ``record_from_hash`` reads it;
``new_record_fields`` writes a new one; ``store/scripts/*.lua`` change counters in place."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

STATUS_ACTIVE = "active"
STATUS_DISABLED = "disabled"
TYPE_STANDARD = "standard"
TYPE_SUBSCRIPTION = "subscription"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_hash: str
    id: str
    name: str
    type: str
    status: str
    created_at: float
    expires_at: float | None
    models: frozenset[str] | None
    allowed_ips: tuple[IPNetwork, ...] | None
    unlimited: bool
    payg: bool
    rpm: int
    remaining: int
    used: int
    cycle_quota: int
    cycle_seconds: int
    cycle_end: float | None
    payg_used: int = 0
    cycle_used: int = 0
    # The model list in the order it was given, for people; ``models`` is for lookups.
    model_names: tuple[str, ...] = ()
    tpm: int = 0  # tokens per minute (0 = no limit), charged at settlement
    # When the secret this record was found by stops being accepted (a rotation's grace
    # end); None: it is current. For the original secret it is a field of the record;
    # for a secret made by a rotation, of its alias record (store.get_record).
    secret_expires_at: float | None = None
    rotated_at: float | None = None  # the last `keys rotate`
    last_used_at: float | None = None  # the last settled request (token metering)
    alert_below: str = ""  # low-balance threshold: credits, or "N%" of the quota
    grace_until: float | None = None  # when the secret it replaced stops working
    # Metering (KEYGUARD_METERING=tokens): credits held by open requests, and the
    # tokens settled so far. Written by the hold and settle scripts.
    held: int = 0
    tokens_in: int = 0  # uncached input tokens
    tokens_out: int = 0
    cached_tokens: int = 0  # input tokens read from (or written to) a prompt cache
    # Metadata for people and the upstream (``keys create --env/--owner/--meta``); "" = none.
    env: str = ""  # e.g. live, test: sent upstream as x-keyguard-key-env
    owner: str = ""  # e.g. team-a: sent upstream as x-keyguard-key-owner
    meta: str = ""  # a compact JSON object of strings, as stored; parse_meta reads it

    @property
    def metered(self) -> bool:
        """True when an allowed request must go through the atomic spend script."""
        return not self.unlimited or self.rpm > 0 or self.tpm > 0


def _int(raw: dict[str, str], name: str) -> int:
    value = raw.get(name, "")
    return int(value) if value else 0


def _float_or_none(raw: dict[str, str], name: str) -> float | None:
    value = raw.get(name, "")
    return float(value) if value else None


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """Parse "10.0.0.0/8,2001:db8::1" into networks; raises ValueError on bad input."""
    nets: list[IPNetwork] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise ValueError("empty entry in IP list")
        nets.append(ipaddress.ip_network(item, strict=False))
    return tuple(nets)


def parse_meta(text: str) -> dict[str, str]:
    """The stored ``meta`` field as a dict ("" = none); raises ValueError on bad input.
    Only the management side reads it: the decision path never parses it."""
    if not text:
        return {}
    value = json.loads(text)
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError("meta is not an object of strings")
    return value


def record_from_hash(key_hash: str, raw: dict[str, str]) -> KeyRecord:
    """Build a record from the Redis hash fields (all strings)."""
    models = raw.get("models", "")
    names = tuple(models.split(",")) if models else ()
    ips = raw.get("allowed_ips", "")
    return KeyRecord(
        key_hash=key_hash,
        id=raw.get("id", ""),
        name=raw.get("name", ""),
        type=raw.get("type", TYPE_STANDARD),
        status=raw.get("status", STATUS_DISABLED),
        created_at=float(raw.get("created_at") or 0),
        expires_at=_float_or_none(raw, "expires_at"),
        models=frozenset(names) if models else None,
        allowed_ips=parse_networks(ips) if ips else None,
        unlimited=raw.get("unlimited") == "1",
        payg=raw.get("payg") == "1",
        rpm=_int(raw, "rpm"),
        remaining=_int(raw, "remaining"),
        used=_int(raw, "used"),
        cycle_quota=_int(raw, "cycle_quota"),
        cycle_seconds=_int(raw, "cycle_seconds"),
        cycle_end=_float_or_none(raw, "cycle_end"),
        payg_used=_int(raw, "payg_used"),
        cycle_used=_int(raw, "cycle_used"),
        model_names=names,
        tpm=_int(raw, "tpm"),
        secret_expires_at=_float_or_none(raw, "secret_expires_at"),
        rotated_at=_float_or_none(raw, "rotated_at"),
        last_used_at=_float_or_none(raw, "last_used_at"),
        alert_below=raw.get("alert_below", ""),
        grace_until=_float_or_none(raw, "grace_until"),
        held=_int(raw, "held"),
        tokens_in=_int(raw, "tokens_in"),
        tokens_out=_int(raw, "tokens_out"),
        cached_tokens=_int(raw, "cached_tokens"),
        env=raw.get("env", ""),
        owner=raw.get("owner", ""),
        meta=raw.get("meta", ""),
    )


def new_record_fields(key_id: str, key_type: str, now: int) -> dict[str, str]:
    """Every field of a new record, at its default; a creation overrides some."""
    fields = {
        "id": key_id,
        "name": "",
        "type": key_type,
        "status": STATUS_ACTIVE,
        "created_at": str(now),
        "expires_at": "",
        "models": "",
        "allowed_ips": "",
        "unlimited": "1" if key_type == TYPE_STANDARD else "0",
        "remaining": "0",
        "used": "0",
        "payg": "0",
        "payg_used": "0",
        "rpm": "0",
        "tpm": "0",
    }
    if key_type == TYPE_SUBSCRIPTION:
        fields["cycle_used"] = "0"
    return fields
