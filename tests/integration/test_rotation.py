"""Key rotation with a grace period, on a real Redis through the real servicer: the new
secret works at once, the old one until the grace ends and then gets 401 on every
replica at that moment, settings and balance stay with the key."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from keyguard.authz.service import AuthorizationService
from keyguard.keyring import Keyring
from keyguard.runtime.invalidation import InvalidationListener
from tests.integration.conftest import service_for
from tests.support.checks import check_request, create_key, http_status, reason


@contextlib.asynccontextmanager
async def replica(redis_url: str) -> AsyncIterator[AuthorizationService]:
    """The servicer with its change listener, as `keyguard serve` runs it."""
    async with service_for(redis_url) as service:
        decider = service.decider
        listener = InvalidationListener(decider.store, decider.cache)
        listener.start()
        try:
            await asyncio.wait_for(listener.connected.wait(), 5)
            yield service
        finally:
            await listener.stop()


async def status(service: AuthorizationService, key: str) -> tuple[int, str]:
    response = await service.check(check_request({"authorization": f"Bearer {key}"}))
    return http_status(response), reason(response)


def keyring(redis_url: str) -> Keyring:
    return Keyring(redis.Redis.from_url(redis_url, decode_responses=True))


def test_old_secret_works_until_the_grace_ends_then_401_on_every_replica(
    redis_url: str,
) -> None:
    created = create_key(redis_url, "--quota", "10", "--name", "prod")
    old = created["key"]

    async def go() -> dict[str, Any]:
        async with replica(redis_url) as a, replica(redis_url) as b:
            for server in (a, b):  # both have the old secret's record cached
                assert await status(server, old) == (200, "ok")
            rotated = keyring(redis_url).rotate(created["id"], grace_seconds=2)
            grace_end = time.time() + 2
            new = rotated.key
            assert new != old and rotated.info["id"] == created["id"]
            for server in (a, b):
                assert await status(server, new) == (200, "ok")
                assert await status(server, old) == (200, "ok")  # in its grace
            await asyncio.sleep(max(0.0, grace_end - time.time()) + 0.05)
            for server in (a, b):  # at the moment, without waiting for an event
                assert await status(server, old) == (401, "invalid_api_key")
                assert await status(server, new) == (200, "ok")
            return keyring(redis_url).show(created["id"])

    info = asyncio.run(go())
    # One balance for every secret: 10 - 2 (old) - 2 (new, in grace) - 2 (old, in grace)
    # - 2 (new after): the denied calls spent nothing.
    assert (info["remaining"], info["used"], info["name"]) == (10 - 8, 8, "prod")
    assert info["rotated_at"] is not None and info["grace_until"] is not None


def test_grace_zero_ends_the_old_secret_at_once(redis_url: str) -> None:
    created = create_key(redis_url, "--unlimited")

    async def go() -> None:
        async with replica(redis_url) as service:
            assert await status(service, created["key"]) == (200, "ok")
            new = keyring(redis_url).rotate(created["id"], grace_seconds=0).key
            await asyncio.sleep(0.2)  # the change event reaches the cache
            assert await status(service, created["key"]) == (401, "invalid_api_key")
            assert await status(service, new) == (200, "ok")

    asyncio.run(go())


def test_rotating_again_during_a_grace_ends_the_older_grace(redis_url: str) -> None:
    created = create_key(redis_url, "--unlimited")
    first = created["key"]

    async def go() -> None:
        async with replica(redis_url) as service:
            ring = keyring(redis_url)
            second = ring.rotate(created["id"], grace_seconds=3600).key
            third = ring.rotate(created["id"], grace_seconds=3600).key
            await asyncio.sleep(0.2)
            assert await status(service, first) == (401, "invalid_api_key")
            assert await status(service, second) == (200, "ok")  # the current grace
            assert await status(service, third) == (200, "ok")
            fourth = ring.rotate(created["id"], grace_seconds=0).key
            await asyncio.sleep(0.2)
            for gone in (first, second, third):
                assert await status(service, gone) == (401, "invalid_api_key")
            assert await status(service, fourth) == (200, "ok")

    asyncio.run(go())


def test_revoke_after_rotation_stops_every_secret(redis_url: str) -> None:
    created = create_key(redis_url, "--unlimited")

    async def go() -> None:
        async with replica(redis_url) as service:
            ring = keyring(redis_url)
            new = ring.rotate(created["id"], grace_seconds=3600).key
            assert await status(service, new) == (200, "ok")
            ring.revoke(created["id"])
            await asyncio.sleep(0.2)
            for key in (created["key"], new):
                assert await status(service, key) == (401, "invalid_api_key")
        client = redis.Redis.from_url(redis_url)
        try:
            assert list(client.scan_iter(match="kg:{*}:rec")) == []
        finally:
            client.close()

    asyncio.run(go())


def test_a_disable_reaches_the_records_cached_under_every_secret(redis_url: str) -> None:
    created = create_key(redis_url, "--unlimited")

    async def go() -> None:
        async with replica(redis_url) as service:
            ring = keyring(redis_url)
            new = ring.rotate(created["id"], grace_seconds=3600).key
            for key in (created["key"], new):
                assert await status(service, key) == (200, "ok")
            ring.set_status(created["id"], enabled=False)
            await asyncio.sleep(0.3)
            for key in (created["key"], new):
                assert await status(service, key) == (401, "key_disabled")

    asyncio.run(go())


def test_keys_rotate_cli_and_api_show_the_new_key_once(redis_url: str) -> None:
    import json

    from fastapi.testclient import TestClient

    from keyguard.admin.app import create_app
    from keyguard.admin.auth import TokenStore
    from keyguard.admin.settings import AdminSettings
    from keyguard.keys import hash_key
    from tests.support.checks import keys_cli

    created = create_key(redis_url, "--quota", "5")
    code, out = keys_cli(redis_url, "rotate", created["id"], "--grace", "2h", "--json")
    assert code == 0
    rotated = json.loads(out)
    assert rotated["id"] == created["id"] and rotated["key"].startswith("sk-")
    assert rotated["key"] != created["key"] and rotated["grace_until"]
    # The raw key is stored nowhere; its hash leads to the key's record through an alias.
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert client.hget(f"kg:{{{hash_key(rotated['key'])}}}:rec", "alias_of") == hash_key(
            created["key"]
        )
        for key in client.scan_iter():
            assert rotated["key"] not in str(client.dump(key))
        token = TokenStore(client).create("admin", "t").token
        app = create_app(AdminSettings(), client)
        with TestClient(app, base_url="http://127.0.0.1") as http:
            auth = {"authorization": f"Bearer {token}"}
            resp = http.post(f"/v1/keys/{created['id']}/rotate", json={"grace": "0"}, headers=auth)
            assert resp.status_code == 200, resp.text
            assert resp.json()["key"].startswith("sk-")
            bad = http.post(f"/v1/keys/{created['id']}/rotate", json={"grace": "31d"}, headers=auth)
            assert bad.status_code == 400 and "grace" in bad.json()["detail"]
            missing = http.post("/v1/keys/kg_000000000000/rotate", json={}, headers=auth)
            assert missing.status_code == 404
    finally:
        client.close()
    with pytest.raises(SystemExit) as refused:  # argparse: a one-line usage error
        keys_cli(redis_url, "rotate", created["id"], "--grace=-1h")
    assert refused.value.code == 2
