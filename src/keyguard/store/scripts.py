"""The Lua scripts, read once from the package."""

from __future__ import annotations

from importlib.resources import files


def _read(name: str) -> str:
    return files("keyguard.store").joinpath(name).read_text(encoding="utf-8")


SPEND = _read("spend.lua")
ADD_USED = _read("add_used.lua")
HSET_EXISTING = _read("hset_existing.lua")
TOPUP = _read("topup.lua")
