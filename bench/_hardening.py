"""Shared machinery for the hardening runs (bench.faults, bench.soak and their tests).

The stack they drive is harness.stack.running_stack (persistent Redis for the faults).

* `open_loop`: a fixed-schedule (open-loop) HTTP driver on asyncio with a lean HTTP/1.1
  client. Request i is due at t0 + i/rate whether or not earlier ones have answered; it
  is bounded in time (duration), count (rate x duration) and concurrency (max_inflight: a
  request that would exceed it is counted as skipped, not queued). Timed actions (kill
  Redis, restart keyguard...) run in a thread at their offsets, and a gRPC health poller
  records keyguard's serving status along the way.
* `/proc` samplers for RSS, open file descriptors and threads.

Latency is measured from a request's scheduled time to its answer, so a stalled driver or
server shows up as latency instead of silently lowering the rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CHAT_BODY = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}
).encode()
MESSAGES_BODY = json.dumps(
    {"model": "claude-3-5-haiku", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}
).encode()


# ----- the open-loop driver ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shot:
    """One planned request. `kind` names the key class it carries (valid, unknown...)."""

    kind: str
    path: str
    headers: Mapping[str, str]
    body: bytes

    def encode(self) -> bytes:
        lines = [f"POST {self.path} HTTP/1.1", "host: 127.0.0.1"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        lines.append(f"content-length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


def chat_shot(kind: str, key: str | None) -> Shot:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return Shot(kind, "/v1/chat/completions", headers, CHAT_BODY)


def messages_shot(kind: str, key: str | None) -> Shot:
    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    if key is not None:
        headers["x-api-key"] = key
    return Shot(kind, "/v1/messages", headers, MESSAGES_BODY)


class HttpError(Exception):
    """No usable HTTP answer; the message is a short label (Timeout, Reset...)."""


_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class RawHttpClient:
    """A lean HTTP/1.1 keep-alive client: one request per connection at a time.

    httpx costs about 4 ms of CPU per request on this machine, so at a few hundred rps the
    driver, not the stack, would set the latency. This one costs a small fraction of that.
    It understands what Envoy and the demo upstream send: content-length or chunked bodies.
    """

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._idle: list[_Conn] = []
        self._all: set[asyncio.StreamWriter] = set()

    async def _connect(self) -> _Conn:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self._all.add(writer)
        return reader, writer

    def _discard(self, conn: _Conn) -> None:
        self._all.discard(conn[1])
        conn[1].close()

    async def request(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        try:
            async with asyncio.timeout(self.timeout):
                while self._idle:
                    try:
                        return await self._exchange(self._idle.pop(), raw)
                    except (asyncio.IncompleteReadError, ConnectionError) as exc:
                        # A kept-alive connection the server had closed: use another one,
                        # unless part of an answer came back.
                        if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                            raise HttpError("IncompleteRead") from exc
                try:
                    return await self._exchange(await self._connect(), raw)
                except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
                    raise HttpError(type(exc).__name__) from exc
        except TimeoutError as exc:
            raise HttpError("Timeout") from exc
        except OSError as exc:
            raise HttpError(type(exc).__name__) from exc

    async def _exchange(self, conn: _Conn, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        reader, writer = conn
        try:
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head[:-4].decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "content-length" in headers:
                body = await reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                body = await self._chunked(reader)
            else:
                body = await reader.read()
                headers["connection"] = "close"
        except BaseException:
            # Failed or cancelled mid-exchange: the connection's state is unknown.
            self._discard(conn)
            raise
        if headers.get("connection", "").lower() == "close":
            self._discard(conn)
        else:
            self._idle.append(conn)
        return status, headers, body

    @staticmethod
    async def _chunked(reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)

    async def aclose(self) -> None:
        writers = list(self._all)
        self._all.clear()
        self._idle.clear()
        for writer in writers:
            writer.close()
        for writer in writers:
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@dataclass(slots=True)
class Sample:
    """What one request got. Times are seconds since the load started."""

    kind: str
    index: int
    sched: float
    sent: float
    done: float
    status: int  # 0: no HTTP answer (see error)
    reason: str = ""  # x-keyguard-reason of a denial
    upstream: bool = False  # the demo upstream answered (its echo header is present)
    degraded: bool = False  # the upstream saw x-keyguard-degraded: 1
    key_id: str = ""  # the upstream saw this x-keyguard-key-id
    credential_forwarded: bool = False  # the upstream saw authorization or x-api-key
    error: str = ""

    @property
    def latency(self) -> float:
        return self.done - self.sched

    @property
    def outcome(self) -> str:
        """A short label: 200, 200-degraded, 401-invalid_api_key, 503-envoy, error-X."""
        if self.status == 0:
            return f"error-{self.error}"
        if self.status == 200:
            return "200-degraded" if self.degraded else "200"
        return f"{self.status}-{self.reason or 'envoy'}"


@dataclass(frozen=True, slots=True)
class Action:
    """`fn` runs in a worker thread `at` seconds into the load."""

    at: float
    name: str
    fn: Callable[[], object]


@dataclass
class LoadResult:
    rate: float
    duration: float
    planned: int
    samples: list[Sample]
    skipped: int
    marks: dict[str, float]  # "<action>.start" / "<action>" (done) → seconds since t0
    health: list[tuple[float, str]]
    driver_cpu_s: float = 0.0  # CPU time the driver process used during the load
    driver: str = "python asyncio, raw HTTP/1.1 keep-alive connections, open loop"
    action_errors: dict[str, str] = field(default_factory=dict)


async def _poll_health(
    target: str, interval: float, t0: float, out: list[tuple[float, str]]
) -> None:
    loop = asyncio.get_running_loop()
    options = [
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 500),
    ]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                status = str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
            except grpc.aio.AioRpcError as exc:
                status = str(exc.code().name)
            out.append((round(loop.time() - t0, 3), status))
            await asyncio.sleep(interval)


async def open_loop(
    base_url: str,
    *,
    rate: float,
    duration: float,
    plan: Callable[[int], Shot],
    actions: Sequence[Action] = (),
    health_target: str | None = None,
    health_interval: float = 0.25,
    max_inflight: int = 512,
    timeout: float = 5.0,
    sink: Callable[[Sample], None] | None = None,
    ticker: Callable[[float], None] | None = None,
    tick_every: float = 10.0,
) -> LoadResult:
    """Send rate x duration requests on a fixed schedule; see the module docstring.

    `sink` receives every Sample instead of the result keeping them (long soaks);
    `ticker(t)` is called every `tick_every` seconds of load, in the event loop.
    """
    loop = asyncio.get_running_loop()
    planned = math.floor(rate * duration)
    samples: list[Sample] = []
    keep = sink or samples.append
    marks: dict[str, float] = {}
    action_errors: dict[str, str] = {}
    health: list[tuple[float, str]] = []
    skipped = 0
    url = urlsplit(base_url)
    client = RawHttpClient(url.hostname or "127.0.0.1", url.port or 80, timeout)
    cpu0 = time.process_time()
    t0 = loop.time()

    async def one(index: int, shot: Shot, sched: float) -> None:
        sent = loop.time()
        sample = Sample(shot.kind, index, sched - t0, sent - t0, 0.0, 0)
        try:
            status, headers, _ = await client.request(shot.encode())
        except HttpError as exc:
            sample.error = str(exc)
        else:
            sample.status = status
            sample.reason = headers.get("x-keyguard-reason", "")
            echo = headers.get("x-echo-headers")
            if echo is not None:
                seen: dict[str, str] = json.loads(echo)
                sample.upstream = True
                sample.degraded = seen.get("x-keyguard-degraded") == "1"
                sample.key_id = seen.get("x-keyguard-key-id", "")
                sample.credential_forwarded = "authorization" in seen or "x-api-key" in seen
        sample.done = loop.time() - t0
        keep(sample)

    async def run_action(action: Action) -> None:
        await asyncio.sleep(max(0.0, t0 + action.at - loop.time()))
        marks[f"{action.name}.start"] = round(loop.time() - t0, 4)
        try:
            await asyncio.to_thread(action.fn)
        except Exception as exc:  # recorded: the analysis must see a failed action
            action_errors[action.name] = f"{type(exc).__name__}: {exc}"
        marks[action.name] = round(loop.time() - t0, 4)

    async def run_ticker() -> None:
        assert ticker is not None
        n = 1
        while True:
            await asyncio.sleep(max(0.0, t0 + n * tick_every - loop.time()))
            ticker(loop.time() - t0)
            n += 1

    background: list[asyncio.Task[None]] = [
        asyncio.create_task(run_action(a), name=f"action-{a.name}") for a in actions
    ]
    health_task: asyncio.Task[None] | None = None
    ticker_task: asyncio.Task[None] | None = None
    if health_target is not None:
        health_task = asyncio.create_task(_poll_health(health_target, health_interval, t0, health))
    if ticker is not None:
        ticker_task = asyncio.create_task(run_ticker())
    inflight: set[asyncio.Task[None]] = set()
    try:
        for index in range(planned):
            due = t0 + index / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(inflight) >= max_inflight:
                skipped += 1
                continue
            task = asyncio.create_task(one(index, plan(index), due))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        if inflight:
            await asyncio.wait(inflight, timeout=timeout + 2)
        if background:
            await asyncio.wait(background, timeout=30)
    finally:
        leftovers = [t for t in [*inflight, *background, health_task, ticker_task] if t]
        for leftover in leftovers:
            leftover.cancel()  # a no-op for tasks already done
        await asyncio.gather(*leftovers, return_exceptions=True)
        await client.aclose()
    return LoadResult(
        rate,
        duration,
        planned,
        samples,
        skipped,
        marks,
        health,
        driver_cpu_s=round(time.process_time() - cpu0, 3),
        action_errors=action_errors,
    )


# ----- numbers -----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def per_second(samples: Iterable[Sample]) -> list[dict[str, Any]]:
    """Counts per second of send time: by HTTP status, and by key kind and outcome."""
    status: dict[int, Counter[str]] = {}
    detail: dict[int, Counter[str]] = {}
    for s in samples:
        second = int(s.sent)
        status.setdefault(second, Counter())[str(s.status)] += 1
        detail.setdefault(second, Counter())[f"{s.kind}:{s.outcome}"] += 1
    return [
        {
            "second": sec,
            "by_status": dict(sorted(status[sec].items())),
            "by_kind": dict(detail[sec]),
        }
        for sec in sorted(status)
    ]


def outcome_totals(samples: Iterable[Sample]) -> dict[str, dict[str, int]]:
    totals: dict[str, Counter[str]] = {}
    for s in samples:
        totals.setdefault(s.kind, Counter())[s.outcome] += 1
    return {kind: dict(sorted(c.items())) for kind, c in sorted(totals.items())}


def decision_counts(metrics_text: str) -> dict[str, float]:
    """keyguard_decisions_total samples from the /metrics text, by 'decision/reason'."""
    out: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("keyguard_decisions_total{"):
            labels, _, value = line.rpartition(" ")
            inner = labels[labels.index("{") + 1 : labels.rindex("}")]
            parts = dict(p.split("=", 1) for p in inner.split(","))
            key = f"{parts['decision'].strip(chr(34))}/{parts['reason'].strip(chr(34))}"
            out[key] = float(value)
    return out


# ----- /proc -------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def thread_count(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise RuntimeError(f"no Threads for pid {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def machine_note() -> dict[str, Any]:
    load1, load5, _ = os.getloadavg()
    return {"cpus": os.cpu_count(), "loadavg_1m": round(load1, 2), "loadavg_5m": round(load5, 2)}


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
