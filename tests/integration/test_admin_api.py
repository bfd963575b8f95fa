"""The admin API against a real Redis: every route, tokens and roles, problem+json, bad
input that changes nothing, pagination, and the audit trail from both the CLI and the API.

Most tests call the ASGI app in-process (Starlette's TestClient); one starts
`keyguard admin serve` as a real process on a free port.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from starlette.testclient import TestClient

from keyguard.admin.app import create_app
from keyguard.admin.auth import TokenStore, hash_token
from keyguard.admin.settings import AdminSettings, load_admin
from keyguard.audit import AUDIT_STREAM, Audit
from keyguard.errors import SettingsError
from keyguard.keys import hash_key
from keyguard.store import id_key, usage_key
from tests.support.checks import create_key, keys_cli
from tests.support.procs import free_port, keyguard_cmd, run_cli, stop_process, wait_for_port

PROBLEM = "application/problem+json"
MISSING = "kg_000000000000"


def snapshot(url: str) -> dict[str, object]:
    """Every key in Redis and its value: what 'changes nothing' is checked against."""
    client = redis.Redis.from_url(url, decode_responses=True)
    out: dict[str, object] = {}
    for key in client.scan_iter("*"):
        kind = client.type(key)
        if kind == "hash":
            out[key] = client.hgetall(key)
        elif kind == "set":
            out[key] = sorted(client.smembers(key))
        elif kind == "stream":
            out[key] = client.xrange(key)
        else:
            out[key] = client.get(key)
    client.close()
    return out


class Admin:
    """An in-process admin API with an admin and a viewer token."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.redis = redis.Redis.from_url(url, decode_responses=True)
        store = TokenStore(self.redis, actor="cli:test")
        self.admin = store.create("admin", "ops")
        self.viewer = store.create("viewer", "dash")
        self.app = create_app(AdminSettings(max_body=4096), self.redis)
        self.http = TestClient(self.app, base_url="http://127.0.0.1")

    def headers(self, token: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"} if token else {}

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = "admin",  # noqa: S107 (names which token; not one)
        **kw: Any,
    ) -> httpx.Response:
        raw = {"admin": self.admin.token, "viewer": self.viewer.token}.get(token or "", token)
        headers = self.headers(raw)
        if body is not None:  # ASCII JSON: a lone surrogate travels as its \u escape
            kw["content"] = json.dumps(body)
            headers["content-type"] = "application/json"
        return self.http.request(method, path, headers=headers, **kw)

    def close(self) -> None:
        self.http.close()
        self.redis.close()


@pytest.fixture
def api(redis_url: str) -> Iterator[Admin]:
    admin = Admin(redis_url)
    try:
        yield admin
    finally:
        admin.close()


def ok(resp: httpx.Response, status: int = 200) -> Any:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    return resp.json()


def problem(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == PROBLEM
    body = resp.json()
    assert set(body) == {"type", "title", "status", "detail"}
    assert body["status"] == status and body["type"] == "about:blank"
    assert "Traceback" not in body["detail"] and "\n" not in body["detail"]
    return str(body["detail"])


def audit_entries(url: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return Audit(client).read(limit=10_000)[0]
    finally:
        client.close()


# --- keys -----------------------------------------------------------------------------


def test_create_returns_the_key_once_and_stores_only_its_hash(api: Admin) -> None:
    created = ok(
        api.call("POST", "/v1/keys", {"name": "team-a", "quota": 10, "models": ["gpt-4o"]}), 201
    )
    key = created["key"]
    assert key.startswith("sk-") and created["remaining"] == 10
    assert created["models"] == ["gpt-4o"] and created["type"] == "standard"
    assert json.dumps(created).count(key) == 1
    dump = json.dumps(snapshot(api.url))
    assert key not in dump and hash_key(key) in dump
    shown = api.call("GET", f"/v1/keys/{created['id']}")
    assert key not in shown.text and ok(shown)["name"] == "team-a"
    listed = api.call("GET", "/v1/keys")
    assert key not in listed.text and [k["id"] for k in ok(listed)["items"]] == [created["id"]]
    assert key not in api.call("GET", "/v1/audit").text


def test_every_key_route(api: Admin) -> None:
    created = ok(
        api.call(
            "POST",
            "/v1/keys",
            {"type": "subscription", "quota": 100, "cycle": "30d", "rpm": 60, "tpm": 1000},
        ),
        201,
    )
    key_id = created["id"]
    assert created["cycle"] == "30d" and created["cycle_quota"] == 100 and created["rpm"] == 60
    edited = ok(
        api.call(
            "PATCH",
            f"/v1/keys/{key_id}",
            {"quota": 50, "allowed_ips": "10.0.0.0/8", "payg": True, "expires": "+30d"},
        )
    )
    assert edited["cycle_quota"] == 50 and edited["allowed_ips"] == ["10.0.0.0/8"]
    assert edited["payg"] is True and edited["expires_at"] is not None
    edited = ok(api.call("PATCH", f"/v1/keys/{key_id}", {"allowed_ips": "*", "expires": "never"}))
    assert edited["allowed_ips"] is None and edited["expires_at"] is None
    assert ok(api.call("POST", f"/v1/keys/{key_id}/disable"))["status"] == "disabled"
    assert ok(api.call("POST", f"/v1/keys/{key_id}/enable"))["status"] == "active"
    assert ok(api.call("POST", f"/v1/keys/{key_id}/topup", {"amount": 7}))["remaining"] == 107
    # The CLI sees what the API did: the same core, the same store.
    code, out = keys_cli(api.url, "show", key_id, "--json")
    assert code == 0 and json.loads(out)["remaining"] == 107
    assert ok(api.call("DELETE", f"/v1/keys/{key_id}")) == {"id": key_id, "revoked": True}
    assert problem(api.call("GET", f"/v1/keys/{key_id}"), 404) == f"no key with id {key_id!r}"
    assert ok(api.call("GET", "/v1/keys")) == {"items": [], "next_cursor": None}


def test_standard_key_fields_match_the_cli(api: Admin) -> None:
    via_api = ok(api.call("POST", "/v1/keys", {"unlimited": True, "name": "x"}), 201)
    via_cli = create_key(api.url, "--unlimited", "--name", "x")
    for info in (via_api, via_cli):
        del info["key"], info["id"], info["created_at"]
    assert via_api == via_cli


def test_key_list_pages_with_a_cursor(api: Admin) -> None:
    ids = sorted(create_key(api.url, "--quota", "1")["id"] for _ in range(5))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = ok(api.call("GET", "/v1/keys", params=params))
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        pages += 1
        if cursor is None:
            break
    assert seen == ids and pages == 3
    assert problem(api.call("GET", "/v1/keys", params={"limit": 0}), 400).startswith("limit:")
    assert problem(api.call("GET", "/v1/keys", params={"limit": 1001}), 400).startswith("limit:")


# --- prices ---------------------------------------------------------------------------


def test_every_price_route(api: Admin) -> None:
    set_ = ok(api.call("PUT", "/v1/prices/gpt-4o*", {"input": 2500000, "output": 10000000}))
    assert set_ == {
        "model": "gpt-4o*",
        "input": 2500000,
        "output": 10000000,
        "cached_input": 2500000,
        "cache_write": 2500000,
        "per_request": 0,
        "max_output": None,
    }
    ok(api.call("PUT", "/v1/prices/*", {"input": 1, "output": 2, "max_output": 100}))
    ok(api.call("PUT", "/v1/prices/openai/gpt-4o", {"input": 3, "output": 4}))
    assert ok(api.call("GET", "/v1/prices/openai/gpt-4o"))["output"] == 4
    assert ok(api.call("GET", "/v1/prices/*"))["max_output"] == 100
    page = ok(api.call("GET", "/v1/prices", params={"limit": 2}))
    assert [p["model"] for p in page["items"]] == ["*", "gpt-4o*"]
    rest = ok(api.call("GET", "/v1/prices", params={"cursor": page["next_cursor"]}))
    assert [p["model"] for p in rest["items"]] == ["openai/gpt-4o"] and rest["next_cursor"] is None
    listed = run_cli("prices", "list", "--json", redis_url=api.url)
    assert sorted(json.loads(listed.stdout)) == ["*", "gpt-4o*", "openai/gpt-4o"]
    assert ok(api.call("DELETE", "/v1/prices/gpt-4o*")) == {"model": "gpt-4o*", "removed": True}
    assert problem(api.call("GET", "/v1/prices/gpt-4o*"), 404) == "no price for model 'gpt-4o*'"
    assert problem(api.call("DELETE", "/v1/prices/gpt-4o*"), 404).startswith("no price")


# --- auth -----------------------------------------------------------------------------


ROUTES = [
    ("GET", "/v1/keys", None),
    ("POST", "/v1/keys", {"quota": 1}),
    ("GET", f"/v1/keys/{MISSING}", None),
    ("PATCH", f"/v1/keys/{MISSING}", {"rpm": 1}),
    ("DELETE", f"/v1/keys/{MISSING}", None),
    ("POST", f"/v1/keys/{MISSING}/disable", None),
    ("POST", f"/v1/keys/{MISSING}/enable", None),
    ("POST", f"/v1/keys/{MISSING}/topup", {"amount": 1}),
    ("GET", f"/v1/keys/{MISSING}/usage", None),
    ("GET", "/v1/prices", None),
    ("GET", "/v1/prices/gpt-4o", None),
    ("PUT", "/v1/prices/gpt-4o", {"input": 1, "output": 1}),
    ("DELETE", "/v1/prices/gpt-4o", None),
    ("GET", "/v1/audit", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_no_or_bad_token_is_401_and_changes_nothing(
    api: Admin, method: str, path: str, body: Any
) -> None:
    create_key(api.url, "--quota", "3")
    before = snapshot(api.url)
    revoked = TokenStore(api.redis).create("admin")
    TokenStore(api.redis).revoke(revoked.info["id"])
    before = snapshot(api.url)
    for token in (None, "kga-" + "x" * 43, "not-a-token", revoked.token, hash_token("x")):
        resp = api.call(method, path, body, token=token)
        assert "token" in problem(resp, 401)
        assert resp.headers["www-authenticate"] == "Bearer"
    resp = api.http.request(method, path, headers={"Authorization": f"Basic {api.admin.token}"})
    problem(resp, 401)
    assert snapshot(api.url) == before


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_a_viewer_reads_but_writing_is_403(api: Admin, method: str, path: str, body: Any) -> None:
    before = snapshot(api.url)
    resp = api.call(method, path, body, token="viewer")
    if method == "GET":
        assert resp.status_code in (200, 404), resp.text
    else:
        assert "viewer" in problem(resp, 403)
    assert snapshot(api.url) == before


def test_openapi_document_is_public_and_documents_problems(api: Admin) -> None:
    doc = ok(api.call("GET", "/openapi.json", token=None))
    assert doc["openapi"].startswith("3.")
    assert "bearerAuth" in json.dumps(doc) or "HTTPBearer" in doc["components"]["securitySchemes"]
    create = doc["paths"]["/v1/keys"]["post"]
    assert "422" not in create["responses"] and PROBLEM in create["responses"]["400"]["content"]
    body_ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = doc["components"]["schemas"][body_ref.rsplit("/", 1)[1]]
    assert schema["additionalProperties"] is False
    assert {"name", "type", "quota", "unlimited", "cycle", "models", "allowed_ips"} <= set(
        schema["properties"]
    )
    assert {"expires", "payg", "rpm", "tpm"} <= set(schema["properties"])
    assert {"env", "owner", "meta"} <= set(schema["properties"])
    list_params = {p["name"] for p in doc["paths"]["/v1/keys"]["get"]["parameters"]}
    assert {"env", "owner", "limit", "cursor"} <= list_params
    usage = doc["paths"]["/v1/keys/{key_id}/usage"]["get"]
    assert {p["name"] for p in usage["parameters"]} == {"key_id", "days"}


# --- bad input ------------------------------------------------------------------------


BAD_BODIES: dict[str, tuple[str, str, Any, int, str]] = {
    "unknown field": ("POST", "/v1/keys", {"quota": 1, "colour": "red"}, 400, "'colour'"),
    "rotate in an edit": (
        "PATCH",
        "/v1/keys/{id}",
        {"rotate": True},
        400,
        "unknown field 'rotate': rotate a key with POST /v1/keys/{id}/rotate",
    ),
    "unknown plan": ("POST", "/v1/keys", {"plan": "gold"}, 404, "no plan named 'gold'"),
    "bad alert_below": (
        "PATCH",
        "/v1/keys/{id}",
        {"alert_below": "150%"},
        400,
        "alert_below: bad threshold",
    ),
    "bad env": ("POST", "/v1/keys", {"env": "live env"}, 400, "env: bad env 'live env'"),
    "bad owner": ("PATCH", "/v1/keys/{id}", {"owner": "a/b"}, 400, "owner: bad owner"),
    "env not text": ("POST", "/v1/keys", {"env": 1}, 400, "env:"),
    "meta not an object": ("POST", "/v1/keys", {"meta": ["a=b"]}, 400, "meta:"),
    "meta value not text": ("POST", "/v1/keys", {"meta": {"a": 1}}, 400, "meta.a:"),
    "bad meta key": ("PATCH", "/v1/keys/{id}", {"meta": {"a b": "x"}}, 400, "meta: bad meta key"),
    "meta value too long": ("POST", "/v1/keys", {"meta": {"a": "x" * 257}}, 400, "at most 256"),
    "meta control char": ("POST", "/v1/keys", {"meta": {"a": "x\ny"}}, 400, "control character"),
    "17 meta pairs": (
        "POST",
        "/v1/keys",
        {"meta": {f"k{i}": "v" for i in range(17)}},
        400,
        "at most 16 meta pairs",
    ),
    "empty meta only": ("PATCH", "/v1/keys/{id}", {"meta": {}}, 400, "nothing to change"),
    "bad list filter": ("GET", "/v1/keys?owner=a%20b", None, 400, "owner: bad owner"),
    "usage days 0": ("GET", "/v1/keys/{id}/usage?days=0", None, 400, "between 1 and 366"),
    "usage days 367": ("GET", "/v1/keys/{id}/usage?days=367", None, 400, "between 1 and 366"),
    "usage days text": ("GET", "/v1/keys/{id}/usage?days=x", None, 400, "days:"),
    "usage unknown id": ("GET", f"/v1/keys/{MISSING}/usage", None, 404, "no key with id"),
    "usage unknown query": ("GET", "/v1/keys/{id}/usage?day=3", None, 400, "'day'"),
    "negative quota": ("POST", "/v1/keys", {"quota": -5}, 400, "quota: '-5' is negative"),
    "quota as text": ("POST", "/v1/keys", {"quota": "5"}, 400, "quota:"),
    "quota as float": ("POST", "/v1/keys", {"quota": 1.5}, 400, "quota:"),
    "quota as bool": ("POST", "/v1/keys", {"quota": True}, 400, "quota:"),
    "quota and unlimited": (
        "POST",
        "/v1/keys",
        {"quota": 5, "unlimited": True},
        400,
        "either --quota or --unlimited",
    ),
    "bad CIDR": ("POST", "/v1/keys", {"allowed_ips": "10.0.0.0/33"}, 400, "bad IP or CIDR"),
    "bad date": ("POST", "/v1/keys", {"expires": "31/12/2027"}, 400, "expires: bad date"),
    "past date": ("POST", "/v1/keys", {"expires": "2001-01-01"}, 400, "in the past"),
    "bad models": ("POST", "/v1/keys", {"models": "gpt-4o,,x"}, 400, "bad model name"),
    "bad model in list": ("POST", "/v1/keys", {"models": ["a b"]}, 400, "bad model name"),
    "unknown type": ("POST", "/v1/keys", {"type": "gold"}, 400, "unknown key type 'gold'"),
    "subscription without cycle": (
        "POST",
        "/v1/keys",
        {"type": "subscription", "quota": 5},
        400,
        "needs --quota",
    ),
    "cycle on standard": ("POST", "/v1/keys", {"cycle": "30d"}, 400, "--cycle is for subscr"),
    "bad cycle": ("POST", "/v1/keys", {"type": "subscription", "quota": 1, "cycle": "x"}, 400, ""),
    "lone surrogate": ("POST", "/v1/keys", {"name": "\ud800"}, 400, "name: not valid Unicode"),
    "body not an object": ("POST", "/v1/keys", [1, 2], 400, "must be a JSON object"),
    "nothing to change": ("PATCH", "/v1/keys/{id}", {}, 400, "nothing to change"),
    "negative tpm": ("PATCH", "/v1/keys/{id}", {"tpm": -1}, 400, "tpm: '-1' is negative"),
    "zero topup": ("POST", "/v1/keys/{id}/topup", {"amount": 0}, 400, "greater than 0"),
    "topup without amount": ("POST", "/v1/keys/{id}/topup", {}, 400, "missing field 'amount'"),
    "huge topup": ("POST", "/v1/keys/{id}/topup", {"amount": 10**15}, 400, "above the limit"),
    "huge quota": ("PATCH", "/v1/keys/{id}", {"quota": 10**15 + 1}, 400, "larger than the limit"),
    "unknown id": ("GET", f"/v1/keys/{MISSING}", None, 404, "no key with id"),
    "unknown id edit": ("PATCH", f"/v1/keys/{MISSING}", {"rpm": 1}, 404, "no key with id"),
    "unknown id revoke": ("DELETE", f"/v1/keys/{MISSING}", None, 404, "no key with id"),
    "unknown id disable": ("POST", f"/v1/keys/{MISSING}/disable", None, 404, "no key with id"),
    "unknown id topup": ("POST", f"/v1/keys/{MISSING}/topup", {"amount": 1}, 404, "no key"),
    "negative price": (
        "PUT",
        "/v1/prices/gpt-4o",
        {"input": -5, "output": 1},
        400,
        "input: -5 is negative",
    ),
    "price missing output": ("PUT", "/v1/prices/gpt-4o", {"input": 1}, 400, "'output'"),
    "price unknown field": (
        "PUT",
        "/v1/prices/gpt-4o",
        {"input": 1, "output": 1, "inputs": 2},
        400,
        "unknown field 'inputs'",
    ),
    "bad pattern": ("PUT", "/v1/prices/gpt 4o", {"input": 1, "output": 1}, 400, "bad model"),
    "max_output 0": (
        "PUT",
        "/v1/prices/gpt-4o",
        {"input": 1, "output": 1, "max_output": 0},
        400,
        "max_output: must be greater than 0",
    ),
    "unknown price": ("DELETE", "/v1/prices/nope", None, 404, "no price for model 'nope'"),
    "bad audit since": ("GET", "/v1/audit?since=yesterday", None, 400, "since: bad time"),
    "bad audit cursor": ("GET", "/v1/audit?cursor=abc", None, 400, "cursor: bad cursor"),
    "unknown route": ("GET", "/v1/nothing", None, 404, "no such route"),
    "wrong method": ("PUT", "/v1/keys", {"quota": 1}, 405, "not allowed"),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_input_is_a_problem_and_changes_nothing(api: Admin, case: str) -> None:
    key_id = create_key(api.url, "--quota", "3")["id"]
    before = snapshot(api.url)
    method, path, body, status, message = BAD_BODIES[case]
    resp = api.call(method, path.replace("{id}", key_id), body)
    assert message in problem(resp, status)
    assert snapshot(api.url) == before


@pytest.mark.parametrize(
    "raw",
    [b"{", b'{"quota": 1,}', b"not json", b'{"quota": 1} trailing', b"\xff\xfe"],
)
def test_malformed_json_is_400_and_changes_nothing(api: Admin, raw: bytes) -> None:
    before = snapshot(api.url)
    resp = api.http.post(
        "/v1/keys",
        content=raw,
        headers={**api.headers(api.admin.token), "content-type": "application/json"},
    )
    assert problem(resp, 400).startswith(("malformed JSON", "the body must be"))
    assert snapshot(api.url) == before


def test_oversized_body_is_413_and_changes_nothing(api: Admin) -> None:
    before = snapshot(api.url)
    big = {"name": "x" * 5000}
    assert "larger than 4096 bytes" in problem(api.call("POST", "/v1/keys", big), 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"name": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}'

    resp = api.http.post(
        "/v1/keys",
        content=chunks(),
        headers={**api.headers(api.admin.token), "content-type": "application/json"},
    )
    problem(resp, 413)
    assert snapshot(api.url) == before


def test_redis_down_is_503(api: Admin) -> None:
    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    http = TestClient(create_app(AdminSettings(), dead), base_url="http://127.0.0.1")
    try:
        resp = http.get("/v1/keys", headers=api.headers(api.admin.token))
        assert "Redis failed" in problem(resp, 503)
    finally:
        http.close()
        dead.close()


# --- audit ----------------------------------------------------------------------------


def test_audit_records_cli_and_api_changes_without_secrets(api: Admin) -> None:
    start = len(audit_entries(api.url))  # the fixture's two token creations
    created = create_key(api.url, "--quota", "5", "--models", "a,b")
    key_id = created["id"]
    ok(api.call("PATCH", f"/v1/keys/{key_id}", {"rpm": 10, "payg": False}))
    ok(api.call("POST", f"/v1/keys/{key_id}/topup", {"amount": 3}))
    ok(api.call("POST", f"/v1/keys/{key_id}/disable"))
    assert keys_cli(api.url, "enable", key_id)[0] == 0
    ok(api.call("PUT", "/v1/prices/gpt-4o", {"input": 1, "output": 2}))
    assert run_cli("prices", "remove", "gpt-4o", redis_url=api.url).returncode == 0
    ok(api.call("DELETE", f"/v1/keys/{key_id}"))
    # Refused changes record nothing.
    api.call("PATCH", f"/v1/keys/{key_id}", {"rpm": 1})
    api.call("POST", "/v1/keys", {"quota": -1})
    assert run_cli("keys", "topup", key_id, "5", redis_url=api.url).returncode == 1

    entries = audit_entries(api.url)[start:]
    api_actor = f"token:{api.admin.info['id']}"
    summary = [(e["actor"].split(":")[0], e["action"], e["target"]) for e in entries]
    assert summary == [
        ("cli", "key.create", key_id),
        ("token", "key.edit", key_id),
        ("token", "key.topup", key_id),
        ("token", "key.disable", key_id),
        ("cli", "key.enable", key_id),
        ("token", "price.set", "gpt-4o"),
        ("cli", "price.remove", "gpt-4o"),
        ("token", "key.revoke", key_id),
    ]
    assert entries[1]["actor"] == api_actor
    assert entries[0]["actor"].startswith("cli:") and len(entries[0]["actor"]) > 4
    assert entries[0]["fields"] == {"type": "standard", "quota": 5, "models": "a,b"}
    assert entries[1]["fields"] == {"rpm": 10, "payg": False}
    assert entries[2]["fields"] == {"amount": 3}
    assert entries[5]["fields"]["input"] == 1
    dump = json.dumps(snapshot(api.url)[AUDIT_STREAM])
    for secret in (created["key"], api.admin.token, api.viewer.token, hash_key(created["key"])):
        assert secret not in dump

    # The same trail through the API (paged, filtered) and the CLI.
    page = ok(api.call("GET", "/v1/audit", params={"key": key_id, "limit": 3}, token="viewer"))
    assert [e["action"] for e in page["items"]] == ["key.create", "key.edit", "key.topup"]
    rest = ok(api.call("GET", "/v1/audit", params={"key": key_id, "cursor": page["next_cursor"]}))
    assert [e["action"] for e in rest["items"]] == [
        "key.disable",
        "key.enable",
        "key.revoke",
    ]
    assert rest["next_cursor"] is None
    result = run_cli("audit", "--key", key_id, "--json", redis_url=api.url)
    assert result.returncode == 0
    assert [e["action"] for e in json.loads(result.stdout)] == [
        e["action"] for e in page["items"] + rest["items"]
    ]
    text = run_cli("audit", "--since", "1h", "--limit", "2", redis_url=api.url)
    assert text.returncode == 0 and len(text.stdout.splitlines()) == 2
    assert "key.revoke" in text.stdout
    future = ok(api.call("GET", "/v1/audit", params={"since": "2999-01-01"}))
    assert future == {"items": [], "next_cursor": None}


def test_token_cli_create_list_revoke_and_audit(redis_url: str) -> None:
    created = run_cli(
        "admin", "tokens", "create", "--role", "viewer", "--json", redis_url=redis_url
    )
    assert created.returncode == 0, created.stderr
    info = json.loads(created.stdout)
    assert set(info) >= {"id", "token", "role"} and info["role"] == "viewer"
    dump = json.dumps(snapshot(redis_url))
    assert info["token"] not in dump and hash_token(info["token"]) in dump
    listing = run_cli("admin", "tokens", "list", "--json", redis_url=redis_url)
    assert [t["id"] for t in json.loads(listing.stdout)] == [info["id"]]
    assert info["token"] not in listing.stdout
    human = run_cli(
        "admin", "tokens", "create", "--role", "admin", "--name", "ci", redis_url=redis_url
    )
    assert "shown only once" in human.stdout and "kga-" in human.stdout
    assert run_cli("admin", "tokens", "revoke", info["id"], redis_url=redis_url).returncode == 0
    again = run_cli("admin", "tokens", "revoke", info["id"], redis_url=redis_url)
    assert again.returncode == 1 and "no admin token with id" in again.stderr
    bad = run_cli("admin", "tokens", "create", "--role", "root", redis_url=redis_url)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    actions = [(e["action"], e["fields"]) for e in audit_entries(redis_url)]
    assert actions[0] == ("token.create", {"name": "", "role": "viewer"})
    assert [a for a, _ in actions] == ["token.create", "token.create", "token.revoke"]
    audit_text = json.dumps(audit_entries(redis_url))
    assert info["token"] not in audit_text and "kga-" not in audit_text


def test_bad_audit_since_on_the_cli(redis_url: str) -> None:
    result = run_cli("audit", "--since", "yesterday", redis_url=redis_url)
    assert result.returncode == 2 and "bad time 'yesterday'" in result.stderr


# --- settings and the real process ----------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KEYGUARD_ADMIN_LISTEN": "8080"}, "KEYGUARD_ADMIN_LISTEN"),
        ({"KEYGUARD_ADMIN_LISTEN": "unix:/tmp/x"}, "HOST:PORT"),
        ({"KEYGUARD_ADMIN_MAX_BODY": "big"}, "KEYGUARD_ADMIN_MAX_BODY"),
        ({"KEYGUARD_ADMIN_MAX_BODY": "10"}, "between 1024"),
        ({"KEYGUARD_REDIS_URL": "http://x"}, "unsupported scheme"),
    ],
)
def test_bad_admin_settings(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_admin(env=env)
    assert load_admin(env={}).listen == "127.0.0.1:8080"


@contextlib.contextmanager
def admin_server(redis_url: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "KEYGUARD_REDIS_URL": redis_url}
    proc = subprocess.Popen(
        [*keyguard_cmd(), "admin", "serve", "--listen", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port, timeout=20)
        yield proc
    finally:
        stop_process(proc)
        log = proc.stderr.read().decode() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        assert "Traceback" not in log and "kga-" not in log, log


def test_keyguard_admin_serve_as_a_process(redis_url: str) -> None:
    token = json.loads(
        run_cli(
            "admin", "tokens", "create", "--role", "admin", "--json", redis_url=redis_url
        ).stdout
    )["token"]
    port = free_port()
    with (
        admin_server(redis_url, port) as proc,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=10) as http,
    ):
        auth = {"Authorization": f"Bearer {token}"}
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/v1/keys").status_code == 401
        created = http.post("/v1/keys", json={"quota": 2}, headers=auth)
        assert created.status_code == 201 and created.json()["key"].startswith("sk-")
        assert http.get(f"/v1/keys/{created.json()['id']}", headers=auth).json()["remaining"] == 2
        big = http.post("/v1/keys", content=b"{" + b" " * 70_000 + b"}", headers=auth)
        assert big.status_code == 413
        assert http.get("/openapi.json").json()["info"]["title"] == "keyguard admin API"
        # A second server on the same port is a one-line error.
        taken = run_cli("admin", "serve", "--listen", f"127.0.0.1:{port}", redis_url=redis_url)
        assert taken.returncode == 1 and "cannot listen on" in taken.stderr
        assert "Traceback" not in taken.stderr
        assert proc.poll() is None
    assert proc.returncode is not None
    assert token not in json.dumps(snapshot(redis_url))


# --- metadata and usage (issue 13, items 4 and 6) ---------------------------------------


def test_env_owner_and_meta_through_the_api(api: Admin) -> None:
    created = ok(
        api.call(
            "POST",
            "/v1/keys",
            {"quota": 5, "env": "live", "owner": "team-a", "meta": {"cc": "42", "note": "x y"}},
        ),
        201,
    )
    key_id = created["id"]
    assert (created["env"], created["owner"]) == ("live", "team-a")
    assert created["meta"] == {"cc": "42", "note": "x y"}
    # PATCH merges meta ("" removes a key) and leaves what it does not name.
    edited = ok(api.call("PATCH", f"/v1/keys/{key_id}", {"meta": {"note": "", "tier": "gold"}}))
    assert edited["meta"] == {"cc": "42", "tier": "gold"} and edited["env"] == "live"
    edited = ok(api.call("PATCH", f"/v1/keys/{key_id}", {"env": "", "owner": "team-b"}))
    assert edited["env"] is None and edited["owner"] == "team-b" and edited["remaining"] == 5
    # The CLI sees the same; shown by show and list.
    code, out = keys_cli(api.url, "show", key_id, "--json")
    assert code == 0 and json.loads(out)["meta"] == {"cc": "42", "tier": "gold"}
    assert ok(api.call("GET", f"/v1/keys/{key_id}", token="viewer"))["owner"] == "team-b"

    other = create_key(api.url, "--env", "test", "--owner", "team-b")["id"]
    bare = create_key(api.url, "--quota", "1")["id"]

    def listed(**params: Any) -> list[str]:
        page = ok(api.call("GET", "/v1/keys", params=params, token="viewer"))
        return sorted(item["id"] for item in page["items"])

    assert listed() == sorted([key_id, other, bare])
    assert listed(owner="team-b") == sorted([key_id, other])
    assert listed(env="test", owner="team-b") == [other]
    assert listed(env="live") == []
    assert listed(env="") == sorted([key_id, bare])  # empty: keys without an env
    # Filtered pages still page: one item each, in id order.
    first = ok(api.call("GET", "/v1/keys", params={"owner": "team-b", "limit": 1}))
    assert [i["id"] for i in first["items"]] == [min(key_id, other)]
    rest = ok(
        api.call(
            "GET",
            "/v1/keys",
            params={"owner": "team-b", "limit": 1, "cursor": first["next_cursor"]},
        )
    )
    assert [i["id"] for i in rest["items"]] == [max(key_id, other)]

    # The audit trail names what a change gave.
    fields = [e["fields"] for e in audit_entries(api.url) if e["target"] == key_id]
    assert {"meta": {"note": "", "tier": "gold"}} in fields
    assert {"env": "", "owner": "team-b"} in fields


def test_usage_route(api: Admin) -> None:
    key_id = ok(api.call("POST", "/v1/keys", {"quota": 100}), 201)["id"]
    assert ok(api.call("GET", f"/v1/keys/{key_id}/usage", token="viewer")) == {
        "id": key_id,
        "days": [],
    }
    today = dt.datetime.now(dt.UTC).date()
    key_hash = str(api.redis.get(id_key(key_id)))
    for back, n in ((0, 2), (10, 5)):
        day = (today - dt.timedelta(days=back)).isoformat()
        api.redis.hset(
            usage_key(key_hash, day),
            mapping={"gpt-4o|requests": n, "gpt-4o|input": 7 * n, "gpt-4o|credits": 11 * n},
        )
    default = ok(api.call("GET", f"/v1/keys/{key_id}/usage", token="viewer"))
    assert [(row["date"], row["requests"]) for row in default["days"]] == [
        ((today - dt.timedelta(days=10)).isoformat(), 5),
        (today.isoformat(), 2),
    ]
    assert default["days"][1] == {
        "date": today.isoformat(),
        "model": "gpt-4o",
        "requests": 2,
        "input_tokens": 14,
        "output_tokens": 0,
        "cached_tokens": 0,
        "credits": 22,
    }
    week = ok(api.call("GET", f"/v1/keys/{key_id}/usage", params={"days": 7}))
    assert [row["requests"] for row in week["days"]] == [2]
    code, out = keys_cli(api.url, "usage", key_id, "--json")
    assert code == 0 and json.loads(out) == default


# --- plans (issue 13, item 5) -----------------------------------------------------------


def test_every_plan_route(api: Admin) -> None:
    created = ok(
        api.call(
            "POST",
            "/v1/plans",
            {"name": "pro", "quota": 100, "cycle": "30d", "models": ["a", "b"], "rpm": 60},
        ),
        201,
    )
    assert created["name"] == "pro" and created["quota"] == 100 and created["cycle"] == "30d"
    assert created["models"] == ["a", "b"] and created["rpm"] == 60 and created["keys"] == 0
    ok(api.call("POST", "/v1/plans", {"name": "basic", "quota": 5, "cycle": 3600}), 201)
    ok(
        api.call("POST", "/v1/plans", {"name": "team", "quota": 9, "cycle": "1d", "payg": True}),
        201,
    )

    # A key on a plan: "type" may be left out; its settings come from the plan.
    key = ok(api.call("POST", "/v1/keys", {"plan": "pro", "name": "alice"}), 201)
    assert key["key"].startswith("sk-sub-") and key["type"] == "subscription"
    assert key["plan"] == "pro" and key["remaining"] == 100 and key["models"] == ["a", "b"]
    assert ok(api.call("GET", f"/v1/keys/{key['id']}"))["plan"] == "pro"
    assert ok(api.call("GET", "/v1/plans/pro"))["keys"] == 1
    refused = api.call("PATCH", f"/v1/keys/{key['id']}", {"rpm": 5})
    assert problem(refused, 400) == (
        f"key {key['id']} follows plan pro; change the plan or move the key with --plan"
    )
    assert ok(api.call("PATCH", f"/v1/keys/{key['id']}", {"owner": "team-a"}))["owner"] == "team-a"

    edited = ok(api.call("PATCH", "/v1/plans/pro", {"models": "*", "rpm": 0, "quota": 200}))
    assert edited["models"] is None and edited["rpm"] is None and edited["quota"] == 200
    shown = ok(api.call("GET", f"/v1/keys/{key['id']}"))
    assert shown["models"] is None and shown["rpm"] is None
    assert shown["cycle_quota"] == 200 and shown["remaining"] == 100  # from the next cycle

    page = ok(api.call("GET", "/v1/plans", params={"limit": 2}))
    assert [p["name"] for p in page["items"]] == ["basic", "pro"] and page["next_cursor"] == "pro"
    rest = ok(api.call("GET", "/v1/plans", params={"cursor": page["next_cursor"]}))
    assert [p["name"] for p in rest["items"]] == ["team"] and rest["next_cursor"] is None

    # Moving the key, then deleting: refused (409) while a key follows the plan.
    moved = ok(api.call("PATCH", f"/v1/keys/{key['id']}", {"plan": "team"}))
    assert moved["plan"] == "team" and moved["payg"] is True
    in_use = problem(api.call("DELETE", "/v1/plans/team"), 409)
    assert in_use.startswith("plan 'team' still has 1 key(s)")
    assert ok(api.call("DELETE", "/v1/plans/pro")) == {"name": "pro", "deleted": True}
    assert problem(api.call("GET", "/v1/plans/pro"), 404) == "no plan named 'pro'"
    listed = run_cli("plans", "list", "--json", redis_url=api.url)  # the CLI sees the same
    assert listed.returncode == 0
    assert [p["name"] for p in json.loads(listed.stdout)] == ["basic", "team"]

    actions = [(e["action"], e["target"]) for e in audit_entries(api.url)]
    assert ("plan.create", "pro") in actions and ("plan.edit", "pro") in actions
    assert ("plan.delete", "pro") in actions
    edit = next(e for e in audit_entries(api.url) if e["action"] == "plan.edit")
    assert edit["actor"] == f"token:{api.admin.info['id']}" and edit["fields"]["keys"] == 1


PLAN_ROUTES = [
    ("GET", "/v1/plans", None),
    ("POST", "/v1/plans", {"name": "new", "quota": 1, "cycle": "1d"}),
    ("GET", "/v1/plans/pro", None),
    ("PATCH", "/v1/plans/pro", {"rpm": 1}),
    ("DELETE", "/v1/plans/pro", None),
]


@pytest.mark.parametrize(("method", "path", "body"), PLAN_ROUTES)
def test_plan_routes_need_a_token_and_viewers_only_read(
    api: Admin, method: str, path: str, body: Any
) -> None:
    ok(api.call("POST", "/v1/plans", {"name": "pro", "quota": 1, "cycle": "1d"}), 201)
    before = snapshot(api.url)
    assert "token" in problem(api.call(method, path, body, token=None), 401)
    resp = api.call(method, path, body, token="viewer")
    if method == "GET":
        ok(resp)
    else:
        assert "viewer" in problem(resp, 403)
    assert snapshot(api.url) == before


BAD_PLAN_BODIES: dict[str, tuple[str, str, Any, int, str]] = {
    "bad name": ("POST", "/v1/plans", {"name": "Pro", "quota": 1, "cycle": "1d"}, 400, "name:"),
    "no cycle": ("POST", "/v1/plans", {"name": "new", "quota": 1}, 400, "needs --quota N"),
    "no name": ("POST", "/v1/plans", {"quota": 1, "cycle": "1d"}, 400, "missing field 'name'"),
    "exists": ("POST", "/v1/plans", {"name": "pro", "quota": 1, "cycle": "1d"}, 409, "exists"),
    "quota as text": ("PATCH", "/v1/plans/pro", {"quota": "5"}, 400, "quota:"),
    "negative rpm": ("PATCH", "/v1/plans/pro", {"rpm": -1}, 400, "rpm: '-1' is negative"),
    "bad cycle": ("PATCH", "/v1/plans/pro", {"cycle": "soon"}, 400, "cycle:"),
    "bad models": ("PATCH", "/v1/plans/pro", {"models": ["a b"]}, 400, "bad model name"),
    "unknown field": ("PATCH", "/v1/plans/pro", {"unlimited": True}, 400, "'unlimited'"),
    "nothing to change": ("PATCH", "/v1/plans/pro", {}, 400, "nothing to change"),
    "unknown plan": ("PATCH", "/v1/plans/nope", {"rpm": 1}, 404, "no plan named 'nope'"),
    "show unknown": ("GET", "/v1/plans/nope", None, 404, "no plan named 'nope'"),
    "delete in use": ("DELETE", "/v1/plans/pro", None, 409, "still has 1 key(s)"),
    "key plan with quota": (
        "POST",
        "/v1/keys",
        {"plan": "pro", "quota": 5},
        400,
        "--quota comes from plan pro",
    ),
    "standard key on plan": (
        "POST",
        "/v1/keys",
        {"plan": "pro", "type": "standard"},
        400,
        "a key on a plan is a subscription key",
    ),
    "bad key plan": ("POST", "/v1/keys", {"plan": "A B"}, 400, "plan: bad plan name"),
    "plan key edit": ("PATCH", "/v1/keys/{id}", {"models": "x"}, 400, "follows plan pro"),
    "move to unknown": ("PATCH", "/v1/keys/{id}", {"plan": "nope"}, 404, "no plan named"),
}


@pytest.mark.parametrize("case", sorted(BAD_PLAN_BODIES))
def test_bad_plan_input_is_a_problem_and_changes_nothing(api: Admin, case: str) -> None:
    ok(api.call("POST", "/v1/plans", {"name": "pro", "quota": 10, "cycle": "1d"}), 201)
    key_id = ok(api.call("POST", "/v1/keys", {"plan": "pro"}), 201)["id"]
    before = snapshot(api.url)
    method, path, body, status, message = BAD_PLAN_BODIES[case]
    resp = api.call(method, path.replace("{id}", key_id), body)
    assert message in problem(resp, status)
    assert snapshot(api.url) == before
