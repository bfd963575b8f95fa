"""API key format, hashing and generation.

The raw key lives only in the request being checked and in the one line the
CLI prints at creation. Everything stored or logged is derived from it.
"""

from __future__ import annotations

import hashlib
import secrets
import string

STANDARD_PREFIX = "sk-"
SUBSCRIPTION_PREFIX = "sk-sub-"
MIN_BODY_LEN = 32
# Generated keys carry 48 alphanumerics: ~285 bits of entropy.
GENERATED_BODY_LEN = 48
_ALNUM = frozenset(string.ascii_letters + string.digits)
_ALPHABET = string.ascii_letters + string.digits


def key_type_of(key: str) -> str | None:
    """Return "subscription" or "standard" for a well-formed key, else None.

    ``sk-sub-`` + 32 alnum is a subscription key; a key such as
    ``sk-subXXXX…`` (no dash) is a standard key whose body starts with "sub".
    """
    if key.startswith(SUBSCRIPTION_PREFIX):
        body = key[len(SUBSCRIPTION_PREFIX) :]
        if len(body) >= MIN_BODY_LEN and _ALNUM.issuperset(body):
            return "subscription"
    if key.startswith(STANDARD_PREFIX):
        body = key[len(STANDARD_PREFIX) :]
        if len(body) >= MIN_BODY_LEN and _ALNUM.issuperset(body):
            return "standard"
    return None


def hash_key(key: str) -> str:
    """SHA-256 hex of the whole key: the only form in which a key is stored."""
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def generate_key(key_type: str) -> str:
    prefix = SUBSCRIPTION_PREFIX if key_type == "subscription" else STANDARD_PREFIX
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(GENERATED_BODY_LEN))


def generate_key_id() -> str:
    """A short public id for operators, logs and upstream headers; never the key."""
    return "kg_" + secrets.token_hex(6)
