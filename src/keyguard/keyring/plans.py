"""Plans: named settings that subscription keys follow (``keyguard plans …``).

A plan is the Redis hash ``kg:plan:{NAME}`` (``quota``, ``cycle_seconds``, ``models``,
``rpm``, ``tpm``, ``payg``, ``created_at``), the set of the ids of its keys
``kg:plan:{NAME}:keys`` (the same hash tag, so one script sees both) and the index
``kg:plans`` of plan names.

A key on a plan is an ordinary subscription record with ``plan=NAME`` and the plan's
settings copied into it, so the request path never reads a plan. A plan change writes
the changed settings into every key's record and publishes each key's hash on
``kg:events``: models, rate limits and pay-as-you-go reach every replica at once; a new
quota is written to ``cycle_quota`` only and a new cycle length to ``cycle_seconds``
only, so ``spend.lua``'s reset applies them from each key's next cycle boundary
(``remaining`` and ``cycle_end`` stay as they are).

Like ``Keyring`` and ``PriceEditor``, ``Plans`` is built for one actor and records every
change on the audit stream after it succeeds. ``Keyring`` calls ``record_fields``,
``attach`` and ``detach`` when a key is created on, moved to or taken off a plan.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

from keyguard.audit import Audit, local_actor
from keyguard.errors import InvalidChange, KeyringError, PlanInUse, UnknownKey, UnknownPlan
from keyguard.keyring import format_seconds, values
from keyguard.keyring.redis import RedisKeys
from keyguard.store import EVENTS_CHANNEL, ratelimit_key, record_key, tpm_key
from keyguard.store.connect import SyncClient
from keyguard.store.scripts import HSET_EXISTING

PLANS_SET = "kg:plans"

# Plan field → the key record field it is copied to.
RECORD_FIELDS = {
    "quota": "cycle_quota",
    "cycle_seconds": "cycle_seconds",
    "models": "models",
    "rpm": "rpm",
    "tpm": "tpm",
    "payg": "payg",
    "alert_below": "alert_below",
}
# The KeyChange options a plan owns, as the CLI names them: a key on a plan takes
# these from its plan only.
PLAN_OWNED_OPTIONS = {
    "quota": "--quota",
    "unlimited": "--unlimited",
    "cycle": "--cycle",
    "models": "--models",
    "payg": "--payg",
    "rpm": "--rpm",
    "tpm": "--tpm",
}

# A plan's fields when a creation does not give them.
_DEFAULTS = {
    "quota": "0",
    "cycle_seconds": "0",
    "models": "",
    "rpm": "0",
    "tpm": "0",
    "payg": "0",
    "alert_below": "",
}

# KEYS[1] = plan hash; ARGV = field, value, ... Creates the plan unless it exists.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# KEYS[1] = plan hash, KEYS[2] = its key set; ARGV[1] = key id. Adds the key to the
# plan if the plan still exists, and answers with the plan's fields (or nil).
_JOIN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('SADD', KEYS[2], ARGV[1])
return redis.call('HGETALL', KEYS[1])
"""

# KEYS[1] = plan hash, KEYS[2] = its key set. Deletes the plan unless it has keys:
# -1 no such plan, 1 it still has keys, 0 deleted.
_DELETE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 1 end
redis.call('DEL', KEYS[1])
return 0
"""

# KEYS[1] = kg:{H}:rec; ARGV[1] = plan name, then field, value, ... Writes the fields
# only while the key still exists and still follows that plan (not moved meanwhile).
_HSET_IF_PLAN = """
if redis.call('HGET', KEYS[1], 'plan') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""


def plan_key(name: str) -> str:
    return f"kg:plan:{{{name}}}"


def plan_keys_key(name: str) -> str:
    return f"kg:plan:{{{name}}}:keys"


@dataclass(frozen=True, slots=True)
class PlanChange:
    """The settings a plan creation or edit gives; None leaves one as it is."""

    quota: int | None = None  # units per cycle
    cycle: int | None = None  # seconds
    models: str | None = None  # comma list; "" = all models
    rpm: int | None = None  # 0 = no limit
    tpm: int | None = None  # 0 = no limit
    payg: bool | None = None
    # The low-balance threshold of the plan's keys: credits or "N%"; "" = none. A key's
    # own --alert-below overrides it until the plan's threshold changes again.
    alert_below: str | None = None

    @property
    def empty(self) -> bool:
        return self == PlanChange()


def plan_fields(change: PlanChange) -> dict[str, str]:
    """The plan hash fields a change writes."""
    fields: dict[str, str] = {}
    if change.quota is not None:
        fields["quota"] = str(values.credits(values.nonneg_int(str(change.quota))))
    if change.cycle is not None:
        if change.cycle <= 0:
            raise InvalidChange("duration must be positive")
        fields["cycle_seconds"] = str(change.cycle)
    if change.models is not None:
        fields["models"] = change.models
    if change.rpm is not None:
        fields["rpm"] = str(values.nonneg_int(str(change.rpm)))
    if change.tpm is not None:
        fields["tpm"] = str(values.nonneg_int(str(change.tpm)))
    if change.payg is not None:
        fields["payg"] = "1" if change.payg else "0"
    if change.alert_below is not None:
        fields["alert_below"] = change.alert_below
    return fields


def plan_change_fields(change: PlanChange) -> dict[str, Any]:
    """What a change gave, by option name, for the audit trail (``*`` = all models)."""
    out: dict[str, Any] = {}
    if change.quota is not None:
        out["quota"] = change.quota
    if change.cycle is not None:
        out["cycle"] = format_seconds(change.cycle)
    if change.models is not None:
        out["models"] = change.models or "*"
    if change.rpm is not None:
        out["rpm"] = change.rpm
    if change.tpm is not None:
        out["tpm"] = change.tpm
    if change.payg is not None:
        out["payg"] = change.payg
    if change.alert_below is not None:
        out["alert_below"] = change.alert_below or None
    return out


def record_fields(raw: dict[str, str]) -> dict[str, str]:
    """The key record fields a plan's hash gives its keys."""
    return {field: raw.get(name, "") or _DEFAULTS[name] for name, field in RECORD_FIELDS.items()}


def plan_info(name: str, raw: dict[str, str], keys: int) -> dict[str, Any]:
    """A plan for people and scripts."""
    models = raw.get("models", "")
    created = raw.get("created_at", "")
    return {
        "name": name,
        "quota": int(raw.get("quota") or 0),
        "cycle": format_seconds(int(raw.get("cycle_seconds") or 0)),
        "models": models.split(",") if models else None,
        "rpm": int(raw.get("rpm") or 0) or None,
        "tpm": int(raw.get("tpm") or 0) or None,
        "payg": raw.get("payg") == "1",
        "alert_below": raw.get("alert_below") or None,
        "keys": keys,
        "created_at": (
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(created))) if created else None
        ),
    }


def plan_owned_given(change: Any) -> list[str]:
    """The plan-owned options a ``KeyChange`` gives, as the CLI names them."""
    given = []
    for name, option in PLAN_OWNED_OPTIONS.items():
        value = getattr(change, name)
        if value is not None and value is not False:
            given.append(option)
    return given


class Plans:
    """Plans in Redis, over a synchronous client (the CLI's, the admin API's)."""

    def __init__(self, client: SyncClient, actor: str | None = None) -> None:
        self.client = client
        self.keys = RedisKeys(client)
        self.audit = Audit(client)
        self.actor = actor or local_actor()
        self._create = client.register_script(_CREATE)
        self._join = client.register_script(_JOIN)
        self._delete = client.register_script(_DELETE)
        self._hset_existing = client.register_script(HSET_EXISTING)
        self._hset_if_plan = client.register_script(_HSET_IF_PLAN)

    # --- reading ------------------------------------------------------------------------

    def _raw(self, name: str) -> dict[str, str]:
        values.plan_name(name)
        raw = cast(dict[str, str], self.client.hgetall(plan_key(name)))
        if not raw:
            raise UnknownPlan(name)
        return raw

    def key_ids(self, name: str) -> list[str]:
        """The ids of the plan's keys, sorted."""
        return sorted(str(i) for i in cast(set[str], self.client.smembers(plan_keys_key(name))))

    def show(self, name: str) -> dict[str, Any]:
        raw = self._raw(name)
        return plan_info(name, raw, len(self.key_ids(name)))

    def names(self) -> list[str]:
        return sorted(str(n) for n in cast(set[str], self.client.smembers(PLANS_SET)))

    def list(self) -> list[dict[str, Any]]:
        out = []
        for name in self.names():
            try:
                out.append(self.show(name))
            except (UnknownPlan, InvalidChange):  # deleted meanwhile, or not a plan name
                continue
        return out

    # --- changing -----------------------------------------------------------------------

    def create(self, name: str, change: PlanChange) -> dict[str, Any]:
        values.plan_name(name)
        if change.quota is None or change.cycle is None:
            raise InvalidChange("a plan needs --quota N (per cycle) and --cycle (e.g. 30d)")
        fields = {**_DEFAULTS, **plan_fields(change), "created_at": str(int(time.time()))}
        args: list[Any] = [item for pair in fields.items() for item in pair]
        if not self._create(keys=[plan_key(name)], args=args):
            raise KeyringError(f"plan {name!r} already exists; change it with plans set")
        self.client.sadd(PLANS_SET, name)
        self.audit.record(self.actor, "plan.create", name, plan_change_fields(change))
        return plan_info(name, fields, 0)

    def edit(self, name: str, change: PlanChange) -> dict[str, Any]:
        """Change a plan and every key on it (see the module's docstring for when)."""
        values.plan_name(name)
        if change.empty:
            raise InvalidChange("nothing to change: give at least one option")
        fields = plan_fields(change)
        args: list[Any] = [item for pair in fields.items() for item in pair]
        if not self._hset_existing(keys=[plan_key(name)], args=args):
            raise UnknownPlan(name)
        record = {RECORD_FIELDS[f]: v for f, v in fields.items()}
        if "alert_below" in record:
            record["alert_armed"] = "1"  # a new threshold starts armed
        reached = self._fan_out(name, record)
        self.audit.record(
            self.actor, "plan.edit", name, {**plan_change_fields(change), "keys": reached}
        )
        return self.show(name)

    def delete(self, name: str) -> None:
        values.plan_name(name)
        self._prune(name)
        outcome = int(cast(int, self._delete(keys=[plan_key(name), plan_keys_key(name)])))
        if outcome == -1:
            raise UnknownPlan(name)
        if outcome == 1:
            raise PlanInUse(name, len(self.key_ids(name)))
        self.client.srem(PLANS_SET, name)
        self.audit.record(self.actor, "plan.delete", name, {})

    def _fan_out(self, name: str, fields: dict[str, str]) -> int:
        """Write record fields into every key on the plan and publish each key's hash;
        answers with how many keys it reached. Keys revoked or moved meanwhile are
        skipped (and dropped from the plan's set)."""
        reached = 0
        for key_id in self.key_ids(name):
            if self._write_key(name, key_id, fields):
                reached += 1
        return reached

    def _write_key(self, name: str, key_id: str, fields: dict[str, str]) -> bool:
        try:
            key_hash = self.keys.hash_of(key_id)
        except UnknownKey:
            self.client.srem(plan_keys_key(name), key_id)
            return False
        args: list[Any] = [name, *(item for pair in fields.items() for item in pair)]
        if not self._hset_if_plan(keys=[record_key(key_hash)], args=args):
            self.client.srem(plan_keys_key(name), key_id)
            return False
        # A new limit starts from a clean window, as with `keys set`.
        if "rpm" in fields:
            self.client.delete(ratelimit_key(key_hash))
        if "tpm" in fields:
            self.client.delete(tpm_key(key_hash))
        self.client.publish(EVENTS_CHANNEL, key_hash)
        return True

    def _prune(self, name: str) -> None:
        """Drop ids from the plan's set whose key is gone or follows another plan."""
        for key_id in self.key_ids(name):
            try:
                key_hash = self.keys.hash_of(key_id)
            except UnknownKey:
                self.client.srem(plan_keys_key(name), key_id)
                continue
            if self.client.hget(record_key(key_hash), "plan") != name:
                self.client.srem(plan_keys_key(name), key_id)

    # --- keys joining and leaving (called by Keyring) -----------------------------------

    def record_fields(self, name: str) -> dict[str, str]:
        """The record fields of a key on this plan (``plan`` included)."""
        return {**record_fields(self._raw(name)), "plan": name}

    def attach(self, name: str, key_id: str, written: dict[str, str]) -> bool:
        """Add a key whose record already has ``written`` (``record_fields``) to the
        plan's set. A plan change that came in between is applied to the key here;
        answers False when the plan was deleted meanwhile (nothing added)."""
        raw = self._join(keys=[plan_key(name), plan_keys_key(name)], args=[key_id])
        if not raw:
            return False
        items = [str(item) for item in cast(list[Any], raw)]
        current = record_fields(dict(zip(items[::2], items[1::2], strict=True)))
        stale = {field: value for field, value in current.items() if written.get(field) != value}
        if stale:
            self._write_key(name, key_id, stale)
        return True

    def detach(self, name: str, key_id: str) -> None:
        self.client.srem(plan_keys_key(name), key_id)


__all__ = [
    "PLANS_SET",
    "PLAN_OWNED_OPTIONS",
    "PlanChange",
    "Plans",
    "plan_change_fields",
    "plan_info",
    "plan_key",
    "plan_keys_key",
    "plan_owned_given",
    "record_fields",
]
