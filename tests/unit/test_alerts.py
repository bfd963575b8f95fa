"""Low-balance alerts: one event per crossing, re-armed above the threshold, delivered to
a real local webhook with a valid signature and retries; never on the request path."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from keyguard.runtime.alerts import Alerts, WebhookSender, parse_event, sign
from keyguard.runtime.metrics import Metrics
from keyguard.store import Settlement
from keyguard.store.memory import MemoryKeyStore

SECRET = "whsec-test-7f3a"


def record(**fields: str) -> dict[str, str]:
    return {"id": "kg_alert0000001", "status": "active", "type": "standard", "unlimited": "0",
            "remaining": "1000", "used": "0", **fields}  # fmt: skip


async def settle(store: MemoryKeyStore, charge: int, hold_id: str) -> list[str]:
    return await store.settle("a" * 64, [Settlement(hold_id, 0, charge)])


def test_one_event_per_crossing_and_rearm_above() -> None:
    async def go() -> None:
        store = MemoryKeyStore()
        store.put("a" * 64, record(alert_below="500"))
        assert await settle(store, 400, "h1") == ["unheld"]  # 600 left: above
        assert await settle(store, 200, "h2") == [
            "unheld",
            "alert|kg_alert0000001|400|500",
        ]
        assert await settle(store, 100, "h3") == ["unheld"]  # still below: no second event
        store.update("a" * 64, remaining="2000")  # a top-up
        assert await settle(store, 10, "h4") == ["unheld", "rearm|kg_alert0000001"]
        words = await settle(store, 1600, "h5")
        assert words[-1] == "alert|kg_alert0000001|390|500"

    asyncio.run(go())


@pytest.mark.parametrize(
    ("fields", "threshold"),
    [
        ({"alert_below": "10%", "remaining": "1000", "used": "0"}, 100),
        ({"alert_below": "10%", "remaining": "500", "used": "1500", "payg_used": "0"}, 200),
        ({"alert_below": "25%", "type": "subscription", "cycle_quota": "4000"}, 1000),
    ],
)
def test_a_percentage_is_of_the_quota(fields: dict[str, str], threshold: int) -> None:
    async def go() -> None:
        store = MemoryKeyStore()
        store.put("a" * 64, record(**fields))
        remaining = int(fields.get("remaining", "1000"))
        words = await settle(store, remaining - threshold + 1, "h1")
        assert words[-1] == f"alert|kg_alert0000001|{threshold - 1}|{threshold}"

    asyncio.run(go())


def test_unlimited_keys_and_keys_without_a_threshold_never_alert() -> None:
    async def go() -> None:
        store = MemoryKeyStore()
        store.put("a" * 64, record(unlimited="1", alert_below="500"))
        assert await settle(store, 900, "h1") == ["unheld"]
        store.put("a" * 64, record())
        assert await settle(store, 900, "h2") == ["unheld"]

    asyncio.run(go())


@pytest.mark.parametrize("word", ["alert|x|1", "alert|x|a|2", "other|x", "rearm", ""])
def test_unreadable_event_words(word: str) -> None:
    assert parse_event(word) is None


# ----- delivery -------------------------------------------------------------------------------


class Hook:
    """A real HTTP webhook on 127.0.0.1 that fails the first `failures` calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[tuple[dict[str, str], bytes]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                hook.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = 503 if len(hook.calls) <= hook.failures else 204
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/keyguard"


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook(failures=2)
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


def test_a_crossing_is_delivered_signed_after_retries(hook: Hook) -> None:
    async def go() -> Metrics:
        metrics = Metrics(CollectorRegistry())
        store = MemoryKeyStore()
        sender = WebhookSender(hook.url, SECRET, metrics, backoff=0.05)
        sender.start()
        try:
            alerts = Alerts(store, metrics, sender)
            await alerts.handle("alert|kg_alert0000001|400|500")
            for _ in range(100):
                if len(hook.calls) >= 3:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.1)
        finally:
            await sender.stop()
        assert store.below == {"kg_alert0000001"}
        assert store.alerts == [{"key_id": "kg_alert0000001", "remaining": 400, "threshold": 500}]
        return metrics

    metrics = asyncio.run(go())
    assert len(hook.calls) == 3  # two 503s, then accepted: no fourth call
    headers, body = hook.calls[-1]
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["x-keyguard-signature"] == expected == sign(SECRET, body)
    assert headers["x-keyguard-event-id"] == hook.calls[0][0]["x-keyguard-event-id"]
    event = json.loads(body)
    assert event["type"] == "keyguard.low_balance"
    assert (event["key_id"], event["remaining"], event["threshold"]) == (
        "kg_alert0000001",
        400,
        500,
    )
    assert metrics.registry.get_sample_value("keyguard_keys_below_alert") == 1
    assert (
        metrics.registry.get_sample_value("keyguard_alert_webhooks_total", {"result": "delivered"})
        == 1
    )


def test_a_dead_webhook_gives_up_without_blocking(hook: Hook) -> None:
    hook.failures = 100

    async def go() -> Metrics:
        metrics = Metrics(CollectorRegistry())
        sender = WebhookSender(hook.url, SECRET, metrics, attempts=3, backoff=0.01)
        sender.start()
        try:
            alerts = Alerts(MemoryKeyStore(), metrics, sender)
            await alerts.handle("alert|kg_x|1|2")
            # Queued, not delivered inline: three tries with backoff cannot have happened.
            assert len(hook.calls) < 3
            for _ in range(100):
                if len(hook.calls) >= 3:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.05)
        finally:
            await sender.stop()
        return metrics

    metrics = asyncio.run(go())
    assert len(hook.calls) == 3
    assert (
        metrics.registry.get_sample_value("keyguard_alert_webhooks_total", {"result": "failed"})
        == 1
    )
