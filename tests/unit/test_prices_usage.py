"""keyguard.prices and keyguard.meter.usage: prices, the cost of usage, and reading usage
from JSON bodies and SSE streams (split anywhere)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyguard.errors import InvalidChange
from keyguard.meter.usage import MAX_TOKENS, StreamUsage, usage_from_json
from keyguard.prices import Price, PriceTable, Usage, check_pattern, cost, price_from_fields

GPT4O = Price(input=2_500_000, output=10_000_000, cached_input=1_250_000, cache_write=2_500_000)


# ----- cost -----------------------------------------------------------------------------------


def test_cost_is_whole_credits_rounded_up_once() -> None:
    usage = Usage(input=1000, cached_input=200, output=500)
    # 1000*2.5 + 200*1.25 + 500*10 = 2500 + 250 + 5000 = 7750 credits exactly
    assert cost(usage, GPT4O) == 7750
    # One token of a cheap model: a fraction of a credit rounds up to 1, once per request.
    cheap = Price(input=150_000, output=600_000, cached_input=75_000, cache_write=150_000)
    assert cost(Usage(input=1), cheap) == 1
    assert cost(Usage(input=3, output=3), cheap) == 3  # 2.25 → 3, not 1 + 2
    assert cost(Usage(), cheap) == 0


def test_per_request_credits_are_added() -> None:
    price = Price(input=0, output=0, cached_input=0, cache_write=0, per_request=40_000)
    assert cost(Usage(input=10), price) == 40_000
    anthropic = Price(
        input=3_000_000, output=15_000_000, cached_input=300_000, cache_write=3_750_000
    )
    usage = Usage(input=100, cached_input=1000, cache_write=2000, output=50)
    assert cost(usage, anthropic) == 300 + 300 + 7500 + 750


@given(
    st.integers(0, MAX_TOKENS), st.integers(0, MAX_TOKENS), st.integers(0, MAX_TOKENS),
    st.integers(0, MAX_TOKENS), st.integers(0, 10**9), st.integers(0, 10**9),
)  # fmt: skip
def test_cost_is_never_negative_and_exact(
    a: int, b: int, c: int, d: int, p_in: int, p_out: int
) -> None:
    price = Price(input=p_in, output=p_out, cached_input=p_in // 2, cache_write=p_in)
    usage = Usage(input=a, cached_input=b, cache_write=c, output=d)
    result = cost(usage, price)
    exact = a * p_in + b * (p_in // 2) + c * p_in + d * p_out
    assert isinstance(result, int)
    assert result * 1_000_000 >= exact > (result - 1) * 1_000_000 or (exact == 0 == result)


# ----- prices ---------------------------------------------------------------------------------


def test_cached_and_cache_write_default_to_input() -> None:
    price = price_from_fields({"input": 5, "output": 7})
    assert (price.cached_input, price.cache_write, price.per_request) == (5, 5, 0)
    assert price.max_output is None
    assert price_from_fields({"input": "5", "output": "7", "max_output": 4096}).max_output == 4096


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"input": -1, "output": 1}, "negative"),
        ({"input": 1.5, "output": 1}, "not a whole number"),
        ({"input": 1.0, "output": 1}, "not a whole number"),  # a float is never money
        ({"input": True, "output": 1}, "not a whole number"),
        ({"input": "1e6", "output": 1}, "not a whole number"),
        ({"input": 1}, "missing 'output'"),
        ({"input": 1, "output": 1, "colour": 2}, "unknown field 'colour'"),
        ({"input": 1, "output": 10**16}, "larger than"),
        ({"input": 1, "output": 1, "max_output": 0}, "greater than 0"),
    ],
)
def test_bad_prices_are_refused_with_one_line(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidChange, match=message) as info:
        price_from_fields(fields)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("pattern", ["gpt-4o", "gpt-4o*", "*", "claude-3-5-haiku-20241022", "a/b"])
def test_good_patterns(pattern: str) -> None:
    assert check_pattern(pattern) == pattern


@pytest.mark.parametrize("pattern", ["", "**", "gpt*4o", "*gpt", " gpt", "gpt 4o", "x" * 300])
def test_bad_patterns(pattern: str) -> None:
    with pytest.raises(InvalidChange):
        check_pattern(pattern)


def test_exact_then_longest_prefix_then_default() -> None:
    p = {name: Price(i, i, i, i) for i, name in enumerate(["gpt-4o", "gpt-4o*", "gpt-4o-mini*"])}
    table = PriceTable(p)
    assert table.match("gpt-4o") == ("gpt-4o", p["gpt-4o"])
    assert table.match("gpt-4o-2024-08-06") == ("gpt-4o*", p["gpt-4o*"])
    assert table.match("gpt-4o-mini-2024-07-18") == ("gpt-4o-mini*", p["gpt-4o-mini*"])
    assert table.match("o1") is None  # no default: an unpriced model has no price
    default = Price(9, 9, 9, 9)
    assert PriceTable({**p, "*": default}).match("o1") == ("*", default)


# ----- usage from JSON ------------------------------------------------------------------------


def test_openai_chat_usage_takes_cached_tokens_out_of_input() -> None:
    body = {
        "object": "chat.completion",
        "usage": {
            "prompt_tokens": 100,
            "completion_tokens": 20,
            "prompt_tokens_details": {"cached_tokens": 30},
            "completion_tokens_details": {"reasoning_tokens": 5},
        },
    }
    assert usage_from_json(json.dumps(body)) == Usage(input=70, cached_input=30, output=20)


def test_embeddings_usage_has_no_output() -> None:
    body = {"object": "list", "usage": {"prompt_tokens": 8, "total_tokens": 8}}
    assert usage_from_json(json.dumps(body)) == Usage(input=8)


def test_responses_api_usage() -> None:
    body = {
        "object": "response",
        "usage": {
            "input_tokens": 50,
            "input_tokens_details": {"cached_tokens": 10},
            "output_tokens": 7,
        },
    }
    assert usage_from_json(json.dumps(body)) == Usage(input=40, cached_input=10, output=7)


def test_anthropic_usage_input_excludes_cache() -> None:
    body = {
        "type": "message",
        "usage": {
            "input_tokens": 12,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 40,
            "output_tokens": 9,
        },
    }
    assert usage_from_json(json.dumps(body)) == Usage(12, 100, 40, 9)
    plain = {"type": "message", "usage": {"input_tokens": 12, "output_tokens": 9}}
    assert usage_from_json(json.dumps(plain)) == Usage(input=12, output=9)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1,2]",
        b'{"usage":null}',
        b'{"usage":{"prompt_tokens":-1,"completion_tokens":1}}',
        b'{"usage":{"prompt_tokens":1.5,"completion_tokens":1}}',
        b'{"usage":{"prompt_tokens":"10","completion_tokens":1}}',
        b'{"usage":{"prompt_tokens":true,"completion_tokens":1}}',
        b'{"usage":{"prompt_tokens":1e300,"completion_tokens":1}}',
        b'{"usage":{"prompt_tokens":5,"prompt_tokens_details":{"cached_tokens":6}}}',
        b'{"usage":{"input_tokens":5}}',
        b'{"type":"message","usage":{"output_tokens":5}}',
        b"[" * 100_000,
    ],
)
def test_unreadable_usage_is_none(body: bytes) -> None:
    assert usage_from_json(body) is None


@given(st.binary(max_size=300))
def test_usage_from_any_bytes_never_raises(body: bytes) -> None:
    result = usage_from_json(body)
    assert result is None or min(result.input, result.output, result.cached_input) >= 0


# ----- usage from SSE -------------------------------------------------------------------------


def sse(*events: Any, done: bool = False) -> bytes:
    out = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return out + (b"data: [DONE]\n\n" if done else b"")


CHAT_STREAM = sse(
    {"object": "chat.completion.chunk", "choices": [{"delta": {"content": "Hi"}}]},
    {"object": "chat.completion.chunk", "choices": [{"delta": {}, "finish_reason": "stop"}]},
    {
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {
            "prompt_tokens": 11,
            "completion_tokens": 3,
            "prompt_tokens_details": {"cached_tokens": 1},
        },
    },
    done=True,
)
ANTHROPIC_STREAM = (
    b"event: message_start\n"
    + sse(
        {
            "type": "message_start",
            "message": {
                "usage": {
                    "input_tokens": 25,
                    "cache_read_input_tokens": 5,
                    "cache_creation_input_tokens": 0,
                    "output_tokens": 1,
                }
            },
        }
    )
    + b"event: content_block_delta\n"
    + sse({"type": "content_block_delta", "delta": {"text": "Hello"}})
    + b"event: message_delta\n"
    + sse({"type": "message_delta", "usage": {"output_tokens": 15}})
    + b"event: message_delta\n"
    + sse({"type": "message_delta", "usage": {"output_tokens": 40, "input_tokens": 25}})
    + b"event: message_stop\n"
    + sse({"type": "message_stop"})
)
RESPONSES_STREAM = sse(
    {"type": "response.output_text.delta", "delta": "Hi"},
    {
        "type": "response.completed",
        "response": {
            "usage": {
                "input_tokens": 9,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 4,
            }
        },
    },
)


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (CHAT_STREAM, Usage(input=10, cached_input=1, output=3)),
        # message_delta's output is cumulative: replaced (40), never added (15 + 40).
        (ANTHROPIC_STREAM, Usage(input=25, cached_input=5, output=40)),
        (RESPONSES_STREAM, Usage(input=9, output=4)),
        (CHAT_STREAM.replace(b"\n", b"\r\n"), Usage(input=10, cached_input=1, output=3)),
    ],
)
def test_stream_usage(stream: bytes, expected: Usage) -> None:
    reader = StreamUsage()
    reader.feed(stream)
    assert reader.finish() == expected


def test_a_chat_stream_without_include_usage_has_none() -> None:
    reader = StreamUsage()
    reader.feed(CHAT_STREAM.split(b'{"object": "chat.completion.chunk", "choices": []')[0])
    assert reader.finish() is None


def test_vllm_null_choices_with_usage() -> None:
    stream = sse({"choices": None, "usage": {"prompt_tokens": 4, "completion_tokens": 2}})
    reader = StreamUsage()
    reader.feed(stream)
    assert reader.finish() == Usage(input=4, output=2)


def test_a_cut_anthropic_stream_keeps_what_it_reported() -> None:
    cut = ANTHROPIC_STREAM.index(
        b'event: message_delta\ndata: {"type": "message_delta", "usage": {"output_tokens": 40'
    )
    reader = StreamUsage()
    reader.feed(ANTHROPIC_STREAM[:cut])
    assert reader.finish() == Usage(input=25, cached_input=5, output=15)


def test_a_negative_count_in_a_stream_makes_it_unreadable() -> None:
    stream = sse({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": -2}})
    reader = StreamUsage()
    reader.feed(stream)
    assert reader.finish() is None


@given(st.lists(st.integers(0, len(ANTHROPIC_STREAM)), max_size=12), st.sampled_from([0, 1, 2]))
def test_any_split_reads_the_same(cuts: list[int], which: int) -> None:
    stream = (CHAT_STREAM, ANTHROPIC_STREAM, RESPONSES_STREAM)[which]
    whole = StreamUsage()
    whole.feed(stream)
    reader = StreamUsage()
    points = sorted({min(c, len(stream)) for c in cuts})
    for start, end in zip([0, *points], [*points, len(stream)], strict=True):
        reader.feed(stream[start:end])
    assert reader.finish() == whole.finish()


@given(st.lists(st.binary(max_size=80), max_size=8))
def test_stream_of_garbage_never_raises(chunks: list[bytes]) -> None:
    reader = StreamUsage()
    for chunk in chunks:
        reader.feed(chunk)
    result = reader.finish()
    assert result is None or result.output >= 0
