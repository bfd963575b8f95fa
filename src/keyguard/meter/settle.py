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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True, slots=True)
class Assessed:
    key_hash: str
    settlement: Settlement
    outcome: Outcome
    usage: Usage | None
    model_label: str  # the price-table pattern that priced it, or "other"


# Hold ids are keyguard's own (hex); anything else in a ticket is not one of its holds.
_HOLD_ID = re.compile(r"[0-9a-f]{1,64}").fullmatch


def _text(meta: Mapping[str, Any], name: str) -> str:
    value = meta.get(name)
    return value if isinstance(value, str) else ""


def _credits(meta: Mapping[str, Any], name: str) -> int | None:
    text = _text(meta, name)
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


def assess(
    ticket: Mapping[str, Any],
    usage_fields: Mapping[str, Any],
    response_code: int,
    prices: PriceTable,
) -> Assessed | None:
    """What one logged request costs; None when it carries no (readable) ticket."""
    hold_id, key_hash = _text(ticket, "hold"), _text(ticket, "kh")
    held, estimate = _credits(ticket, "held"), _credits(ticket, "estimate")
    if not _HOLD_ID(hold_id) or len(key_hash) != 64 or held is None or estimate is None:
        return None
    model = _text(ticket, "model")
    matched = prices.match(model) if model else None
    label = matched[0] if matched is not None else OTHER_MODEL
    usage: Usage | None = None
    if response_code == 0:
        outcome, charge = Outcome.NOT_SERVED, 0
    elif response_code >= 400:
        outcome, charge = Outcome.UPSTREAM_ERROR, 0
    else:
        tokens = {k: v for k, v in usage_fields.items() if k in TOKEN_FIELDS}
        anthropic = _text(ticket, "dialect") == "anthropic"
        usage = usage_from_fields(tokens, anthropic)
        if usage is not None:
            outcome = Outcome.USAGE
            charge = cost(usage, matched[1]) if matched is not None else 0
            if anthropic and _text(usage_fields, "type") in _ANTHROPIC_UNFINISHED:
                # Cut mid-stream: at least the estimate, as for a stream without usage.
                outcome, charge = Outcome.UNFINISHED, max(charge, estimate)
        else:
            outcome = Outcome.UNREADABLE if tokens else Outcome.ESTIMATE
            charge = estimate
    settlement = Settlement(
        hold_id=hold_id,
        held=held,
        charge=charge,
        tokens_in=usage.input if usage else 0,
        cached_tokens=(usage.cached_input + usage.cache_write) if usage else 0,
        tokens_out=usage.output if usage else 0,
        model=label,
    )
    return Assessed(key_hash, settlement, outcome, usage, label)
