"""Render: Decision → serialized CheckResponse.

Constant denials are built and serialized once, at import; an allow is serialized
once per record and billing (``Renderer``'s memo) and reused; rate-limit headers
are appended to those bytes as a hand-encoded fragment.
"""

from __future__ import annotations

import functools
import json
import re

from google.protobuf import struct_pb2

from keyguard._proto.envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from keyguard._proto.envoy.service.auth.v3.external_auth_pb2 import (
    CheckResponse,
    DeniedHttpResponse,
    OkHttpResponse,
)
from keyguard._proto.envoy.type.v3.http_status_pb2 import HttpStatus
from keyguard._proto.google.rpc.status_pb2 import Status
from keyguard.authz.decision import Billing, Decision, Ticket
from keyguard.authz.request import RequestFacts
from keyguard.meter.ticket import ticket_head, ticket_tail
from keyguard.policy import SpendResult
from keyguard.reasons import OUTCOMES, Reason
from keyguard.record import KeyRecord

_OVERWRITE = HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
CREDENTIAL_HEADERS = ("authorization", "x-api-key")
# Headers keyguard sets for the upstream. A client must never be able to
# send its own, so each is either overwritten or removed on every allow.
DEGRADED_HEADER = "x-keyguard-degraded"
# The key's metadata: set when the key has it, removed when it does not.
ENV_HEADER = "x-keyguard-key-env"
OWNER_HEADER = "x-keyguard-key-owner"
# keyring.values admits only these characters; a hand-edited record may hold others,
# which Envoy would refuse in a header value: such a value is not sent.
_HEADER_VALUE = re.compile(r"[\x21-\x7e]{1,64}")


def header(name: str, value: str) -> HeaderValueOption:
    return HeaderValueOption(header=HeaderValue(key=name, value=value), append_action=_OVERWRITE)


def error_body(reason: Reason, anthropic: bool, message: str | None = None) -> str:
    outcome = OUTCOMES[reason]
    text = message or outcome.message
    if anthropic:
        return json.dumps(
            {"type": "error", "error": {"type": outcome.anthropic_type, "message": text}},
            separators=(",", ":"),
        )
    return json.dumps(
        {
            "error": {
                "message": text,
                "type": outcome.openai_type,
                "param": None,
                "code": reason.value,
            }
        },
        separators=(",", ":"),
    )


def _denied(
    reason: Reason, anthropic: bool, extra_headers: list[HeaderValueOption] | None = None
) -> CheckResponse:
    outcome = OUTCOMES[reason]
    headers = [
        header("content-type", "application/json"),
        header("x-keyguard-reason", reason.value),
        *(extra_headers or []),
    ]
    return CheckResponse(
        status=Status(code=outcome.grpc_code, message=reason.value),
        denied_response=DeniedHttpResponse(
            status=HttpStatus(code=outcome.http_status),  # type: ignore[arg-type]
            headers=headers,
            body=error_body(reason, anthropic),
        ),
    )


_DENIALS: dict[tuple[Reason, bool], CheckResponse] = {
    (reason, anthropic): _denied(reason, anthropic)
    for reason in OUTCOMES
    for anthropic in (False, True)
}


_DENIAL_WIRE: dict[tuple[Reason, bool], bytes] = {
    key: response.SerializeToString() for key, response in _DENIALS.items()
}


def denial(reason: Reason, anthropic: bool) -> CheckResponse:
    """The prebuilt denial for a reason; shared, so callers must not mutate it."""
    return _DENIALS[(reason, anthropic)]


def denial_wire(reason: Reason, anthropic: bool) -> bytes:
    """The prebuilt denial, serialized once at import."""
    return _DENIAL_WIRE[(reason, anthropic)]


# ----- hand-encoded additions to a serialized CheckResponse --------------------------------
# Protobuf merges repeated occurrences of an embedded message field, so appending
# ``ok_response { response_headers_to_add: [...] }`` to a serialized allow adds those
# headers without rebuilding (or even parsing) the message. tests/unit pin this.


_ONE_BYTE = [bytes((i,)) for i in range(0x80)]


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# The tag byte of a length-delimited field, for the field numbers used here (all < 16).
_TAG = [bytes(((number << 3) | 2,)) for number in range(16)]


def _field(number: int, payload: bytes) -> bytes:
    size = len(payload)
    if size < 0x80:  # nearly always: one length byte
        return _TAG[number] + _ONE_BYTE[size] + payload
    return _TAG[number] + _varint(size) + payload


@functools.cache
def _key_field(name: str) -> bytes:
    return _field(1, name.encode())


# HeaderValueOption.append_action = 3 (varint): OVERWRITE_IF_EXISTS_OR_ADD
_APPEND_OVERWRITE = bytes((3 << 3, _OVERWRITE))


def _header_option_wire(name: str, value: str) -> bytes:
    # HeaderValueOption.header = 1 { HeaderValue.key = 1, value = 2 }
    return _field(1, _key_field(name) + _field(2, value.encode())) + _APPEND_OVERWRITE


_RL_LIMIT = "x-ratelimit-limit-requests"
_RL_REMAINING = "x-ratelimit-remaining-requests"
_RL_RESET = "x-ratelimit-reset-requests"
_TL_NAMES = (
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)


def rate_limit_suffix(spend: SpendResult) -> bytes:
    """Serialized ``ok_response`` carrying the x-ratelimit-* response headers."""
    if spend.rl_limit <= 0 and spend.tl_limit <= 0:
        return b""
    options = b""
    if spend.rl_limit > 0:
        limit, remaining, reset = _rate_limit_values(spend)
        # OkHttpResponse.response_headers_to_add = 6, CheckResponse.ok_response = 3
        options = (
            _limit_option_wire(limit)
            + _field(6, _header_option_wire(_RL_REMAINING, remaining))
            + _field(6, _header_option_wire(_RL_RESET, reset))
        )
    for name, value in _token_pairs(spend):
        options += _field(6, _header_option_wire(name, value))
    return _field(3, options)


def _token_pairs(spend: SpendResult) -> list[tuple[str, str]]:
    if spend.tl_limit <= 0:
        return []
    values = (
        str(spend.tl_limit),
        str(max(spend.tl_remaining, 0)),
        f"{max(spend.tl_reset_ms, 0) / 1000:.3f}s",
    )
    return list(zip(_TL_NAMES, values, strict=True))


@functools.lru_cache(maxsize=4096)
def _ticket_tail(key_hash: str, model: str, anthropic: bool) -> bytes:
    # What a key's tickets for one model share: encoded once, not on every Check.
    return ticket_tail(key_hash, model, anthropic).encode()


# Struct.fields (1) map entry {key = 1 "hold", value = 2: Value{string_value = 3}}
_HOLD_KEY = _key_field("hold")


def ticket_suffix(ticket: Ticket) -> bytes:
    """Serialized ``dynamic_metadata`` (4) carrying the settlement ticket, one ``hold``
    entry (meter/ticket.py); protobuf merges it into the memoized allow's metadata
    (key_id, key_type, billing)."""
    text = ticket_head(ticket.hold_id, ticket.held, ticket.estimate).encode() + _ticket_tail(
        ticket.key_hash, ticket.model, ticket.anthropic
    )
    return _field(4, _field(1, _HOLD_KEY + _field(2, _field(3, text))))


@functools.lru_cache(maxsize=256)
def _limit_option_wire(limit: str) -> bytes:
    return _field(6, _header_option_wire(_RL_LIMIT, limit))


def _rate_limit_values(spend: SpendResult) -> tuple[str, str, str]:
    return (
        str(spend.rl_limit),
        str(max(spend.rl_remaining, 0)),
        f"{max(spend.rl_reset_ms, 0) / 1000:.3f}s",
    )


def _rate_limit_pairs(spend: SpendResult) -> list[tuple[str, str]]:
    pairs = _token_pairs(spend)
    if spend.rl_limit <= 0:
        return pairs
    names = (_RL_LIMIT, _RL_REMAINING, _RL_RESET)
    return [*zip(names, _rate_limit_values(spend), strict=True), *pairs]


def rate_limit_headers(spend: SpendResult) -> list[HeaderValueOption]:
    return [header(name, value) for name, value in _rate_limit_pairs(spend)]


_TOKENS_MESSAGE = (
    "Rate limit reached for tokens per minute on this API key. Retry after the time in Retry-After."
)


def rate_limited(spend: SpendResult, anthropic: bool) -> CheckResponse:
    retry_after = max(1, -(-spend.retry_after_ms // 1000))  # ceil, at least 1 s
    response = _denied(
        Reason.RATE_LIMIT_EXCEEDED,
        anthropic,
        [header("retry-after", str(retry_after)), *rate_limit_headers(spend)],
    )
    if spend.outcome == "tokens_limited":
        body = json.loads(error_body(Reason.RATE_LIMIT_EXCEEDED, anthropic, _TOKENS_MESSAGE))
        if not anthropic:
            body["error"]["type"] = "tokens"  # as OpenAI types a token-limit 429
        response.denied_response.body = json.dumps(body, separators=(",", ":"))
    return response


def _naming_model(reason: Reason, anthropic: bool, model: str) -> bytes:
    """A denial whose message names the refused model (JSON-escaped; never the key)."""
    response = CheckResponse()
    response.CopyFrom(_DENIALS[(reason, anthropic)])
    text = OUTCOMES[reason].message.replace("the requested model", f"the model {model!r}")
    text = text.replace("The requested model", f"The model {model!r}")
    response.denied_response.body = error_body(reason, anthropic, text)
    return response.SerializeToString()


def allow(
    record: KeyRecord,
    *,
    billing: str,
    strip_credentials: bool,
    degraded: bool = False,
) -> CheckResponse:
    """An allow; x-ratelimit-* response headers are appended as rate_limit_suffix()."""
    headers = [
        header("x-keyguard-key-id", record.id),
        header("x-keyguard-key-type", record.type),
        header("x-keyguard-billing", billing),
    ]
    remove: list[str] = list(CREDENTIAL_HEADERS) if strip_credentials else []
    if degraded:
        headers.append(header(DEGRADED_HEADER, "1"))
    else:
        remove.append(DEGRADED_HEADER)
    for name, value in ((ENV_HEADER, record.env), (OWNER_HEADER, record.owner)):
        if _HEADER_VALUE.fullmatch(value):
            headers.append(header(name, value))
        else:
            remove.append(name)
    metadata = struct_pb2.Struct()
    metadata.update({"key_id": record.id, "key_type": record.type, "billing": billing})
    return CheckResponse(
        status=Status(code=0),
        ok_response=OkHttpResponse(headers=headers, headers_to_remove=remove),
        dynamic_metadata=metadata,
    )


def allow_unknown_degraded(strip_credentials: bool) -> CheckResponse:
    """Allow without a record: KEYGUARD_ON_STORE_ERROR=allow while Redis is down."""
    remove = list(CREDENTIAL_HEADERS) if strip_credentials else []
    remove += [ENV_HEADER, OWNER_HEADER]
    return CheckResponse(
        status=Status(code=0),
        ok_response=OkHttpResponse(
            headers=[
                header(DEGRADED_HEADER, "1"),
                header("x-keyguard-key-id", "unknown"),
                header("x-keyguard-key-type", "unknown"),
                header("x-keyguard-billing", "unmetered"),
            ],
            headers_to_remove=remove,
        ),
    )


_ALLOW_UNKNOWN_WIRE: dict[bool, bytes] = {
    strip: allow_unknown_degraded(strip).SerializeToString() for strip in (False, True)
}


_NAMES_MODEL = frozenset({Reason.MODEL_NOT_ALLOWED, Reason.MODEL_NOT_PRICED})


class Renderer:
    """Decisions to wire bytes, with the memo of serialized allows.

    The memo is keyed by the record object (a record changed in the store is a new
    object) and holds it, so an id cannot be reused while its entry lives; it is
    emptied whole when it outgrows ``memo_size``.
    """

    def __init__(self, strip_credentials: bool, memo_size: int = 40_000) -> None:
        self.strip = strip_credentials
        self.memo_size = memo_size
        self._memo: dict[tuple[int, str, bool], tuple[KeyRecord, bytes]] = {}

    def render(self, decision: Decision, facts: RequestFacts) -> bytes:
        reason = decision.reason
        if reason is Reason.OK:
            return self._allow(decision)
        spend = decision.spend
        if reason is Reason.RATE_LIMIT_EXCEEDED and spend is not None:
            return rate_limited(spend, facts.anthropic).SerializeToString()
        if reason in _NAMES_MODEL:
            model = decision.model or facts.model()
            if model and not model.startswith("\x00"):
                return _naming_model(reason, facts.anthropic, model)
        return _DENIAL_WIRE[(reason, facts.anthropic)]

    def _allow(self, decision: Decision) -> bytes:
        record = decision.record
        if record is None:
            return _ALLOW_UNKNOWN_WIRE[self.strip]
        billing = decision.billing or Billing.UNMETERED
        degraded = decision.degraded
        slot = (id(record), billing, degraded)
        memo = self._memo.get(slot)
        if memo is not None and memo[0] is record:
            wire = memo[1]
        else:
            message = allow(
                record, billing=billing, strip_credentials=self.strip, degraded=degraded
            )
            wire = message.SerializeToString()
            if len(self._memo) >= self.memo_size:
                self._memo.clear()
            self._memo[slot] = (record, wire)
        spend = decision.spend
        if spend is not None and (spend.rl_limit or spend.tl_limit):
            wire += rate_limit_suffix(spend)
        if decision.ticket is not None:
            wire += ticket_suffix(decision.ticket)
        return wire
