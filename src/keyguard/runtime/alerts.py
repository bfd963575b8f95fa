"""Low-balance alerts: what settlement found, recorded and delivered off the request path.

settle.lua says, once per crossing, that a key's balance fell below its threshold (or
is back above it). ``Alerts.handle`` records that in Redis (the bounded alert stream,
the set of keys below their threshold, behind the ``keyguard_keys_below_alert`` gauge)
and queues a webhook call, which ``WebhookSender`` makes with retries and backoff: a
slow or dead webhook never holds up a Check or a settlement.

The webhook body is JSON; ``X-Keyguard-Signature: sha256=<hex>`` is the HMAC-SHA256 of
the body keyed with KEYGUARD_ALERT_WEBHOOK_SECRET, and ``X-Keyguard-Event-Id`` lets the
receiver drop a repeated delivery.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import asdict, dataclass

import httpx
import structlog

from keyguard.errors import StoreError
from keyguard.runtime.metrics import Metrics
from keyguard.runtime.tasks import BackgroundTask
from keyguard.store import KeyStore

log = structlog.get_logger("keyguard.alerts")
SIGNATURE_HEADER = "x-keyguard-signature"
EVENT_HEADER = "x-keyguard-event-id"
MAX_QUEUED = 10_000


@dataclass(frozen=True, slots=True)
class LowBalance:
    key_id: str
    remaining: int
    threshold: int
    at: float
    event_id: str
    type: str = "keyguard.low_balance"


def parse_event(word: str) -> tuple[str, str, int, int] | None:
    """settle.lua's event words: ("alert", id, remaining, threshold) or ("rearm", id, 0, 0)."""
    parts = word.split("|")
    try:
        if parts[0] == "alert" and len(parts) == 4:
            return "alert", parts[1], int(parts[2]), int(parts[3])
        if parts[0] == "rearm" and len(parts) == 2:
            return "rearm", parts[1], 0, 0
    except ValueError:
        return None
    return None


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSender(BackgroundTask):
    """POSTs queued alerts to the webhook, each until it is accepted (2xx) or
    ``attempts`` tries have failed, waiting ``backoff * 2**n`` (at most ``max_backoff``)
    between tries."""

    name = "kg-alert-webhook"

    def __init__(
        self,
        url: str,
        secret: str,
        metrics: Metrics,
        attempts: int = 6,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        timeout: float = 5.0,
    ) -> None:
        super().__init__()
        self.url = url
        self.secret = secret
        self.metrics = metrics
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.queue: asyncio.Queue[LowBalance] = asyncio.Queue(MAX_QUEUED)

    def send(self, alert: LowBalance) -> None:
        try:
            self.queue.put_nowait(alert)
        except asyncio.QueueFull:
            self.metrics.alert_webhooks.labels("dropped").inc()
            log.error("alert_webhook_queue_full", key_id=alert.key_id)

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=self.timeout, trust_env=False) as client:
            while True:
                alert = await self.queue.get()
                await self._deliver(client, alert)

    async def _deliver(self, client: httpx.AsyncClient, alert: LowBalance) -> None:
        body = json.dumps(asdict(alert), separators=(",", ":")).encode()
        headers = {
            "content-type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, body),
            EVENT_HEADER: alert.event_id,
        }
        for attempt in range(self.attempts):
            try:
                response = await client.post(self.url, content=body, headers=headers)
                if 200 <= response.status_code < 300:
                    self.metrics.alert_webhooks.labels("delivered").inc()
                    return
                error = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                error = type(exc).__name__
            log.warning("alert_webhook_failed", attempt=attempt + 1, error=error)
            if attempt + 1 < self.attempts:
                await asyncio.sleep(min(self.backoff * 2**attempt, self.max_backoff))
        self.metrics.alert_webhooks.labels("failed").inc()
        log.error("alert_webhook_gave_up", key_id=alert.key_id, attempts=self.attempts)


class Alerts:
    """What the settler calls with settle.lua's event words."""

    def __init__(self, store: KeyStore, metrics: Metrics, webhook: WebhookSender | None) -> None:
        self.store = store
        self.metrics = metrics
        self.webhook = webhook

    async def handle(self, word: str) -> None:
        event = parse_event(word)
        if event is None:
            log.warning("alert_event_unreadable")
            return
        kind, key_id, remaining, threshold = event
        try:
            below = await self.store.note_alert(kind, key_id, remaining, threshold)
        except StoreError:
            # The crossing happened (the record says so); only its note is lost.
            log.error("alert_not_recorded", key_id=key_id)
            below = None
        if below is not None:
            self.metrics.keys_below_alert.set(below)
        if kind == "alert":
            self.metrics.alerts.inc()
            log.info("low_balance", key_id=key_id, remaining=remaining, threshold=threshold)
            if self.webhook is not None:
                alert = LowBalance(key_id, remaining, threshold, time.time(), uuid.uuid4().hex)
                self.webhook.send(alert)
