"""Admin tokens: who may call the admin API, and with which role.

A token is shown once, at creation, and stored only as its SHA-256 (like API keys):
``kg:admin:tok:<sha256>`` is a hash (id, role, name, created_at), and ``kg:admin:tokens``
maps each token id to that hash, for ``list`` and ``revoke``. ``viewer`` tokens read;
``admin`` tokens also change things. Creating and revoking a token is recorded on the
audit trail (never the token).

Dashboard sessions (``SessionStore``): signing in with a token makes a random session id
(the browser's HttpOnly cookie) and a CSRF token. Redis keeps only the id's SHA-256:
``kg:admin:session:<sha256>`` is a JSON string (token_id, csrf, created_at) written with
one ``SET … EX SESSION_TTL`` (no command beyond the documented ACL); never the token.
A session speaks for its token only while the token exists, with the token's current
role, so revoking a token ends its sessions.
"""

from __future__ import annotations

import hashlib
import hmac
import json
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
SESSION_TTL = 8 * 3600  # seconds a dashboard session lasts from sign-in
_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{43}$")


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

    def principal_of(self, token_id: str) -> Principal | None:
        """The principal of a token id, or None once the token is revoked."""
        token_hash = self.client.hget(TOKENS_INDEX, token_id)
        if token_hash is None:
            return None
        role = self.client.hget(token_record_key(str(token_hash)), "role")
        if role not in ROLES:
            return None
        return Principal(token_id, str(role))


def session_record_key(session_id: str) -> str:
    return f"kg:admin:session:{hashlib.sha256(session_id.encode('ascii')).hexdigest()}"


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in dashboard: who, and the CSRF token its writes must send back."""

    principal: Principal
    csrf: str
    expires_at: int  # epoch seconds

    def csrf_matches(self, sent: str | None) -> bool:
        return sent is not None and hmac.compare_digest(sent.encode(), self.csrf.encode())


@dataclass(frozen=True, slots=True)
class NewSession:
    session_id: str  # the cookie's value: given to the browser, stored only as its hash
    session: Session


class SessionStore:
    """Dashboard sessions in Redis (see the module docstring)."""

    def __init__(self, client: SyncClient, tokens: TokenStore, ttl: int = SESSION_TTL) -> None:
        self.client = client
        self.tokens = tokens
        self.ttl = ttl

    def sign_in(self, token: str) -> NewSession | None:
        """A new session for a valid token, or None (the token is never stored)."""
        principal = self.tokens.verify(token)
        if principal is None:
            return None
        session_id = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = int(time.time())
        value = json.dumps({"token_id": principal.token_id, "csrf": csrf, "created_at": now})
        self.client.set(session_record_key(session_id), value, ex=self.ttl)
        return NewSession(session_id, Session(principal, csrf, now + self.ttl))

    def get(self, session_id: str) -> Session | None:
        """The live session of a cookie value, or None (unknown, expired, token revoked)."""
        if not _SESSION_ID.match(session_id):
            return None
        stored = self.client.get(session_record_key(session_id))
        try:
            raw = json.loads(str(stored)) if stored is not None else None
        except ValueError:
            return None
        if not isinstance(raw, dict):
            return None
        token_id, csrf, created = raw.get("token_id"), raw.get("csrf"), raw.get("created_at")
        if not isinstance(token_id, str) or not isinstance(csrf, str) or not csrf:
            return None
        if not isinstance(created, int):
            return None
        principal = self.tokens.principal_of(token_id)
        if principal is None:
            return None
        return Session(principal, csrf, created + self.ttl)

    def sign_out(self, session_id: str) -> None:
        if _SESSION_ID.match(session_id):
            self.client.delete(session_record_key(session_id))


__all__ = [
    "ROLES",
    "SESSION_TTL",
    "CreatedToken",
    "NewSession",
    "Principal",
    "Session",
    "SessionStore",
    "TokenStore",
    "hash_token",
]
