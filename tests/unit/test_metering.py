"""Token metering over the in-memory store: the hold at Check, the ticket handed to
Envoy, and settlement from access-log entries. No gRPC server, no Redis."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any, TypeVar

import pytest
from google.protobuf import struct_pb2
from hypothesis import example, given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from keyguard._proto.envoy.data.accesslog.v3.accesslog_pb2 import HTTPAccessLogEntry
from keyguard._proto.envoy.service.accesslog.v3.als_pb2 import StreamAccessLogsMessage
from keyguard._proto.envoy.service.auth.v3.external_auth_pb2 import CheckResponse
from keyguard.authz.cache import KeyCache
from keyguard.authz.service import AuthorizationService
from keyguard.keys import generate_key, generate_key_id, hash_key
from keyguard.meter.estimate import RequestOptions, estimate_usage, hold_for, request_options
from keyguard.meter.pricebook import PriceBook, parse_table
from keyguard.meter.service import SettlementService, Settler, assess_entry
from keyguard.meter.settle import TOKEN_FIELDS, Outcome, assess
from keyguard.meter.ticket import parse_ticket
from keyguard.meter.usage import usage_from_fields
from keyguard.prices import Price, cost
from keyguard.reasons import Reason
from keyguard.record import TYPE_STANDARD, new_record_fields
from keyguard.runtime.alerts import Alerts
from keyguard.runtime.metrics import Metrics
from keyguard.settings import Settings
from keyguard.store.memory import MemoryKeyStore
from tests.support.checks import check_request, http_status

T = TypeVar("T")
# 1 credit per input token, 2 per output token: easy sums.
PRICE = Price(input=1_000_000, output=2_000_000, cached_input=500_000, cache_write=1_000_000)
EXT_AUTHZ = "envoy.filters.http.ext_authz"


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(coro_fn())


class Meter:
    def __init__(self, **overrides: Any) -> None:
        self.settings = replace(Settings(), metering="tokens", **overrides)
        self.store = MemoryKeyStore()
        self.store.prices = {"gpt-4o*": PRICE.to_json(), "claude*": PRICE.to_json()}
        s = self.settings
        self.cache = KeyCache(s.cache_size, s.cache_ttl, s.negative_cache_size, 1.0)
        self.metrics = Metrics(CollectorRegistry())
        self.prices = PriceBook(parse_table(self.store.prices))
        self.service = AuthorizationService(s, self.store, self.cache, self.metrics, self.prices)
        self.settler = Settler(self.store, self.metrics)
        self.settlement = SettlementService(self.settler, self.prices)

    def key(self, **fields: str) -> str:
        key = generate_key(TYPE_STANDARD)
        record = new_record_fields(generate_key_id(), TYPE_STANDARD, int(time.time()))
        self.store.put(hash_key(key), {**record, "unlimited": "0", "remaining": "10000", **fields})
        return key

    def field(self, key: str, name: str) -> int:
        return int(self.store.records[hash_key(key)].get(name) or 0)

    async def check(
        self, key: str, body: dict[str, Any] | None = None, path: str = "/v1/chat/completions"
    ) -> CheckResponse:
        payload = json.dumps(body if body is not None else {"model": "gpt-4o", "max_tokens": 100})
        request = check_request(
            {"authorization": f"Bearer {key}"}, path=path, body=payload.encode()
        )
        _decision, wire = await self.service.answer(request)
        return CheckResponse.FromString(wire)


def ticket_of(response: CheckResponse) -> dict[str, Any]:
    """The allow's metadata, its ticket (the text of ``hold``) read into fields."""
    fields = {k: v.string_value for k, v in response.dynamic_metadata.fields.items()}
    ticket = parse_ticket(fields["hold"])
    assert ticket is not None, fields["hold"]
    return {**fields, **ticket}


def log_entry(
    metadata: struct_pb2.Struct | dict[str, Any],
    usage: dict[str, float] | None,
    code: int = 200,
) -> HTTPAccessLogEntry:
    """An access-log entry as Envoy writes it: the allow's ext_authz metadata (or, as a
    dict, entries of the older one-field-each ticket) and the usage it extracted."""
    entry = HTTPAccessLogEntry()
    meta = entry.common_properties.metadata.filter_metadata
    meta[EXT_AUTHZ].CopyFrom(
        metadata if isinstance(metadata, struct_pb2.Struct) else _struct(metadata)
    )
    if usage is not None:
        meta["keyguard.usage"].CopyFrom(_struct(usage))
    if code:
        entry.response.response_code.value = code
    return entry


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


# ----- the hold at Check ----------------------------------------------------------------------


def test_a_priced_request_holds_its_estimate_and_hands_a_ticket_to_envoy() -> None:
    async def go() -> None:
        m = Meter()
        key = m.key()
        body = {"model": "gpt-4o-2024-08-06", "max_tokens": 100, "messages": []}
        response = await m.check(key, body)
        assert http_status(response) == 200
        ticket = ticket_of(response)
        size = len(json.dumps(body))
        expected = -(-size // 4) * 1 + 100 * 2  # input at 1, output at 2 credits a token
        assert ticket["held"] == ticket["estimate"] == str(expected)
        assert ticket["kh"] == hash_key(key)
        assert ticket["model"] == "gpt-4o-2024-08-06"
        assert ticket["key_id"] and ticket["billing"] == "quota"  # the memoized part stays
        assert m.field(key, "held") == expected
        assert m.field(key, "remaining") == 10000  # nothing charged yet

    run(go)


def test_no_hold_is_placed_for_a_check_whose_deadline_has_passed() -> None:
    async def go() -> None:
        m = Meter()
        key = m.key()
        body = json.dumps({"model": "gpt-4o", "max_tokens": 100}).encode()
        request = check_request({"authorization": f"Bearer {key}"}, body=body)
        decision, wire = await m.service.answer(request, lambda: 0.0)
        assert decision.reason is Reason.CHECK_TOO_LATE and decision.ticket is None
        assert "hold" not in CheckResponse.FromString(wire).dynamic_metadata.fields
        assert (m.field(key, "held"), m.field(key, "used")) == (0, 0)
        assert not m.store.holds.get(hash_key(key))
        decision, _ = await m.service.answer(request, lambda: 0.25)
        assert decision.reason is Reason.OK and m.field(key, "held") > 0

    run(go)


def test_hold_ids_are_unique_per_request() -> None:
    async def go() -> None:
        m = Meter()
        key = m.key(remaining="1000000")
        ids = {ticket_of(await m.check(key))["hold"] for _ in range(50)}
        assert len(ids) == 50

    run(go)


def test_a_hold_that_does_not_fit_the_available_balance_is_402() -> None:
    async def go() -> None:
        m = Meter()
        key = m.key(remaining="300")
        assert http_status(await m.check(key)) == 200  # holds about 200 + input
        assert http_status(await m.check(key)) == 402  # 300 - held < the next hold

    run(go)


def test_an_unpriced_model_is_denied_to_a_metered_key_naming_the_model() -> None:
    async def go() -> None:
        m = Meter()
        key = m.key()
        response = await m.check(key, {"model": "o1-pro"})
        assert http_status(response) == 403
        body = json.loads(response.denied_response.body)
        assert body["error"]["code"] == Reason.MODEL_NOT_PRICED.value
        assert "'o1-pro'" in body["error"]["message"]
        assert key not in response.denied_response.body
        assert m.field(key, "held") == 0

    run(go)


def test_an_unlimited_key_gets_a_ticket_without_a_store_call() -> None:
    async def go() -> None:
        m = Meter()
        key = m.key(unlimited="1")
        await m.check(key)  # looked up
        spends = m.store.spends
        ticket = ticket_of(await m.check(key))
        assert m.store.spends == spends
        assert ticket["held"] == "0" and int(ticket["estimate"]) > 0

    run(go)


def test_listing_models_is_not_metered() -> None:
    async def go() -> None:
        m = Meter()
        key = m.key()
        request = check_request({"authorization": f"Bearer {key}"}, path="/v1/models", method="GET")
        _d, wire = await m.service.answer(request)
        response = CheckResponse.FromString(wire)
        assert http_status(response) == 200
        assert "hold" not in response.dynamic_metadata.fields

    run(go)


def test_no_model_means_no_price_model_required() -> None:
    async def go() -> None:
        m = Meter()
        assert http_status(await m.check(m.key(), {"messages": []})) == 400

    run(go)


@pytest.mark.parametrize(
    ("body", "path", "required", "expected"),
    [
        ({"model": "gpt-4o", "stream": True}, "/v1/chat/completions", True, 400),
        ({"model": "gpt-4o", "stream": True}, "/v1/chat/completions", False, 200),
        (
            {"model": "gpt-4o", "stream": True, "stream_options": {"include_usage": True}},
            "/v1/chat/completions",
            True,
            200,
        ),
        ({"model": "gpt-4o", "stream": True}, "/v1/responses", True, 200),
        ({"model": "claude-3", "stream": True, "max_tokens": 5}, "/v1/messages", True, 200),
    ],
)
def test_require_stream_usage(
    body: dict[str, Any], path: str, required: bool, expected: int
) -> None:
    async def go() -> None:
        m = Meter(require_stream_usage=required)
        assert http_status(await m.check(m.key(), body, path)) == expected

    run(go)


def test_request_options_read_limits_and_streaming() -> None:
    opts = request_options(b'{"model":"x","max_completion_tokens":77,"stream":true}')
    assert (opts.max_output, opts.stream, opts.include_usage) == (77, True, False)
    cut = request_options(b'{"max_tokens": 12, "messages": [{"role": "user", "content": "hel')
    assert cut.max_output == 12
    assert request_options(b'{"max_tokens": true}').max_output is None
    assert request_options(b"garbage").max_output is None


# ----- settlement -----------------------------------------------------------------------------


def test_settlement_charges_the_usage_and_releases_the_hold() -> None:
    async def go() -> None:
        m = Meter()
        key = m.key()
        response = await m.check(key)
        usage = {"prompt_tokens": 30.0, "completion_tokens": 10.0, "cached_tokens": 10.0}
        message = StreamAccessLogsMessage()
        message.http_logs.log_entry.append(log_entry(response.dynamic_metadata, usage))
        assert m.settlement.take(message) == 1
        await m.settler.flush()
        # 20 uncached at 1 + 10 cached at 0.5 + 10 output at 2 = 45 credits
        assert (m.field(key, "used"), m.field(key, "remaining"), m.field(key, "held")) == (
            45, 10000 - 45, 0,
        )  # fmt: skip
        assert (m.field(key, "tokens_in"), m.field(key, "cached_tokens")) == (20, 10)
        # Delivered again (a retried batch): nothing more.
        m.settlement.take(message)
        await m.settler.flush()
        assert m.field(key, "used") == 45

    run(go)


def test_a_batch_is_counted_in_the_metrics_by_model_kind_and_outcome() -> None:
    """Settlement adds a batch to the metrics once per label: the sums must still be
    exact per model, kind of token and outcome, and every released hold closes."""

    def sample(name: str, **labels: str) -> float:
        value = m.metrics.registry.get_sample_value(name, labels)
        return value if value is not None else 0.0

    async def go() -> None:
        a, b = m.key(remaining="100000"), m.key(remaining="100000")
        message = StreamAccessLogsMessage()
        for key, model, usage, code in (
            (a, "gpt-4o", {"prompt_tokens": 30.0, "completion_tokens": 10.0,
                           "cached_tokens": 10.0}, 200),
            (a, "gpt-4o-mini", {"prompt_tokens": 5.0, "completion_tokens": 1.0}, 200),
            (b, "gpt-4o", {"prompt_tokens": 7.0, "completion_tokens": 3.0}, 200),
            (b, "claude-3-5-haiku", {"input_tokens": 4.0, "output_tokens": 2.0,
                                     "cache_read_input_tokens": 6.0}, 200),
            (b, "gpt-4o", {"prompt_tokens": 7.0, "completion_tokens": 3.0}, 500),
        ):  # fmt: skip
            path = "/v1/messages" if model.startswith("claude") else "/v1/chat/completions"
            response = await m.check(key, {"model": model, "max_tokens": 50}, path)
            message.http_logs.log_entry.append(log_entry(response.dynamic_metadata, usage, code))
        m.metrics.apply()  # the holds counted at Check
        assert sample("keyguard_holds_open") == 5
        assert m.settlement.take(message) == 5
        await m.settler.flush()
        tokens = "keyguard_tokens_total"
        # Both gpt-4o models are priced by the gpt-4o* pattern: one label.
        assert sample(tokens, model="gpt-4o*", kind="input") == 20 + 5 + 7
        assert sample(tokens, model="gpt-4o*", kind="cached_input") == 10
        assert sample(tokens, model="gpt-4o*", kind="output") == 10 + 1 + 3
        assert sample(tokens, model="claude*", kind="cached_input") == 6
        assert sample(tokens, model="claude*", kind="output") == 2
        # 45 + (5 + 2) + (7 + 6) for gpt-4o*; 4 + 3 + 4 for claude*; the 500 charges nothing.
        assert sample("keyguard_credits_charged_total", model="gpt-4o*") == 65
        assert sample("keyguard_credits_charged_total", model="claude*") == 11
        assert sample("keyguard_settlements_total", outcome="usage") == 4
        assert sample("keyguard_settlements_total", outcome="upstream_error") == 1
        assert sample("keyguard_holds_open") == 0
        # The same batch again: duplicates only, nothing else moves.
        m.settlement.take(message)
        await m.settler.flush()
        assert sample("keyguard_settlements_total", outcome="duplicate") == 5
        assert sample("keyguard_credits_charged_total", model="gpt-4o*") == 65
        assert sample("keyguard_holds_open") == 0

    m = Meter()
    run(go)


@pytest.mark.parametrize(
    ("usage", "code", "charged", "outcome"),
    [
        (None, 200, "estimate", Outcome.ESTIMATE),
        ({"prompt_tokens": -3.0, "completion_tokens": 1.0}, 200, "estimate", Outcome.UNREADABLE),
        ({"prompt_tokens": 1e30, "completion_tokens": 1.0}, 200, "estimate", Outcome.UNREADABLE),
        ({"prompt_tokens": 3.0, "completion_tokens": 1.0}, 500, 0, Outcome.UPSTREAM_ERROR),
        ({"prompt_tokens": 3.0, "completion_tokens": 1.0}, 429, 0, Outcome.UPSTREAM_ERROR),
        (None, 0, 0, Outcome.NOT_SERVED),
        ({"prompt_tokens": 3.0, "completion_tokens": 1.5}, 200, "estimate", Outcome.UNREADABLE),
    ],
)
def test_what_each_case_charges(
    usage: dict[str, float] | None, code: int, charged: int | str, outcome: Outcome
) -> None:
    ticket = {"hold": "a1", "kh": "a" * 64, "held": "70", "estimate": "70", "model": "gpt-4o"}
    result = assess(ticket, usage or {}, code, parse_table({"gpt-4o": PRICE.to_json()}))
    assert result is not None
    assert result.outcome is outcome
    assert result.settlement.charge == (70 if charged == "estimate" else charged)
    assert result.settlement.charge >= 0


def test_a_chat_stream_without_usage_is_charged_the_estimate() -> None:
    # Envoy still writes the chunks' "object" (a string): that is not unreadable usage.
    ticket = {"hold": "c0", "kh": "c" * 64, "held": "70", "estimate": "70", "model": "gpt-4o"}
    fields = {"object": "chat.completion.chunk"}
    result = assess(ticket, fields, 200, parse_table({"gpt-4o": PRICE.to_json()}))
    assert result is not None
    assert (result.outcome, result.settlement.charge) == (Outcome.ESTIMATE, 70)


@pytest.mark.parametrize(
    ("last_event", "outcome", "charge"),
    [
        ("message_stop", Outcome.USAGE, 25 + 2 * 40),
        ("message_delta", Outcome.USAGE, 25 + 2 * 40),
        ("content_block_delta", Outcome.UNFINISHED, 500),  # cut: at least the estimate
    ],
)
def test_a_cut_anthropic_stream_is_charged_at_least_the_estimate(
    last_event: str, outcome: Outcome, charge: int
) -> None:
    ticket = {"hold": "c0", "kh": "d" * 64, "held": "500", "estimate": "500", "model": "claude-3",
              "dialect": "anthropic"}  # fmt: skip
    fields = {"input_tokens": 25.0, "output_tokens": 40.0, "type": last_event}
    result = assess(ticket, fields, 200, parse_table({"claude*": PRICE.to_json()}))
    assert result is not None
    assert (result.outcome, result.settlement.charge) == (outcome, charge)


def test_anthropic_usage_from_metadata() -> None:
    ticket = {"hold": "c0", "kh": "b" * 64, "held": "0", "estimate": "9", "model": "claude-3",
              "dialect": "anthropic"}  # fmt: skip
    usage = {"input_tokens": 10.0, "output_tokens": 5.0, "cache_read_input_tokens": 4.0}
    result = assess(ticket, usage, 200, parse_table({"claude*": PRICE.to_json()}))
    assert result is not None
    assert result.settlement.charge == 10 + 2 + 10
    assert result.model_label == "claude*"


@pytest.mark.parametrize(
    "ticket",
    [
        {},
        {"hold": "h"},
        {"hold": "c0", "kh": "short", "held": "1", "estimate": "1"},
        {"hold": "c0", "kh": "a" * 64, "held": "-1", "estimate": "1"},
        {"hold": "c0", "kh": "a" * 64, "held": "1", "estimate": "1e3"},
        # Not a hold id keyguard mints (hex): a space would also break settle.lua's items.
        {"hold": "c0 1", "kh": "a" * 64, "held": "1", "estimate": "1"},
        {"hold": "C0", "kh": "a" * 64, "held": "1", "estimate": "1"},
        {"hold": "c" * 65, "kh": "a" * 64, "held": "1", "estimate": "1"},
    ],
)
def test_an_unreadable_ticket_settles_nothing(ticket: dict[str, Any]) -> None:
    assert assess(ticket, {}, 200, parse_table({})) is None


_COUNT = st.integers(0, 5000).map(float)
_USAGE_VALUE = st.one_of(
    _COUNT,
    _COUNT,
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-5, 10**9).map(float),
    st.sampled_from(["", "message_delta", "content_block_delta", "chat.completion"]),
    st.just([1.0]),  # a nested value: not a count
)
_USAGE_NAME = st.sampled_from(
    ["prompt_tokens", "completion_tokens", "cached_tokens", "input_tokens", "output_tokens",
     "cache_read_input_tokens", "cache_creation_input_tokens", "type", "object"]
)  # fmt: skip


@example({"prompt_tokens": 30.0, "cached_tokens": 10.0, "completion_tokens": 7.0}, 200, "openai")
@example({"input_tokens": 5.0, "output_tokens": 9.0, "type": "ping"}, 200, "anthropic")
@given(
    usage=st.none() | st.dictionaries(_USAGE_NAME, _USAGE_VALUE, max_size=9),
    code=st.sampled_from([0, 200, 204, 404, 500]),
    dialect=st.sampled_from(["openai", "anthropic"]),
)
def test_an_access_log_entry_is_assessed_as_its_fields_say(
    usage: dict[str, Any] | None, code: int, dialect: str
) -> None:
    """Settlement reads only the usage fields a response's kind needs, straight from the
    entry's Struct: what it charges is what all of the usage's token fields say."""
    table = parse_table({"gpt-4o": PRICE.to_json(), "claude*": PRICE.to_json()})
    anthropic = dialect == "anthropic"
    model = "claude-3" if anthropic else "gpt-4o"
    text = f"c0ffee 70 70 {'e' * 64} {dialect} {model}"
    read = assess_entry(log_entry({"hold": text}, usage, code), table)
    assert read
    # The oracle: every token field Envoy wrote (a nested value is no count: absent).
    tokens = {k: v for k, v in (usage or {}).items() if k in TOKEN_FIELDS and type(v) is not list}
    expected = usage_from_fields(tokens, anthropic)
    if code == 0 or code >= 400:
        assert (read.settlement.charge, read.usage) == (0, None)
        return
    assert read.usage == expected
    if expected is None:
        assert read.outcome is (Outcome.UNREADABLE if tokens else Outcome.ESTIMATE)
        assert read.settlement.charge == 70
        return
    charge = cost(expected, PRICE)
    if read.outcome is Outcome.UNFINISHED:
        # An Anthropic stream whose last event came before its final message_delta.
        cut = ("message_start", "content_block_start", "content_block_delta",
               "content_block_stop", "ping")  # fmt: skip
        assert anthropic and (usage or {}).get("type") in cut
        charge = max(charge, 70)
    assert (read.settlement.charge, read.settlement.tokens_out) == (charge, expected.output)


def test_a_model_name_with_spaces_survives_the_ticket_text() -> None:
    async def go() -> None:
        m = Meter()
        m.prices.table = parse_table({"*": PRICE.to_json()})
        key = m.key()
        response = await m.check(key, {"model": "my model  v2 ", "max_tokens": 5})
        assert http_status(response) == 200
        ticket = ticket_of(response)
        assert (ticket["model"], ticket["kh"], ticket["dialect"]) == (
            "my model  v2 ", hash_key(key), "openai",
        )  # fmt: skip
        message = StreamAccessLogsMessage()
        usage = {"prompt_tokens": 3.0, "completion_tokens": 1.0}
        message.http_logs.log_entry.append(log_entry(response.dynamic_metadata, usage))
        assert m.settlement.take(message) == 1
        await m.settler.flush()
        assert (m.field(key, "used"), m.field(key, "held")) == (3 + 2, 0)

    run(go)


def test_a_ticket_of_the_older_format_still_settles() -> None:
    """A request admitted by an older replica (one metadata entry per ticket field) and
    settled by this one, during a rolling upgrade: charged like any other."""

    async def go() -> None:
        m = Meter()
        key = m.key()
        ticket = ticket_of(await m.check(key))
        older = {name: ticket[name] for name in ("hold", "held", "estimate", "kh", "model")}
        message = StreamAccessLogsMessage()
        usage = {"prompt_tokens": 4.0, "completion_tokens": 1.0}
        message.http_logs.log_entry.append(log_entry(older, usage))
        assert m.settlement.take(message) == 1
        await m.settler.flush()
        assert (m.field(key, "used"), m.field(key, "held")) == (4 + 2, 0)

    run(go)


@pytest.mark.parametrize(
    "text", ["", "h1", "h1 5 5", "h1 5 5 " + "a" * 64 + " openai", "h1 x 5 short openai m"]
)
def test_a_ticket_text_that_cannot_be_read_settles_nothing(text: str) -> None:
    async def go() -> None:
        m = Meter()
        message = StreamAccessLogsMessage()
        message.http_logs.log_entry.append(log_entry({"hold": text}, {"prompt_tokens": 1.0}))
        assert m.settlement.take(message) == 0

    run(go)


def test_an_alert_that_fails_loses_neither_the_metrics_nor_the_other_alerts() -> None:
    """Two keys cross their low-balance threshold in one batch; handling the first
    alert raises. The batch's charges are counted all the same, and the second alert
    is still handled."""

    class Flaky(Alerts):
        def __init__(self, store: MemoryKeyStore, metrics: Metrics) -> None:
            super().__init__(store, metrics, None)
            self.handled: list[str] = []

        async def handle(self, word: str) -> None:
            self.handled.append(word)
            if len(self.handled) == 1:
                raise RuntimeError("a bug in an alert handler")
            await super().handle(word)

    async def go() -> None:
        m = Meter()
        alerts = Flaky(m.store, m.metrics)
        m.settler.alerts = alerts
        message = StreamAccessLogsMessage()
        for _ in range(2):
            key = m.key(remaining="1000", alert_below="900")
            response = await m.check(key, {"model": "gpt-4o", "max_tokens": 10})
            usage = {"prompt_tokens": 100.0, "completion_tokens": 50.0}  # 200 credits
            message.http_logs.log_entry.append(log_entry(response.dynamic_metadata, usage))
        assert m.settlement.take(message) == 2
        await m.settler.flush()
        assert [w.split("|")[0] for w in alerts.handled] == ["alert", "alert"]
        m.metrics.apply()
        registry = m.metrics.registry
        charged = registry.get_sample_value("keyguard_credits_charged_total", {"model": "gpt-4o*"})
        assert charged == 400
        assert registry.get_sample_value("keyguard_low_balance_alerts_total") == 1

    run(go)


def test_a_failed_write_is_kept_and_retried() -> None:
    async def go() -> None:
        m = Meter()
        key = m.key()
        response = await m.check(key)
        message = StreamAccessLogsMessage()
        message.http_logs.log_entry.append(
            log_entry(response.dynamic_metadata, {"prompt_tokens": 4.0, "completion_tokens": 1.0})
        )
        m.settlement.take(message)
        m.store.failing = True
        with pytest.raises(Exception, match="failing"):
            await m.settler.flush()
        assert m.settler.queued == 1
        m.store.failing = False
        await m.settler.flush()
        assert m.field(key, "used") == 4 + 2
        assert m.settler.queued == 0

    run(go)


_AMOUNT = st.integers(min_value=0, max_value=10**12)


@given(
    body_size=st.integers(min_value=-1, max_value=10**9),
    limit=st.one_of(st.none(), st.integers(min_value=1, max_value=10**7)),
    price=st.builds(
        Price,
        input=_AMOUNT,
        output=_AMOUNT,
        cached_input=_AMOUNT,
        cache_write=_AMOUNT,
        per_request=_AMOUNT,
        max_output=st.one_of(st.none(), st.integers(min_value=1, max_value=10**6)),
    ),
    default=st.integers(min_value=1, max_value=10**6),
)
def test_the_hold_is_the_documented_cost_of_the_estimated_usage(
    body_size: int, limit: int | None, price: Price, default: int
) -> None:
    """hold_for is computed inline on the hot path; it must equal cost(estimate_usage)."""
    options = RequestOptions(max_output=limit)
    expected = cost(estimate_usage(body_size, options, price, default), price)
    assert hold_for(body_size, options, price, default) == expected
