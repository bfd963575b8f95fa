"""Read token usage from an upstream's response: a JSON body or an SSE stream.

Shapes read (each kind of token counted once; cached input is not in ``input``):

* OpenAI Chat Completions and Embeddings: ``usage.prompt_tokens`` (cached ones
  inside, in ``prompt_tokens_details.cached_tokens``), ``usage.completion_tokens``.
  A chat stream carries usage only with ``stream_options.include_usage``, in a last
  chunk whose ``choices`` is empty (or null, from vLLM).
* OpenAI Responses API: ``usage.input_tokens`` (cached inside, in
  ``input_tokens_details.cached_tokens``), ``usage.output_tokens``; in a stream, in the
  ``response.completed`` / ``response.incomplete`` event's ``response.usage``.
* Anthropic Messages: ``usage.input_tokens`` (uncached), ``cache_read_input_tokens``,
  ``cache_creation_input_tokens``, ``output_tokens``. A stream's ``message_start``
  carries the input side; each ``message_delta`` carries the cumulative output (it
  replaces, never adds) and may repeat input fields, which are merged.

A count that is missing, negative, fractional, not a number or above ``MAX_TOKENS``
makes the usage unreadable (None), never a negative or absurd charge: the caller
then charges its documented estimate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from keyguard.prices import Usage

# No single response reads or writes more tokens than this; a larger count is garbage.
MAX_TOKENS = 100_000_000


class _Unreadable(Exception):
    pass


def _count(obj: Any, name: str, required: bool = True) -> int:
    value = obj.get(name) if isinstance(obj, dict) else None
    if value is None:
        if required:
            raise _Unreadable(name)
        return 0
    kind = type(value)
    if kind is float:  # how Envoy's metadata carries every number
        if not value.is_integer():
            raise _Unreadable(name)  # also NaN and infinities
        value = int(value)
    elif kind is not int:  # a bool, a string, an object...
        raise _Unreadable(name)
    if not 0 <= value <= MAX_TOKENS:
        raise _Unreadable(name)
    return int(value)


def _split(total_in: int, cached: int, output: int) -> Usage:
    """OpenAI's input count includes its cached tokens: split them out."""
    if cached > total_in:
        raise _Unreadable("cached_tokens")
    return Usage(input=total_in - cached, cached_input=cached, output=output)


def _openai_chat(usage: dict[str, Any]) -> Usage:
    # Embeddings report no completion_tokens.
    return _split(
        _count(usage, "prompt_tokens"),
        _count(usage.get("prompt_tokens_details"), "cached_tokens", required=False),
        _count(usage, "completion_tokens", required=False),
    )


def _openai_responses(usage: dict[str, Any]) -> Usage:
    return _split(
        _count(usage, "input_tokens"),
        _count(usage.get("input_tokens_details"), "cached_tokens", required=False),
        _count(usage, "output_tokens"),
    )


def _anthropic(usage: dict[str, Any]) -> Usage:
    return Usage(
        input=_count(usage, "input_tokens"),
        cached_input=_count(usage, "cache_read_input_tokens", required=False),
        cache_write=_count(usage, "cache_creation_input_tokens", required=False),
        output=_count(usage, "output_tokens"),
    )


def _from_usage_object(usage: Any, anthropic: bool) -> Usage:
    if not isinstance(usage, dict):
        raise _Unreadable("usage")
    if "prompt_tokens" in usage:
        return _openai_chat(usage)
    if anthropic or "cache_read_input_tokens" in usage or "cache_creation_input_tokens" in usage:
        return _anthropic(usage)
    return _openai_responses(usage)


def usage_from_fields(fields: dict[str, Any], anthropic: bool) -> Usage | None:
    """Usage from flat fields as Envoy's json_to_metadata / sse_to_metadata write them
    (numbers arrive as doubles); None when there are none, or they cannot be read.

    OpenAI chat and embeddings: prompt_tokens (cached inside), completion_tokens,
    cached_tokens. Responses API: input_tokens (cached inside), output_tokens,
    cached_tokens. Anthropic: input_tokens (uncached), output_tokens,
    cache_read_input_tokens, cache_creation_input_tokens.
    """
    if not fields:
        return None
    try:
        if "prompt_tokens" in fields:
            return _split(
                _count(fields, "prompt_tokens"),
                _count(fields, "cached_tokens", required=False),
                _count(fields, "completion_tokens", required=False),
            )
        if anthropic:
            return _anthropic(fields)
        return _split(
            _count(fields, "input_tokens"),
            _count(fields, "cached_tokens", required=False),
            _count(fields, "output_tokens"),
        )
    except _Unreadable:
        return None


def usage_from_json(body: bytes | str, anthropic: bool = False) -> Usage | None:
    """The usage of a whole JSON response, or None when it has none that can be read.

    ``anthropic``: the response came from ``/messages`` (its ``input_tokens`` exclude
    cached tokens, where the Responses API's include them).
    """
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    if data.get("type") == "message":
        anthropic = True
    try:
        return _from_usage_object(data.get("usage"), anthropic)
    except _Unreadable:
        return None


@dataclass
class StreamUsage:
    """Usage read from an SSE stream, fed in chunks as they arrive (any split).

    ``usage`` is the best reading so far: None until an event carried usage.
    """

    anthropic: bool = False
    usage: Usage | None = None
    unreadable: bool = False  # an event carried usage that could not be read
    _buffer: bytes = b""
    _anthropic_usage: dict[str, Any] = field(default_factory=dict)
    # Bounds what one unterminated event may hold; past it the rest is skipped.
    max_event_bytes: int = 1 << 20

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        while True:
            cut = _event_end(self._buffer)
            if cut is None:
                break
            event, self._buffer = self._buffer[: cut[0]], self._buffer[cut[1] :]
            self._event(event)
        if len(self._buffer) > self.max_event_bytes:
            self._buffer = b""

    def finish(self) -> Usage | None:
        """The stream ended: read a last event that had no blank line after it.

        None when no event carried usage, or one carried usage that could not be read.
        """
        if self._buffer.strip():
            self._event(self._buffer)
        self._buffer = b""
        return None if self.unreadable else self.usage

    def _event(self, raw: bytes) -> None:
        data_lines = []
        for line in raw.split(b"\n"):
            line = line.rstrip(b"\r")
            if line.startswith(b"data:"):
                data_lines.append(line[5:].removeprefix(b" "))
        if not data_lines:
            return
        payload = b"\n".join(data_lines)
        if payload.strip() == b"[DONE]":
            return
        try:
            data = json.loads(payload)
        except (ValueError, RecursionError):
            return
        if isinstance(data, dict):
            try:
                self._data(data)
            except _Unreadable:
                self.unreadable = True

    def _data(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "message_start":
            message = data.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            self._merge_anthropic(usage)
        elif kind == "message_delta":
            self._merge_anthropic(data.get("usage"))
        elif kind in ("response.completed", "response.incomplete"):
            response = data.get("response")
            if isinstance(response, dict) and response.get("usage") is not None:
                self.usage = _openai_responses(_dict(response.get("usage")))
        elif data.get("usage") is not None and "prompt_tokens" in _dict(data.get("usage")):
            # A chat chunk: usage comes once, in the last chunk (choices empty or null).
            self.usage = _openai_chat(_dict(data.get("usage")))

    def _merge_anthropic(self, usage: Any) -> None:
        if usage is None:
            return
        if not isinstance(usage, dict):
            raise _Unreadable("usage")
        # Later events replace what they carry (output is cumulative) and keep the rest.
        merged = {**self._anthropic_usage, **{k: v for k, v in usage.items() if v is not None}}
        self._anthropic_usage = merged
        self.usage = Usage(
            input=_count(merged, "input_tokens", required=False),
            cached_input=_count(merged, "cache_read_input_tokens", required=False),
            cache_write=_count(merged, "cache_creation_input_tokens", required=False),
            output=_count(merged, "output_tokens", required=False),
        )


def _dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Unreadable("usage")
    return value


def _event_end(buffer: bytes) -> tuple[int, int] | None:
    """Where the first complete event ends: (end of event, start of the next)."""
    best: tuple[int, int] | None = None
    for sep in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        at = buffer.find(sep)
        if at != -1 and (best is None or at < best[0]):
            best = (at, at + len(sep))
    return best
