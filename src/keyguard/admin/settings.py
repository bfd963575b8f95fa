"""The admin server's settings: KEYGUARD_ADMIN_* variables and flags, validated once.

Redis (URL, timeout, TLS files) is configured exactly as for the sidecar, with the same
KEYGUARD_REDIS_* variables; ``store`` holds those settings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from keyguard.errors import SettingsError
from keyguard.settings import Settings, load, validate_listen

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_MAX_BODY = 64 * 1024


@dataclass(frozen=True, slots=True)
class AdminSettings:
    listen: str = DEFAULT_LISTEN  # HOST:PORT
    max_body: int = DEFAULT_MAX_BODY  # bytes; a bigger request body is a 413
    store: Settings = field(default_factory=Settings)

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


def load_admin(
    env: Mapping[str, str] | None = None, overrides: Mapping[str, str] | None = None
) -> AdminSettings:
    """From KEYGUARD_ADMIN_LISTEN, KEYGUARD_ADMIN_MAX_BODY and KEYGUARD_REDIS_*, then
    flag overrides (``listen``, ``max_body``, ``redis_url``: raw strings)."""
    env = os.environ if env is None else env
    overrides = dict(overrides or {})
    label = "--listen" if overrides.get("listen") else "KEYGUARD_ADMIN_LISTEN"
    listen = overrides.pop("listen", None) or env.get("KEYGUARD_ADMIN_LISTEN", DEFAULT_LISTEN)
    listen = listen.strip()
    if listen.startswith("unix:"):
        raise SettingsError(f"{label}: {listen!r}: the admin server listens on HOST:PORT")
    validate_listen(label, (listen,))
    raw_body = overrides.pop("max_body", None) or env.get(
        "KEYGUARD_ADMIN_MAX_BODY", str(DEFAULT_MAX_BODY)
    )
    try:
        max_body = int(raw_body.strip())
    except ValueError:
        raise SettingsError(
            f"KEYGUARD_ADMIN_MAX_BODY={raw_body!r}: expected a whole number"
        ) from None
    if not 1024 <= max_body <= 16 * 1024 * 1024:
        raise SettingsError(
            f"KEYGUARD_ADMIN_MAX_BODY={raw_body!r}: must be between 1024 and 16777216 (bytes)"
        )
    store = load(env=env, overrides={k: v for k, v in overrides.items() if k == "redis_url"})
    return AdminSettings(listen=listen, max_body=max_body, store=store)


__all__ = ["AdminSettings", "load_admin"]
