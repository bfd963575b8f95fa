"""The decision paths on a real 3-master Redis Cluster and behind a real Sentinel."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis

from keyguard.keys import hash_key
from keyguard.store import ratelimit_key, record_key
from tests.integration.conftest import run, service_for
from tests.support.checks import check_request, create_key, http_status, keys_cli, reason
from tests.support.grpc_client import Client, wait_until
from tests.support.procs import running_keyguard
from tests.support.topologies import redis_cluster, redis_with_sentinel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    with redis_cluster(3) as ports:
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_all_keys_of_one_api_key_share_a_slot() -> None:
    key_hash = hash_key("sk-" + "a" * 40)
    slot = redis.cluster.key_slot
    assert slot(record_key(key_hash).encode()) == slot(ratelimit_key(key_hash).encode())


def test_decision_paths_on_cluster(cluster_url: str) -> None:
    unlimited = create_key(cluster_url, "--unlimited", "--models", "gpt-4o")
    quota = create_key(cluster_url, "--quota", "2", "--rpm", "100")
    payg = create_key(cluster_url, "--quota", "0", "--payg")
    limited = create_key(cluster_url, "--unlimited", "--rpm", "2")
    sub = create_key(cluster_url, "--type", "subscription", "--quota", "1", "--cycle", "1h")
    disabled = create_key(cluster_url, "--unlimited")
    assert keys_cli(cluster_url, "disable", disabled["id"])[0] == 0

    async def scenario() -> None:
        async with service_for(cluster_url) as svc:

            async def status(key: str, body: bytes = b"") -> tuple[int, str]:
                resp = await svc.check(check_request(bearer(key), body=body))
                return http_status(resp), reason(resp)

            assert await status(unlimited["key"], b'{"model":"gpt-4o"}') == (200, "ok")
            assert await status(unlimited["key"], b'{"model":"o1"}') == (403, "model_not_allowed")
            assert await status(unlimited["key"]) == (400, "model_required")
            assert [await status(quota["key"]) for _ in range(3)] == [
                (200, "ok"),
                (200, "ok"),
                (402, "insufficient_quota"),
            ]
            assert await status(payg["key"]) == (200, "ok")
            assert [(await status(limited["key"]))[0] for _ in range(3)] == [200, 200, 429]
            assert [(await status(sub["key"]))[0] for _ in range(2)] == [200, 402]
            assert await status(disabled["key"]) == (401, "key_disabled")
            assert await status("sk-" + "n" * 40) == (401, "invalid_api_key")
            results = await asyncio.gather(
                *(svc.check(check_request(bearer(quota["key"]))) for _ in range(20))
            )
            assert all(http_status(r) == 402 for r in results)

    run(scenario)
    code, out = keys_cli(cluster_url, "list", "--json")
    assert code == 0 and out.count('"id"') == 6
    assert keys_cli(cluster_url, "revoke", quota["id"])[0] == 0


def test_revocation_on_cluster_via_pubsub(cluster_url: str) -> None:
    created = create_key(cluster_url, "--unlimited")
    env = {"KEYGUARD_CACHE_TTL": "300"}
    with running_keyguard(cluster_url, env) as server, Client(server.target) as client:
        wait_until(lambda: client.health_status() == "SERVING", timeout=15)
        req = check_request(bearer(created["key"]))
        assert http_status(client.check(req)) == 200
        assert keys_cli(cluster_url, "revoke", created["id"])[0] == 0
        wait_until(lambda: http_status(client.check(req)) == 401, timeout=1.0)


def test_sentinel_url() -> None:
    with redis_with_sentinel("kgmaster") as (_master, sentinel_port):
        url = f"redis+sentinel://127.0.0.1:{sentinel_port}/kgmaster/0"
        created = create_key(url, "--quota", "1")

        async def scenario() -> list[int]:
            async with service_for(url) as svc:
                req = check_request(bearer(created["key"]))
                return [http_status(await svc.check(req)) for _ in range(2)]

        assert run(scenario) == [200, 402]
