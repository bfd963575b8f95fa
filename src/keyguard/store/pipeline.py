"""A lean, auto-pipelining Redis connection for the hot path.

redis-py's asyncio client spends about 100 µs of CPU per call on connection
checkout, command packing and response handling, which is a third of the
cost of a whole Check. This connection keeps one socket open and writes every
command issued in one event-loop tick in a single write, so concurrent Checks
share round trips; replies arrive in order and complete their futures
directly from ``data_received``. It speaks RESP2 with hiredis as the parser.

Linger: grpc.aio hands Checks to the loop one or two per iteration, so
"one write per iteration" is one write per command, and each write and its
reply cost about 40 µs of system calls and wake-ups. When commands arrive
faster than BUSY_BATCH per linger window (an average gap under
linger / BUSY_BATCH: about 2,000 commands/s for the default 1 ms), a write
waits up to the linger for the commands behind it; below that rate nothing
waits. Each command is still one round trip; only its write is shared.

It serves only single-node URLs (redis://, rediss://, unix://); Cluster and
Sentinel keep using redis-py, which knows their topologies.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Awaitable, Sequence
from typing import Any
from urllib.parse import unquote

import hiredis
from redis.connection import parse_url

from keyguard.errors import ConnectionFailed, ReplyError
from keyguard.settings import Settings
from keyguard.store.scripts import script_sha

# Linger only when a window would carry at least this many commands.
BUSY_BATCH = 2
# Weight of the newest gap in the moving average of gaps between commands.
_GAP_WEIGHT = 0.125


def _bulk(args: Sequence[Any]) -> list[bytes]:
    out = []
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return out


def _encode(args: Sequence[Any]) -> bytes:
    return b"".join([b"*%d\r\n" % len(args), *_bulk(args)])


# Encoded script calls' key lists, by the keys: a Check sends the same five keys of its
# API key every time, and encoding them was half of the Python cost of sending a spend.
# Bounded: past this many distinct lists the memo starts over.
KEY_MEMO_SIZE = 4096


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: PipelinedRedis) -> None:
        self.owner = owner
        self.reader = hiredis.Reader(encoding="utf-8", replyError=ReplyError)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        pending = self.owner.pending
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError:
                self.owner.fail(ConnectionFailed("protocol error"))
                return
            if reply is False:
                return
            if not pending or not self.owner.written:  # the stream is out of step
                self.owner.fail(ConnectionFailed("unexpected reply"))
                return
            future, _ = pending.popleft()
            self.owner.written -= 1
            if not self.owner.written:
                # The batch on the wire is answered: send what queued up meanwhile.
                self.owner.schedule_flush(now=True)
            if future.done():
                continue
            if isinstance(reply, ReplyError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        # An old connection that was already replaced must not fail the new one.
        if self.owner._protocol is self:
            self.owner.fail(ConnectionFailed(f"connection lost: {exc or 'closed'}"))


class PipelinedRedis:
    def __init__(self, settings: Settings) -> None:
        params = parse_url(settings.redis_url)  # type: ignore[no-untyped-call]
        self.path: str | None = params.get("path")
        self.host: str = params.get("host") or "127.0.0.1"
        self.port: int = int(params.get("port") or 6379)
        self.db = int(params.get("db") or 0)
        self.username: str | None = params.get("username")
        self.password: str | None = params.get("password")
        self.ssl: ssl.SSLContext | None = None
        if settings.redis_url.startswith("rediss://"):
            ctx = ssl.create_default_context(cafile=settings.redis_tls_ca or None)
            if settings.redis_tls_cert:
                ctx.load_cert_chain(settings.redis_tls_cert, settings.redis_tls_key or None)
            self.ssl = ctx
        self.timeout = settings.redis_timeout
        self.linger = settings.redis_linger_ms / 1000
        self._busy_gap = self.linger / BUSY_BATCH
        self._gap = 1.0  # moving average of the gap between commands, seconds
        self._last_send = 0.0
        self._clock = time.perf_counter  # tests pace commands with a clock of their own
        # Commands in flight: written ones first (``written`` of them), then the
        # ones still in ``_buffer``.
        self.pending: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.written = 0
        self._protocol: _Protocol | None = None
        self._buffer: list[bytes] = []
        self._flush_scheduled = False
        self._connecting: asyncio.Task[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._scripts: dict[str, str] = {}
        self._key_memo: dict[tuple[str, ...], bytes] = {}
        # The loop of the current connection: asyncio.get_running_loop() costs a
        # getpid() system call per call on Python 3.11.
        self._loop: asyncio.AbstractEventLoop | None = None

    # ----- connection ---------------------------------------------------------------------

    async def _connect(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        if self.path:
            connect = loop.create_unix_connection(lambda: _Protocol(self), unquote(self.path))
        else:
            connect = loop.create_connection(
                lambda: _Protocol(self),
                self.host,
                self.port,
                ssl=self.ssl,
                server_hostname=self.host if self.ssl else None,
            )
        try:
            _, protocol = await asyncio.wait_for(connect, self.timeout)
        except (OSError, TimeoutError) as exc:
            raise ConnectionFailed(f"connect: {type(exc).__name__}") from exc
        self._protocol = protocol
        handshake: list[asyncio.Future[Any]] = []
        if self.password is not None:
            auth = (
                ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
            )
            handshake.append(self._send(_encode(auth)))
        if self.db:
            handshake.append(self._send(_encode(("SELECT", self.db))))
        for future in handshake:
            try:
                await future
            except ReplyError as exc:
                self.close()
                raise ConnectionFailed(f"handshake: {exc}") from exc

    async def _ensure(self) -> None:
        if self._protocol is not None:
            return
        # The connect runs in a task of its own that every caller shields: a
        # caller cancelled meanwhile (a Check past Envoy's deadline) must not
        # cancel the connect for the others, such as the health probe.
        if self._connecting is None:
            task = asyncio.get_running_loop().create_task(self._connect())
            task.add_done_callback(self._connected)
            self._connecting = task
        await asyncio.shield(self._connecting)

    def _connected(self, task: asyncio.Task[None]) -> None:
        self._connecting = None
        if not task.cancelled():
            task.exception()  # retrieved here; every waiter gets it from shield()

    def fail(self, exc: Exception) -> None:
        """Fail every command in flight and drop the connection."""
        protocol, self._protocol = self._protocol, None
        self._buffer.clear()
        self.written = 0
        # A flush still scheduled finds nothing to send; the next command (maybe
        # on a new connection) must schedule its own.
        self._flush_scheduled = False
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()
        while self.pending:
            future, _ = self.pending.popleft()
            if not future.done():
                future.set_exception(exc)
                future.exception()  # the caller may have given up; never warn

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self.fail(ConnectionFailed("closed"))

    # ----- sending ------------------------------------------------------------------------

    def _send(self, command: bytes) -> asyncio.Future[Any]:
        """Queue one encoded command; its reply completes the future."""
        loop = self._loop
        assert loop is not None, "connect first"
        future: asyncio.Future[Any] = loop.create_future()
        self.pending.append((future, loop.time()))
        self._buffer.append(command)
        now = self._clock()
        self._gap += (min(now - self._last_send, 1.0) - self._gap) * _GAP_WEIGHT
        self._last_send = now
        # Auto-pipelining: with nothing on the wire, write at the end of this
        # loop iteration (gathering the commands issued in it) or, when busy,
        # after the linger; with a batch on the wire, wait for its replies.
        if not self.written:
            self.schedule_flush()
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout, self._check_timeouts)
        return future

    def schedule_flush(self, now: bool = False) -> None:
        """Write the queued commands soon: at once (``now``) or this iteration, or
        after the linger when commands are arriving fast. Nothing queued, nothing to do."""
        if self._flush_scheduled or not self._buffer:
            return
        loop = self._loop
        assert loop is not None
        if self.linger and self._gap < self._busy_gap:
            self._flush_scheduled = True
            loop.call_later(self.linger, self._flush)
        elif now:
            self.flush_now()
        else:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self.written:
            self.flush_now()

    def flush_now(self) -> None:
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        count = len(self._buffer)
        self._buffer.clear()
        if self._protocol is None or self._protocol.transport is None:
            self.fail(ConnectionFailed("not connected"))
            return
        self.written += count
        self._protocol.transport.write(data)

    def _check_timeouts(self) -> None:
        # Replies come in order, so only the oldest command can be overdue
        # first; if it is, the connection is stuck and everything fails.
        self._watchdog = None
        if not self.pending or self._loop is None:
            return
        loop = self._loop
        oldest = self.pending[0][1]
        if loop.time() - oldest >= self.timeout:
            self.fail(ConnectionFailed("timeout"))
            return
        self._watchdog = loop.call_later(self.timeout, self._check_timeouts)

    def _call(self, command: bytes) -> Awaitable[Any]:
        """Send one encoded command, connecting first if need be; await it for the reply.
        (Connected, it hands back the reply's future itself: no coroutine in between.)"""
        if self._protocol is None:
            return self._connect_and_send(command)
        return self._send(command)

    async def _connect_and_send(self, command: bytes) -> Any:
        await self._ensure()
        return await self._send(command)

    async def execute(self, *args: Any) -> Any:
        return await self._call(_encode(args))

    def _eval_command(self, sha: str, keys: Sequence[str], args: Sequence[Any]) -> bytes:
        """EVALSHA sha len(keys) keys... args..., encoded; the keys' part memoized."""
        memo_key = tuple(keys)
        block = self._key_memo.get(memo_key)
        if block is None:
            if len(self._key_memo) >= KEY_MEMO_SIZE:
                self._key_memo.clear()
            block = self._key_memo[memo_key] = b"".join(_bulk((len(keys), *keys)))
        head = b"*%d\r\n$7\r\nEVALSHA\r\n$%d\r\n%s\r\n" % (
            3 + len(keys) + len(args),
            len(sha),
            sha.encode(),
        )
        return b"".join([head, block, *_bulk(args)])

    async def evalsha(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        sha = self._scripts.get(script)
        if sha is None:
            sha = self._scripts[script] = script_sha(script)
        try:
            return await self._call(self._eval_command(sha, keys, args))
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            # First use on this server (or after a restart / SCRIPT FLUSH).
            return await self.execute("EVAL", script, len(keys), *keys, *args)
