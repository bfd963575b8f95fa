"""A key's usage history: per UTC day and priced model, the requests, tokens and credits
that settlement counted (``settle.lua`` writes ``kg:{H}:use:<date>``, kept
``KEYGUARD_USAGE_RETENTION_DAYS``)."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from keyguard.store import usage_key
from keyguard.store.connect import SyncClient

# Field kind in the stored hash → the name a row gives it.
_KINDS = {
    "requests": "requests",
    "input": "input_tokens",
    "output": "output_tokens",
    "cached": "cached_tokens",
    "credits": "credits",
}
MAX_DAYS = 366


def usage_history(
    client: SyncClient, key_hash: str, days: int, today: dt.date | None = None
) -> list[dict[str, Any]]:
    """Rows ``{date, model, requests, input_tokens, output_tokens, cached_tokens, credits}``
    for the last ``days`` UTC days (today included), oldest first; days and models
    without usage have no row."""
    today = today or dt.datetime.now(dt.UTC).date()
    dates = [(today - dt.timedelta(days=back)).isoformat() for back in range(days - 1, -1, -1)]
    pipe = client.pipeline(transaction=False)
    for date in dates:
        pipe.hgetall(usage_key(key_hash, date))
    rows: list[dict[str, Any]] = []
    for date, raw in zip(dates, cast(list[dict[str, str]], pipe.execute()), strict=True):
        by_model: dict[str, dict[str, Any]] = {}
        for field, value in raw.items():
            model, _, kind = field.rpartition("|")
            name = _KINDS.get(kind)
            if not model or name is None:
                continue
            row = by_model.setdefault(
                model, {"date": date, "model": model, **dict.fromkeys(_KINDS.values(), 0)}
            )
            row[name] = int(value)
        rows.extend(by_model[model] for model in sorted(by_model))
    return rows
