"""A stand-in OpenAI/Anthropic-compatible LLM API for `make run` and the end-to-end tests.

Standard library only. Every answer echoes what the upstream received, so a test can
check what Envoy and keyguard let through:

* response header `x-echo-headers`: the request headers as JSON;
* extra JSON field `_echo`: {"path", "method", "headers", "body_bytes"} (the SDKs ignore it).

`GET /__stats` returns {"requests": N}, the number of all other requests served, so a test
can assert that a denied request never reached the upstream.

Usage is realistic in shape (OpenAI chat JSON and SSE, with usage in a last chunk only
when `stream_options.include_usage` is set; the Responses API, JSON and SSE; embeddings;
Anthropic JSON and SSE with `message_start` and a cumulative `message_delta`) and in
amount: input tokens are the words of the request. Request headers steer it for tests:

* `x-demo-output-tokens: N`: the output tokens reported (default 6);
* `x-demo-cached-tokens: N`: input tokens reported as read from a prompt cache;
* `x-demo-cache-write-tokens: N`: Anthropic's `cache_creation_input_tokens`;
* `x-demo-status: NNN`: answer with that error status instead;
* `x-demo-pause-ms: N`: a streamed answer pauses this long between events (so a client
  can disconnect mid-stream).

    python tools/demo_upstream.py --port 8000 [--host 127.0.0.1]

prints `ready` once listening and stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

MODELS = [
    "gpt-4o",
    "gpt-4o-mini",
    "text-embedding-3-small",
    "whisper-1",
    "claude-3-5-haiku",
    "claude-3-5-sonnet",
]
GEMINI_PATH = re.compile(r"^/[^?]*/models/(?P<model>[^/:?]+):(?P<action>[A-Za-z]+)$")
MAX_BODY = 64 * 1024 * 1024


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests = 0

    def count(self) -> None:
        with self._lock:
            self._requests += 1

    @property
    def requests(self) -> int:
        with self._lock:
            return self._requests


def _json_body(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
    except (UnicodeDecodeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _words(messages: Any) -> int:
    text = json.dumps(messages) if messages is not None else ""
    return max(1, len(text.split()))


class Shape:
    """What the request's x-demo-* headers ask of the answer."""

    def __init__(self, headers: Any) -> None:
        self.output = _int_header(headers, "x-demo-output-tokens", 6)
        self.cached = _int_header(headers, "x-demo-cached-tokens", 0)
        self.cache_write = _int_header(headers, "x-demo-cache-write-tokens", 0)
        self.status = _int_header(headers, "x-demo-status", 0)
        self.pause = _int_header(headers, "x-demo-pause-ms", 0) / 1000


def _int_header(headers: Any, name: str, default: int) -> int:
    try:
        return max(0, int(headers.get(name, default)))
    except (TypeError, ValueError):
        return default


def openai_usage(req: dict[str, Any], shape: Shape) -> dict[str, Any]:
    prompt = _words(req.get("messages"))
    return {
        "prompt_tokens": prompt + shape.cached,
        "completion_tokens": shape.output,
        "total_tokens": prompt + shape.cached + shape.output,
        "prompt_tokens_details": {"cached_tokens": shape.cached},
    }


def chat_completion(req: dict[str, Any], shape: Shape) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.get("model", "unknown"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the demo upstream."},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": openai_usage(req, shape),
    }


def chat_completion_stream(req: dict[str, Any], shape: Shape) -> list[bytes]:
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": req.get("model", "unknown"),
    }
    deltas: list[dict[str, Any]] = [
        {"role": "assistant", "content": ""},
        {"content": "Hello from "},
        {"content": "the demo upstream."},
    ]
    events = [
        {**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas
    ]
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    options = req.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        events.append({**base, "choices": [], "usage": openai_usage(req, shape)})
    lines = [f"data: {json.dumps(e)}\n\n" for e in events] + ["data: [DONE]\n\n"]
    return [line.encode() for line in lines]


def responses_usage(req: dict[str, Any], shape: Shape) -> dict[str, Any]:
    words = _words(req.get("input"))
    return {
        "input_tokens": words + shape.cached,
        "input_tokens_details": {"cached_tokens": shape.cached},
        "output_tokens": shape.output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": words + shape.cached + shape.output,
    }


def response_object(req: dict[str, Any], shape: Shape, status: str = "completed") -> dict[str, Any]:
    return {
        "id": f"resp_{uuid.uuid4().hex[:24]}",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": req.get("model", "unknown"),
        "output": [
            {
                "type": "message",
                "id": f"msg_{uuid.uuid4().hex[:24]}",
                "status": "completed",
                "role": "assistant",
                "content": [
                    {
                        "type": "output_text",
                        "text": "Hello from the demo upstream.",
                        "annotations": [],
                    }
                ],
            }
        ],
        "usage": responses_usage(req, shape) if status != "in_progress" else None,
    }


def responses_stream(req: dict[str, Any], shape: Shape) -> list[bytes]:
    started = response_object(req, shape, "in_progress")
    events: list[dict[str, Any]] = [
        {"type": "response.created", "sequence_number": 0, "response": started},
        {
            "type": "response.output_text.delta",
            "sequence_number": 1,
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": "Hello from the demo upstream.",
        },
        {
            "type": "response.completed",
            "sequence_number": 2,
            "response": response_object(req, shape),
        },
    ]
    return [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events]


def completion(req: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"cmpl-{uuid.uuid4().hex[:24]}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": req.get("model", "unknown"),
        "choices": [
            {
                "text": " from the demo upstream.",
                "index": 0,
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6},
    }


def embeddings(req: dict[str, Any]) -> dict[str, Any]:
    inputs = req.get("input", "")
    count = len(inputs) if isinstance(inputs, list) else 1
    tokens = _words(inputs)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": [0.0, 0.1, 0.2, 0.3]}
            for i in range(count)
        ],
        "model": req.get("model", "unknown"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def anthropic_message(req: dict[str, Any], shape: Shape) -> dict[str, Any]:
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": req.get("model", "unknown"),
        "content": [{"type": "text", "text": "Hello from the demo upstream."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": _words(req.get("messages")),
            "cache_creation_input_tokens": shape.cache_write,
            "cache_read_input_tokens": shape.cached,
            "output_tokens": shape.output,
        },
    }


def anthropic_message_stream(req: dict[str, Any], shape: Shape) -> list[bytes]:
    message = anthropic_message(req, shape)
    start = {**message, "content": [], "stop_reason": None}
    # message_start carries the input side and a placeholder output of 1, as Anthropic does.
    start["usage"] = {**message["usage"], "output_tokens": 1}
    text = message["content"][0]["text"]
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": text},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": shape.output},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return [f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events]


def model_list() -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "demo"} for m in MODELS
        ],
    }


def gemini_generate(model: str) -> dict[str, Any]:
    return {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": "Hello from the demo upstream."}]},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 6, "totalTokenCount": 7},
        "modelVersion": model,
    }


class Handler(BaseHTTPRequestHandler):
    # Keep-alive, so Envoy's upstream connections are reused like with a real API.
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle's algorithm on, the
    # peer's delayed ACK would add ~40 ms to every keep-alive response.
    disable_nagle_algorithm = True
    server_version = "demo-upstream/1"
    stats: Stats  # set on the subclass made by make_server

    def log_message(self, format: str, *args: Any) -> None:
        # Quiet: the request log would carry whatever headers a client sent.
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    raise ValueError("body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(length) if length else b""

    def _echo(self, path: str, body_bytes: int) -> dict[str, Any]:
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return {"path": path, "method": self.command, "headers": headers, "body_bytes": body_bytes}

    def _send(
        self,
        status: int,
        payload: bytes,
        content_type: str,
        echo: dict[str, Any] | None,
    ) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(payload)))
        if echo is not None:
            # ensure_ascii keeps the header value plain ASCII whatever the client sent.
            self.send_header("x-echo-headers", json.dumps(echo["headers"], ensure_ascii=True))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _stream(self, events: list[bytes], pause: float, echo: dict[str, Any]) -> None:
        """An SSE answer, event by event (chunked), pausing between events if asked."""
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("x-echo-headers", json.dumps(echo["headers"], ensure_ascii=True))
        self.end_headers()
        try:
            for event in events:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
                if pause:
                    time.sleep(pause)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client (Envoy) went away mid-stream
            self.close_connection = True

    def _send_json(self, status: int, obj: dict[str, Any], echo: dict[str, Any] | None) -> None:
        if echo is not None:
            obj = {**obj, "_echo": echo}
        self._send(status, json.dumps(obj).encode(), "application/json", echo)

    def _handle(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/__stats" and self.command == "GET":
            self._send_json(200, {"requests": self.stats.requests}, None)
            return
        self.stats.count()
        try:
            raw = self._read_body()
        except ValueError:
            self.close_connection = True
            self._send_json(413, {"error": {"message": "body too large"}}, None)
            return
        echo = self._echo(path, len(raw))
        method = self.command
        ctype = self.headers.get("content-type", "")
        req = _json_body(raw) if "json" in ctype or not ctype else {}
        shape = Shape(self.headers)
        if shape.status >= 400:
            error = {"message": "demo error", "type": "server_error", "param": None, "code": None}
            self._send_json(shape.status, {"error": error}, echo)
            return

        if method == "GET" and path == "/v1/models":
            self._send_json(200, model_list(), echo)
        elif method == "GET" and path.startswith("/v1/models/"):
            model = path.removeprefix("/v1/models/")
            self._send_json(
                200, {"id": model, "object": "model", "created": 0, "owned_by": "demo"}, echo
            )
        elif method == "POST" and path == "/v1/chat/completions":
            if req.get("stream"):
                self._stream(chat_completion_stream(req, shape), shape.pause, echo)
            else:
                self._send_json(200, chat_completion(req, shape), echo)
        elif method == "POST" and path == "/v1/responses":
            if req.get("stream"):
                self._stream(responses_stream(req, shape), shape.pause, echo)
            else:
                self._send_json(200, response_object(req, shape), echo)
        elif method == "POST" and path == "/v1/completions":
            self._send_json(200, completion(req), echo)
        elif method == "POST" and path == "/v1/embeddings":
            self._send_json(200, embeddings(req), echo)
        elif method == "POST" and path == "/v1/messages":
            if req.get("stream"):
                self._stream(anthropic_message_stream(req, shape), shape.pause, echo)
            else:
                self._send_json(200, anthropic_message(req, shape), echo)
        elif method == "POST" and path == "/v1/images/generations":
            image = {"url": "https://example.invalid/demo.png", "revised_prompt": "a demo"}
            self._send_json(200, {"created": int(time.time()), "data": [image]}, echo)
        elif method == "POST" and path in ("/v1/audio/transcriptions", "/v1/audio/translations"):
            self._send_json(200, {"text": "Hello from the demo upstream."}, echo)
        elif method == "POST" and (match := GEMINI_PATH.match(path)):
            self._send_json(200, gemini_generate(match["model"]), echo)
        else:
            error = {
                "message": f"no route for {method} {path}",
                "type": "invalid_request_error",
                "param": None,
                "code": "not_found",
            }
            self._send_json(404, {"error": error}, echo)


def make_server(host: str, port: int) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"stats": Stats()})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)

    server = make_server(args.host, args.port)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    print(f"ready http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        thread.join(timeout=5)
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
