"""The Lua scripts, read once from the package, and their SHA-1 for EVALSHA."""

from __future__ import annotations

import hashlib
from importlib.resources import files


def _read(name: str) -> str:
    return files("keyguard.store.scripts").joinpath(name).read_text(encoding="utf-8")


def script_sha(script: str) -> str:
    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()


SPEND = _read("spend.lua")
SETTLE = _read("settle.lua")
ALERT = _read("alert.lua")
ADD_USED = _read("add_used.lua")
HSET_EXISTING = _read("hset_existing.lua")
TOPUP = _read("topup.lua")
