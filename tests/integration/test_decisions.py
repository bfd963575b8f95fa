"""Every decision path, through the real servicer and a real redis-server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis

from keyguard.keys import hash_key
from keyguard.store import record_key
from tests.integration.conftest import run, service_for
from tests.support.checks import (
    body,
    chat_body,
    check_request,
    create_key,
    http_status,
    keys_cli,
    reason,
    response_headers,
    upstream_headers,
)
from tests.support.procs import free_port


def redis_calls(url: str) -> int:
    """Commands Redis has run so far, not counting the INFO calls that ask."""
    client = redis.Redis.from_url(url)
    stats: dict[str, Any] = client.info("commandstats")
    client.close()
    # Our own INFO, and the HELLO / CLIENT SETINFO every new connection sends.
    ignored = ("cmdstat_info", "cmdstat_client", "cmdstat_hello")
    return sum(v["calls"] for k, v in stats.items() if not k.startswith(ignored))


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_missing_and_malformed_keys_never_touch_redis(redis_url: str) -> None:
    async def scenario() -> None:
        async with service_for(redis_url) as svc:
            before = redis_calls(redis_url)
            missing = await svc.check(check_request({}))
            bad = await svc.check(check_request(bearer("sk-short")))
            wrong_scheme = await svc.check(check_request({"authorization": "Basic abc"}))
            # Keys are hashed before their format is checked (a cached key skips the
            # check): a non-ASCII or huge key must still be a plain 401.
            accented = await svc.check(check_request(bearer("sk-" + "é" * 40)))
            huge = await svc.check(check_request(bearer("sk-" + "a1!" * 20_000)))
            assert redis_calls(redis_url) == before
            assert (http_status(missing), reason(missing)) == (401, "missing_api_key")
            for denied in (bad, wrong_scheme, accented, huge):
                assert (http_status(denied), reason(denied)) == (401, "invalid_api_key")

    run(scenario)


def test_unknown_key_is_401_and_negative_cached(redis_url: str) -> None:
    unknown = "sk-" + "A" * 40

    async def scenario() -> None:
        async with service_for(redis_url) as svc:
            first = await svc.check(check_request(bearer(unknown)))
            after_first = redis_calls(redis_url)
            second = await svc.check(check_request(bearer(unknown)))
            assert redis_calls(redis_url) == after_first
            for resp in (first, second):
                assert (http_status(resp), reason(resp)) == (401, "invalid_api_key")

    run(scenario)


def test_allow_sets_identity_headers_and_strips_credentials(redis_url: str) -> None:
    created = create_key(redis_url, "--name", "svc", "--unlimited")

    async def scenario() -> None:
        async with service_for(redis_url) as svc:
            resp = await svc.check(check_request({"x-api-key": created["key"]}))
            assert http_status(resp) == 200 and resp.status.code == 0
            headers = upstream_headers(resp)
            assert headers["x-keyguard-key-id"] == created["id"]
            assert headers["x-keyguard-key-type"] == "standard"
            assert headers["x-keyguard-billing"] == "unlimited"
            assert {"authorization", "x-api-key"} <= set(resp.ok_response.headers_to_remove)
            assert resp.dynamic_metadata.fields["key_id"].string_value == created["id"]
        async with service_for(redis_url, strip_credentials=False) as svc:
            resp = await svc.check(check_request({"x-api-key": created["key"]}))
            assert "authorization" not in resp.ok_response.headers_to_remove

    run(scenario)


def test_authorization_wins_over_x_api_key_even_when_bad(redis_url: str) -> None:
    good = create_key(redis_url, "--unlimited")["key"]

    async def scenario() -> None:
        async with service_for(redis_url) as svc:
            resp = await svc.check(
                check_request({"authorization": "Bearer sk-nope", "x-api-key": good})
            )
            assert reason(resp) == "invalid_api_key"
            resp = await svc.check(check_request(raw_headers=[("Authorization", f"bearer {good}")]))
            assert http_status(resp) == 200

    run(scenario)


def test_disabled_enabled_and_revoked(redis_url: str) -> None:
    created = create_key(redis_url, "--unlimited")
    req = check_request(bearer(created["key"]))

    async def decide() -> tuple[int, str]:
        # A fresh servicer each time: no cache between CLI changes here.
        async with service_for(redis_url) as svc:
            resp = await svc.check(req)
            return http_status(resp), reason(resp)

    assert run(decide) == (200, "ok")
    assert keys_cli(redis_url, "disable", created["id"])[0] == 0
    assert run(decide) == (401, "key_disabled")
    assert keys_cli(redis_url, "enable", created["id"])[0] == 0
    assert run(decide) == (200, "ok")
    assert keys_cli(redis_url, "revoke", created["id"])[0] == 0
    assert run(decide) == (401, "invalid_api_key")


def test_expired_key_is_401(redis_url: str) -> None:
    created = create_key(redis_url, "--unlimited", "--expires", "+1h")
    client = redis.Redis.from_url(redis_url)
    client.hset(record_key(hash_key(created["key"])), "expires_at", str(int(time.time()) - 1))
    client.close()

    async def scenario() -> None:
        async with service_for(redis_url) as svc:
            resp = await svc.check(check_request(bearer(created["key"])))
            assert (http_status(resp), reason(resp)) == (401, "key_expired")

    run(scenario)


def test_ip_allow_list_with_source_address_and_xff(redis_url: str) -> None:
    key = create_key(redis_url, "--unlimited", "--allowed-ips", "10.0.0.0/8,2001:db8::1")["key"]

    async def scenario() -> None:
        async with service_for(redis_url) as svc:
            inside = await svc.check(check_request(bearer(key), source_ip="10.9.8.7"))
            v6 = await svc.check(check_request(bearer(key), source_ip="2001:db8::1"))
            outside = await svc.check(check_request(bearer(key), source_ip="192.168.1.1"))
            assert [http_status(r) for r in (inside, v6, outside)] == [200, 200, 403]
            assert reason(outside) == "ip_not_allowed"
        async with service_for(redis_url, xff_trusted_hops=1) as svc:
            headers = {**bearer(key), "x-forwarded-for": "192.168.1.1, 10.1.1.1"}
            ok = await svc.check(check_request(headers, source_ip="172.16.0.1"))
            assert http_status(ok) == 200
            headers = {**bearer(key), "x-forwarded-for": "10.1.1.1, 192.168.1.1"}
            spoofed = await svc.check(check_request(headers, source_ip="10.0.0.1"))
            assert reason(spoofed) == "ip_not_allowed"

    run(scenario)


def test_model_allow_list_json_multipart_path_and_partial_body(redis_url: str) -> None:
    key = create_key(redis_url, "--unlimited", "--models", "gpt-4o-mini,whisper-1,gemini-pro")[
        "key"
    ]
    boundary = "XyZ123"
    multipart = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        f"Content-Type: audio/wav\r\n\r\nRIFF....\r\n--{boundary}\r\n"
        f'Content-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n--{boundary}--\r\n'
    ).encode()
    big = chat_body("gpt-4o-mini", extra=200_000)[:65536]

    async def scenario() -> None:
        async with service_for(redis_url) as svc:
            cases = {
                "allowed": (check_request(bearer(key), body=chat_body("gpt-4o-mini")), 200),
                "other": (check_request(bearer(key), body=chat_body("gpt-4o")), 403),
                "none": (check_request(bearer(key), body=b'{"messages":[]}'), 400),
                "POST without body": (check_request(bearer(key), path="/v1/completions"), 400),
                "GET names no model": (
                    check_request(bearer(key), method="GET", path="/v1/models"),
                    200,
                ),
                "multipart": (
                    check_request(
                        {
                            **bearer(key),
                            "content-type": f"multipart/form-data; boundary={boundary}",
                        },
                        path="/v1/audio/transcriptions",
                        body=multipart,
                    ),
                    200,
                ),
                "gemini": (
                    check_request(bearer(key), path="/v1beta/models/gemini-pro:generateContent"),
                    200,
                ),
                "gemini other": (
                    check_request(bearer(key), path="/v1beta/models/gemini-ultra:generateContent"),
                    403,
                ),
                "truncated": (
                    check_request({**bearer(key), "x-envoy-auth-partial-body": "true"}, body=big),
                    200,
                ),
            }
            for name, (req, expected) in cases.items():
                resp = await svc.check(req)
                assert http_status(resp) == expected, name
            resp = await svc.check(check_request(bearer(key), body=chat_body("gpt-4o")))
            assert reason(resp) == "model_not_allowed"
            resp = await svc.check(check_request(bearer(key), body=b"{}"))
            assert reason(resp) == "model_required"

    run(scenario)


def test_key_without_model_list_never_reads_the_body(redis_url: str) -> None:
    key = create_key(redis_url, "--unlimited")["key"]

    async def scenario() -> None:
        async with service_for(redis_url) as svc:
            resp = await svc.check(check_request(bearer(key), body=b"\xff not json at all"))
            assert http_status(resp) == 200

    run(scenario)


def test_quota_is_spent_then_402_then_topup(redis_url: str) -> None:
    created = create_key(redis_url, "--quota", "2")
    req = check_request(bearer(created["key"]))

    async def scenario() -> list[int]:
        async with service_for(redis_url) as svc:
            return [http_status(await svc.check(req)) for _ in range(3)]

    assert run(scenario) == [200, 200, 402]
    code, out = keys_cli(redis_url, "show", created["id"], "--json")
    assert code == 0 and '"remaining": 0' in out and '"used": 2' in out
    assert keys_cli(redis_url, "topup", created["id"], "1")[0] == 0
    assert run(scenario) == [200, 402, 402]


def test_request_cost_setting(redis_url: str) -> None:
    created = create_key(redis_url, "--quota", "10")
    req = check_request(bearer(created["key"]))

    async def scenario() -> list[int]:
        async with service_for(redis_url, request_cost=4) as svc:
            return [http_status(await svc.check(req)) for _ in range(3)]

    assert run(scenario) == [200, 200, 402]


def test_payg_fallback_allows_and_marks_billing(redis_url: str) -> None:
    created = create_key(redis_url, "--quota", "1", "--payg")
    req = check_request(bearer(created["key"]))

    async def scenario() -> list[str]:
        async with service_for(redis_url) as svc:
            return [upstream_headers(await svc.check(req))["x-keyguard-billing"] for _ in range(3)]

    assert run(scenario) == ["quota", "payg", "payg"]
    _, out = keys_cli(redis_url, "show", created["id"], "--json")
    assert '"used": 3' in out and '"payg_used": 2' in out


def test_subscription_cycle_resets_on_first_request_after_boundary(redis_url: str) -> None:
    created = create_key(redis_url, "--type", "subscription", "--quota", "2", "--cycle", "30d")
    assert created["key"].startswith("sk-sub-")
    req = check_request(bearer(created["key"]))
    rec = record_key(hash_key(created["key"]))

    async def burst(n: int) -> list[int]:
        async with service_for(redis_url) as svc:
            return [http_status(await svc.check(req)) for _ in range(n)]

    assert run(lambda: burst(3)) == [200, 200, 402]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    old_end = int(client.hget(rec, "cycle_end") or 0)
    # Move the boundary into the past, as if 30 days (and then some) had gone by.
    client.hset(rec, "cycle_end", str(int(time.time()) - 5))
    assert run(lambda: burst(3)) == [200, 200, 402]
    fields = client.hgetall(rec)
    assert int(fields["cycle_end"]) > time.time()
    assert int(fields["cycle_end"]) - (int(time.time()) - 5) == 30 * 86400
    assert fields["cycle_used"] == "2" and fields["remaining"] == "0" and fields["used"] == "4"
    assert old_end > time.time()
    client.close()


def test_subscription_cycle_resets_in_real_time(redis_url: str) -> None:
    created = create_key(redis_url, "--type", "subscription", "--quota", "1", "--cycle", "2s")
    req = check_request(bearer(created["key"]))

    async def once() -> int:
        async with service_for(redis_url) as svc:
            return http_status(await svc.check(req))

    assert [run(once), run(once)] == [200, 402]
    time.sleep(2.2)
    assert [run(once), run(once)] == [200, 402]


def test_concurrent_spending_never_overspends(redis_url: str) -> None:
    created = create_key(redis_url, "--quota", "50")
    req = check_request(bearer(created["key"]))

    async def scenario() -> list[int]:
        async with service_for(redis_url) as svc:
            return await asyncio.gather(*(svc.check(req) for _ in range(200)))  # type: ignore[return-value]

    statuses = [http_status(r) for r in run(scenario)]  # type: ignore[arg-type]
    assert statuses.count(200) == 50 and statuses.count(402) == 150
    _, out = keys_cli(redis_url, "show", created["id"], "--json")
    assert '"remaining": 0' in out and '"used": 50' in out


def test_rate_limit_gives_429_with_headers(redis_url: str) -> None:
    created = create_key(redis_url, "--unlimited", "--rpm", "5")
    req = check_request(bearer(created["key"]), path="/v1/messages")

    async def scenario() -> None:
        async with service_for(redis_url) as svc:
            results = [await svc.check(req) for _ in range(8)]
            statuses = [http_status(r) for r in results]
            assert statuses == [200] * 5 + [429] * 3
            first = response_headers(results[0])
            assert first["x-ratelimit-limit-requests"] == "5"
            assert first["x-ratelimit-remaining-requests"] == "4"
            assert response_headers(results[4])["x-ratelimit-remaining-requests"] == "0"
            limited = response_headers(results[5])
            assert limited["x-keyguard-reason"] == "rate_limit_exceeded"
            assert 1 <= int(limited["retry-after"]) <= 12
            assert limited["x-ratelimit-remaining-requests"] == "0"
            assert body(results[5])["error"]["type"] == "rate_limit_error"

    run(scenario)


def test_rate_limited_request_spends_no_quota(redis_url: str) -> None:
    created = create_key(redis_url, "--quota", "100", "--rpm", "2")
    req = check_request(bearer(created["key"]))

    async def scenario() -> list[int]:
        async with service_for(redis_url) as svc:
            return [http_status(await svc.check(req)) for _ in range(5)]

    assert run(scenario) == [200, 200, 429, 429, 429]
    _, out = keys_cli(redis_url, "show", created["id"], "--json")
    assert '"remaining": 98' in out


def test_anthropic_and_openai_error_shapes(redis_url: str) -> None:
    async def scenario() -> None:
        async with service_for(redis_url) as svc:
            anthropic = await svc.check(check_request({}, path="/v1/messages"))
            openai = await svc.check(check_request({}, path="/v1/chat/completions"))
            assert body(anthropic) == {
                "type": "error",
                "error": {
                    "type": "authentication_error",
                    "message": body(anthropic)["error"]["message"],
                },
            }
            err = body(openai)["error"]
            assert err["code"] == "missing_api_key" and err["param"] is None
            assert err["type"] == "invalid_request_error"

    run(scenario)


def test_redis_unreachable_is_503_not_an_error() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    key = "sk-" + "b" * 40

    async def scenario() -> None:
        async with service_for(dead) as svc:
            resp = await svc.check(check_request(bearer(key)))
            assert (http_status(resp), reason(resp)) == (503, "store_unavailable")
            assert resp.status.code == 14  # UNAVAILABLE

    run(scenario)
