"""Every decision path through real Envoy, with envoy/envoy.yaml as shipped (ports aside).

What the client gets (status, body shape, x-keyguard-reason) and what the upstream gets
(credentials stripped, x-keyguard-* added; nothing at all on a deny).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from harness.cli import random_key
from tests.e2e.conftest import (
    ANTHROPIC_VERSION,
    HttpStack,
    assert_denied,
    chat_body,
    echo_headers,
    messages_body,
)

pytestmark = pytest.mark.e2e

MODELS = "gpt-4o-mini,claude-3-5-haiku,whisper-1,gemini-1.5-flash"


# --------------------------------------------------------------------------- allow


def test_openai_allow_strips_bearer_and_adds_identity(stack: HttpStack) -> None:
    key = stack.key("--name", "e2e-openai", "--quota", "100")
    assert key.type == "standard"
    resp = stack.chat(key)
    assert resp.status_code == 200, resp.text
    assert resp.json()["object"] == "chat.completion"
    seen = echo_headers(resp)
    assert "authorization" not in seen and "x-api-key" not in seen
    assert seen["x-keyguard-key-id"] == key.id
    assert seen["x-keyguard-key-type"] == "standard"
    assert seen.get("x-keyguard-billing") != "payg"
    assert "x-keyguard-reason" not in resp.headers


def test_anthropic_allow_strips_x_api_key(stack: HttpStack) -> None:
    key = stack.key("--type", "subscription", "--quota", "100", "--cycle", "30d")
    assert key.type == "subscription"
    sub_prefix = key.key.startswith("sk-sub-")  # not in the assert: pytest would show the key
    assert sub_prefix
    resp = stack.message(key)
    assert resp.status_code == 200, resp.text
    assert resp.json()["type"] == "message"
    seen = echo_headers(resp)
    assert "authorization" not in seen and "x-api-key" not in seen
    assert seen["x-keyguard-key-id"] == key.id
    assert seen["x-keyguard-key-type"] == "subscription"
    assert seen["anthropic-version"] == "2023-06-01"


def test_client_cannot_forge_keyguard_headers(stack: HttpStack) -> None:
    key = stack.key("--quota", "100")
    forged = {
        "x-keyguard-key-id": "kg_forged",
        "x-keyguard-key-type": "subscription",
        "x-keyguard-billing": "payg",
    }
    resp = stack.post("/v1/chat/completions", chat_body(), bearer=key.key, headers=forged)
    assert resp.status_code == 200, resp.text
    seen = echo_headers(resp)
    assert seen["x-keyguard-key-id"] == key.id
    assert seen["x-keyguard-key-type"] == "standard"
    assert seen.get("x-keyguard-billing") != "payg"


def test_upstream_gets_the_key_env_and_owner_and_never_a_forged_one(stack: HttpStack) -> None:
    labelled = stack.key("--quota", "100", "--env", "live", "--owner", "team-a", "--meta", "a=b")
    forged = {"x-keyguard-key-env": "prod", "x-keyguard-key-owner": "mallory"}
    resp = stack.post("/v1/chat/completions", chat_body(), bearer=labelled.key, headers=forged)
    assert resp.status_code == 200, resp.text
    seen = echo_headers(resp)
    assert seen["x-keyguard-key-env"] == "live"
    assert seen["x-keyguard-key-owner"] == "team-a"
    assert not any(name.startswith("x-keyguard-key-meta") for name in seen)

    # A key without them: the client's copies are removed, not passed on.
    bare = stack.key("--quota", "100")
    resp = stack.post("/v1/chat/completions", chat_body(), bearer=bare.key, headers=forged)
    assert resp.status_code == 200, resp.text
    seen = echo_headers(resp)
    assert "x-keyguard-key-env" not in seen and "x-keyguard-key-owner" not in seen
    assert seen["x-keyguard-key-id"] == bare.id

    # A change reaches the upstream headers (the cached record and its memo go; by
    # pub/sub, a moment after the CLI returns).
    stack.admin("set", labelled.id, "--owner", "team-b", "--env", "")
    deadline = time.monotonic() + 5.0
    while True:
        seen = echo_headers(stack.chat(labelled))
        if seen.get("x-keyguard-key-owner") == "team-b" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert seen["x-keyguard-key-owner"] == "team-b" and "x-keyguard-key-env" not in seen


def test_bearer_wins_over_x_api_key(stack: HttpStack) -> None:
    good = stack.key("--quota", "100")
    resp = stack.post("/v1/chat/completions", chat_body(), bearer=good.key, api_key=random_key())
    assert resp.status_code == 200, resp.text
    seen = echo_headers(resp)
    assert "authorization" not in seen and "x-api-key" not in seen
    assert seen["x-keyguard-key-id"] == good.id

    with stack.unreached():
        resp = stack.post(
            "/v1/chat/completions", chat_body(), bearer=random_key(), api_key=good.key
        )
    assert_denied(resp, 401, "invalid_api_key", anthropic=False)


def test_payg_kicks_in_when_quota_is_used_up(stack: HttpStack) -> None:
    key = stack.key("--quota", "1", "--payg")
    first = stack.chat(key)
    assert first.status_code == 200, first.text
    assert echo_headers(first).get("x-keyguard-billing") != "payg"
    second = stack.chat(key)
    assert second.status_code == 200, second.text
    assert echo_headers(second)["x-keyguard-billing"] == "payg"


def test_quota_is_spent_then_402_then_topup(stack: HttpStack) -> None:
    key = stack.key("--quota", "2")
    assert [stack.chat(key).status_code for _ in range(2)] == [200, 200]
    with stack.unreached():
        resp = stack.chat(key)
        assert_denied(resp, 402, "insufficient_quota", anthropic=False)
        resp = stack.message(key, "claude-3-5-haiku")
        assert_denied(resp, 402, "insufficient_quota", anthropic=True)
    stack.admin("topup", key.id, "5")
    resp = stack.eventually(lambda: stack.chat(key), 200)
    assert resp.status_code == 200, resp.text


def test_unlimited_key(stack: HttpStack) -> None:
    key = stack.key("--unlimited")
    assert [stack.chat(key).status_code for _ in range(5)] == [200] * 5


def test_rate_limit_headers_and_429(stack: HttpStack) -> None:
    key = stack.key("--unlimited", "--rpm", "2")
    first = stack.chat(key)
    assert first.status_code == 200, first.text
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-reset-requests"]
    assert stack.chat(key).status_code == 200
    with stack.unreached():
        resp = stack.chat(key)
        assert_denied(resp, 429, "rate_limit_exceeded", anthropic=False)
        assert int(resp.headers["retry-after"]) >= 1
        resp = stack.message(key)
        assert_denied(resp, 429, "rate_limit_exceeded", anthropic=True)
        assert int(resp.headers["retry-after"]) >= 1


def test_unlimited_key_without_rpm_gets_no_rate_limit_headers(stack: HttpStack) -> None:
    resp = stack.chat(stack.key("--unlimited"))
    assert resp.status_code == 200
    assert not any(h.startswith("x-ratelimit-") for h in resp.headers)


def test_models_list_checks_the_key(stack: HttpStack) -> None:
    key = stack.key("--quota", "100")
    resp = stack.http.get("/v1/models", headers={"authorization": f"Bearer {key.key}"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["object"] == "list"
    assert "authorization" not in echo_headers(resp)
    with stack.unreached():
        resp = stack.http.get("/v1/models")
    assert_denied(resp, 401, "missing_api_key", anthropic=False)


def test_models_list_needs_no_model_for_a_key_with_a_model_list(stack: HttpStack) -> None:
    key = stack.key("--quota", "100", "--models", MODELS)
    resp = stack.http.get("/v1/models", headers={"authorization": f"Bearer {key.key}"})
    assert resp.status_code == 200, resp.text


def test_healthz_needs_no_key_and_skips_keyguard(stack: HttpStack) -> None:
    before = stack.envoy.stats("ext_authz")
    with stack.unreached():
        resp = stack.http.get("/healthz")
    assert resp.status_code == 200
    assert resp.text == "ok\n"
    assert stack.envoy.stats("ext_authz") == before


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl command (h2c client)")
def test_h2c_prior_knowledge(stack: HttpStack) -> None:
    key = stack.key("--quota", "100")
    # The key goes to curl on stdin (-K -), never on its command line.
    config = "\n".join(
        [
            f'url = "{stack.base_url}/v1/chat/completions"',
            f'header = "authorization: Bearer {key.key}"',
            'header = "content-type: application/json"',
            f"data = {json.dumps(json.dumps(chat_body()))}",
            "http2-prior-knowledge",
            "silent",
            "include",
            'noproxy = "*"',
        ]
    )
    result = subprocess.run(
        ["curl", "-K", "-"], input=config, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    head, _, body = result.stdout.partition("\n\n")  # text mode turned CRLF into LF
    assert head.startswith("HTTP/2 200"), head
    assert json.loads(body)["_echo"]["headers"]["x-keyguard-key-id"] == key.id


# --------------------------------------------------------------------------- deny: credential


@pytest.mark.parametrize("anthropic", [False, True], ids=["openai", "anthropic"])
def test_missing_key(stack: HttpStack, anthropic: bool) -> None:
    with stack.unreached():
        resp = stack.message(None) if anthropic else stack.chat(None)
    assert_denied(resp, 401, "missing_api_key", anthropic=anthropic)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("sk-short", id="too-short"),
        pytest.param("not-a-key-at-all-but-long-enough-000000000", id="no-prefix"),
        pytest.param(random_key(), id="unknown"),
        pytest.param(random_key("sk-sub-"), id="unknown-subscription"),
    ],
)
def test_invalid_key(stack: HttpStack, raw: str) -> None:
    with stack.unreached():
        resp = stack.chat(raw)
    assert_denied(resp, 401, "invalid_api_key", anthropic=False)


def test_invalid_key_anthropic_shape(stack: HttpStack) -> None:
    with stack.unreached():
        resp = stack.message(random_key())
    assert_denied(resp, 401, "invalid_api_key", anthropic=True)


def test_not_a_bearer_scheme(stack: HttpStack) -> None:
    key = stack.key("--quota", "100")
    with stack.unreached():
        resp = stack.post(
            "/v1/chat/completions", chat_body(), headers={"authorization": f"Basic {key.key}"}
        )
    assert resp.status_code == 401, resp.text
    assert resp.headers["x-keyguard-reason"] in ("invalid_api_key", "missing_api_key")


def test_disabled_key(stack: HttpStack) -> None:
    key = stack.key("--quota", "100")
    stack.admin("disable", key.id)
    with stack.unreached():
        assert_denied(stack.chat(key), 401, "key_disabled", anthropic=False)
        assert_denied(stack.message(key), 401, "key_disabled", anthropic=True)


def test_disable_and_enable_take_effect_on_a_key_in_use(stack: HttpStack) -> None:
    key = stack.key("--quota", "100")
    assert stack.chat(key).status_code == 200  # now in keyguard's cache
    stack.admin("disable", key.id)
    resp = stack.eventually(lambda: stack.chat(key), 401)
    assert_denied(resp, 401, "key_disabled", anthropic=False)
    stack.admin("enable", key.id)
    assert stack.eventually(lambda: stack.chat(key), 200).status_code == 200


def test_revoked_key(stack: HttpStack) -> None:
    key = stack.key("--quota", "100")
    assert stack.chat(key).status_code == 200
    stack.admin("revoke", key.id)
    resp = stack.eventually(lambda: stack.chat(key), 401)
    assert resp.status_code == 401, resp.text
    assert resp.headers["x-keyguard-reason"] in ("invalid_api_key", "key_disabled")


def test_expired_key(stack: HttpStack) -> None:
    # The CLI refuses a date in the past, so the key expires a second after creation.
    key = stack.key("--quota", "100", "--expires", "+1s")
    resp = stack.eventually(lambda: stack.chat(key), 401)
    assert_denied(resp, 401, "key_expired", anthropic=False)
    with stack.unreached():
        assert_denied(stack.chat(key), 401, "key_expired", anthropic=False)
        assert_denied(stack.message(key), 401, "key_expired", anthropic=True)


# --------------------------------------------------------------------------- deny: IP


def test_ip_not_allowed(stack: HttpStack) -> None:
    key = stack.key("--quota", "100", "--allowed-ips", "10.0.0.0/8")
    with stack.unreached():
        assert_denied(stack.chat(key), 403, "ip_not_allowed", anthropic=False)
        assert_denied(stack.message(key), 403, "ip_not_allowed", anthropic=True)


def test_x_forwarded_for_cannot_spoof_an_allowed_ip(stack: HttpStack) -> None:
    # Envoy trusts the TCP peer (use_remote_address), so a forged XFF changes nothing.
    key = stack.key("--quota", "100", "--allowed-ips", "10.0.0.0/8")
    with stack.unreached():
        resp = stack.post(
            "/v1/chat/completions",
            chat_body(),
            bearer=key.key,
            headers={"x-forwarded-for": "10.1.2.3"},
        )
    assert_denied(resp, 403, "ip_not_allowed", anthropic=False)


def test_allowed_ip(stack: HttpStack) -> None:
    key = stack.key("--quota", "100", "--allowed-ips", "192.0.2.0/24,127.0.0.1")
    resp = stack.chat(key)
    assert resp.status_code == 200, resp.text


# --------------------------------------------------------------------------- deny: model


@pytest.mark.parametrize("anthropic", [False, True], ids=["openai", "anthropic"])
def test_model_not_allowed(stack: HttpStack, anthropic: bool) -> None:
    key = stack.key("--quota", "100", "--models", MODELS)
    with stack.unreached():
        resp = stack.message(key, "claude-3-opus") if anthropic else stack.chat(key, "gpt-4o")
    assert_denied(resp, 403, "model_not_allowed", anthropic=anthropic)


@pytest.mark.parametrize("anthropic", [False, True], ids=["openai", "anthropic"])
def test_model_required(stack: HttpStack, anthropic: bool) -> None:
    key = stack.key("--quota", "100", "--models", MODELS)
    with stack.unreached():
        resp = stack.message(key, None) if anthropic else stack.chat(key, None)
    assert_denied(resp, 400, "model_required", anthropic=anthropic)


def test_key_without_model_list_needs_no_model(stack: HttpStack) -> None:
    resp = stack.chat(stack.key("--quota", "100"), None)
    assert resp.status_code == 200, resp.text


def test_anthropic_shape_follows_the_path_not_the_header(stack: HttpStack) -> None:
    # /v1/messages with a query string is still Anthropic; a Bearer key doesn't change it.
    with stack.unreached():
        resp = stack.post("/v1/messages?beta=true", messages_body(), headers=ANTHROPIC_VERSION)
    assert_denied(resp, 401, "missing_api_key", anthropic=True)
    with stack.unreached():
        resp = stack.post("/v1/messages", messages_body(), bearer=random_key())
    assert_denied(resp, 401, "invalid_api_key", anthropic=True)


def test_gemini_style_path(stack: HttpStack) -> None:
    key = stack.key("--quota", "100", "--models", MODELS)
    body = {"contents": [{"parts": [{"text": "Hello"}]}]}
    ok = stack.post("/v1beta/models/gemini-1.5-flash:generateContent", body, bearer=key.key)
    assert ok.status_code == 200, ok.text
    with stack.unreached():
        resp = stack.post("/v1beta/models/gemini-1.5-pro:generateContent", body, bearer=key.key)
    assert_denied(resp, 403, "model_not_allowed", anthropic=False)


# --------------------------------------------------------------------------- bodies


def _multipart(stack: HttpStack, key: str, fields: list[tuple[str, str | bytes]]) -> httpx.Response:
    # httpx sends data fields before files, in the order given.
    data = {name: value for name, value in fields if not isinstance(value, bytes)}
    files = {
        name: ("audio.wav", value, "audio/wav")
        for name, value in fields
        if isinstance(value, bytes)
    }
    return stack.http.post(
        "/v1/audio/transcriptions",
        headers={"authorization": f"Bearer {key}"},
        data=data,
        files=files,
    )


def test_multipart_upload_with_model_field(stack: HttpStack) -> None:
    key = stack.key("--quota", "100", "--models", MODELS)
    audio = b"RIFF" + bytes(20_000)
    ok = _multipart(stack, key.key, [("model", "whisper-1"), ("file", audio)])
    assert ok.status_code == 200, ok.text
    assert ok.json()["text"]
    assert "authorization" not in echo_headers(ok)
    with stack.unreached():
        resp = _multipart(stack, key.key, [("model", "whisper-2"), ("file", audio)])
    assert_denied(resp, 403, "model_not_allowed", anthropic=False)


def test_large_multipart_upload_is_forwarded_whole(stack: HttpStack) -> None:
    key = stack.key("--quota", "100", "--models", MODELS)
    audio = bytes(300_000)  # well past max_request_bytes (64 KiB)
    resp = _multipart(stack, key.key, [("model", "whisper-1"), ("file", audio)])
    assert resp.status_code == 200, resp.text
    assert resp.json()["_echo"]["body_bytes"] > len(audio)


def _big_json(model: str | None, model_last: bool = False, size: int = 200_000) -> bytes:
    filler = {"messages": [{"role": "user", "content": "x" * size}]}
    if model is None:
        return json.dumps(filler).encode()
    if model_last:
        return json.dumps({**filler, "model": model}).encode()
    return json.dumps({"model": model, **filler}).encode()


def _post_raw(stack: HttpStack, key: str, body: bytes) -> httpx.Response:
    return stack.http.post(
        "/v1/chat/completions",
        content=body,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )


def test_large_body_model_first_is_decided_on_the_prefix(stack: HttpStack) -> None:
    key = stack.key("--quota", "100", "--models", MODELS)
    body = _big_json("gpt-4o-mini")
    resp = _post_raw(stack, key.key, body)
    assert resp.status_code == 200, resp.text
    # Only 64 KiB went to keyguard, but the upstream got every byte.
    assert resp.json()["_echo"]["body_bytes"] == len(body)
    with stack.unreached():
        resp = _post_raw(stack, key.key, _big_json("gpt-4o"))
    assert_denied(resp, 403, "model_not_allowed", anthropic=False)


def test_large_body_model_past_the_prefix_fails_closed(stack: HttpStack) -> None:
    key = stack.key("--quota", "100", "--models", MODELS)
    with stack.unreached():
        resp = _post_raw(stack, key.key, _big_json("gpt-4o-mini", model_last=True))
    assert_denied(resp, 400, "model_required", anthropic=False)


def test_large_body_for_a_key_without_model_list(stack: HttpStack) -> None:
    key = stack.key("--quota", "100")
    body = _big_json(None)
    resp = _post_raw(stack, key.key, body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["_echo"]["body_bytes"] == len(body)


def test_chunked_body_without_content_length(stack: HttpStack) -> None:
    key = stack.key("--quota", "100", "--models", MODELS)
    body = json.dumps(chat_body("gpt-4o-mini")).encode()

    def chunks() -> Iterator[bytes]:
        yield body[:10]
        yield body[10:]

    resp = stack.http.post(
        "/v1/chat/completions",
        content=chunks(),
        headers={"authorization": f"Bearer {key.key}", "content-type": "application/json"},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["_echo"]["body_bytes"] == len(body)
