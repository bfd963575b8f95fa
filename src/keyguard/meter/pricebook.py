"""The price table as every server holds it: loaded at start, reloaded when a change
is published (``store.PRICES_CHANGED``) and whenever the change feed reconnects."""

from __future__ import annotations

import structlog

from keyguard.errors import InvalidChange
from keyguard.prices import Price, PriceTable, price_from_json
from keyguard.store import KeyStore

log = structlog.get_logger("keyguard.prices")


def parse_table(raw: dict[str, str]) -> PriceTable:
    """The table from the stored hash; an unreadable entry is left out (so its models
    are unpriced and denied to metered keys, never free) and logged."""
    prices: dict[str, Price] = {}
    for pattern, text in raw.items():
        try:
            prices[pattern] = price_from_json(text)
        except InvalidChange as exc:
            log.warning("price_unreadable", model=pattern[:256], error=str(exc))
    return PriceTable(prices)


class PriceBook:
    def __init__(self, table: PriceTable | None = None) -> None:
        self.table = table or PriceTable({})
        self.loaded = False

    async def reload(self, store: KeyStore) -> None:
        """Read the table again (StoreError when the store cannot answer)."""
        self.table = parse_table(await store.get_prices())
        self.loaded = True
