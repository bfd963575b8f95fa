"""No raw API key anywhere: after an end-to-end run through Envoy, scan everything.

The run creates keys of every kind and sends allowed and denied requests: keys in
Authorization and in x-api-key, unknown, malformed, disabled, revoked, rate-limited and
over-quota keys, a valid key under a wrong scheme or duplicated, and requests while Redis
is down (SIGKILL, then back from its AOF). keyguard logs at debug level. Then every raw
key that was created or sent, and its 32+ character body, must be absent from:

* keyguard's log (stdout and stderr), Envoy's log;
* keyguard's /metrics, Envoy's /stats (text and Prometheus);
* every Redis key name and value (SCAN, TYPE, then read each type), and Redis's files on
  disk (the AOF keeps the history: values since deleted are still in it);
* the `keyguard keys list/show` output, text and JSON;
* denial responses (status line aside: headers and body) and what the upstream saw.

Failures name the place and the key's index, never the key: checks compare plain
statuses and counts (pytest.fail, no assertion introspection of calls that take a key),
and the objects holding keys have reprs without them.
"""

from __future__ import annotations

import contextlib
import secrets
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from harness.keyguard import wait_serving
from harness.net import http_get
from harness.stack import Stack, running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PREFIXES = ("sk-sub-", "sk-")
MIN_NEEDLE = 32
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}
MESSAGES = {
    "model": "claude-3-5-haiku",
    "max_tokens": 8,
    "messages": [{"role": "user", "content": "Hi"}],
}


def _alnum(n: int) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(n))


def expect(got: int, want: int, what: str) -> None:
    if got != want:
        pytest.fail(f"{what}: HTTP {got}, expected {want}", pytrace=False)


@dataclass(repr=False)
class Secrets:
    """Every raw key created or sent; `needles` are the strings that must never show up."""

    raw: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Secrets(<{len(self.raw)} keys>)"

    def add(self, key: str) -> str:
        if key not in self.raw:
            self.raw.append(key)
        return key

    def needles(self) -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        for index, key in enumerate(self.raw):
            if len(key) >= MIN_NEEDLE:
                out.append((index, key))
            for prefix in PREFIXES:
                if key.startswith(prefix):
                    body = key[len(prefix) :]
                    if len(body) >= MIN_NEEDLE:
                        out.append((index, body))
                    break
        return out

    def leaks(self, place: str, text: str | bytes) -> list[str]:
        data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
        return [
            f"{place}: key #{index} ({'body' if needle != self.raw[index] else 'whole key'})"
            for index, needle in self.needles()
            if needle.encode() in data
        ]


@dataclass(repr=False)
class Run:
    stack: Stack
    secrets: Secrets
    http: httpx.Client
    ids: list[str] = field(default_factory=list)
    denied: list[str] = field(default_factory=list)  # headers + body of each denial
    upstream_saw: list[str] = field(default_factory=list)  # echo of each allowed request
    statuses: list[tuple[str, int]] = field(default_factory=list)

    def create(self, *options: str) -> tuple[str, str]:
        key_id, key = self.stack.create_key(*options)
        self.ids.append(key_id)
        self.secrets.add(key)
        return key_id, key

    def send(
        self,
        label: str,
        headers: list[tuple[str, str]],
        *,
        path: str = "/v1/chat/completions",
        body: dict[str, object] | None = None,
    ) -> int:
        if path == "/v1/models":
            resp = self.http.get(path, headers=headers)
        else:
            resp = self.http.post(path, headers=headers, json=body or CHAT)
        self.statuses.append((label, resp.status_code))
        if resp.status_code == 200:
            self.upstream_saw.append(resp.headers.get("x-echo-headers", "") + resp.text)
        else:
            dump = "\n".join(f"{k}: {v}" for k, v in resp.headers.multi_items())
            self.denied.append(dump + "\n" + resp.text)
        return resp.status_code

    def bearer(self, label: str, key: str, path: str = "/v1/chat/completions") -> int:
        self.secrets.add(key)
        return self.send(label, [("authorization", f"Bearer {key}")], path=path)

    def x_api_key(self, label: str, key: str) -> int:
        self.secrets.add(key)
        return self.send(
            label,
            [("x-api-key", key), ("anthropic-version", "2023-06-01")],
            path="/v1/messages",
            body=MESSAGES,
        )


@contextlib.contextmanager
def _run() -> Iterator[Run]:
    env = {"KEYGUARD_LOG_LEVEL": "debug"}
    with (
        running_stack(keyguard_env=env, persistent_redis=True) as stack,
        httpx.Client(base_url=stack.base_url, trust_env=False, timeout=10.0) as http,
    ):
        yield Run(stack, Secrets(), http)


def _drive(run: Run) -> None:
    """The end-to-end traffic; asserts the expected statuses along the way."""
    _, quota = run.create("--quota", "50", "--name", "hygiene-quota")
    _, unlimited = run.create("--unlimited")
    _, sub = run.create("--type", "subscription", "--quota", "10", "--cycle", "30d")
    _, restricted = run.create("--quota", "5", "--models", "gpt-4o", "--allowed-ips", "10.0.0.0/8")
    _, limited = run.create("--quota", "100", "--rpm", "1")
    _, tiny = run.create("--quota", "1")
    disabled_id, disabled = run.create("--quota", "5")
    revoked_id, revoked = run.create("--quota", "5")

    for label, key in (("quota", quota), ("unlimited", unlimited), ("subscription", sub)):
        expect(run.bearer(label, key), 200, f"{label} key, Bearer")
        expect(run.x_api_key(label, key), 200, f"{label} key, x-api-key")
        expect(run.bearer(label, key, path="/v1/models"), 200, f"{label} key, GET /v1/models")
        # Both headers: Authorization wins and the request is allowed.
        both = [("authorization", f"Bearer {key}"), ("x-api-key", key)]
        expect(run.send(label, both), 200, f"{label} key in both headers")
        # Wrong scheme, no scheme, duplicated headers: all refused as malformed.
        expect(run.send(label, [("authorization", f"Token {key}")]), 401, f"{label}, Token")
        expect(run.send(label, [("authorization", key)]), 401, f"{label}, no scheme")
        dup = [("authorization", f"Bearer {key}"), ("authorization", f"Bearer {key}")]
        expect(run.send(label, dup), 401, f"{label}, two Authorization headers")
        dup = [("x-api-key", key), ("x-api-key", key)]
        expect(run.send(label, dup), 401, f"{label}, two x-api-key headers")

    # 127.0.0.1 is not in 10.0.0.0/8
    expect(run.bearer("restricted", restricted), 403, "IP-restricted key")
    expect(run.bearer("rpm", limited), 200, "rate-limited key")
    expect(run.bearer("rpm", limited), 429, "rate-limited key")
    expect(run.bearer("tiny", tiny), 200, "key with 1 unit")
    expect(run.bearer("tiny", tiny), 402, "key with 1 unit")
    run.stack.keys("disable", disabled_id)
    run.stack.keys("revoke", revoked_id)
    run.ids.remove(revoked_id)
    deadline = time.monotonic() + 5  # the change reaches keyguard's cache by pub/sub
    while run.bearer("disabled", disabled) != 401 and time.monotonic() < deadline:
        time.sleep(0.1)
    expect(run.x_api_key("disabled", disabled), 401, "disabled key")
    expect(run.bearer("revoked", revoked), 401, "revoked key")
    expect(run.x_api_key("revoked", revoked), 401, "revoked key")

    # Keys no store holds, and malformed ones long enough to be worth protecting.
    for key in (
        "sk-" + _alnum(48),
        "sk-sub-" + _alnum(48),
        "sk-" + _alnum(20) + "!" + _alnum(20),
        "sk-" + _alnum(40) + "-" + _alnum(8),
        "SK-" + _alnum(48),
        "pk-" + _alnum(48),
        _alnum(64),
        "sk-" + _alnum(500),
    ):
        expect(run.bearer("unknown", key), 401, "unknown or malformed key")
        expect(run.x_api_key("unknown", key), 401, "unknown or malformed key")

    # Redis SIGKILLed: lookups fail, keyguard denies (store_unavailable) and logs it.
    run.stack.redis.kill()
    fresh = run.secrets.add("sk-" + _alnum(48))
    expect(run.bearer("outage", fresh), 503, "unknown key, Redis down")
    expect(run.x_api_key("outage", quota), 503, "metered key, Redis down")
    expect(run.bearer("outage", "sk-sub-" + _alnum(48)), 503, "unknown key, Redis down")
    run.bearer("outage", unlimited)  # may be served from the cache: either answer is fine
    time.sleep(1.5)  # let the health probe and the invalidation listener notice
    run.stack.redis.start()
    wait_serving(run.stack.keyguard.target)
    deadline = time.monotonic() + 10
    while run.bearer("after", quota) != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    expect(run.x_api_key("after", sub), 200, "after Redis is back")
    expect(run.bearer("after", "sk-" + _alnum(48)), 401, "after Redis is back")


def _as_bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _read_value(db: redis.Redis, name: bytes, place: str) -> tuple[str, list[bytes]]:
    """Every member, field and value stored under one key, whatever its type."""
    kind = _as_bytes(db.type(name)).decode()
    client: Any = db  # redis-py's sync return types are unions with async ones
    found: Any
    if kind == "string":
        found = [client.get(name)]
    elif kind == "hash":
        found = [b for kv in client.hgetall(name).items() for b in kv]
    elif kind == "set":
        found = client.smembers(name)
    elif kind == "zset":
        found = [member for member, _ in client.zrange(name, 0, -1, withscores=True)]
    elif kind == "list":
        found = client.lrange(name, 0, -1)
    elif kind == "stream":
        found = [b for _, entry in client.xrange(name) for kv in entry.items() for b in kv]
    elif kind == "none":  # expired between SCAN and TYPE (a rate-limit key)
        found = []
    else:
        raise AssertionError(f"{place}: unexpected Redis type {kind}")
    return kind, [_as_bytes(v) for v in found if v is not None]


def _redis_dump(port: int) -> Iterator[tuple[str, bytes]]:
    """(place, bytes) for every key name and value in every non-empty database."""
    with redis.Redis(host="127.0.0.1", port=port) as admin:
        databases = [int(str(name).removeprefix("db")) for name in admin.info("keyspace")]
        admin.bgrewriteaof()  # the compacted AOF must be clean too, not just the log
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            info = admin.info("persistence")
            if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
                break
            time.sleep(0.05)
    for number in databases:
        with redis.Redis(host="127.0.0.1", port=port, db=number) as db:
            for name in db.scan_iter(count=500):
                place = f"redis db{number} key {name[:12]!r}..."
                yield place + " (name)", name
                kind, values = _read_value(db, name, place)
                yield place + f" ({kind} value)", b"\n".join(values)


def test_no_raw_key_in_logs_metrics_redis_or_cli() -> None:
    with _run() as run:
        _drive(run)
        stack = run.stack
        places: list[tuple[str, str | bytes]] = []
        places.append(("keyguard /metrics", stack.metrics_text()))
        places.append(("envoy /stats", stack.envoy_stats_text()))
        status, prom = http_get(f"{stack.envoy.admin_url}/stats/prometheus")
        assert status == 200
        places.append(("envoy /stats/prometheus", prom))
        redis_items = list(_redis_dump(stack.redis.port))
        assert any("(hash value)" in place for place, _ in redis_items), "no key records found"
        places += redis_items
        for path in sorted(Path(stack.redis.dir).rglob("*")):
            if path.is_file():
                places.append((f"redis file {path.name}", path.read_bytes()))
        assert any("redis file" in p for p, _ in places), "Redis wrote nothing to disk"
        places.append(("keys list", stack.keys("list")))
        places.append(("keys list --json", stack.keys("list", "--json")))
        for key_id in run.ids:
            places.append((f"keys show {key_id}", stack.keys("show", key_id)))
            places.append((f"keys show {key_id} --json", stack.keys("show", key_id, "--json")))
        places += [(f"denial #{i}", text) for i, text in enumerate(run.denied)]
        places += [(f"upstream request #{i}", text) for i, text in enumerate(run.upstream_saw)]
        # Stop keyguard (SIGTERM: drain, flush, final log lines) and Envoy, then read logs.
        stack.keyguard.stop()
        stack.envoy.stop()
        places.append(("keyguard log", stack.keyguard.logs()))
        places.append(("envoy log", stack.envoy.logs()))

    # The run did what it claims: denials and allows of many kinds, and logs that are not
    # empty (a scan of nothing proves nothing).
    keys_seen = len(run.secrets.raw)
    assert keys_seen >= 18, f"only {keys_seen} distinct keys were used"
    assert {s for _, s in run.statuses} >= {200, 401, 402, 403, 429, 503}
    keyguard_log = dict(places)["keyguard log"]
    assert isinstance(keyguard_log, str)
    decisions_logged = keyguard_log.count('"event": "decision"')
    sent = len(run.statuses)
    assert decisions_logged == sent, f"keyguard logged {decisions_logged} decisions for {sent}"
    logged_outage = "store_down" in keyguard_log
    assert logged_outage, "keyguard did not log the Redis outage"
    # The scanner itself finds a key, and a key's body alone, when they are there.
    probe_key = run.secrets.raw[0]
    assert len(run.secrets.leaks("probe", f"x{probe_key}y")) == 2
    assert len(run.secrets.leaks("probe", probe_key.split("-")[-1].encode())) == 1
    leaks = [leak for place, text in places for leak in run.secrets.leaks(place, text)]
    assert not leaks, "raw keys found:\n" + "\n".join(leaks)
