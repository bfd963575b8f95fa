"""What a request may cost, before it is sent: the hold placed at Check.

The hold is the cost of an estimated usage: input tokens from the body's size (about
four bytes a token, which the JSON around the text makes generous) and output tokens
from the request's own limit (``max_tokens``, ``max_completion_tokens`` or
``max_output_tokens``), else the price's ``max_output``, else
``KEYGUARD_DEFAULT_MAX_OUTPUT``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from keyguard.model import EXTRA_FIELDS
from keyguard.prices import TOKENS_PER_PRICE_UNIT, Price, Usage

BYTES_PER_TOKEN = 4
_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_WANTED = EXTRA_FIELDS
_DECODER = json.JSONDecoder()
_WS = " \t\n\r"
# A limit above this is not a limit anyone can reach; it must not make a huge hold.
MAX_OUTPUT_LIMIT = 10_000_000


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """The top-level request fields metering reads."""

    max_output: int | None = None
    stream: bool = False
    include_usage: bool = False


def _top_level(body: str) -> dict[str, object]:
    """The wanted top-level fields of a JSON object, from a possibly truncated prefix."""
    found: dict[str, object] = {}
    idx, end = 0, len(body)
    decode = _DECODER.raw_decode

    def skip(i: int) -> int:
        while i < end and body[i] in _WS:
            i += 1
        return i

    idx = skip(idx)
    if idx >= end or body[idx] != "{":
        return found
    idx += 1
    while True:
        idx = skip(idx)
        if idx >= end or body[idx] != '"':
            return found
        try:
            key, idx = decode(body, idx)
        except ValueError:
            return found
        idx = skip(idx)
        if idx >= end or body[idx] != ":":
            return found
        try:
            value, idx = decode(body, skip(idx + 1))
        except (ValueError, RecursionError):
            return found
        if key in _WANTED:
            found[key] = value
        idx = skip(idx)
        if idx >= end or body[idx] != ",":
            return found
        idx += 1


def request_options(body: bytes) -> RequestOptions:
    return options_from_fields(_top_level(body.decode("utf-8", errors="replace")))


def options_from_fields(fields: dict[str, object]) -> RequestOptions:
    """The options from top-level fields already read (``model.read_model``'s extras)."""
    limit: int | None = None
    for name in _LIMIT_FIELDS:
        value = fields.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            limit = min(value, MAX_OUTPUT_LIMIT)
            break
    options = fields.get("stream_options")
    include = isinstance(options, dict) and options.get("include_usage") is True
    return RequestOptions(limit, fields.get("stream") is True, include)


def estimate_usage(body_size: int, options: RequestOptions, price: Price, default: int) -> Usage:
    output = options.max_output or price.max_output or default
    return Usage(input=-(-max(body_size, 0) // BYTES_PER_TOKEN), output=output)


def hold_for(body_size: int, options: RequestOptions, price: Price, default: int) -> int:
    """Credits to hold for a request: ``cost(estimate_usage(...))``, without building the
    Usage (this runs on every metered Check; tests/unit pin the two equal)."""
    tokens_in = -(-max(body_size, 0) // BYTES_PER_TOKEN)
    output = options.max_output or price.max_output or default
    units = tokens_in * price.input + output * price.output
    return -(-units // TOKENS_PER_PRICE_UNIT) + price.per_request
