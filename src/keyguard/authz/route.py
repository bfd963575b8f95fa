"""Per-route settings, configured by platform teams in Envoy.

Envoy sends ``check_settings.context_extensions`` of a route's ``ExtAuthzPerRoute``
with every Check on that route. keyguard reads these keys:

* ``keyguard.meter``: ``tokens`` | ``request`` | ``off`` (for example ``off`` on
  ``GET /v1/models``), overriding KEYGUARD_METERING;
* ``keyguard.cost``: credits (or units) per request, for routes without token usage
  (images, audio); implies request metering on that route;
* ``keyguard.key_types``: ``subscription``, ``standard`` or both (comma-separated): the
  key types the route admits;
* ``keyguard.dialect``: ``openai`` | ``anthropic``, overriding the path rule for error
  bodies.

Other keys are left to other filters. A bad value makes every request on the route a
500 ``route_config_invalid`` denial with a log line, never an allow.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import structlog

from keyguard.record import TYPE_STANDARD, TYPE_SUBSCRIPTION

log = structlog.get_logger("keyguard.route")
PREFIX = "keyguard."
METER_MODES = ("tokens", "request", "off")
DIALECTS = ("openai", "anthropic")
KEY_TYPES = (TYPE_STANDARD, TYPE_SUBSCRIPTION)
MAX_COST = 10**15


@dataclass(frozen=True, slots=True)
class RouteSettings:
    meter: str | None = None
    cost: int | None = None
    key_types: frozenset[str] | None = None
    anthropic: bool | None = None
    error: str = ""  # why the route's settings are unusable


DEFAULT = RouteSettings()


def _parse(items: frozenset[tuple[str, str]]) -> RouteSettings:
    values = {k[len(PREFIX) :]: v.strip() for k, v in items if k.startswith(PREFIX)}
    unknown = sorted(set(values) - {"meter", "cost", "key_types", "dialect"})
    if unknown:
        return RouteSettings(error=f"unknown setting {PREFIX}{unknown[0]}")
    meter = values.get("meter")
    if meter is not None and meter not in METER_MODES:
        return RouteSettings(error=f"{PREFIX}meter={meter!r}: expected tokens, request or off")
    cost: int | None = None
    if "cost" in values:
        text = values["cost"]
        if not (text.isascii() and text.isdigit()) or int(text) > MAX_COST:
            return RouteSettings(error=f"{PREFIX}cost={text!r}: expected a whole number >= 0")
        cost = int(text)
        if meter == "tokens":
            return RouteSettings(error=f"{PREFIX}cost goes with request metering, not tokens")
        meter = meter or "request"
    types: frozenset[str] | None = None
    if "key_types" in values:
        types = frozenset(t.strip() for t in values["key_types"].split(","))
        if not types or not types <= set(KEY_TYPES):
            return RouteSettings(
                error=f"{PREFIX}key_types={values['key_types']!r}: expected standard,"
                " subscription or both"
            )
    dialect = values.get("dialect")
    if dialect is not None and dialect not in DIALECTS:
        return RouteSettings(error=f"{PREFIX}dialect={dialect!r}: expected openai or anthropic")
    anthropic = None if dialect is None else dialect == "anthropic"
    return RouteSettings(meter, cost, types, anthropic)


@functools.lru_cache(maxsize=1024)
def _cached(items: frozenset[tuple[str, str]]) -> RouteSettings:
    settings = _parse(items)
    if settings.error:
        # Once per distinct configuration (the cache), not once per request.
        log.error("route_config_invalid", error=settings.error)
    return settings


def route_settings(extensions: Mapping[str, str]) -> RouteSettings:
    if not extensions:
        return DEFAULT
    return _cached(frozenset(extensions.items()))
