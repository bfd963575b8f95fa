"""``Commands`` on valkey-glide: one asyncio client with a Rust core that pipelines
concurrent commands itself, for a single node (``GlideClient``) or a Redis Cluster
(``GlideClusterClient``). Sentinel and Unix sockets are not spoken by glide.

glide is an optional dependency: it is imported when a ``GlideCommands`` is built,
never at module import. Its exceptions do not leave this module: a connection
failure, a closed client or a timeout becomes ``ConnectionFailed``, an error reply
``ReplyError``, both of which ``RedisKeyStore`` maps to ``StoreError``.

The client is created on first use, inside the running event loop (glide binds it
to that loop), with ``lazy_connect`` so creation never blocks the loop on a
connect: glide connects, and reconnects, in its own threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import ModuleType
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from keyguard.errors import BackendError, ConnectionFailed, ReplyError
from keyguard.settings import Settings
from keyguard.store.connect import parse_target
from keyguard.store.scripts import script_sha

T = TypeVar("T")

# How often an idle subscription checks that its connection is the one it
# subscribed on. glide reconnects and resubscribes by itself, silently; messages
# published in between are lost, so a new connection must end the feed (the
# listener then flushes its cache and subscribes again).
SUBSCRIPTION_CHECK_SECONDS = 1.0


def load_glide() -> ModuleType:
    """The glide package, or ConnectionFailed with a one-line reason if it is absent."""
    try:
        glide = importlib.import_module("glide")
    except ImportError as exc:  # pragma: no cover - settings validation checks first
        raise ConnectionFailed("valkey-glide is not installed") from exc
    # Before the first client: glide otherwise logs to the console in its own
    # format, between keyguard's JSON lines. ``init`` keeps a configuration the
    # embedding application may have set.
    glide.Logger.init(glide.LogLevel.OFF)
    return glide


def _decode(value: Any) -> Any:
    """RESP replies as the other clients return them: text, not bytes."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


class GlideCommands:
    def __init__(self, settings: Settings) -> None:
        self.glide = load_glide()
        self.settings = settings
        self.cluster = parse_target(settings.redis_url).mode == "cluster"
        self._client: Any = None
        self._creating: asyncio.Task[Any] | None = None
        self._shas: dict[str, str] = {}
        # The glide exceptions that mean "the connection, not the command, failed".
        self._connection_errors: tuple[type[BaseException], ...] = (
            self.glide.ClosingError,
            self.glide.ConnectionError,
            self.glide.TimeoutError,
        )

    # ----- configuration ----------------------------------------------------------------

    def config(self, pubsub: Any = None) -> Any:
        """The glide client configuration for the settings' URL."""
        g = self.glide
        parts = urlsplit(self.settings.redis_url)
        creds, _, hostlist = parts.netloc.rpartition("@")
        user, _, password = creds.partition(":") if creds else ("", "", "")
        addresses = []
        for item in hostlist.split(","):
            host, sep, port = item.rpartition(":")
            if not sep or (":" in host and not host.endswith("]")):  # no port; bare IPv6
                host, port = item, ""
            addresses.append(g.NodeAddress(host.strip("[]") or "127.0.0.1", int(port or 6379)))
        credentials = None
        if password:  # glide authenticates only with a password (user "default" if none)
            credentials = g.ServerCredentials(
                password=unquote(password) or None, username=unquote(user) or None
            )
        tls = parts.scheme.startswith("rediss")
        timeout_ms = self._timeout_ms()
        tls_config = None
        if tls and (self.settings.redis_tls_ca or self.settings.redis_tls_cert):
            tls_config = g.TlsAdvancedConfiguration(
                root_pem_cacerts=_read(self.settings.redis_tls_ca),
                client_cert_pem=_read(self.settings.redis_tls_cert),
                client_key_pem=_read(self.settings.redis_tls_key),
            )
        common: dict[str, Any] = {
            "addresses": addresses,
            "use_tls": tls,
            "credentials": credentials,
            "request_timeout": timeout_ms,
            "lazy_connect": True,
            "pubsub_subscriptions": pubsub,
        }
        if self.cluster:
            advanced = g.AdvancedGlideClusterClientConfiguration(
                connection_timeout=timeout_ms, tls_config=tls_config
            )
            return g.GlideClusterClientConfiguration(**common, advanced_config=advanced)
        advanced = g.AdvancedGlideClientConfiguration(
            connection_timeout=timeout_ms, tls_config=tls_config
        )
        db = parts.path.strip("/")
        return g.GlideClientConfiguration(
            **common, database_id=int(db) if db else None, advanced_config=advanced
        )

    async def create_client(self, pubsub: Any = None) -> Any:
        kind = self.glide.GlideClusterClient if self.cluster else self.glide.GlideClient
        return await self._call(lambda: kind.create(self.config(pubsub)))

    # ----- error mapping ----------------------------------------------------------------

    def _backend_error(self, exc: BaseException) -> BackendError:
        """The one mapping of a glide exception to keyguard's BackendError tree."""
        if isinstance(exc, self._connection_errors):
            return ConnectionFailed(f"{type(exc).__name__}: {exc}")
        return ReplyError(str(exc))

    async def _call(self, command: Callable[[], Awaitable[T]]) -> T:
        try:
            return await command()
        except self.glide.GlideError as exc:
            raise self._backend_error(exc) from exc

    async def client(self) -> Any:
        if self._client is not None:
            return self._client
        # One creation shared by every caller, shielded: a caller cancelled
        # meanwhile (a Check past its deadline) must not cancel it for the others.
        if self._creating is None:
            task = asyncio.get_running_loop().create_task(self.create_client())
            task.add_done_callback(self._created)
            self._creating = task
        return await asyncio.shield(self._creating)

    def _created(self, task: asyncio.Task[Any]) -> None:
        self._creating = None
        if not task.cancelled() and task.exception() is None:
            self._client = task.result()

    async def custom(self, *args: Any) -> Any:
        # The hot path (EVALSHA): no closure, no extra coroutine, same mapping as _call.
        client = self._client if self._client is not None else await self.client()
        try:
            return await client.custom_command([str(a) for a in args])
        except self.glide.GlideError as exc:
            raise self._backend_error(exc) from exc

    # ----- Commands ---------------------------------------------------------------------

    async def hgetall(self, key: str) -> dict[str, str]:
        client = self._client if self._client is not None else await self.client()
        raw = await self._call(lambda: client.hgetall(key))
        return {_decode(k): _decode(v) for k, v in raw.items()}

    async def evalsha(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        sha = self._shas.get(script)
        if sha is None:
            sha = self._shas[script] = script_sha(script)
        try:
            reply = await self.custom("EVALSHA", sha, len(keys), *keys, *args)
        except ReplyError as exc:
            if "NoScriptError" not in str(exc) and "NOSCRIPT" not in str(exc):
                raise
            # First use on this server (or after a restart / SCRIPT FLUSH).
            reply = await self.custom("EVAL", script, len(keys), *keys, *args)
        return _decode(reply)

    async def ping(self) -> None:
        await self.custom("PING")

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[AsyncIterator[str]]:
        # A client of its own, as redis-py's pub/sub has a connection of its own.
        queue: asyncio.Queue[str] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def received(message: Any, _context: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, _decode(message.message))

        config_cls = (
            self.glide.GlideClusterClientConfiguration
            if self.cluster
            else self.glide.GlideClientConfiguration
        )
        pubsub = config_cls.PubSubSubscriptions(
            channels_and_patterns={config_cls.PubSubChannelModes.Exact: {channel}},
            callback=received,
            context=None,
        )
        client = await self.create_client(pubsub)
        try:
            # Connect now, so that entering fails when Redis is down, and wait until
            # the server has confirmed the subscription.
            connection = await self._connection_id(client)
            await self._call(lambda: client.subscribe({channel}, self._timeout_ms()))
            yield self._messages(client, queue, connection)
        finally:
            with contextlib.suppress(Exception):
                await client.close()

    def _timeout_ms(self) -> int:
        return max(1, round(self.settings.redis_timeout * 1000))

    async def _connection_id(self, client: Any) -> Any:
        # On a cluster CLIENT ID would go to any node; there only liveness is checked.
        command = ["PING"] if self.cluster else ["CLIENT", "ID"]
        return await self._call(lambda: client.custom_command(command))

    async def _messages(
        self, client: Any, queue: asyncio.Queue[str], connection: Any
    ) -> AsyncIterator[str]:
        while True:
            try:
                message = await asyncio.wait_for(queue.get(), SUBSCRIPTION_CHECK_SECONDS)
            except TimeoutError:
                if await self._connection_id(client) != connection:
                    raise ConnectionFailed("subscription connection was replaced") from None
                continue
            if isinstance(message, str):
                yield message

    async def close(self) -> None:
        client, self._client = self._client, None
        if self._creating is not None:
            self._creating.cancel()
        if client is not None:
            await client.close()


def _read(path: str) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


__all__ = ["GlideCommands", "load_glide"]
