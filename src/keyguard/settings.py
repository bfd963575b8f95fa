"""Settings: one frozen dataclass from KEYGUARD_* variables and flags, validated once."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from keyguard.errors import SettingsError

STORE_ERROR_MODES = ("deny", "allow", "cached")
METERING_MODES = ("tokens", "request")
REDIS_SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
)


@dataclass(frozen=True, slots=True)
class Settings:
    listen: tuple[str, ...] = ("127.0.0.1:9001",)
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_timeout: float = 0.2
    # Under heavy metered load, hold Redis commands up to this long to send them
    # in one write (store/pipeline.py); 0 sends every loop iteration's at once.
    redis_linger_ms: float = 1.0
    redis_tls_ca: str = ""
    redis_tls_cert: str = ""
    redis_tls_key: str = ""
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9090
    request_cost: int = 1
    # What a quota counts: "tokens" (credits: tokens times model price, held at Check and
    # settled from the response) or "request" (request_cost units per request).
    metering: str = "tokens"
    # A hold whose settlement never came (keyguard or Envoy restarted, Envoy gave up on
    # the Check) is released after this long, charging nothing.
    hold_ttl: float = 3600.0
    # Output tokens held for a request that sets no max_tokens and whose price has no
    # max_output.
    default_max_output: int = 4096
    # Deny a metered key's streaming chat request that did not ask for usage
    # (stream_options.include_usage), instead of charging the documented estimate.
    require_stream_usage: bool = False
    # Days of per-key, per-day, per-model usage history kept (0: none is written).
    usage_retention_days: int = 90
    # Low-balance alerts are also POSTed here (JSON, signed with the secret), if set.
    alert_webhook_url: str = ""
    alert_webhook_secret: str = ""
    strip_credentials: bool = True
    xff_trusted_hops: int = 0
    on_store_error: str = "deny"
    stale_seconds: float = 300.0
    cache_ttl: float = 30.0
    cache_size: int = 10_000
    negative_cache_ttl: float = 10.0
    negative_cache_size: int = 100_000
    grace_seconds: float = 5.0
    workers: int = 1
    log_level: str = "info"
    log_allows: bool = True
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # Octal permissions of Unix sockets: group access lets an Envoy running
    # as another user in the same group (Kubernetes fsGroup) connect.
    socket_mode: str = "660"
    event_loop: str = "uvloop"

    def masked(self) -> dict[str, Any]:
        """The settings for the first log line, with the Redis password hidden."""
        out = dataclasses.asdict(self)
        out["redis_url"] = mask_url(self.redis_url)
        # Only where alerts go: a webhook URL may carry a token in its path or query.
        hook = urlsplit(self.alert_webhook_url)
        out["alert_webhook_url"] = f"{hook.scheme}://{hook.hostname}" if hook.hostname else ""
        out["alert_webhook_secret"] = "***" if self.alert_webhook_secret else ""
        return out


# env name suffix → field name; all variables are KEYGUARD_<SUFFIX>.
ENV_NAMES: dict[str, str] = {f.name.upper(): f.name for f in fields(Settings)}
DEFAULTS = Settings()


def mask_url(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable>"
    if parts.password:
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r}: expected true or false")


def _parse_int(name: str, raw: str, minimum: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a whole number") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r}: must be at least {minimum}")
    return value


def _parse_float(name: str, raw: str, minimum: float) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a number") from None
    if not (value >= minimum and math.isfinite(value)):  # also rejects NaN and inf
        raise SettingsError(f"{name}={raw!r}: must be at least {minimum}")
    return value


def validate_listen(name: str, items: tuple[str, ...]) -> None:
    if not items:
        raise SettingsError(f"{name}: give at least one address")
    for item in items:
        if item.startswith("unix:"):
            if len(item) <= len("unix:"):
                raise SettingsError(f"{name}: {item!r} has no socket path")
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(
                f"{name}: {item!r} is not HOST:PORT or unix:PATH (e.g. 127.0.0.1:9001)"
            )


def validate_redis_url(name: str, url: str) -> None:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise SettingsError(f"{name}: cannot parse the Redis URL ({exc})") from None
    if parts.scheme not in REDIS_SCHEMES:
        raise SettingsError(
            f"{name}: unsupported scheme {parts.scheme!r}; use one of " + ", ".join(REDIS_SCHEMES)
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise SettingsError(f"{name}: unix:// URL needs a socket path")
        return
    hosts = parts.netloc.rpartition("@")[2]
    if not hosts:
        raise SettingsError(f"{name}: the Redis URL has no host")
    multi = "+" in parts.scheme  # cluster and sentinel URLs may list several nodes
    if "," in hosts and not multi:
        raise SettingsError(
            f"{name}: only redis+cluster:// and redis+sentinel:// list several hosts"
        )
    for item in hosts.split(","):
        host, sep, port = item.rpartition(":")
        if sep and not host.endswith("]") and ":" in host:
            host, port = item, ""  # a bare IPv6 address without a port
        if not (host if sep else item):
            raise SettingsError(f"{name}: empty host in {item!r}")
        if sep and port and (not port.isdigit() or not 0 < int(port) < 65536):
            raise SettingsError(f"{name}: cannot parse the Redis URL (bad port in {item!r})")
    if "+sentinel" in parts.scheme and not parts.path.strip("/"):
        raise SettingsError(f"{name}: a Sentinel URL needs the master name, e.g. /mymaster/0")


def _convert(fname: str, label: str, raw: str) -> Any:
    default = getattr(DEFAULTS, fname)
    if isinstance(default, bool):
        return _parse_bool(label, raw)
    if isinstance(default, int):
        minimum = 1 if fname in ("workers", "cache_size") else 0
        return _parse_int(label, raw, minimum)
    if isinstance(default, float):
        return _parse_float(label, raw, 0.0)
    if isinstance(default, tuple):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw.strip()


def load(
    env: Mapping[str, str] | None = None, overrides: Mapping[str, str] | None = None
) -> Settings:
    """Settings from the environment, then flag overrides (field name → raw string)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for suffix, fname in ENV_NAMES.items():
        label = f"KEYGUARD_{suffix}"
        if label in env:
            values[fname] = _convert(fname, label, env[label])
    for fname, raw in (overrides or {}).items():
        label = "--" + fname.replace("_", "-")
        values[fname] = _convert(fname, label, raw)
    settings = Settings(**values)
    validate(settings)
    return settings


def validate(s: Settings) -> None:
    validate_listen("KEYGUARD_LISTEN", s.listen)
    validate_redis_url("KEYGUARD_REDIS_URL", s.redis_url)
    if s.on_store_error not in STORE_ERROR_MODES:
        raise SettingsError(
            f"KEYGUARD_ON_STORE_ERROR={s.on_store_error!r}: expected one of "
            + ", ".join(STORE_ERROR_MODES)
        )
    if s.metrics_port > 65535:
        raise SettingsError(f"KEYGUARD_METRICS_PORT={s.metrics_port}: not a port number")
    if s.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise SettingsError(
            f"KEYGUARD_LOG_LEVEL={s.log_level!r}: expected debug, info, warning or error"
        )
    if bool(s.tls_cert) != bool(s.tls_key):
        raise SettingsError("KEYGUARD_TLS_CERT and KEYGUARD_TLS_KEY must be set together")
    if s.tls_client_ca and not s.tls_cert:
        raise SettingsError("KEYGUARD_TLS_CLIENT_CA needs KEYGUARD_TLS_CERT and KEYGUARD_TLS_KEY")
    for label, path in (
        ("KEYGUARD_TLS_CERT", s.tls_cert),
        ("KEYGUARD_TLS_KEY", s.tls_key),
        ("KEYGUARD_TLS_CLIENT_CA", s.tls_client_ca),
        ("KEYGUARD_REDIS_TLS_CA", s.redis_tls_ca),
        ("KEYGUARD_REDIS_TLS_CERT", s.redis_tls_cert),
        ("KEYGUARD_REDIS_TLS_KEY", s.redis_tls_key),
    ):
        if path and not os.path.isfile(path):
            raise SettingsError(f"{label}={path!r}: no such file")
    try:
        mode = int(s.socket_mode, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise SettingsError(f"KEYGUARD_SOCKET_MODE={s.socket_mode!r}: expected octal such as 660")
    if s.metering not in METERING_MODES:
        raise SettingsError(
            f"KEYGUARD_METERING={s.metering!r}: expected one of " + ", ".join(METERING_MODES)
        )
    if s.hold_ttl < 1:
        raise SettingsError(f"KEYGUARD_HOLD_TTL={s.hold_ttl:g}: must be at least 1 (seconds)")
    if s.alert_webhook_url:
        scheme = s.alert_webhook_url.partition(":")[0].lower()
        if scheme not in ("http", "https") or "://" not in s.alert_webhook_url:
            raise SettingsError("KEYGUARD_ALERT_WEBHOOK_URL: expected an http:// or https:// URL")
        if not s.alert_webhook_secret:
            raise SettingsError(
                "KEYGUARD_ALERT_WEBHOOK_URL needs KEYGUARD_ALERT_WEBHOOK_SECRET (to sign the calls)"
            )
    if s.usage_retention_days > 3660:
        raise SettingsError("KEYGUARD_USAGE_RETENTION_DAYS must be at most 3660 (ten years)")
    if s.default_max_output < 1:
        raise SettingsError("KEYGUARD_DEFAULT_MAX_OUTPUT must be greater than 0")
    if s.event_loop not in ("uvloop", "asyncio"):
        raise SettingsError(f"KEYGUARD_EVENT_LOOP={s.event_loop!r}: expected uvloop or asyncio")
    if s.redis_timeout <= 0:
        raise SettingsError("KEYGUARD_REDIS_TIMEOUT must be greater than 0")
    if s.redis_linger_ms > 50 or s.redis_linger_ms >= s.redis_timeout * 1000:
        raise SettingsError(
            f"KEYGUARD_REDIS_LINGER_MS={s.redis_linger_ms:g}: must be at most 50 and below"
            " KEYGUARD_REDIS_TIMEOUT"
        )


__all__ = ["Settings", "SettingsError", "load"]
