"""Build Redis clients (async for the server, sync for the CLI) from one URL.

Accepted forms:
  redis://[user:pass@]host:port/db      rediss://... (TLS)      unix:///path?db=0
  redis+cluster://host:port[,host:port]  (Redis Cluster; any node seeds discovery)
  redis+sentinel://[user:pass@]host:port[,host:port]/service[/db]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel

from keyguard.settings import Settings

# Typed as Any: redis-py annotates Sentinel from 8.x on, not before, and keyguard
# accepts both (an ignore comment would be unused on one of them).
_ASYNC_SENTINEL: Any = redis.asyncio.sentinel.Sentinel
_SYNC_SENTINEL: Any = redis.sentinel.Sentinel


@dataclass(frozen=True, slots=True)
class RedisTarget:
    mode: str  # "single" | "cluster" | "sentinel"
    url: str  # for single/cluster: a redis(s):// URL redis-py understands
    hosts: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False


def parse_target(url: str) -> RedisTarget:
    parts = urlsplit(url)
    scheme = parts.scheme
    tls = scheme.startswith("rediss")
    if scheme.endswith("+cluster"):
        plain = ("rediss" if tls else "redis") + url[len(scheme) :]
        first = plain.split(",")[0]
        return RedisTarget("cluster", first, tls=tls)
    if scheme.endswith("+sentinel"):
        netloc = parts.netloc
        creds, _, hostlist = netloc.rpartition("@")
        user, _, pwd = creds.partition(":") if creds else ("", "", "")
        hosts = []
        for item in hostlist.split(","):
            host, _, port = item.rpartition(":")
            hosts.append((host or item, int(port) if port else 26379))
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError("a Sentinel URL needs the service name as its path")
        return RedisTarget(
            "sentinel",
            url,
            hosts=tuple(hosts),
            service=path[0],
            db=int(path[1]) if len(path) > 1 else 0,
            username=unquote(user) or None,
            password=unquote(pwd) or None,
            tls=tls,
        )
    return RedisTarget("single", url, tls=tls)


def _common_kwargs(settings: Settings, target: RedisTarget) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout,
        "socket_connect_timeout": settings.redis_timeout,
        "decode_responses": True,
        "health_check_interval": 0,
    }
    if target.tls:
        if settings.redis_tls_ca:
            kwargs["ssl_ca_certs"] = settings.redis_tls_ca
        if settings.redis_tls_cert:
            kwargs["ssl_certfile"] = settings.redis_tls_cert
            kwargs["ssl_keyfile"] = settings.redis_tls_key
    return kwargs


AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster
SyncClient = redis.Redis | redis.cluster.RedisCluster


def async_client(settings: Settings) -> AsyncClient:
    target = parse_target(settings.redis_url)
    kwargs = _common_kwargs(settings, target)
    if target.mode == "cluster":
        return redis.asyncio.cluster.RedisCluster.from_url(target.url, **kwargs)
    if target.mode == "sentinel":
        sentinel = _ASYNC_SENTINEL(
            list(target.hosts),
            sentinel_kwargs={"socket_timeout": settings.redis_timeout},
            **kwargs,
        )
        master: Any = sentinel.master_for(
            target.service,
            db=target.db,
            username=target.username,
            password=target.password,
            ssl=target.tls,
        )
        return cast(AsyncClient, master)
    # A blocking pool makes a burst wait briefly for a connection instead of
    # failing with "too many connections" (which would be a 503).
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        target.url, max_connections=64, timeout=settings.redis_timeout, **kwargs
    )
    return redis.asyncio.Redis.from_pool(pool)  # the client owns (and closes) the pool


def sync_client(settings: Settings, timeout: float = 5.0) -> SyncClient:
    target = parse_target(settings.redis_url)
    kwargs = _common_kwargs(settings, target)
    kwargs["socket_timeout"] = timeout
    kwargs["socket_connect_timeout"] = timeout
    if target.mode == "cluster":
        return redis.cluster.RedisCluster.from_url(target.url, **kwargs)
    if target.mode == "sentinel":
        sentinel = _SYNC_SENTINEL(
            list(target.hosts), sentinel_kwargs={"socket_timeout": timeout}, **kwargs
        )
        master: Any = sentinel.master_for(
            target.service,
            db=target.db,
            username=target.username,
            password=target.password,
            ssl=target.tls,
        )
        return cast(SyncClient, master)
    return redis.Redis.from_url(target.url, **kwargs)
