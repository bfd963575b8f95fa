"""The routes of the admin API (``/v1``): every key, plan, price and audit operation the CLI has.

Each route turns its JSON body into the core's terms (a ``KeyChange`` through the same
``keyring.values`` parsers the CLI's arguments go through), calls one method of the
management core in a worker thread (the core is synchronous) and answers with the
core's view of the result. Authentication and roles are checked before a route runs
(``app.TokenGate``); the caller's token id is the actor of every change it makes.
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated, Any, TypeVar, cast

from fastapi import APIRouter, Depends, Query, Request
from fastapi.security import APIKeyCookie, HTTPBearer
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt
from starlette.concurrency import run_in_threadpool

from keyguard.admin.auth import Principal
from keyguard.audit import Audit, check_cursor, parse_since
from keyguard.errors import InvalidChange, UnknownKey
from keyguard.keyring import KEY_TYPES, KeyChange, Keyring, matches, values
from keyguard.keyring.alerts import alerts_with_state
from keyguard.keyring.plans import PlanChange, Plans
from keyguard.keyring.prices import PriceEditor, price_info
from keyguard.record import TYPE_STANDARD, TYPE_SUBSCRIPTION
from keyguard.store import IDS_SET
from keyguard.store.connect import SyncClient

T = TypeVar("T")

DEFAULT_PAGE = 100
MAX_PAGE = 1000


def _unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text (a lone surrogate)") from None
    return text


Text = Annotated[str, AfterValidator(_unicode)]


class _Body(BaseModel):
    # An unknown field is a 400 naming it, never ignored.
    model_config = ConfigDict(extra="forbid")


class KeySettings(_Body):
    """The settings of a key, by the CLI's option names in snake case."""

    name: Text | None = Field(None, description="a label for people")
    quota: StrictInt | None = Field(
        None, description="units left (standard) or units per cycle (subscription)"
    )
    unlimited: StrictBool = Field(False, description="no quota (standard keys)")
    cycle: Text | StrictInt | None = Field(
        None, description="billing cycle: 30d, 12h, 15m, 90s, or seconds"
    )
    models: Text | list[Text] | None = Field(
        None, description="allowed models: a list or a comma list; '*' = all"
    )
    allowed_ips: Text | list[Text] | None = Field(
        None, description="allowed client IPs/CIDRs: a list or a comma list; '*' = any"
    )
    expires: Text | None = Field(
        None, description="YYYY-MM-DD or ISO date-time (UTC), +30d, or never"
    )
    payg: StrictBool | None = Field(None, description="pay-as-you-go once the quota is used up")
    rpm: StrictInt | None = Field(None, description="requests per minute (0 = no limit)")
    tpm: StrictInt | None = Field(None, description="tokens per minute (0 = no limit)")
    env: Text | None = Field(
        None, description="the key's environment, e.g. live or test ('' removes it)"
    )
    owner: Text | None = Field(
        None, description="who the key belongs to, e.g. team-a ('' removes it)"
    )
    alert_below: Text | StrictInt | None = Field(
        None,
        description="low-balance alert: credits (50000) or a percentage of the quota ('10%');"
        " 0 removes it",
    )
    meta: dict[Text, Text] | None = Field(
        None,
        description="labels, KEY: VALUE (at most 16; VALUE up to 256 printable characters);"
        ' merged into the key\'s, and a VALUE of "" removes KEY',
    )
    plan: Text | None = Field(
        None,
        description="the plan the key follows (its quota, cycle, models, limits, payg);"
        ' on PATCH moves the key there ("" takes it off its plan, keeping its settings)',
    )


class KeyCreate(KeySettings):
    type: Text = Field(
        TYPE_STANDARD,
        description="standard or subscription",
        json_schema_extra={"enum": list(KEY_TYPES)},
    )


class TopUp(_Body):
    amount: StrictInt = Field(description="units to add (greater than 0)")


class Rotate(_Body):
    grace: Text = Field(
        "0", description="how long the previous secret keeps working: 24h, 30m, or 0 (at once)"
    )


class RotatedKey(BaseModel):
    id: str
    key: str = Field(description="the new API key itself: shown in this answer only, never again")
    grace_until: str | None = Field(description="when the previous secret stops working")


class PriceBody(_Body):
    """Whole credits per 1M tokens (per request for per_request)."""

    input: StrictInt
    output: StrictInt
    cached_input: StrictInt | None = None
    cache_write: StrictInt | None = None
    per_request: StrictInt | None = None
    max_output: StrictInt | None = None


class KeyInfo(BaseModel):
    id: str
    name: str
    type: str
    status: str
    created_at: str | None
    expires_at: str | None
    models: list[str] | None
    allowed_ips: list[str] | None
    unlimited: bool
    remaining: int | None
    used: int
    payg: bool
    payg_used: int
    rpm: int | None
    tpm: int | None
    held: int
    tokens_in: int
    tokens_out: int
    cached_tokens: int
    env: str | None = None
    owner: str | None = None
    meta: dict[str, str] = Field(default_factory=dict)
    alert_below: str | None = None
    last_used_at: str | None = None
    rotated_at: str | None = None
    grace_until: str | None = None
    cycle: str | None = None
    cycle_quota: int | None = None
    cycle_used: int | None = None
    cycle_end: str | None = None
    plan: str | None = None


class CreatedKeyInfo(KeyInfo):
    key: str = Field(description="the API key itself: shown in this answer only, never again")


class UsageRow(BaseModel):
    date: str = Field(description="a UTC day, YYYY-MM-DD")
    model: str = Field(description="the price pattern that priced the requests")
    requests: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    credits: int


class KeyUsage(BaseModel):
    id: str
    days: list[UsageRow] = Field(description="oldest first; days without usage have no row")


class KeyPage(BaseModel):
    items: list[KeyInfo]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null: done")


class Revoked(BaseModel):
    id: str
    revoked: bool


class PriceInfo(BaseModel):
    model: str
    input: int
    output: int
    cached_input: int
    cache_write: int
    per_request: int
    max_output: int | None


class PricePage(BaseModel):
    items: list[PriceInfo]
    next_cursor: str | None


class PriceRemoved(BaseModel):
    model: str
    removed: bool


class AuditEntry(BaseModel):
    id: str
    time: str
    actor: str = Field(description="token:<admin token id>, or cli:<OS user>")
    action: str
    target: str = Field(description="the key id, model pattern or token id changed")
    fields: dict[str, Any]


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_cursor: str | None


# Document the two ways in (either one) in the OpenAPI document; the checks themselves
# are TokenGate's, which run before the body is read.
bearer = HTTPBearer(auto_error=False, description="an admin token (`keyguard admin tokens create`)")
session_cookie = APIKeyCookie(
    name="kg_session",
    auto_error=False,
    description="a dashboard session (sign in at /login); its writes also need the"
    " X-CSRF-Token header that GET /session gives",
)


def _known_query(request: Request) -> None:
    """An unknown query parameter is a 400 naming it, like an unknown body field."""
    dependant = getattr(request.scope.get("route"), "dependant", None)
    known = {param.alias for param in dependant.query_params} if dependant else set()
    for name in request.query_params:
        if name not in known:
            raise InvalidChange(f"unknown query parameter {name!r}")


router = APIRouter(
    prefix="/v1",
    dependencies=[Depends(bearer), Depends(session_cookie), Depends(_known_query)],
)

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="items per page")]
Cursor = Annotated[Text | None, Query(description="next_cursor of the previous page")]


def _client(request: Request) -> SyncClient:
    return cast(SyncClient, request.app.state.client)


def _actor(request: Request) -> str:
    principal = cast(Principal, request.state.principal)
    return principal.actor


def _keyring(request: Request) -> Keyring:
    return Keyring(_client(request), actor=_actor(request))


def _prices(request: Request) -> PriceEditor:
    return PriceEditor(_client(request), actor=_actor(request))


async def _run(call: Callable[[], T]) -> T:
    return await run_in_threadpool(call)


def _parse(field: str, parse: Callable[[str], T], text: str) -> T:
    try:
        return parse(text)
    except InvalidChange as exc:
        raise InvalidChange(f"{field}: {exc}") from None


def _list_text(value: str | list[str]) -> str:
    return ",".join(value) if isinstance(value, list) else value


def to_change(body: KeySettings) -> KeyChange:
    """A body as the core's change, each value through the CLI's own parser."""

    def number(field: str, value: int | None, parse: Callable[[str], int]) -> int | None:
        return None if value is None else _parse(field, parse, str(value))

    return KeyChange(
        name=body.name,
        quota=number("quota", body.quota, values.nonneg_int),
        unlimited=body.unlimited,
        cycle=None if body.cycle is None else _parse("cycle", values.duration, str(body.cycle)),
        models=None
        if body.models is None
        else _parse("models", values.models, _list_text(body.models)),
        allowed_ips=None
        if body.allowed_ips is None
        else _parse("allowed_ips", values.allowed_ips, _list_text(body.allowed_ips)),
        expires=None if body.expires is None else _parse("expires", values.expires, body.expires),
        payg=body.payg,
        rpm=number("rpm", body.rpm, values.nonneg_int),
        tpm=number("tpm", body.tpm, values.nonneg_int),
        env=None if body.env is None else _parse("env", values.env, body.env),
        owner=None if body.owner is None else _parse("owner", values.owner, body.owner),
        meta=_meta(body.meta),
        alert_below=None
        if body.alert_below is None
        else _parse("alert_below", values.alert_below, str(body.alert_below)),
        plan=None if body.plan is None else _parse("plan", values.key_plan, body.plan),
    )


def _meta(meta: dict[str, str] | None) -> tuple[tuple[str, str], ...] | None:
    if not meta:  # absent, or {}: nothing to change
        return None
    pairs = []
    for key, value in meta.items():
        try:
            pairs.append(values.meta_entry(key, value))
        except InvalidChange as exc:
            raise InvalidChange(f"meta: {exc}") from None
    return tuple(pairs)


def _key_page(
    keyring: Keyring,
    cursor: str | None,
    limit: int,
    env: str | None = None,
    owner: str | None = None,
) -> dict[str, Any]:
    ids = sorted(str(i) for i in cast(set[str], keyring.keys.client.smembers(IDS_SET)))
    index = bisect.bisect_right(ids, cursor) if cursor is not None else 0
    items: list[dict[str, Any]] = []
    while index < len(ids) and len(items) < limit:
        with contextlib.suppress(UnknownKey):  # revoked between SMEMBERS and the read
            info = keyring.show(ids[index])
            if matches(info, env, owner):
                items.append(info)
        index += 1
    return {"items": items, "next_cursor": ids[index - 1] if index < len(ids) else None}


@router.post(
    "/keys",
    status_code=201,
    response_model=CreatedKeyInfo,
    response_model_exclude_unset=True,
    tags=["keys"],
)
async def create_key(request: Request, body: KeyCreate) -> dict[str, Any]:
    """Create a key. The answer holds the key itself: the only time it is shown."""
    change = to_change(body)
    keyring = _keyring(request)
    # A key on a plan is a subscription key: "type" may be left out then.
    key_type = (
        body.type if "type" in body.model_fields_set or not change.plan else TYPE_SUBSCRIPTION
    )
    created = await _run(lambda: keyring.create(key_type, change))
    return {**created.info, "key": created.key}


@router.get("/keys", response_model=KeyPage, response_model_exclude_unset=True, tags=["keys"])
async def list_keys(
    request: Request,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
    env: Annotated[
        Text | None, Query(description="only keys with this env (empty: keys without one)")
    ] = None,
    owner: Annotated[
        Text | None, Query(description="only keys with this owner (empty: keys without one)")
    ] = None,
) -> dict[str, Any]:
    """Keys in id order, a page at a time; ``env`` and ``owner`` filter them."""
    env = None if env is None else _parse("env", values.env, env)
    owner = None if owner is None else _parse("owner", values.owner, owner)
    keyring = _keyring(request)
    return await _run(lambda: _key_page(keyring, cursor, limit, env, owner))


@router.get(
    "/keys/{key_id}", response_model=KeyInfo, response_model_exclude_unset=True, tags=["keys"]
)
async def show_key(request: Request, key_id: str) -> dict[str, Any]:
    """A key's settings and usage (never the key)."""
    keyring = _keyring(request)
    return await _run(lambda: keyring.show(key_id))


@router.get("/keys/{key_id}/usage", response_model=KeyUsage, tags=["keys"])
async def key_usage(
    request: Request,
    key_id: str,
    days: Annotated[int, Query(description="the last N UTC days, today included (1-366)")] = 30,
) -> dict[str, Any]:
    """A key's usage per UTC day and priced model: requests, tokens and credits."""
    keyring = _keyring(request)
    return await _run(lambda: keyring.usage(key_id, days))


@router.patch(
    "/keys/{key_id}", response_model=KeyInfo, response_model_exclude_unset=True, tags=["keys"]
)
async def edit_key(request: Request, key_id: str, body: KeySettings) -> dict[str, Any]:
    """Change a key's settings; what the body does not name stays as it is."""
    change = to_change(body)
    keyring = _keyring(request)
    return await _run(lambda: keyring.edit(key_id, change))


@router.delete("/keys/{key_id}", response_model=Revoked, tags=["keys"])
async def revoke_key(request: Request, key_id: str) -> dict[str, Any]:
    """Delete a key and its rate-limit and metering state for good."""
    keyring = _keyring(request)
    await _run(lambda: keyring.revoke(key_id))
    return {"id": key_id, "revoked": True}


@router.post(
    "/keys/{key_id}/disable",
    response_model=KeyInfo,
    response_model_exclude_unset=True,
    tags=["keys"],
)
async def disable_key(request: Request, key_id: str) -> dict[str, Any]:
    keyring = _keyring(request)
    return await _run(lambda: keyring.set_status(key_id, enabled=False))


@router.post(
    "/keys/{key_id}/enable",
    response_model=KeyInfo,
    response_model_exclude_unset=True,
    tags=["keys"],
)
async def enable_key(request: Request, key_id: str) -> dict[str, Any]:
    keyring = _keyring(request)
    return await _run(lambda: keyring.set_status(key_id, enabled=True))


@router.post(
    "/keys/{key_id}/topup",
    response_model=KeyInfo,
    response_model_exclude_unset=True,
    tags=["keys"],
)
async def topup_key(request: Request, key_id: str, body: TopUp) -> dict[str, Any]:
    """Add units to a key's quota (the current cycle's, for a subscription key)."""
    keyring = _keyring(request)
    return await _run(lambda: keyring.topup(key_id, body.amount))


@router.post("/keys/{key_id}/rotate", response_model=RotatedKey, tags=["keys"])
async def rotate_key(request: Request, key_id: str, body: Rotate) -> dict[str, Any]:
    """A new secret for the key, keeping its settings, balance and usage; the previous
    secret keeps working until the grace ends (then 401 on every replica)."""
    grace = _parse("grace", values.grace, body.grace)
    keyring = _keyring(request)
    rotated = await _run(lambda: keyring.rotate(key_id, grace))
    return {"id": key_id, "key": rotated.key, "grace_until": rotated.info.get("grace_until")}


def _price_page(editor: PriceEditor, cursor: str | None, limit: int) -> dict[str, Any]:
    table = editor.prices()
    patterns = list(table)  # sorted
    index = bisect.bisect_right(patterns, cursor) if cursor is not None else 0
    chosen = patterns[index : index + limit]
    more = index + limit < len(patterns)
    return {
        "items": [price_info(pattern, table[pattern]) for pattern in chosen],
        "next_cursor": chosen[-1] if more and chosen else None,
    }


@router.get("/prices", response_model=PricePage, tags=["prices"])
async def list_prices(
    request: Request, limit: Limit = DEFAULT_PAGE, cursor: Cursor = None
) -> dict[str, Any]:
    """The price table in pattern order, a page at a time."""
    editor = _prices(request)
    return await _run(lambda: _price_page(editor, cursor, limit))


@router.get("/prices/{model:path}", response_model=PriceInfo, tags=["prices"])
async def show_price(request: Request, model: str) -> dict[str, Any]:
    """The price of a model pattern, as written (``gpt-4o*``, ``*``)."""
    editor = _prices(request)
    price = await _run(lambda: editor.get(model))
    return price_info(model, price)


@router.put("/prices/{model:path}", response_model=PriceInfo, tags=["prices"])
async def set_price(request: Request, model: str, body: PriceBody) -> dict[str, Any]:
    """Set (or replace, whole) the price of a model pattern."""
    fields = body.model_dump(exclude_none=True)
    editor = _prices(request)
    price = await _run(lambda: editor.set(model, fields))
    return {"model": model, **asdict(price)}


@router.delete("/prices/{model:path}", response_model=PriceRemoved, tags=["prices"])
async def remove_price(request: Request, model: str) -> dict[str, Any]:
    editor = _prices(request)
    await _run(lambda: editor.remove(model))
    return {"model": model, "removed": True}


# --- plans (keyring.plans): settings that subscription keys follow ----------------------


class PlanSettings(_Body):
    """A plan's settings, by the CLI's option names in snake case."""

    quota: StrictInt | None = Field(None, description="units per cycle")
    cycle: Text | StrictInt | None = Field(
        None, description="billing cycle: 30d, 12h, 15m, 90s, or seconds"
    )
    models: Text | list[Text] | None = Field(
        None, description="allowed models: a list or a comma list; '*' = all"
    )
    rpm: StrictInt | None = Field(None, description="requests per minute (0 = no limit)")
    tpm: StrictInt | None = Field(None, description="tokens per minute (0 = no limit)")
    alert_below: Text | StrictInt | None = Field(
        None, description="low-balance alert for the plan's keys: credits or '10%'; 0 = none"
    )
    payg: StrictBool | None = Field(
        None, description="pay-as-you-go once the cycle quota is used up"
    )


class PlanCreate(PlanSettings):
    name: Text = Field(description="up to 64 of a-z 0-9 . _ -, starting with a letter or digit")


class PlanInfo(BaseModel):
    name: str
    quota: int
    cycle: str
    models: list[str] | None
    rpm: int | None
    tpm: int | None
    payg: bool
    alert_below: str | None = None
    keys: int = Field(description="how many keys follow the plan")
    created_at: str | None


class PlanPage(BaseModel):
    items: list[PlanInfo]
    next_cursor: str | None


class PlanDeleted(BaseModel):
    name: str
    deleted: bool


def _plans(request: Request) -> Plans:
    return Plans(_client(request), actor=_actor(request))


def to_plan_change(body: PlanSettings) -> PlanChange:
    """A body as the core's plan change, each value through the CLI's own parser."""

    def number(field: str, value: int | None) -> int | None:
        return None if value is None else _parse(field, values.nonneg_int, str(value))

    return PlanChange(
        quota=number("quota", body.quota),
        cycle=None if body.cycle is None else _parse("cycle", values.duration, str(body.cycle)),
        models=None
        if body.models is None
        else _parse("models", values.models, _list_text(body.models)),
        rpm=number("rpm", body.rpm),
        tpm=number("tpm", body.tpm),
        alert_below=None
        if body.alert_below is None
        else _parse("alert_below", values.alert_below, str(body.alert_below)),
        payg=body.payg,
    )


def _plan_page(plans: Plans, cursor: str | None, limit: int) -> dict[str, Any]:
    names = plans.names()  # sorted
    index = bisect.bisect_right(names, cursor) if cursor is not None else 0
    items: list[dict[str, Any]] = []
    while index < len(names) and len(items) < limit:
        with contextlib.suppress(LookupError, InvalidChange):  # deleted meanwhile
            items.append(plans.show(names[index]))
        index += 1
    return {"items": items, "next_cursor": names[index - 1] if index < len(names) else None}


@router.post("/plans", status_code=201, response_model=PlanInfo, tags=["plans"])
async def create_plan(request: Request, body: PlanCreate) -> dict[str, Any]:
    """Create a plan (``quota`` and ``cycle`` are required)."""
    name = _parse("name", values.plan_name, body.name)
    change = to_plan_change(body)
    plans = _plans(request)
    return await _run(lambda: plans.create(name, change))


@router.get("/plans", response_model=PlanPage, tags=["plans"])
async def list_plans(
    request: Request, limit: Limit = DEFAULT_PAGE, cursor: Cursor = None
) -> dict[str, Any]:
    """Plans in name order, a page at a time."""
    plans = _plans(request)
    return await _run(lambda: _plan_page(plans, cursor, limit))


@router.get("/plans/{name}", response_model=PlanInfo, tags=["plans"])
async def show_plan(request: Request, name: str) -> dict[str, Any]:
    """A plan's settings and how many keys follow it."""
    plans = _plans(request)
    return await _run(lambda: plans.show(name))


@router.patch("/plans/{name}", response_model=PlanInfo, tags=["plans"])
async def edit_plan(request: Request, name: str, body: PlanSettings) -> dict[str, Any]:
    """Change a plan and every key on it: models, rate limits and payg at once, a new
    quota or cycle length from each key's next cycle."""
    change = to_plan_change(body)
    plans = _plans(request)
    return await _run(lambda: plans.edit(name, change))


@router.delete("/plans/{name}", response_model=PlanDeleted, tags=["plans"])
async def delete_plan(request: Request, name: str) -> dict[str, Any]:
    """Delete a plan; refused (409) while keys still follow it."""
    plans = _plans(request)
    await _run(lambda: plans.delete(name))
    return {"name": name, "deleted": True}


@router.get("/audit", response_model=AuditPage, tags=["audit"])
async def read_audit(
    request: Request,
    key: Annotated[
        Text | None, Query(description="only changes to this key id, model pattern or token id")
    ] = None,
    since: Annotated[
        Text | None, Query(description="1h, 7d, 2027-01-31, 2027-01-31T12:00:00Z or epoch s")
    ] = None,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Changes to keys, prices and admin tokens, oldest first, a page at a time."""
    since_ms = None if since is None else _parse("since", parse_since, since)
    if cursor is not None:
        _parse("cursor", check_cursor, cursor)
    audit = Audit(_client(request))
    items, next_cursor = await _run(
        lambda: audit.read(target=key, since_ms=since_ms, after=cursor, limit=limit)
    )
    return {"items": items, "next_cursor": next_cursor}


class AlertInfo(BaseModel):
    id: str
    at: str
    key_id: str
    remaining: int
    threshold: int
    below_now: bool = Field(description="the key's balance is below its threshold now")


class AlertPage(BaseModel):
    items: list[AlertInfo]
    next_cursor: str | None


@router.get("/alerts", response_model=AlertPage, tags=["alerts"])
async def read_alerts(
    request: Request,
    key: Annotated[Text | None, Query(description="only this key id's alerts")] = None,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Low-balance alerts (one per crossing), oldest first, a page at a time."""
    if cursor is not None:
        _parse("cursor", check_cursor, cursor)
    client = _client(request)
    items, next_cursor = await _run(
        lambda: alerts_with_state(client, key_id=key, after=cursor, limit=limit)
    )
    return {"items": items, "next_cursor": next_cursor}


__all__ = ["router", "to_change"]
