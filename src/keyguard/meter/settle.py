"""From what Envoy logged about a finished request to what it costs.

``assess`` reads one request's ticket (the ext_authz metadata keyguard set at Check),
the usage Envoy extracted from the response, and the response code; it says what to
charge and why. What is charged, case by case (README, "Metering"):

======================================  ==========================================
the request                              charged
======================================  ==========================================
completed, usage reported                the exact cost of the reported usage
ended without usage (stream without      the estimate held at Check (never more)
include_usage), or usage unreadable
client disconnected mid-stream           what the upstream reported, else the estimate;
                                         an Anthropic stream cut before its final
                                         message_delta: at least the estimate
upstream answered 4xx or 5xx             nothing; the hold is released
never answered (response code 0)         nothing; the hold is released
no settlement at all                     nothing; the hold expires (KEYGUARD_HOLD_TTL)
======================================  ==========================================
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from keyguard.meter.ticket import FIELDS, TicketFields
from keyguard.meter.usage import usage_from_fields
from keyguard.prices import PriceTable, Usage, cost
from keyguard.store import Settlement

# Where keyguard's Check puts the ticket, and where Envoy puts the usage it read.
EXT_AUTHZ_NAMESPACE = "envoy.filters.http.ext_authz"
USAGE_NAMESPACE = "keyguard.usage"
OTHER_MODEL = "other"


class Outcome(enum.StrEnum):
    USAGE = "usage"  # charged the reported usage
    ESTIMATE = "estimate"  # no usage reported: charged the estimate
    UNREADABLE = "unreadable"  # usage reported but unreadable: charged the estimate
    UNFINISHED = "unfinished"  # a stream cut before its final usage: at least the estimate
    UPSTREAM_ERROR = "upstream_error"  # 4xx/5xx: nothing charged
    NOT_SERVED = "not_served"  # no response at all: nothing charged
    DUPLICATE = "duplicate"  # settled before: nothing charged again


class Assessed(NamedTuple):
    key_hash: str
    settlement: Settlement
    outcome: Outcome
    usage: Usage | None
    model_label: str  # the price-table pattern that priced it, or "other"


# Reads one usage field by name: a number (a float, as Envoy's metadata carries every
# number), a string, or None when the field is absent or of another kind.
UsageReader = Callable[[str], Any]


# Hold ids are keyguard's own (hex); anything else in a ticket is not one of its holds.
_HOLD_ID = re.compile(r"[0-9a-f]{1,64}").fullmatch


def _text(meta: Mapping[str, Any], name: str) -> str:
    value = meta.get(name)
    return value if isinstance(value, str) else ""


def _credits(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


# Token fields Envoy may write (envoy/envoy.yaml); "object" and "type" are strings that
# say which API answered and, for a stream, which event came last.
TOKEN_FIELDS = frozenset(
    {
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
    }
)
# An Anthropic stream whose last event is one of these was cut before its final
# message_delta: the output it reported (message_start's placeholder, or a count
# from the middle) is not what the upstream generated.
_ANTHROPIC_UNFINISHED = frozenset(
    {"message_start", "content_block_start", "content_block_delta", "content_block_stop", "ping"}
)


# The token fields an OpenAI chat completion's usage is read from; any other usage
# reads the rest.
_CHAT_FIELDS = ("cached_tokens", "completion_tokens")
_OTHER_FIELDS = tuple(sorted(TOKEN_FIELDS - {"prompt_tokens"}))


def _token_fields(read: UsageReader) -> dict[str, Any]:
    """The token fields present, reading only those that can matter: a chat completion's
    usage (prompt_tokens) needs two more, anything else the other six."""
    prompt = read("prompt_tokens")
    if prompt is None:
        tokens = {}
        names = _OTHER_FIELDS
    else:
        tokens = {"prompt_tokens": prompt}
        names = _CHAT_FIELDS
    for name in names:
        value = read(name)
        if value is not None:
            tokens[name] = value
    return tokens


def ticket_fields(ticket: Mapping[str, Any]) -> TicketFields:
    """A ticket's six fields, in the order of its text, from a mapping by name (a field
    that is missing or not a string reads as "")."""
    hold_id, held, estimate, key_hash, dialect, model = (_text(ticket, name) for name in FIELDS)
    return hold_id, held, estimate, key_hash, dialect, model


def assess(
    ticket: Mapping[str, Any],
    usage_fields: Mapping[str, Any],
    response_code: int,
    prices: PriceTable,
) -> Assessed | None:
    """What one logged request costs, from its ticket's fields by name and its usage
    fields as a mapping; None when it carries no (readable) ticket."""
    return assess_ticket(
        *ticket_fields(ticket),
        read=usage_fields.get,
        response_code=response_code,
        prices=prices,
    )


def assess_ticket(
    hold_id: str,
    held_text: str,
    estimate_text: str,
    key_hash: str,
    dialect: str,
    model: str,
    *,
    read: UsageReader,
    response_code: int,
    prices: PriceTable,
) -> Assessed | None:
    """What one logged request costs, from its ticket's six fields (in the order of its
    text) and the usage Envoy extracted (``read``); None when the ticket is unreadable."""
    held, estimate = _credits(held_text), _credits(estimate_text)
    if not _HOLD_ID(hold_id) or len(key_hash) != 64 or held is None or estimate is None:
        return None
    matched = prices.match(model) if model else None
    label = matched[0] if matched is not None else OTHER_MODEL
    usage: Usage | None = None
    if response_code == 0:
        outcome, charge = Outcome.NOT_SERVED, 0
    elif response_code >= 400:
        outcome, charge = Outcome.UPSTREAM_ERROR, 0
    else:
        anthropic = dialect == "anthropic"
        tokens = _token_fields(read)
        usage = usage_from_fields(tokens, anthropic)
        if usage is not None:
            outcome = Outcome.USAGE
            charge = cost(usage, matched[1]) if matched is not None else 0
            last = read("type") if anthropic else None
            if isinstance(last, str) and last in _ANTHROPIC_UNFINISHED:
                # Cut mid-stream: at least the estimate, as for a stream without usage.
                outcome, charge = Outcome.UNFINISHED, max(charge, estimate)
        else:
            outcome = Outcome.UNREADABLE if tokens else Outcome.ESTIMATE
            charge = estimate
    if usage is None:
        settlement = Settlement(hold_id, held, charge, 0, 0, 0, label)
    else:
        settlement = Settlement(
            hold_id,
            held,
            charge,
            usage.input,
            usage.cached_input + usage.cache_write,
            usage.output,
            label,
        )
    return Assessed(key_hash, settlement, outcome, usage, label)
