"""A stand-in OpenAI/Anthropic-compatible LLM API for `make run` and the end-to-end tests.

Standard library only. Every answer echoes what the upstream received, so a test can
check what Envoy and keyguard let through:

* response header `x-echo-headers`: the request headers as JSON;
* extra JSON field `_echo`: {"path", "method", "headers", "body_bytes"} (the SDKs ignore it).

`GET /__stats` returns {"requests": N}, the number of all other requests served, so a test
can assert that a denied request never reached the upstream.

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


def chat_completion(req: dict[str, Any]) -> dict[str, Any]:
    prompt_tokens = _words(req.get("messages"))
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
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": 6,
            "total_tokens": prompt_tokens + 6,
        },
    }


def chat_completion_stream(req: dict[str, Any]) -> bytes:
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
    lines = [f"data: {json.dumps(e)}\n\n" for e in events] + ["data: [DONE]\n\n"]
    return "".join(lines).encode()


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
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": [0.0, 0.1, 0.2, 0.3]}
            for i in range(count)
        ],
        "model": req.get("model", "unknown"),
        "usage": {"prompt_tokens": count, "total_tokens": count},
    }


def anthropic_message(req: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": req.get("model", "unknown"),
        "content": [{"type": "text", "text": "Hello from the demo upstream."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": _words(req.get("messages")), "output_tokens": 6},
    }


def anthropic_message_stream(req: dict[str, Any]) -> bytes:
    message = anthropic_message(req)
    start = {**message, "content": [], "stop_reason": None}
    start["usage"] = {"input_tokens": message["usage"]["input_tokens"], "output_tokens": 0}
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
                "usage": {"output_tokens": 6},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events).encode()


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

        if method == "GET" and path == "/v1/models":
            self._send_json(200, model_list(), echo)
        elif method == "GET" and path.startswith("/v1/models/"):
            model = path.removeprefix("/v1/models/")
            self._send_json(
                200, {"id": model, "object": "model", "created": 0, "owned_by": "demo"}, echo
            )
        elif method == "POST" and path == "/v1/chat/completions":
            if req.get("stream"):
                self._send(200, chat_completion_stream(req), "text/event-stream", echo)
            else:
                self._send_json(200, chat_completion(req), echo)
        elif method == "POST" and path == "/v1/completions":
            self._send_json(200, completion(req), echo)
        elif method == "POST" and path == "/v1/embeddings":
            self._send_json(200, embeddings(req), echo)
        elif method == "POST" and path == "/v1/messages":
            if req.get("stream"):
                self._send(200, anthropic_message_stream(req), "text/event-stream", echo)
            else:
                self._send_json(200, anthropic_message(req), echo)
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
