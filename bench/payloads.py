"""The Check payloads: CheckRequests captured from a real Envoy, framed for h2load.

The harness sends requests through the deployed Envoy config once, to a capture
servicer, with a placeholder key of the same length as a real one. Substituting the
placeholder in the captured bytes gives exactly what Envoy sends for each key.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

# `keyguard keys create` makes "sk-" + 48 alphanumerics; the placeholder has that length.
KEY_BODY_LEN = 48
PLACEHOLDER_KEY = "sk-" + "P" * KEY_BODY_LEN
CHECK_PATH = "/envoy.service.auth.v3.Authorization/Check"
MODEL = "gpt-4o-mini"
ALLOWED_MODELS = "gpt-4o-mini,gpt-4o"
# MODEL's price for the metered setups, credits per 1M tokens (1 credit = 1 micro-dollar).
PRICE_INPUT = 150_000
PRICE_OUTPUT = 600_000
# The usage every response of the metered Envoy setups reports (an OpenAI chat completion).
USAGE_PROMPT_TOKENS = 21
USAGE_COMPLETION_TOKENS = 9

_WORDS = [
    "the",
    "model",
    "should",
    "answer",
    "briefly",
    "and",
    "cite",
    "the",
    "relevant",
    "section",
    "of",
    "the",
    "policy",
    "when",
    "the",
    "customer",
    "asks",
    "about",
    "refunds",
    "shipping",
    "times",
    "or",
    "warranty",
    "coverage",
    "for",
    "their",
    "order",
    "and",
    "escalate",
    "to",
    "a",
    "human",
    "agent",
    "when",
    "the",
    "request",
    "involves",
    "a",
    "legal",
    "complaint",
    "or",
    "a",
    "safety",
    "issue",
]


def _prose(n_words: int, seed: int) -> str:
    return " ".join(_WORDS[(seed + i * 7) % len(_WORDS)] for i in range(n_words))


def small_chat_body() -> bytes:
    """A short chat-completions request, the common case."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Summarise our refund policy in one line."}],
        "max_tokens": 128,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def chat_body_4k(target: int = 4096) -> bytes:
    """A realistic ~4 KB chat-completions body: system prompt, a few turns, options."""
    messages = [
        {"role": "system", "content": _prose(180, 1)},
        {"role": "user", "content": _prose(60, 2)},
        {"role": "assistant", "content": _prose(90, 3)},
        {"role": "user", "content": _prose(40, 4)},
    ]
    body = {
        "model": MODEL,
        "messages": messages,
        "temperature": 0.7,
        "max_tokens": 512,
        "stream": False,
        "user": "bench-user-0001",
    }
    raw = json.dumps(body, separators=(",", ":")).encode()
    # Pad the last user turn so the body lands on the target size.
    missing = target - len(raw)
    if missing > 0:
        messages[-1]["content"] += " " + ("x" * (missing - 1))
        raw = json.dumps(body, separators=(",", ":")).encode()
    return raw


def usage_cost() -> int:
    """What one such response costs at PRICE_*, by the documented formula (README,
    Metering), not by keyguard's code: the benchmark checks keyguard's charges with it."""
    units = USAGE_PROMPT_TOKENS * PRICE_INPUT + USAGE_COMPLETION_TOKENS * PRICE_OUTPUT
    return math.ceil(units / 1_000_000)


def chat_completion_response() -> bytes:
    """A non-streamed OpenAI chat completion with its usage, as an upstream answers."""
    body = {
        "id": "chatcmpl-bench0000000000000000",
        "object": "chat.completion",
        "created": 1_764_000_000,
        "model": MODEL + "-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Refunds are issued within 14 days of a return.",
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": USAGE_PROMPT_TOKENS,
            "completion_tokens": USAGE_COMPLETION_TOKENS,
            "total_tokens": USAGE_PROMPT_TOKENS + USAGE_COMPLETION_TOKENS,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
        "service_tier": "default",
        "system_fingerprint": "fp_bench",
    }
    return json.dumps(body, separators=(",", ":")).encode()


def frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message: uncompressed flag, 4-byte big-endian length."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def with_key(captured: bytes, key: str) -> bytes:
    """The captured CheckRequest with the placeholder key replaced (same length)."""
    if len(key) != len(PLACEHOLDER_KEY):
        raise ValueError(f"key length {len(key)} != placeholder length {len(PLACEHOLDER_KEY)}")
    if captured.count(PLACEHOLDER_KEY.encode()) != 1:
        raise ValueError("the captured request does not hold the placeholder key exactly once")
    return captured.replace(PLACEHOLDER_KEY.encode(), key.encode())


def write_body(path: Path, message: bytes) -> Path:
    path.write_bytes(frame(message))
    return path


def write_raw(path: Path, body: bytes) -> Path:
    """An HTTP request body as it is, for h2load -d."""
    path.write_bytes(body)
    return path
