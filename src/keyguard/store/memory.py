"""``KeyStore`` in memory: a real implementation of the protocol, for unit tests of
the decision and the servicer (integration and end-to-end tests use real Redis).

Records are kept as the same string fields Redis holds and parsed by the same
``record_from_hash``; ``spend`` and ``settle`` follow ``scripts/spend.lua`` and
``scripts/settle.lua`` step by step. On top,
it can be made to fail (``failing``) or to hold lookups until released (``gate``),
and it counts what it was asked, so that outage modes, single flight and the
invalidation race can be tested without killing a Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime

from keyguard.errors import StoreError
from keyguard.policy import SpendResult
from keyguard.record import STATUS_ACTIVE, TYPE_SUBSCRIPTION, KeyRecord
from keyguard.store import ALIAS_FIELD, Hold, Settlement, read_record, resolve_alias

_WINDOW_MS = 60_000


def next_cycle_end(cycle_end: float, cycle_seconds: int, now: float) -> float:
    """The first cycle boundary after ``now``, stepping whole cycles from ``cycle_end``."""
    if cycle_seconds <= 0 or now < cycle_end:
        return cycle_end
    skipped = int((now - cycle_end) // cycle_seconds) + 1
    return cycle_end + skipped * cycle_seconds


def _int(fields: dict[str, str], name: str) -> int:
    value = fields.get(name, "")
    return int(value) if value else 0


def _alert_words(rec: dict[str, str]) -> list[str]:
    """settle.lua's low-balance check: fire once below the threshold, re-arm above it."""
    setting = rec.get("alert_below", "")
    if not setting:
        return []
    remaining = _int(rec, "remaining")
    if setting.endswith("%"):
        base = _int(rec, "cycle_quota")
        if rec.get("type") != TYPE_SUBSCRIPTION:
            base = remaining + _int(rec, "used") - _int(rec, "payg_used")
        threshold = base * int(setting[:-1]) // 100
    else:
        threshold = int(setting)
    if threshold <= 0:
        return []
    armed = rec.get("alert_armed") != "0"
    if armed and remaining < threshold:
        rec["alert_armed"] = "0"
        return [f"alert|{rec.get('id', '')}|{remaining}|{threshold}"]
    if not armed and remaining >= threshold:
        rec["alert_armed"] = "1"
        return [f"rearm|{rec.get('id', '')}"]
    return []


def _today(now: float) -> str:
    return datetime.fromtimestamp(now, tz=UTC).date().isoformat()


def _add(fields: dict[str, str], name: str, amount: int) -> int:
    """HINCRBY on a field of the record."""
    value = _int(fields, name) + amount
    fields[name] = str(value)
    return value


class MemoryKeyStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock  # seconds, as Redis TIME
        self.records: dict[str, dict[str, str]] = {}
        self._tats: dict[str, float] = {}  # GCRA state per key hash, µs
        self._token_tats: dict[str, float] = {}  # token GCRA state per key hash, ms
        self.holds: dict[str, dict[str, tuple[int, int]]] = {}  # hash → id → (credits, expiry ms)
        self.settled: dict[str, set[str]] = {}
        self.expired: dict[str, dict[str, int]] = {}  # hash → id released unsettled → when
        self.prices: dict[str, str] = {}  # model pattern → Price JSON, as kg:prices holds
        self.usage: dict[tuple[str, str], dict[str, int]] = {}  # (hash, UTC day) → fields
        self.alerts: list[dict[str, object]] = []  # the alert stream
        self.below: set[str] = set()  # key ids below their threshold
        self._pending_usage: dict[str, int] = {}
        self._feeds: list[asyncio.Queue[str]] = []
        # Test controls and counters.
        self.failing = False
        self.gate: asyncio.Event | None = None
        self.lookups = 0
        self.spends = 0

    # ----- what a test arranges ------------------------------------------------------------

    def put(self, key_hash: str, fields: dict[str, str]) -> None:
        self.records[key_hash] = dict(fields)

    def update(self, key_hash: str, **fields: str) -> None:
        self.records[key_hash].update(fields)

    def publish(self, message: str) -> None:
        """What the keyring publishes after a change: a key hash, or store.ALL_KEYS."""
        for feed in self._feeds:
            feed.put_nowait(message)

    def _check(self, op: str) -> None:
        if self.failing:
            raise StoreError(f"{op}: store is failing")

    # ----- KeyStore --------------------------------------------------------------------------

    async def get_record(self, key_hash: str) -> KeyRecord | None:
        self.lookups += 1
        if self.gate is not None:
            await self.gate.wait()
        self._check("get_record")
        fields = self.records.get(key_hash)
        if fields and ALIAS_FIELD in fields:
            target = fields[ALIAS_FIELD]
            return resolve_alias(target, self.records.get(target, {}), fields)
        if not fields:
            return None
        return read_record(key_hash, fields)

    async def spend(
        self, key_hash: str, cost: int, rpm: int, hold: Hold | None = None
    ) -> SpendResult:
        self.spends += 1
        self._check("spend")
        rec = self.records.get(key_hash)
        if not rec:
            return SpendResult("gone")
        if rec.get("status") != STATUS_ACTIVE:
            return SpendResult("disabled")
        now_ms = math.floor(self.clock() * 1000)
        unlimited = rec.get("unlimited") == "1"
        remaining = _int(rec, "remaining")
        if rec.get("type") == TYPE_SUBSCRIPTION and rec.get("cycle_end"):
            cycle_end = float(rec["cycle_end"])
            seconds = _int(rec, "cycle_seconds")
            if seconds > 0 and now_ms >= cycle_end * 1000:
                remaining = _int(rec, "cycle_quota")
                rec["remaining"] = str(remaining)
                rec["cycle_used"] = "0"
                rec["cycle_end"] = str(int(next_cycle_end(cycle_end, seconds, now_ms / 1000)))
        holds = self.holds.setdefault(key_hash, {})
        expired = [hid for hid, (_, expiry) in holds.items() if expiry <= now_ms]
        if expired:
            late = self.expired.setdefault(key_hash, {})
            for hid in expired:
                _add(rec, "held", -holds.pop(hid)[0])
                late[hid] = now_ms  # as spend.lua: a late settlement still charges once
        held = _int(rec, "held")
        tl = (0, 0, 0)
        tpm = hold.tpm if hold is not None else 0
        if tpm > 0:
            busy = max(self._token_tats.get(key_hash, now_ms), now_ms) - now_ms
            tl = (tpm, max(0, math.floor((_WINDOW_MS - busy) * tpm / _WINDOW_MS)), math.ceil(busy))
            if tl[1] <= 0:
                retry = math.ceil(busy - _WINDOW_MS + _WINDOW_MS / tpm)
                return SpendResult(
                    "tokens_limited", remaining, 0, 0, 0, retry, held, *tl, len(expired)
                )
        rl = (0, 0, 0)
        new_tat: float | None = None
        now_us = math.floor(self.clock() * 1_000_000)
        if rpm > 0:  # GCRA in microseconds, as in spend.lua
            interval = _WINDOW_MS * 1000 / rpm
            tat = max(self._tats.get(key_hash, now_us), now_us)
            new_tat = tat + interval
            allow_at = new_tat - _WINDOW_MS * 1000
            if now_us < allow_at:
                reset = math.ceil((tat - now_us) / 1000)
                retry = math.ceil((allow_at - now_us) / 1000)
                return SpendResult(
                    "rate_limited", remaining, rpm, 0, reset, retry, held, *tl, len(expired)
                )
            rl = (
                rpm,
                math.floor((_WINDOW_MS * 1000 - (new_tat - now_us)) / interval),
                math.ceil((new_tat - now_us) / 1000),
            )
        outcome = "ok"
        if hold is not None:
            if not unlimited and cost > remaining - held:
                if rec.get("payg") != "1":
                    return SpendResult("insufficient", remaining, *rl, 0, held, *tl, len(expired))
                outcome = "payg"
            if cost > 0:
                holds[hold.id] = (cost, now_ms + hold.ttl_ms)
                held = _add(rec, "held", cost)
        elif unlimited or cost <= 0:
            if cost > 0:
                _add(rec, "used", cost)
        elif remaining >= cost:
            remaining = _add(rec, "remaining", -cost)
            _add(rec, "used", cost)
            if rec.get("type") == TYPE_SUBSCRIPTION:
                _add(rec, "cycle_used", cost)
        elif rec.get("payg") == "1":
            _add(rec, "used", cost)
            _add(rec, "payg_used", cost)
            outcome = "payg"
        else:
            return SpendResult("insufficient", remaining, *rl, 0, held, *tl, len(expired))
        if new_tat is not None:
            self._tats[key_hash] = math.ceil(new_tat)
        left = -1 if unlimited else remaining
        return SpendResult(outcome, left, *rl, 0, held, *tl, len(expired))

    async def settle(
        self, key_hash: str, items: Sequence[Settlement], history_days: int = 0
    ) -> list[str]:
        self._check("settle")
        now_ms = math.floor(self.clock() * 1000)
        settled = self.settled.setdefault(key_hash, set())
        holds = self.holds.setdefault(key_hash, {})
        rec = self.records.get(key_hash)
        out: list[str] = []
        tokens = 0
        late = self.expired.setdefault(key_hash, {})
        seen: set[str] = set()
        for item in items:
            hold_id = item.hold_id
            found = holds.get(hold_id)
            is_open = item.held > 0 and found is not None and found[0] == item.held
            if hold_id in seen or (
                hold_id in settled if item.held == 0 else not (is_open or hold_id in late)
            ):
                out.append("duplicate")
                continue
            seen.add(hold_id)
            if is_open:
                del holds[hold_id]
                if rec is not None:
                    _add(rec, "held", -item.held)
                out.append("settled")
            else:
                if item.held > 0:
                    del late[hold_id]
                else:
                    settled.add(hold_id)
                out.append("unheld")
            if rec is None:
                continue
            charge = item.charge
            if charge > 0:
                _add(rec, "used", charge)
                if rec.get("unlimited") != "1":
                    remaining = _int(rec, "remaining")
                    if rec.get("payg") == "1" and charge > remaining:
                        from_quota = max(remaining, 0)
                        _add(rec, "remaining", -from_quota)
                        _add(rec, "payg_used", charge - from_quota)
                    else:
                        _add(rec, "remaining", -charge)
                    if rec.get("type") == TYPE_SUBSCRIPTION:
                        _add(rec, "cycle_used", charge)
            _add(rec, "tokens_in", item.tokens_in)
            _add(rec, "cached_tokens", item.cached_tokens)
            _add(rec, "tokens_out", item.tokens_out)
            tokens += item.tokens_in + item.cached_tokens + item.tokens_out
            if history_days > 0:
                day = self.usage.setdefault((key_hash, _today(self.clock())), {})
                for kind, count in (
                    ("requests", 1),
                    ("input", item.tokens_in),
                    ("cached", item.cached_tokens),
                    ("output", item.tokens_out),
                    ("credits", charge),
                ):
                    if count:
                        field = f"{item.model}|{kind}"
                        day[field] = day.get(field, 0) + count
        if rec is not None and out:
            rec["last_used_at"] = str(int(now_ms // 1000))
        if rec is not None and rec.get("unlimited") != "1":
            out += _alert_words(rec)
        tpm = _int(rec, "tpm") if rec is not None else 0
        if tpm > 0 and tokens > 0:
            tat = max(self._token_tats.get(key_hash, now_ms), now_ms)
            self._token_tats[key_hash] = tat + math.ceil(tokens * _WINDOW_MS / tpm)
        return out

    async def get_prices(self) -> dict[str, str]:
        self._check("prices")
        return dict(self.prices)

    async def note_alert(self, kind: str, key_id: str, remaining: int, threshold: int) -> int:
        self._check("settle")
        if kind == "alert":
            self.alerts.append({"key_id": key_id, "remaining": remaining, "threshold": threshold})
            self.below.add(key_id)
        else:
            self.below.discard(key_id)
        return len(self.below)

    def add_usage(self, key_hash: str, units: int) -> None:
        self._pending_usage[key_hash] = self._pending_usage.get(key_hash, 0) + units

    async def flush_usage(self) -> None:
        self._check("add_usage")
        pending, self._pending_usage = self._pending_usage, {}
        for key_hash, units in pending.items():
            rec = self.records.get(key_hash)
            if rec:
                rec["used"] = str(_int(rec, "used") + units)

    async def ping(self) -> None:
        self._check("ping")

    @contextlib.asynccontextmanager
    async def changes(self) -> AsyncIterator[AsyncIterator[str]]:
        self._check("subscribe")
        feed: asyncio.Queue[str] = asyncio.Queue()
        self._feeds.append(feed)
        try:
            yield self._messages(feed)
        finally:
            self._feeds.remove(feed)

    async def _messages(self, feed: asyncio.Queue[str]) -> AsyncIterator[str]:
        while True:
            message = await feed.get()
            self._check("subscribe")
            yield message

    async def close(self) -> None:
        self._feeds.clear()
