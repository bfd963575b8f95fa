"""Token metering end to end: real Envoy with the repo's envoy.yaml (usage filters and the
gRPC access log), real keyguard with KEYGUARD_METERING=tokens, real Redis, the official
SDKs. A key's `used` must grow by exactly what the usage the upstream returned costs at
the prices set, and `held` must come back to 0.

The expected costs are computed here from the documented formula, independently of
keyguard's code: ceil(sum of tokens x price per 1M / 1,000,000) + per-request credits.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import re
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import grpc
import httpx
import openai
import pytest

from harness.cli import run_cli
from keyguard._proto.envoy.service.auth.v3.external_auth_pb2_grpc import AuthorizationStub
from tests.e2e.conftest import HttpStack, Key, running_http_stack
from tests.support.checks import check_request, http_status

pytestmark = pytest.mark.e2e

# Credits per 1M tokens (1 credit = 1 micro-dollar).
PRICES: dict[str, dict[str, int]] = {
    "gpt-4o-mini*": {"input": 150_000, "output": 600_000, "cached_input": 75_000},
    "claude-3-5-haiku*": {
        "input": 800_000,
        "output": 4_000_000,
        "cached_input": 80_000,
        "cache_write": 1_000_000,
    },
    "text-embedding-3-small": {"input": 20_000, "output": 0},
}
HOLD_TTL = 6


def price(model: str) -> dict[str, int]:
    for pattern in sorted(PRICES, key=len, reverse=True):
        if model == pattern or (pattern.endswith("*") and model.startswith(pattern[:-1])):
            p = PRICES[pattern]
            return {
                "input": p["input"],
                "output": p["output"],
                "cached_input": p.get("cached_input", p["input"]),
                "cache_write": p.get("cache_write", p["input"]),
            }
    raise AssertionError(f"no price for {model}")


def cost(model: str, uncached: int, cached: int, write: int, output: int) -> int:
    p = price(model)
    units = (
        uncached * p["input"]
        + cached * p["cached_input"]
        + write * p["cache_write"]
        + output * p["output"]
    )
    return math.ceil(units / 1_000_000)


def openai_cost(model: str, usage: Any) -> int:
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    return cost(model, usage.prompt_tokens - cached, cached, 0, usage.completion_tokens)


def anthropic_cost(model: str, usage: Any) -> int:
    return cost(
        model,
        usage.input_tokens,
        usage.cache_read_input_tokens or 0,
        usage.cache_creation_input_tokens or 0,
        usage.output_tokens,
    )


def estimate(model: str, body: bytes, max_tokens: int) -> int:
    """The documented hold: input = body bytes / 4 (rounded up), output = max_tokens."""
    return cost(model, math.ceil(len(body) / 4), 0, 0, max_tokens)


@pytest.fixture(scope="module")
def stack() -> Iterator[HttpStack]:
    env = {"KEYGUARD_METERING": "tokens", "KEYGUARD_HOLD_TTL": str(HOLD_TTL)}
    with running_http_stack(keyguard_env=env) as running:
        for model, fields in PRICES.items():
            options = [f"--{name.replace('_', '-')}={value}" for name, value in fields.items()]
            result = run_cli("prices", "set", model, *options, redis_url=running.redis.url)
            assert result.returncode == 0, result.stderr
        time.sleep(0.3)  # the price change reaches keyguard by pub/sub
        yield running


def settled(stack: HttpStack, key: Key, used: int, timeout: float = 10.0) -> dict[str, Any]:
    """The key once its settlements are in: `used` reached, nothing held."""
    deadline = time.monotonic() + timeout
    while True:
        info = stack.show(key.id)
        if (info["used"] >= used and info["held"] == 0) or time.monotonic() > deadline:
            return info
        time.sleep(0.1)


def openai_client(stack: HttpStack, key: Key) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{stack.base_url}/v1", api_key=key.key, max_retries=0, timeout=20.0
    )


def anthropic_client(stack: HttpStack, key: Key) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.base_url, api_key=key.key, max_retries=0)


# ----- exact costs through the SDKs ----------------------------------------------------------


def test_openai_chat_json_and_stream_charge_exactly_the_usage(stack: HttpStack) -> None:
    key = stack.key("--quota", "1000000")
    expected = 0
    with openai_client(stack, key) as client:
        reply = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Hello there, how are you today?"}],
            max_tokens=50,
            extra_headers={"x-demo-output-tokens": "37", "x-demo-cached-tokens": "12"},
        )
        assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
        assert reply.usage.prompt_tokens_details.cached_tokens == 12
        expected += openai_cost("gpt-4o-mini", reply.usage)
        stream = client.chat.completions.create(
            model="gpt-4o-mini-2024-07-18",
            messages=[{"role": "user", "content": "Stream, please"}],
            max_tokens=64,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-demo-output-tokens": "55"},
        )
        usage = None
        for chunk in stream:
            usage = chunk.usage or usage
        assert usage is not None and usage.completion_tokens == 55
        expected += openai_cost("gpt-4o-mini-2024-07-18", usage)
    info = settled(stack, key, expected)
    assert (info["used"], info["held"]) == (expected, 0)
    assert info["remaining"] == 1_000_000 - expected
    assert info["tokens_out"] == 37 + 55


def test_anthropic_json_and_stream_charge_exactly_the_usage(stack: HttpStack) -> None:
    key = stack.key("--quota", "1000000")
    expected = 0
    with anthropic_client(stack, key) as client:
        message = client.messages.create(
            model="claude-3-5-haiku-20241022",
            max_tokens=100,
            messages=[{"role": "user", "content": "Hello, Claude"}],
            extra_headers={
                "x-demo-output-tokens": "40",
                "x-demo-cached-tokens": "300",
                "x-demo-cache-write-tokens": "50",
            },
        )
        expected += anthropic_cost("claude-3-5-haiku-20241022", message.usage)
        with client.messages.stream(
            model="claude-3-5-haiku",
            max_tokens=100,
            messages=[{"role": "user", "content": "Stream to me"}],
            extra_headers={"x-demo-output-tokens": "77", "x-demo-cached-tokens": "9"},
        ) as stream:
            for _ in stream.text_stream:
                pass
            final = stream.get_final_message()
        # message_delta's output is cumulative: 77, not 1 + 77.
        assert final.usage.output_tokens == 77
        expected += anthropic_cost("claude-3-5-haiku", final.usage)
    info = settled(stack, key, expected)
    assert (info["used"], info["held"]) == (expected, 0)
    assert info["cached_tokens"] == 300 + 50 + 9


def test_responses_api_and_embeddings(stack: HttpStack) -> None:
    key = stack.key("--quota", "1000000")
    expected = 0
    with openai_client(stack, key) as client:
        response = client.responses.create(
            model="gpt-4o-mini",
            input="Say hello",
            extra_headers={"x-demo-output-tokens": "21", "x-demo-cached-tokens": "3"},
        )
        assert response.usage is not None
        u = response.usage
        cached = u.input_tokens_details.cached_tokens
        expected += cost("gpt-4o-mini", u.input_tokens - cached, cached, 0, u.output_tokens)
        stream = client.responses.create(model="gpt-4o-mini", input="Stream it", stream=True)
        for event in stream:
            if event.type == "response.completed":
                u = event.response.usage
                assert u is not None
                expected += cost("gpt-4o-mini", u.input_tokens, 0, 0, u.output_tokens)
        emb = client.embeddings.create(model="text-embedding-3-small", input=["a b c", "d e"])
        expected += cost("text-embedding-3-small", emb.usage.prompt_tokens, 0, 0, 0)
    info = settled(stack, key, expected)
    assert (info["used"], info["held"]) == (expected, 0)


# ----- the cases without usage ----------------------------------------------------------------


def test_a_stream_without_usage_is_charged_its_estimate(stack: HttpStack) -> None:
    key = stack.key("--quota", "1000000")
    body = json.dumps(
        {
            "model": "gpt-4o-mini",
            "max_tokens": 200,
            "stream": True,
            "messages": [{"role": "user", "content": "no usage for me"}],
        }
    ).encode()
    headers = {"authorization": f"Bearer {key.key}", "content-type": "application/json"}
    with stack.http.stream("POST", "/v1/chat/completions", content=body, headers=headers) as r:
        assert r.status_code == 200
        text = "".join(r.iter_text())
    assert "[DONE]" in text and '"usage"' not in text
    charged = estimate("gpt-4o-mini", body, 200)
    info = settled(stack, key, charged)
    assert (info["used"], info["held"]) == (charged, 0)


def test_upstream_errors_charge_nothing_and_release_the_hold(stack: HttpStack) -> None:
    key = stack.key("--quota", "1000000")
    for status in ("500", "429", "400"):
        resp = stack.post(
            "/v1/chat/completions",
            {"model": "gpt-4o-mini", "max_tokens": 10, "messages": []},
            bearer=key.key,
            headers={"x-demo-status": status},
        )
        assert resp.status_code == int(status)
    time.sleep(1.0)
    info = settled(stack, key, 0)
    assert (info["used"], info["held"], info["remaining"]) == (0, 0, 1_000_000)


def test_an_unpriced_model_is_denied_before_anything_is_held(stack: HttpStack) -> None:
    key = stack.key("--quota", "1000000")
    with stack.unreached():
        resp = stack.post(
            "/v1/chat/completions", {"model": "o1-pro", "messages": []}, bearer=key.key
        )
    assert resp.status_code == 403
    assert resp.headers["x-keyguard-reason"] == "model_not_priced"
    assert "o1-pro" in resp.json()["error"]["message"]
    assert key.key not in resp.text
    assert stack.show(key.id)["held"] == 0


def test_a_client_disconnect_mid_stream_is_charged_the_estimate(stack: HttpStack) -> None:
    key = stack.key("--quota", "1000000")
    charged = hang_up_mid_stream(stack, key, 300, "slowly")
    info = settled(stack, key, charged, timeout=15)
    assert (info["used"], info["held"]) == (charged, 0)


def hang_up_mid_stream(stack: HttpStack, key: Key, max_tokens: int, text: str) -> int:
    """A streamed chat completion with usage asked for, whose client hangs up after the
    first event (before the usage chunk); returns the estimate it must be charged."""
    body = json.dumps(
        {
            "model": "gpt-4o-mini",
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": text}],
        }
    ).encode()
    headers = {
        "authorization": f"Bearer {key.key}",
        "content-type": "application/json",
        "x-demo-pause-ms": "300",
    }
    with (
        httpx.Client(base_url=stack.base_url, trust_env=False) as client,
        client.stream("POST", "/v1/chat/completions", content=body, headers=headers) as r,
    ):
        assert r.status_code == 200
        next(r.iter_raw())  # the first event, then hang up
    return estimate("gpt-4o-mini", body, max_tokens)


# ----- exactness under concurrency ------------------------------------------------------------


def _one_request(stack: HttpStack, key: Key, i: int) -> int:
    """One request of a mix; returns what it must cost."""
    kind = i % 5
    output = str(5 + i % 17)
    if kind == 0:
        with openai_client(stack, key) as client:
            reply = client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"request {i} " * (i % 7 + 1)}],
                max_tokens=64,
                extra_headers={"x-demo-output-tokens": output},
            )
            assert reply.usage is not None
            return openai_cost("gpt-4o-mini", reply.usage)
    if kind == 1:
        with openai_client(stack, key) as client:
            usage = None
            for chunk in client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"stream {i}"}],
                max_tokens=64,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers={"x-demo-output-tokens": output},
            ):
                usage = chunk.usage or usage
            return openai_cost("gpt-4o-mini", usage)
    if kind == 2:
        with (
            anthropic_client(stack, key) as client,
            client.messages.stream(
                model="claude-3-5-haiku",
                max_tokens=64,
                messages=[{"role": "user", "content": f"anthropic {i}"}],
                extra_headers={"x-demo-output-tokens": output},
            ) as stream,
        ):
            for _ in stream.text_stream:
                pass
            return anthropic_cost("claude-3-5-haiku", stream.get_final_message().usage)
    if kind == 3:  # an upstream error: free
        resp = stack.post(
            "/v1/chat/completions",
            {"model": "gpt-4o-mini", "max_tokens": 9, "messages": []},
            bearer=key.key,
            headers={"x-demo-status": "502"},
        )
        assert resp.status_code == 502
        return 0
    # A client that hangs up before the usage chunk: the estimate.
    return hang_up_mid_stream(stack, key, 40, f"hang up {i}")


def test_concurrent_mixed_requests_charge_exactly_the_sum(stack: HttpStack) -> None:
    key = stack.key("--quota", "100000000")
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        costs = list(pool.map(lambda i: _one_request(stack, key, i), range(60)))
    expected = sum(costs)
    info = settled(stack, key, expected, timeout=20)
    assert (info["used"], info["held"]) == (expected, 0)
    assert info["remaining"] == 100_000_000 - expected


def test_a_low_balance_raced_by_many_clients_never_goes_below_zero(stack: HttpStack) -> None:
    # Every response's usage fits its hold (output 20 <= max_tokens 30), so the balance
    # must never go negative however the requests interleave.
    key = stack.key("--quota", "2000")

    def one(i: int) -> int:
        resp = stack.post(
            "/v1/chat/completions",
            {"model": "claude-3-5-haiku", "max_tokens": 30, "messages": []},
            bearer=key.key,
            headers={"x-demo-output-tokens": "20"},
        )
        return resp.status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(one, range(48)))
    assert set(statuses) <= {200, 402}
    assert statuses.count(200) >= 1 and statuses.count(402) >= 1
    time.sleep(1.0)
    info = settled(stack, key, 0)
    assert info["held"] == 0
    assert info["remaining"] >= 0
    assert info["used"] + info["remaining"] == 2000


def test_a_restarted_keyguard_settles_what_envoy_logged_once(stack: HttpStack) -> None:
    """keyguard is killed while a stream is in flight; Envoy keeps the access-log entry
    and delivers it to the restarted keyguard: charged once, hold released."""
    key = stack.key("--quota", "1000000")
    result: dict[str, Any] = {}

    def slow_stream() -> None:
        with openai_client(stack, key) as client:
            usage = None
            for chunk in client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "survive a restart"}],
                max_tokens=64,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers={"x-demo-output-tokens": "33", "x-demo-pause-ms": "500"},
            ):
                usage = chunk.usage or usage
            result["cost"] = openai_cost("gpt-4o-mini", usage)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(slow_stream)
        time.sleep(0.7)
        stack.kill_keyguard()
        stack.restart_keyguard()
        stack.keyguard.wait_serving()
        future.result(timeout=30)
    info = settled(stack, key, result["cost"], timeout=20)
    assert (info["used"], info["held"]) == (result["cost"], 0)
    time.sleep(1.0)
    assert stack.show(key.id)["used"] == result["cost"]  # not twice


def test_a_hold_whose_settlement_never_comes_expires(stack: HttpStack) -> None:
    """A Check answered but never followed by a request (as when Envoy gives up on the
    Check): the hold is released after KEYGUARD_HOLD_TTL, charging nothing."""
    key = stack.key("--quota", "1000000")
    body = json.dumps({"model": "gpt-4o-mini", "max_tokens": 100, "messages": []}).encode()
    with grpc.insecure_channel(stack.keyguard.target) as channel:
        reply = AuthorizationStub(channel).Check(
            check_request({"authorization": f"Bearer {key.key}"}, body=body), timeout=5
        )
    assert http_status(reply) == 200
    held = stack.show(key.id)["held"]
    assert held == estimate("gpt-4o-mini", body, 100)
    time.sleep(HOLD_TTL + 0.5)
    info = stack.show(key.id)
    assert (info["held"], info["used"], info["remaining"]) == (0, 0, 1_000_000)
    # The key's next request releases it in the record too, and counts it.
    resp = stack.post("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": []},
                      bearer=key.key)  # fmt: skip
    assert resp.status_code == 200
    found = re.search(r"^keyguard_holds_expired_total (\S+)$", stack.metrics_text(), re.M)
    assert found is not None and float(found.group(1)) >= 1


# ----- per-route settings, as envoy/envoy.yaml configures them ---------------------------------


def test_per_route_settings_in_envoy_yaml(stack: HttpStack) -> None:
    key = stack.key("--quota", "1000000")
    # /v1/models: keyguard.meter=off. Nothing held, nothing charged.
    listed = stack.http.get("/v1/models", headers={"authorization": f"Bearer {key.key}"})
    assert listed.status_code == 200
    # /v1/images/: keyguard.cost=40000, spent at Check whatever the model.
    image = stack.post(
        "/v1/images/generations", {"model": "dall-e-3", "prompt": "a cat"}, bearer=key.key
    )
    assert image.status_code == 200, image.text
    info = stack.show(key.id)
    assert (info["remaining"], info["used"], info["held"]) == (1_000_000 - 40_000, 40_000, 0)
    # /v1/batches: keyguard.key_types=subscription.
    with stack.unreached():
        batch = stack.post("/v1/batches", {"input_file_id": "f"}, bearer=key.key)
    assert batch.status_code == 403
    assert batch.headers["x-keyguard-reason"] == "key_type_not_allowed"
    # /anthropic/: keyguard.dialect=anthropic, even where the path does not end in /messages.
    with stack.unreached():
        denied = stack.post("/anthropic/v1/messages/count_tokens", {}, api_key="sk-" + "0" * 40)
    assert denied.status_code == 401
    assert denied.json()["type"] == "error"
    assert denied.json()["error"]["type"] == "authentication_error"
