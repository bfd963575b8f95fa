"""Every change to API keys, with its validation and its one-line errors.

The CLI (``keyguard keys …``) is a thin layer over ``Keyring``; the admin API calls
the same methods. Values arrive already parsed by ``keyring.values`` (in the form
the record stores); ``Keyring`` checks that they fit together and fit the key,
writes through ``keyring.redis.RedisKeys`` and answers with ``describe``'s view.
Nothing is written when a check fails.

A ``Keyring`` is built for one actor (``cli:<user>`` by default; the admin API passes
its token's id) and records every change it makes on the audit stream (``keyguard.audit``),
after the change succeeds: the CLI and the API share this one place.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from keyguard.audit import Audit, local_actor
from keyguard.errors import InvalidChange, KeyringError, UnknownPlan
from keyguard.keyring import values
from keyguard.keyring.redis import RedisKeys
from keyguard.keyring.usage import MAX_DAYS, usage_history
from keyguard.keys import generate_key, generate_key_id, hash_key
from keyguard.record import (
    STATUS_ACTIVE,
    STATUS_DISABLED,
    TYPE_STANDARD,
    TYPE_SUBSCRIPTION,
    KeyRecord,
    new_record_fields,
    parse_meta,
    record_from_hash,
)
from keyguard.store.connect import SyncClient

if TYPE_CHECKING:
    from keyguard.keyring.plans import Plans

KEY_TYPES = (TYPE_STANDARD, TYPE_SUBSCRIPTION)


@dataclass(frozen=True, slots=True)
class KeyChange:
    """The settings a creation or an edit gives; None (or False) leaves one as it is."""

    name: str | None = None
    quota: int | None = None  # units left (standard) or per cycle (subscription)
    unlimited: bool = False
    cycle: int | None = None  # seconds
    models: str | None = None  # comma list; "" = all models
    allowed_ips: str | None = None  # comma list of networks; "" = any
    expires: str | None = None  # epoch seconds; "" = never
    payg: bool | None = None
    rpm: int | None = None
    tpm: int | None = None  # tokens per minute; 0 = no limit
    env: str | None = None  # "" = none
    owner: str | None = None  # "" = none
    # KEY, VALUE pairs merged into the key's meta in order; an empty VALUE removes KEY.
    meta: tuple[tuple[str, str], ...] | None = None
    alert_below: str | None = None  # credits, or "N%" of the quota; "" = no alert
    # The plan the key follows (keyring.plans); on an edit, moves it there ("" = leaves it).
    plan: str | None = None

    @property
    def empty(self) -> bool:
        return self == KeyChange()


@dataclass(frozen=True, slots=True)
class CreatedKey:
    key: str  # the raw key: shown once, never stored
    info: dict[str, Any]


def _iso(stamp: float | None) -> str | None:
    if not stamp:
        return None
    return datetime.fromtimestamp(stamp, tz=UTC).isoformat().replace("+00:00", "Z")


def format_seconds(seconds: int) -> str:
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def describe(record: KeyRecord) -> dict[str, Any]:
    """A key record for people and scripts. It never contains the key."""
    out: dict[str, Any] = {
        "id": record.id,
        "name": record.name,
        "type": record.type,
        "status": record.status,
        "env": record.env or None,
        "owner": record.owner or None,
        "meta": parse_meta(record.meta),
        "created_at": _iso(record.created_at),
        "expires_at": _iso(record.expires_at),
        "models": list(record.model_names) if record.models is not None else None,
        "allowed_ips": (
            [str(net) for net in record.allowed_ips] if record.allowed_ips is not None else None
        ),
        "unlimited": record.unlimited,
        "remaining": None if record.unlimited else record.remaining,
        "used": record.used,
        "payg": record.payg,
        "payg_used": record.payg_used,
        "rpm": record.rpm or None,
        "tpm": record.tpm or None,
        # Metering: credits held by requests still open, and the tokens settled.
        # ``remaining`` may be negative when settled usage overshot it: shown as is.
        "held": record.held,
        "tokens_in": record.tokens_in,
        "tokens_out": record.tokens_out,
        "cached_tokens": record.cached_tokens,
        "last_used_at": _iso(record.last_used_at),
        "alert_below": record.alert_below or None,
    }
    if record.rotated_at is not None:
        out["rotated_at"] = _iso(record.rotated_at)
        out["grace_until"] = _iso(record.grace_until)
    if record.type == TYPE_SUBSCRIPTION:
        out["cycle"] = format_seconds(record.cycle_seconds)
        out["cycle_quota"] = record.cycle_quota
        out["cycle_used"] = record.cycle_used
        out["cycle_end"] = _iso(record.cycle_end)
    return out


def matches(info: dict[str, Any], env: str | None, owner: str | None) -> bool:
    """Whether a described key has this env and owner (None: any; "": none set)."""
    return (env is None or (info["env"] or "") == env) and (
        owner is None or (info["owner"] or "") == owner
    )


def _check_combination(change: KeyChange) -> None:
    if change.quota is not None and change.unlimited:
        raise InvalidChange("use either --quota or --unlimited, not both")


def _fields(
    change: KeyChange, key_type: str, creating: bool, meta: dict[str, str] | None = None
) -> dict[str, str]:
    """The record fields a change writes, for a key of ``key_type`` whose meta is ``meta``."""
    fields: dict[str, str] = {}
    if change.name is not None:
        fields["name"] = change.name
    if change.env is not None:
        fields["env"] = change.env
    if change.owner is not None:
        fields["owner"] = change.owner
    if change.meta is not None:
        fields["meta"] = values.merge_meta(meta or {}, change.meta)
    if change.models is not None:
        fields["models"] = change.models
    if change.allowed_ips is not None:
        fields["allowed_ips"] = change.allowed_ips
    if change.expires is not None:
        fields["expires_at"] = change.expires
    if change.payg is not None:
        fields["payg"] = "1" if change.payg else "0"
    if change.rpm is not None:
        fields["rpm"] = str(change.rpm)
    if change.tpm is not None:
        fields["tpm"] = str(change.tpm)
    if change.alert_below is not None:
        fields["alert_below"] = change.alert_below
        fields["alert_armed"] = "1"  # a new threshold starts armed
    if change.unlimited:
        if key_type == TYPE_SUBSCRIPTION:
            raise InvalidChange(
                "a subscription key has a cycle quota; --unlimited is for standard keys"
            )
        fields["unlimited"] = "1"
    if change.quota is not None:
        values.credits(change.quota)
        if key_type == TYPE_SUBSCRIPTION:
            fields["cycle_quota"] = str(change.quota)
            if creating:
                fields["remaining"] = str(change.quota)
        else:
            fields["remaining"] = str(change.quota)
            fields["unlimited"] = "0"
    if change.cycle is not None:
        if key_type != TYPE_SUBSCRIPTION:
            raise InvalidChange("--cycle is for subscription keys (--type subscription)")
        fields["cycle_seconds"] = str(change.cycle)
    return fields


def check_create(key_type: str, change: KeyChange) -> None:
    """Everything a creation can get wrong without asking Redis."""
    if key_type not in KEY_TYPES:
        raise InvalidChange(f"unknown key type {key_type!r}: use standard or subscription")
    _check_combination(change)
    if change.plan:
        _check_plan_create(key_type, change)
    elif key_type == TYPE_SUBSCRIPTION and (change.quota is None or change.cycle is None):
        raise InvalidChange("a subscription key needs --quota N (per cycle) and --cycle (e.g. 30d)")
    _fields(change, key_type, creating=True)


def _check_plan_create(key_type: str, change: KeyChange) -> None:
    """A key on a plan is a subscription key whose quota, cycle, models, limits and
    pay-as-you-go all come from its plan."""
    from keyguard.keyring.plans import plan_owned_given

    if key_type != TYPE_SUBSCRIPTION:
        raise InvalidChange("a key on a plan is a subscription key; leave out --type standard")
    given = plan_owned_given(change)
    if given:
        raise InvalidChange(
            f"{given[0]} comes from plan {change.plan}; leave it out, or change the plan"
        )


def check_edit(change: KeyChange) -> None:
    """Everything an edit can get wrong before the key's type is known."""
    _check_combination(change)
    if change.empty:
        raise InvalidChange("nothing to change: give at least one option")


def change_fields(change: KeyChange) -> dict[str, Any]:
    """What a change gave, by option name, for the audit trail (``*`` = all / any)."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(KeyChange):
        value = getattr(change, field.name)
        if value is None or (field.name == "unlimited" and not value):
            continue
        if field.name in ("models", "allowed_ips") and value == "":
            value = "*"
        elif field.name == "expires":
            value = _iso(int(value)) if value else "never"
        elif field.name == "cycle":
            value = format_seconds(value)
        elif field.name == "meta":
            value = dict(value)
        out[field.name] = value
    return out


class Keyring:
    def __init__(self, client: SyncClient, actor: str | None = None) -> None:
        self.keys = RedisKeys(client)
        self.audit = Audit(client)
        self.actor = actor or local_actor()

    def _record(self, action: str, key_id: str, fields: dict[str, Any]) -> None:
        self.audit.record(self.actor, action, key_id, fields)

    def _describe(self, key_hash: str, raw: dict[str, str]) -> dict[str, Any]:
        try:
            info = describe(record_from_hash(key_hash, raw))
        except ValueError as exc:
            raise KeyringError(f"key {raw.get('id', '?')!r} has an unreadable record") from exc
        if raw.get("plan"):  # the decision path never reads it: not in KeyRecord
            info["plan"] = raw["plan"]
        return info

    def _plans(self) -> Plans:
        from keyguard.keyring.plans import Plans

        return Plans(self.keys.client, self.actor)

    def create(self, key_type: str, change: KeyChange) -> CreatedKey:
        check_create(key_type, change)
        now = int(time.time())
        key = generate_key(key_type)
        fields = {
            **new_record_fields(generate_key_id(), key_type, now),
            **_fields(change, key_type, creating=True),
        }
        if change.plan:  # the plan's settings, copied (keyring.plans)
            fields.update(self._plans().record_fields(change.plan))
            fields["remaining"] = fields["cycle_quota"]  # its first cycle's quota
        if key_type == TYPE_SUBSCRIPTION:
            fields["cycle_end"] = str(now + int(fields["cycle_seconds"]))
        key_hash = hash_key(key)
        self.keys.create(key_hash, fields)
        if change.plan and not self._plans().attach(change.plan, fields["id"], fields):
            self.keys.revoke(fields["id"])  # the plan was deleted meanwhile
            raise UnknownPlan(change.plan)
        info = self._describe(key_hash, fields)
        self._record("key.create", info["id"], {"type": key_type, **change_fields(change)})
        return CreatedKey(key, info)

    def show(self, key_id: str) -> dict[str, Any]:
        return self._describe(*self.keys.get(key_id))

    def rotate(self, key_id: str, grace_seconds: int) -> CreatedKey:
        """A new secret for the same key id, keeping its settings, balance and usage. The
        current secret keeps working for ``grace_seconds`` (0: it stops at once); a secret
        still in the grace of an earlier rotation stops now."""
        if grace_seconds < 0:
            raise InvalidChange("the grace must be 0 or more")
        key_hash, raw = self.keys.get(key_id)
        key = generate_key(raw.get("type", TYPE_STANDARD))
        now = int(time.time())
        info = self._describe(
            key_hash, self.keys.rotate(key_id, hash_key(key), now + grace_seconds, now)
        )
        grace = format_seconds(grace_seconds) if grace_seconds else "0s"
        self._record("key.rotate", key_id, {"grace": grace})
        return CreatedKey(key, info)

    def usage(self, key_id: str, days: int = 30) -> dict[str, Any]:
        """The key's usage history for the last ``days`` UTC days (``keyring.usage``)."""
        if not 1 <= days <= MAX_DAYS:
            raise InvalidChange(f"days must be between 1 and {MAX_DAYS}")
        key_hash = self.keys.hash_of(key_id)
        return {"id": key_id, "days": usage_history(self.keys.client, key_hash, days)}

    def list(self, env: str | None = None, owner: str | None = None) -> list[dict[str, Any]]:
        """Every key, or those with this env and owner ("" = those without one)."""
        infos = (self._describe(key_hash, raw) for key_hash, raw in self.keys.list())
        return [info for info in infos if matches(info, env, owner)]

    def edit(self, key_id: str, change: KeyChange) -> dict[str, Any]:
        check_edit(change)
        key_hash, raw = self.keys.get(key_id)
        try:
            meta = parse_meta(raw.get("meta", "")) if change.meta is not None else None
        except ValueError:
            raise KeyringError(f"key {key_id!r} has an unreadable meta field") from None
        plan_fields = self._plan_fields(key_id, raw, change)
        fields = _fields(change, raw.get("type", TYPE_STANDARD), creating=False, meta=meta)
        fields.update(plan_fields)
        if not fields:
            raise InvalidChange("nothing to change: give at least one option")
        after = self.keys.update(key_id, fields)
        if change.plan is not None:
            after = self._move(key_id, raw.get("plan", ""), change.plan, fields)
        info = self._describe(key_hash, after)
        self._record("key.edit", key_id, change_fields(change))
        return info

    def _plan_fields(self, key_id: str, raw: dict[str, str], change: KeyChange) -> dict[str, str]:
        """Checks an edit against the key's plan; the record fields of a move to
        ``change.plan`` (its plan's settings; "" takes the key off its plan)."""
        from keyguard.keyring.plans import plan_owned_given

        given = plan_owned_given(change)
        current = raw.get("plan", "")
        if change.plan is None:
            if current and given:
                raise InvalidChange(
                    f"key {key_id} follows plan {current}; change the plan"
                    " or move the key with --plan"
                )
            return {}
        if change.plan == "":
            return {"plan": ""}  # the key keeps its settings, now its own
        if given:
            raise InvalidChange(
                f"{given[0]} comes from plan {change.plan}; leave it out, or change the plan"
            )
        if raw.get("type", TYPE_STANDARD) != TYPE_SUBSCRIPTION:
            raise InvalidChange(
                f"key {key_id} is a standard key; only subscription keys (sk-sub-) follow a plan"
            )
        return self._plans().record_fields(change.plan)

    def _move(self, key_id: str, old: str, new: str, written: dict[str, str]) -> dict[str, str]:
        """Update both plans' key sets after a key's record was moved to ``new``."""
        plans = self._plans()
        if new and not plans.attach(new, key_id, written):
            self.keys.update(key_id, {"plan": ""})  # the plan was deleted meanwhile
            raise UnknownPlan(new)
        if old and old != new:
            plans.detach(old, key_id)
        return self.keys.get(key_id)[1]

    def set_status(self, key_id: str, enabled: bool) -> dict[str, Any]:
        status = STATUS_ACTIVE if enabled else STATUS_DISABLED
        key_hash = self.keys.hash_of(key_id)
        info = self._describe(key_hash, self.keys.update(key_id, {"status": status}))
        self._record("key.enable" if enabled else "key.disable", key_id, {"status": status})
        return info

    def topup(self, key_id: str, amount: int) -> dict[str, Any]:
        if amount <= 0:
            raise InvalidChange("must be greater than 0")
        values.credits(amount, "top-up")
        key_hash, raw = self.keys.get(key_id)
        if raw.get("unlimited") == "1":
            raise InvalidChange(f"key {key_id} is unlimited; top-up applies to keys with a quota")
        info = self._describe(key_hash, self.keys.topup(key_id, amount, values.MAX_BALANCE))
        self._record("key.topup", key_id, {"amount": amount})
        return info

    def revoke(self, key_id: str) -> None:
        plan = self.keys.get(key_id)[1].get("plan", "")
        self.keys.revoke(key_id)
        if plan:
            self._plans().detach(plan, key_id)
        self._record("key.revoke", key_id, {})


__all__ = [
    "CreatedKey",
    "KeyChange",
    "Keyring",
    "change_fields",
    "check_create",
    "check_edit",
    "describe",
    "matches",
]
