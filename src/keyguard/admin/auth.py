"""Admin tokens: who may call the admin API, and with which role.

A token is shown once, at creation, and stored only as its SHA-256 (like API keys):
``kg:admin:tok:<sha256>`` is a hash (id, role, name, created_at), and ``kg:admin:tokens``
maps each token id to that hash, for ``list`` and ``revoke``. ``viewer`` tokens read;
``admin`` tokens also change things. Creating and revoking a token is recorded on the
audit trail (never the token).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from keyguard.audit import Audit, local_actor
from keyguard.errors import InvalidChange, KeyringError, UnknownToken
from keyguard.store.connect import SyncClient

ROLE_ADMIN = "admin"
ROLE_VIEWER = "viewer"
ROLES = (ROLE_ADMIN, ROLE_VIEWER)
TOKEN_PREFIX = "kga-"  # noqa: S105 (a prefix, not a secret)
TOKENS_INDEX = "kg:admin:tokens"
# A token is the prefix and 43 URL-safe characters (256 random bits).
_TOKEN = re.compile(r"^kga-[A-Za-z0-9_-]{43}$")
MAX_NAME = 200


def token_record_key(token_hash: str) -> str:
    return f"kg:admin:tok:{token_hash}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def _iso(stamp: int) -> str:
    return datetime.fromtimestamp(stamp, tz=UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling the admin API: a token's id and role."""

    token_id: str
    role: str

    @property
    def actor(self) -> str:
        return f"token:{self.token_id}"

    @property
    def can_write(self) -> bool:
        return self.role == ROLE_ADMIN


@dataclass(frozen=True, slots=True)
class CreatedToken:
    token: str  # shown once, never stored
    info: dict[str, Any]


def _info(raw: dict[str, str]) -> dict[str, Any]:
    created = raw.get("created_at", "")
    return {
        "id": raw.get("id", ""),
        "role": raw.get("role", ""),
        "name": raw.get("name", ""),
        "created_at": _iso(int(created)) if created.isdigit() else None,
    }


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidChange(f"unknown role {role!r}: use admin or viewer")
    return role


def check_name(name: str) -> str:
    if len(name) > MAX_NAME or not name.isprintable():
        raise InvalidChange(f"a token name is printable text of at most {MAX_NAME} characters")
    return name


class TokenStore:
    """Admin tokens in Redis, over a synchronous client; changes are audited as ``actor``."""

    def __init__(self, client: SyncClient, actor: str | None = None) -> None:
        self.client = client
        self.audit = Audit(client)
        self.actor = actor or local_actor()

    def create(self, role: str, name: str = "") -> CreatedToken:
        check_role(role)
        check_name(name)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_id = "kgt_" + secrets.token_hex(6)
        token_hash = hash_token(token)
        fields = {
            "id": token_id,
            "role": role,
            "name": name,
            "created_at": str(int(time.time())),
        }
        if not self.client.hsetnx(TOKENS_INDEX, token_id, token_hash):
            raise KeyringError("token id collision; try again")
        self.client.hset(token_record_key(token_hash), mapping=fields)  # type: ignore[arg-type]
        self.audit.record(self.actor, "token.create", token_id, {"role": role, "name": name})
        return CreatedToken(token, _info(fields))

    def list(self) -> list[dict[str, Any]]:
        index = cast(dict[str, str], self.client.hgetall(TOKENS_INDEX))
        out = []
        for token_id in sorted(index):
            raw = cast(dict[str, str], self.client.hgetall(token_record_key(index[token_id])))
            if raw:
                out.append(_info(raw))
        return out

    def revoke(self, token_id: str) -> None:
        token_hash = self.client.hget(TOKENS_INDEX, token_id)
        if token_hash is None:
            raise UnknownToken(token_id)
        self.client.delete(token_record_key(str(token_hash)))
        self.client.hdel(TOKENS_INDEX, token_id)
        self.audit.record(self.actor, "token.revoke", token_id, {})

    def verify(self, token: str) -> Principal | None:
        """The token's principal, or None for a malformed, unknown or revoked token."""
        if not _TOKEN.match(token):
            return None
        raw = cast(dict[str, str], self.client.hgetall(token_record_key(hash_token(token))))
        if not raw or raw.get("role") not in ROLES:
            return None
        return Principal(raw["id"], raw["role"])


__all__ = [
    "ROLES",
    "CreatedToken",
    "Principal",
    "TokenStore",
    "hash_token",
]
