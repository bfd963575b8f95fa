"""The Redis side of key changes, on a synchronous client (the CLI's, and the admin
API's later). Every change publishes the key's hash on kg:events so that every
keyguard process drops its cached copy at once."""

from __future__ import annotations

import time
from typing import Any, cast

from keyguard.errors import InvalidChange, KeyringError, UnknownKey
from keyguard.store import (
    ALIAS_FIELD,
    EVENTS_CHANNEL,
    IDS_SET,
    expired_key,
    holds_key,
    id_key,
    ratelimit_key,
    record_key,
    settled_key,
    tpm_key,
)
from keyguard.store.connect import SyncClient
from keyguard.store.scripts import HSET_EXISTING, TOPUP


class RedisKeys:
    def __init__(self, client: SyncClient) -> None:
        self.client = client
        self._hset_existing = client.register_script(HSET_EXISTING)
        self._topup = client.register_script(TOPUP)

    def _publish(self, key_hash: str) -> None:
        self.client.publish(EVENTS_CHANNEL, key_hash)

    def create(self, key_hash: str, fields: dict[str, str]) -> None:
        key_id = fields["id"]
        # Each write is a different slot on a cluster, so no MULTI here; the
        # record is written first and is unreachable by id until the last step.
        if not self.client.hsetnx(record_key(key_hash), "id", key_id):
            raise KeyringError("key collision; generate a new key")
        self.client.hset(record_key(key_hash), mapping=dict(fields))  # type: ignore[arg-type]
        self.client.set(id_key(key_id), key_hash)
        self.client.sadd(IDS_SET, key_id)
        self._publish(key_hash)

    def hash_of(self, key_id: str) -> str:
        key_hash = self.client.get(id_key(key_id))
        if not key_hash:
            raise UnknownKey(key_id)
        return str(key_hash)

    def get(self, key_id: str) -> tuple[str, dict[str, str]]:
        key_hash = self.hash_of(key_id)
        raw = cast(dict[str, str], self.client.hgetall(record_key(key_hash)))
        if not raw:
            raise UnknownKey(key_id)
        if raw.get("held", "0") not in ("", "0"):
            raw["held"] = str(self._live_held(key_hash))
        return key_hash, raw

    def _live_held(self, key_hash: str) -> int:
        """What open holds hold now: the record's ``held`` less holds that expired since
        the key's last request (the spend script releases those on the next one)."""
        now_ms = int(time.time() * 1000)
        members = cast(list[str], self.client.zrangebyscore(holds_key(key_hash), now_ms, "+inf"))
        return sum(int(member.rpartition(":")[2] or 0) for member in members)

    def list(self) -> list[tuple[str, dict[str, str]]]:
        out = []
        for key_id in sorted(cast(set[str], self.client.smembers(IDS_SET))):
            try:
                out.append(self.get(str(key_id)))
            except UnknownKey:
                continue
        return out

    def update(self, key_id: str, fields: dict[str, str]) -> dict[str, str]:
        key_hash = self.hash_of(key_id)
        if fields:
            args: list[Any] = [item for pair in fields.items() for item in pair]
            if not self._hset_existing(keys=[record_key(key_hash)], args=args):
                raise UnknownKey(key_id)
            # A new limit starts from a clean window.
            if "rpm" in fields:
                self.client.delete(ratelimit_key(key_hash))
            if "tpm" in fields:
                self.client.delete(tpm_key(key_hash))
            self._publish(key_hash)
        return self.get(key_id)[1]

    def topup(self, key_id: str, amount: int, most: int) -> dict[str, str]:
        """Add ``amount`` to the balance, unless that would take it above ``most``."""
        key_hash = self.hash_of(key_id)
        balance = self._topup(keys=[record_key(key_hash)], args=[amount, most])
        if balance is None:
            raise UnknownKey(key_id)
        if isinstance(balance, list):  # refused: [balance now]
            raise InvalidChange(
                f"a top-up of {amount} would take the balance ({int(balance[0])}) above the "
                f"limit of {most} credits"
            )
        self._publish(key_hash)
        return self.get(key_id)[1]

    def rotate(self, key_id: str, new_hash: str, grace_end: int, now: int) -> dict[str, str]:
        """Give the key a new secret (an alias record at ``new_hash``); the secret that was
        current stays valid until ``grace_end``, older ones (still in a grace) end now.

        The record itself stays where it is, with its settings, balance, holds and usage.
        Each write is one key (aliases live in other slots), in an order where a failure
        leaves every old secret as valid as before or the new one usable as well.
        """
        key_hash, raw = self.get(key_id)
        aliases = [a for a in raw.get("aliases", "").split(",") if a]
        primary = raw.get("primary", "") or key_hash
        if not self.client.hsetnx(record_key(new_hash), ALIAS_FIELD, key_hash):
            raise KeyringError("key collision; rotate again")
        self.client.hset(record_key(new_hash), "id", key_id)
        kept: list[str] = []
        for alias in aliases:
            if alias == primary:
                self.client.hset(record_key(alias), "secret_expires_at", str(grace_end))
                kept.append(alias)
                continue
            expires = self.client.hget(record_key(alias), "secret_expires_at")
            if expires and float(str(expires)) <= now:
                self.client.delete(record_key(alias))  # long expired: forget it
            else:
                self.client.hset(record_key(alias), "secret_expires_at", str(now))
                kept.append(alias)
        own = (
            grace_end
            if primary == key_hash
            else min(now, int(float(raw.get("secret_expires_at") or now)))
        )
        fields = {
            "secret_expires_at": str(own),
            "aliases": ",".join([*kept, new_hash]),
            "primary": new_hash,
            "rotated_at": str(now),
            "grace_until": str(grace_end),
        }
        self._hset_existing(
            keys=[record_key(key_hash)], args=[item for pair in fields.items() for item in pair]
        )
        self._publish(key_hash)
        return self.get(key_id)[1]

    def revoke(self, key_id: str) -> None:
        key_hash, raw = self.get(key_id)
        for alias in (a for a in raw.get("aliases", "").split(",") if a):
            self.client.delete(record_key(alias))
        # Every key of one API key shares its hash tag: one DEL, one slot.
        self.client.delete(
            record_key(key_hash),
            ratelimit_key(key_hash),
            tpm_key(key_hash),
            holds_key(key_hash),
            settled_key(key_hash),
            expired_key(key_hash),
        )
        self.client.delete(id_key(key_id))
        self.client.srem(IDS_SET, key_id)
        self._publish(key_hash)
