"""The implementations of ``Commands``: redis-py for every topology, and the
auto-pipelining connection for the hot path on a single node. (valkey-glide was
measured in their place and cost more CPU per Check: README, Benchmarks.)"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import redis.exceptions

from keyguard.errors import ReplyError
from keyguard.settings import Settings
from keyguard.store import Commands
from keyguard.store.connect import AsyncClient, async_client, parse_target
from keyguard.store.pipeline import PipelinedRedis
from keyguard.store.scripts import script_sha

# How long one wait for a published message lasts before it is asked again; only
# bounds how often an idle subscription wakes up.
_SUBSCRIBE_POLL = 30.0


class RedisPyCommands:
    """Commands on redis-py's asyncio client: single node, Cluster or Sentinel."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self._shas: dict[str, str] = {}

    async def hgetall(self, key: str) -> dict[str, str]:
        return cast(dict[str, str], await self.client.hgetall(key))

    async def evalsha(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        sha = self._shas.get(script)
        if sha is None:
            sha = self._shas[script] = script_sha(script)
        try:
            return await self.client.evalsha(sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            # First use on this server (or after a restart / SCRIPT FLUSH).
            return await self.client.eval(script, len(keys), *keys, *args)

    async def ping(self) -> None:
        await self.client.ping()

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[AsyncIterator[str]]:
        pubsub = self.client.pubsub()
        try:
            await pubsub.subscribe(channel)
            yield self._messages(pubsub)
        finally:
            closing: Any = pubsub.aclose  # annotated only in newer redis-py
            with contextlib.suppress(Exception):
                await closing()

    @staticmethod
    async def _messages(pubsub: Any) -> AsyncIterator[str]:
        while True:
            message = await pubsub.get_message(
                ignore_subscribe_messages=True, timeout=_SUBSCRIBE_POLL
            )
            if message is None or message.get("type") != "message":
                continue
            data = message.get("data")
            if isinstance(data, bytes):
                data = data.decode("ascii", errors="replace")
            if isinstance(data, str):
                yield data

    async def close(self) -> None:
        await self.client.aclose()
        # A Sentinel-managed client also holds connections to the sentinels.
        pool = getattr(self.client, "connection_pool", None)
        manager = getattr(pool, "sentinel_manager", None)
        for sentinel in getattr(manager, "sentinels", []):
            await sentinel.aclose()


class PipelinedCommands:
    """The hot-path commands on one auto-pipelined connection; pub/sub, which needs a
    connection of its own, on redis-py."""

    def __init__(self, fast: PipelinedRedis, pubsub: RedisPyCommands) -> None:
        self.fast = fast
        self._pubsub = pubsub

    async def hgetall(self, key: str) -> dict[str, str]:
        flat = await self.fast.execute("HGETALL", key)
        return dict(zip(flat[::2], flat[1::2], strict=True))

    async def evalsha(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self.fast.evalsha(script, keys, args)

    async def ping(self) -> None:
        await self.fast.execute("PING")

    def subscribe(self, channel: str) -> contextlib.AbstractAsyncContextManager[AsyncIterator[str]]:
        return self._pubsub.subscribe(channel)

    async def close(self) -> None:
        self.fast.close()
        await self._pubsub.close()


def make_commands(settings: Settings) -> Commands:
    """The client for these settings: the pipelined connection on single-node URLs,
    redis-py on Cluster and Sentinel."""
    slow = RedisPyCommands(async_client(settings))
    if parse_target(settings.redis_url).mode == "single":
        return PipelinedCommands(PipelinedRedis(settings), slow)
    return slow


__all__ = ["PipelinedCommands", "RedisPyCommands", "ReplyError", "make_commands"]
