"""Reading the low-balance alerts settlement recorded (``kg:{alerts}:stream``), and which
keys are below their threshold now (``kg:{alerts}:below``)."""

from __future__ import annotations

from typing import Any, cast

from keyguard.audit import check_cursor, iso_ms
from keyguard.store import ALERTS_BELOW, ALERTS_STREAM
from keyguard.store.connect import SyncClient


def read_alerts(
    client: SyncClient, *, key_id: str | None = None, after: str | None = None, limit: int = 100
) -> tuple[list[dict[str, Any]], str | None]:
    """Alerts oldest first (after the cursor ``after``), at most ``limit``, only ``key_id``'s
    when given; and the next page's cursor (None at the end)."""
    start = "(" + check_cursor(after) if after is not None else "-"
    out: list[dict[str, Any]] = []
    while len(out) < limit:
        batch = cast(
            list[tuple[str, dict[str, str]]],
            client.xrange(ALERTS_STREAM, min=start, max="+", count=500),
        )
        for entry_id, raw in batch:
            if key_id is None or raw.get("key_id") == key_id:
                out.append(_alert_info(str(entry_id), raw))
                if len(out) == limit:
                    return out, out[-1]["id"]
        if len(batch) < 500:
            return out, None
        start = "(" + str(batch[-1][0])
    return out, None


def _alert_info(entry_id: str, raw: dict[str, str]) -> dict[str, Any]:
    return {
        "id": entry_id,
        "at": iso_ms(int(entry_id.partition("-")[0])),
        "key_id": raw.get("key_id", ""),
        "remaining": int(raw.get("remaining") or 0),
        "threshold": int(raw.get("threshold") or 0),
        "below_now": False,
    }


def keys_below(client: SyncClient) -> set[str]:
    return {str(k) for k in cast(set[str], client.smembers(ALERTS_BELOW))}


def alerts_with_state(
    client: SyncClient, *, key_id: str | None = None, after: str | None = None, limit: int = 100
) -> tuple[list[dict[str, Any]], str | None]:
    items, cursor = read_alerts(client, key_id=key_id, after=after, limit=limit)
    below = keys_below(client) if items else set()
    for item in items:
        item["below_now"] = item["key_id"] in below
    return items, cursor
