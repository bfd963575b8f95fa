"""Prices and the cost of one request, in whole credits: no float touches money.

A price is whole credits per 1,000,000 tokens of each kind, plus whole credits per
request. What a credit is worth is the operator's choice; the documented convention
is 1 credit = 1 micro-dollar (gpt-4o input at $2.50 per 1M tokens is 2,500,000).

A price applies to a model pattern: an exact name, a prefix ending in ``*``
(``gpt-4o*`` covers dated variants; the longest prefix wins), or ``*`` alone, the
default price.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import NamedTuple

from keyguard.errors import InvalidChange

TOKENS_PER_PRICE_UNIT = 1_000_000
DEFAULT_PATTERN = "*"
# Far above any real price or token count, so a typo (an extra few zeros) is
# refused instead of silently billed.
MAX_AMOUNT = 10**15
_PATTERN = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,255}\*?|\*)$")
REQUIRED_FIELDS = ("input", "output")
OPTIONAL_FIELDS = ("cached_input", "cache_write", "per_request", "max_output")
FIELDS = REQUIRED_FIELDS + OPTIONAL_FIELDS


@dataclass(frozen=True, slots=True)
class Price:
    input: int  # credits per 1M uncached input tokens
    output: int  # credits per 1M output tokens (reasoning tokens included)
    cached_input: int  # credits per 1M input tokens read from a prompt cache
    cache_write: int  # credits per 1M input tokens written to a prompt cache
    per_request: int = 0  # credits per request, on top
    max_output: int | None = None  # output tokens to hold for when a request sets no limit

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)


class Usage(NamedTuple):
    """Tokens of one response, each kind counted once (cached input is not in ``input``).
    (A named tuple: settlement makes one per request, and it is made fastest.)"""

    input: int = 0
    cached_input: int = 0
    cache_write: int = 0
    output: int = 0

    @property
    def tokens(self) -> int:
        """What a tokens-per-minute budget counts: every input token plus output."""
        return self.input + self.cached_input + self.cache_write + self.output


def cost(usage: Usage, price: Price) -> int:
    """Whole credits for one request: the token part is rounded up once."""
    units = (
        usage.input * price.input
        + usage.cached_input * price.cached_input
        + usage.cache_write * price.cache_write
        + usage.output * price.output
    )
    return -(-units // TOKENS_PER_PRICE_UNIT) + price.per_request


def check_pattern(pattern: str) -> str:
    if not _PATTERN.match(pattern):
        raise InvalidChange(
            f"bad model {pattern!r}: use a model name, a prefix ending in '*' (gpt-4o*),"
            " or '*' for the default price"
        )
    return pattern


def _amount(name: str, value: object) -> int:
    # bool is an int in Python, and a float is never money.
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().isdigit() and value.strip().isascii():
            value = int(value)
        else:
            raise InvalidChange(f"{name}: {value!r} is not a whole number of credits")
    if value < 0:
        raise InvalidChange(f"{name}: {value} is negative; use 0 or more")
    if value > MAX_AMOUNT:
        raise InvalidChange(f"{name}: {value} is larger than {MAX_AMOUNT}")
    return value


def price_from_fields(fields: Mapping[str, object], where: str = "") -> Price:
    """A price from its fields (CLI options, a file entry, the stored JSON); one-line errors.

    ``cached_input`` and ``cache_write`` default to ``input``.
    """
    prefix = f"{where}: " if where else ""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise InvalidChange(f"{prefix}unknown field {unknown[0]!r}; known: {', '.join(FIELDS)}")
    missing = [name for name in REQUIRED_FIELDS if fields.get(name) is None]
    if missing:
        raise InvalidChange(f"{prefix}missing {missing[0]!r}: a price needs input and output")
    try:
        amounts = {
            name: _amount(name, value) for name, value in fields.items() if value is not None
        }
    except InvalidChange as exc:
        raise InvalidChange(f"{prefix}{exc}") from None
    if amounts.get("max_output") == 0:
        raise InvalidChange(f"{prefix}max_output: must be greater than 0")
    return Price(
        input=amounts["input"],
        output=amounts["output"],
        cached_input=amounts.get("cached_input", amounts["input"]),
        cache_write=amounts.get("cache_write", amounts["input"]),
        per_request=amounts.get("per_request", 0),
        max_output=amounts.get("max_output"),
    )


def price_from_json(text: str) -> Price:
    """A stored price; ValueError (an InvalidChange) when it cannot be read."""
    try:
        data = json.loads(text)
    except ValueError:
        raise InvalidChange("stored price is not JSON") from None
    if not isinstance(data, dict):
        raise InvalidChange("stored price is not an object")
    return price_from_fields(data)


class PriceTable:
    """Model → price: exact names first, then the longest ``prefix*``, then ``*``."""

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self.prices = dict(prices)
        self._exact = {p: price for p, price in prices.items() if not p.endswith("*")}
        self._prefixes = sorted(
            ((p[:-1], p) for p in prices if p.endswith("*") and p != DEFAULT_PATTERN),
            key=lambda item: len(item[0]),
            reverse=True,
        )
        self._default = prices.get(DEFAULT_PATTERN)

    def match(self, model: str) -> tuple[str, Price] | None:
        """The pattern that prices ``model`` and its price; None: the model has no price."""
        price = self._exact.get(model)
        if price is not None:
            return model, price
        for prefix, pattern in self._prefixes:
            if model.startswith(prefix):
                return pattern, self.prices[pattern]
        if self._default is not None:
            return DEFAULT_PATTERN, self._default
        return None

    def __len__(self) -> int:
        return len(self.prices)

    def patterns(self) -> list[str]:
        return sorted(self.prices)
