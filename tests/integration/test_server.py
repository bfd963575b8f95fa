"""`keyguard serve` as a real process, over real gRPC, against real redis-servers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import redis

from tests.support.checks import check_request, create_key, http_status, keys_cli, reason
from tests.support.grpc_client import Client, wait_until
from tests.support.procs import (
    KeyguardServer,
    RedisServer,
    keyguard_cmd,
    running_keyguard,
    running_redis,
)


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def metrics_text(server: KeyguardServer) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics") as resp:
        return str(resp.read().decode())


def metric_value(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    needle = f"{name}{{{want}}} " if labels else f"{name} "
    total = 0.0
    for line in text.splitlines():
        if line.startswith(needle):
            total += float(line.split()[-1])
    return total


def command_calls(url: str, *names: str) -> int:
    client = redis.Redis.from_url(url)
    stats = client.info("commandstats")
    client.close()
    return sum(int(stats.get(f"cmdstat_{n}", {}).get("calls", 0)) for n in names)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server this test may kill and restart."""
    with running_redis() as server:
        yield server


def test_serves_checks_health_metrics_and_logs(redis_url: str) -> None:
    created = create_key(redis_url, "--quota", "5", "--name", "svc")
    with running_keyguard(redis_url) as server, Client(server.target) as client:
        wait_until(lambda: client.health_status() == "SERVING")
        allowed = client.check(check_request({**bearer(created["key"]), "x-request-id": "req-1"}))
        denied = client.check(check_request({"x-api-key": "sk-" + "z" * 40}, path="/v1/messages"))
        assert http_status(allowed) == 200 and http_status(denied) == 401
        text = metrics_text(server)
        assert metric_value(text, "keyguard_decisions_total", decision="allow", reason="ok") == 1
        assert (
            metric_value(
                text, "keyguard_decisions_total", decision="deny", reason="invalid_api_key"
            )
            == 1
        )
        assert metric_value(text, "keyguard_check_duration_seconds_count") == 2
        assert metric_value(text, "keyguard_store_up") == 1
        assert created["key"] not in text
        server.stop()
        logs = server.logs()
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    decisions = [entry for entry in lines if entry.get("event") == "decision"]
    assert [d["decision"] for d in decisions] == ["allow", "deny"]
    assert decisions[0]["key_id"] == created["id"] and decisions[0]["request_id"] == "req-1"
    assert decisions[1]["reason"] == "invalid_api_key"
    assert "latency_ms" in decisions[0]
    assert created["key"] not in logs


def test_sigterm_reports_not_serving_and_drains(redis_url: str) -> None:
    key = create_key(redis_url, "--unlimited")["key"]
    server = KeyguardServer(redis_url, env={"KEYGUARD_GRACE_SECONDS": "3"})
    try:
        server.start()
        with Client(server.target) as client:
            wait_until(lambda: client.health_status() == "SERVING")
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: client.health_status() == "NOT_SERVING", timeout=2)
            # Still answering during the drain window.
            assert http_status(client.check(check_request(bearer(key)))) == 200
            assert server.proc.wait(timeout=10) == 0
    finally:
        server.close()


def test_redis_outage_gives_503_then_recovers_without_restart(own_redis: RedisServer) -> None:
    key = create_key(own_redis.url, "--quota", "100")["key"]
    with running_keyguard(own_redis.url) as server, Client(server.target) as client:
        wait_until(lambda: client.health_status() == "SERVING")
        assert http_status(client.check(check_request(bearer(key)))) == 200
        own_redis.kill()
        resp = client.check(check_request(bearer(key)))
        assert (http_status(resp), reason(resp)) == (503, "store_unavailable")
        wait_until(lambda: client.health_status() == "NOT_SERVING", timeout=5)
        own_redis.start()
        # The data died with the process (no persistence): recreate it.
        key = create_key(own_redis.url, "--quota", "100")["key"]
        wait_until(lambda: http_status(client.check(check_request(bearer(key)))) == 200)
        wait_until(lambda: client.health_status() == "SERVING", timeout=5)


def test_on_store_error_allow_marks_requests_degraded(own_redis: RedisServer) -> None:
    key = create_key(own_redis.url, "--quota", "100")["key"]
    env = {"KEYGUARD_ON_STORE_ERROR": "allow"}
    with running_keyguard(own_redis.url, env) as server, Client(server.target) as client:
        wait_until(lambda: client.health_status() == "SERVING")
        own_redis.kill()
        known = client.check(check_request(bearer(key)))
        unknown = client.check(check_request(bearer("sk-" + "q" * 40)))
        malformed = client.check(check_request(bearer("sk-short")))
        for resp in (known, unknown):
            headers = {o.header.key: o.header.value for o in resp.ok_response.headers}
            assert http_status(resp) == 200 and headers["x-keyguard-degraded"] == "1"
        assert http_status(malformed) == 401
        time.sleep(1.5)
        assert client.health_status() == "SERVING"  # allow mode stays in rotation


def test_on_store_error_cached_serves_known_keys_only(own_redis: RedisServer) -> None:
    known = create_key(own_redis.url, "--unlimited", "--models", "gpt-4o")["key"]
    env = {"KEYGUARD_ON_STORE_ERROR": "cached", "KEYGUARD_CACHE_TTL": "0.5"}
    with running_keyguard(own_redis.url, env) as server, Client(server.target) as client:
        wait_until(lambda: client.health_status() == "SERVING")
        body = b'{"model":"gpt-4o"}'
        assert http_status(client.check(check_request(bearer(known), body=body))) == 200
        own_redis.kill()
        time.sleep(0.6)  # the entry is past its TTL but within KEYGUARD_STALE_SECONDS
        resp = client.check(check_request(bearer(known), body=body))
        headers = {o.header.key: o.header.value for o in resp.ok_response.headers}
        assert http_status(resp) == 200 and headers["x-keyguard-degraded"] == "1"
        wrong_model = client.check(check_request(bearer(known), body=b'{"model":"o1"}'))
        assert reason(wrong_model) == "model_not_allowed"  # still checked
        unknown = client.check(check_request(bearer("sk-" + "u" * 40)))
        assert reason(unknown) == "store_unavailable"
        wait_until(lambda: client.health_status() == "NOT_SERVING", timeout=5)


def test_revocation_reaches_two_processes_within_one_second(redis_url: str) -> None:
    keys = {
        "revoke": create_key(redis_url, "--unlimited"),
        "disable": create_key(redis_url, "--unlimited"),
    }
    env = {"KEYGUARD_CACHE_TTL": "300"}  # only pub/sub can make this fast
    with (
        running_keyguard(redis_url, env) as one,
        running_keyguard(redis_url, env) as two,
        Client(one.target) as c1,
        Client(two.target) as c2,
    ):
        for client in (c1, c2):
            wait_until(lambda client=client: client.health_status() == "SERVING")  # type: ignore[misc]
        for action, created in keys.items():
            req = check_request(bearer(created["key"]))
            assert http_status(c1.check(req)) == 200 and http_status(c2.check(req)) == 200
            assert keys_cli(redis_url, action, created["id"])[0] == 0
            start = time.monotonic()
            wait_until(lambda req=req: http_status(c1.check(req)) == 401, timeout=1.0)  # type: ignore[misc]
            wait_until(lambda req=req: http_status(c2.check(req)) == 401, timeout=1.0)  # type: ignore[misc]
            assert time.monotonic() - start < 1.0


def test_cache_hits_make_zero_redis_calls_and_metered_keys_one(redis_url: str) -> None:
    free = create_key(redis_url, "--unlimited")["key"]
    metered = create_key(redis_url, "--quota", "1000", "--rpm", "6000")["key"]
    env = {"KEYGUARD_REQUEST_COST": "0", "KEYGUARD_CACHE_TTL": "300"}
    with running_keyguard(redis_url, env) as server, Client(server.target) as client:
        wait_until(lambda: client.health_status() == "SERVING")
        assert http_status(client.check(check_request(bearer(free)))) == 200  # warm the cache
        before = command_calls(redis_url, "hgetall", "evalsha", "eval", "get", "hget")
        for _ in range(50):
            assert http_status(client.check(check_request(bearer(free)))) == 200
        assert command_calls(redis_url, "hgetall", "evalsha", "eval", "get", "hget") == before
    env = {"KEYGUARD_REQUEST_COST": "1", "KEYGUARD_CACHE_TTL": "300"}
    with running_keyguard(redis_url, env) as server, Client(server.target) as client:
        wait_until(lambda: client.health_status() == "SERVING")
        assert http_status(client.check(check_request(bearer(metered)))) == 200
        before_eval = command_calls(redis_url, "evalsha", "eval")
        # Commands a script runs are counted too, so only HGETALL (the record
        # lookup, never called from a script) shows whether the cache was used.
        before_get = command_calls(redis_url, "hgetall")
        for _ in range(50):
            assert http_status(client.check(check_request(bearer(metered)))) == 200
        assert command_calls(redis_url, "evalsha", "eval") - before_eval == 50
        assert command_calls(redis_url, "hgetall") == before_get


def test_a_check_whose_deadline_passes_during_its_lookup_spends_nothing(
    own_redis: RedisServer,
) -> None:
    """Redis stalls (stopped) while keyguard looks up an uncached metered key, and the
    caller's deadline passes meanwhile: nothing is spent once Redis answers again. (grpc
    cancels the waiting handler; a Check that reaches the spend after its deadline without
    waiting is refused by keyguard itself, check_too_late: tests/unit/test_decide.py.)"""
    created = create_key(own_redis.url, "--quota", "1000")
    req = check_request(bearer(created["key"]))
    env = {"KEYGUARD_REDIS_TIMEOUT": "5"}  # the lookup outlives the deadline, not fails
    with running_keyguard(own_redis.url, env) as server, Client(server.target) as client:
        wait_until(lambda: client.health_status() == "SERVING")
        with ThreadPoolExecutor(max_workers=1) as pool:
            os.kill(own_redis.pid, signal.SIGSTOP)
            try:
                late = pool.submit(client.check, req, 0.3)
                time.sleep(0.8)  # the deadline passes while the lookup waits
            finally:
                os.kill(own_redis.pid, signal.SIGCONT)
            with pytest.raises(grpc.RpcError) as failed:
                late.result(timeout=10)
        assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert http_status(client.check(req)) == 200  # keyguard goes on serving
    code, out = keys_cli(own_redis.url, "show", created["id"], "--json")
    assert code == 0
    shown = json.loads(out)
    assert (shown["used"], shown["remaining"]) == (1, 999)


def test_rate_limit_burst_allows_exactly_rpm(redis_url: str) -> None:
    created = create_key(redis_url, "--unlimited", "--rpm", "30")
    with running_keyguard(redis_url) as server, Client(server.target) as client:
        wait_until(lambda: client.health_status() == "SERVING")
        req = check_request(bearer(created["key"]))
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(lambda _: http_status(client.check(req)), range(100)))
        # GCRA with a burst of one minute's allowance: 30 at once, plus at most
        # one more if an emission interval (2 s) elapsed during the burst.
        assert 30 <= statuses.count(200) <= 31
        assert statuses.count(429) == 100 - statuses.count(200)


def test_workers_share_a_port_and_metrics_sum(redis_url: str) -> None:
    key = create_key(redis_url, "--unlimited")["key"]
    env = {"KEYGUARD_WORKERS": "2"}
    with running_keyguard(redis_url, env) as server:
        # The port answers as soon as the first worker binds; wait for both.
        wait_until(lambda: server.logs().count('"event": "started"') == 2, timeout=30)
        clients = [Client(server.target) for _ in range(8)]
        try:
            wait_until(lambda: all(c.health_status() == "SERVING" for c in clients), timeout=20)
            for client in clients:
                for _ in range(5):
                    assert http_status(client.check(check_request(bearer(key)))) == 200
        finally:
            for client in clients:
                client.close()
        # Each worker applies its per-Check updates within APPLY_DELAY; the sum gets there.
        wait_until(
            lambda: (
                metric_value(
                    metrics_text(server), "keyguard_decisions_total", decision="allow", reason="ok"
                )
                == 40
            ),
            timeout=10,
        )
        pids = {
            json.loads(line).get("pid")
            for line in server.logs().splitlines()
            if '"event": "started"' in line
        }
        assert len(pids) == 2 and server.proc is not None and server.proc.pid not in pids


@pytest.mark.parametrize("which", ["grpc", "metrics"])
def test_a_taken_port_is_a_one_line_error(redis_url: str, which: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = KeyguardServer(redis_url)
        env = {
            "KEYGUARD_REDIS_URL": redis_url,
            "KEYGUARD_LISTEN": f"127.0.0.1:{port if which == 'grpc' else server.port}",
            "KEYGUARD_METRICS_HOST": "127.0.0.1",
            "KEYGUARD_METRICS_PORT": str(port if which == "metrics" else server.metrics_port),
        }
        result = subprocess.run(
            [*keyguard_cmd(), "serve"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("keyguard: error: cannot ")
    assert "Traceback" not in result.stderr


def test_liveness_service_ignores_redis(own_redis: RedisServer) -> None:
    from grpc_health.v1 import health_pb2

    with running_keyguard(own_redis.url) as server, Client(server.target) as client:
        wait_until(lambda: client.health_status() == "SERVING")
        own_redis.kill()
        wait_until(lambda: client.health_status() == "NOT_SERVING", timeout=5)
        reply = client.health.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=2)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
