"""Settlement: Envoy's gRPC access log in, batched atomic charges out.

``AccessLogService/StreamAccessLogs`` is served on keyguard's own listen addresses,
beside Check. Envoy batches finished requests into each message; every entry that
carries keyguard's ticket is assessed (``settle.assess``) and queued, and the
``Settler`` writes the queue every ``interval`` seconds: one ``settle.lua`` call per
API key for all of its requests, so a metered request costs a fraction of a Redis
command after its response. A batch that fails is kept and retried; settle.lua
remembers settled hold ids, so a retried batch whose first reply was lost charges
nothing twice.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, Literal

import grpc
import structlog

from keyguard._proto.envoy.data.accesslog.v3.accesslog_pb2 import HTTPAccessLogEntry
from keyguard._proto.envoy.service.accesslog.v3 import als_pb2_grpc
from keyguard._proto.envoy.service.accesslog.v3.als_pb2 import (
    StreamAccessLogsMessage,
    StreamAccessLogsResponse,
)
from keyguard.errors import StoreError
from keyguard.meter.pricebook import PriceBook
from keyguard.meter.settle import (
    EXT_AUTHZ_NAMESPACE,
    USAGE_NAMESPACE,
    Assessed,
    Outcome,
    UsageReader,
    assess_ticket,
)
from keyguard.meter.ticket import legacy_ticket
from keyguard.prices import PriceTable
from keyguard.runtime.alerts import Alerts
from keyguard.runtime.metrics import Metrics
from keyguard.runtime.tasks import BackgroundTask
from keyguard.store import KeyStore

log = structlog.get_logger("keyguard.settlement")
# A queue that cannot be written (Redis down) is bounded: past this many requests the
# oldest are dropped, logged and counted, instead of growing without end. Their holds
# then expire, charging nothing.
MAX_QUEUED = 200_000
# One settle.lua call takes at most this many requests of a key: a backlog (after Redis
# was away) goes in several calls, none holding Redis for long.
MAX_PER_CALL = 1000


# The token kinds counted per model, in the order of _Tally's sums.
_KINDS = ("input", "cached_input", "cache_write", "output")


class _Tally:
    """A batch's settlements, counted first and added to the metrics once per label:
    per-request label lookups would cost more than the rest of settling a request."""

    def __init__(self) -> None:
        self.released = 0
        self.outcomes: Counter[str] = Counter()
        # model label -> [input, cached_input, cache_write, output tokens, credits]
        self.sums: dict[str, list[int]] = {}

    def add(self, item: Assessed, word: str) -> None:
        if word == "duplicate":
            self.outcomes[Outcome.DUPLICATE] += 1
            return
        settlement = item.settlement
        if settlement.held > 0:  # "settled" or "unheld": its hold is not open any more
            self.released += 1
        self.outcomes[item.outcome] += 1
        sums = self.sums.get(item.model_label)
        if sums is None:
            sums = self.sums[item.model_label] = [0, 0, 0, 0, 0]
        usage = item.usage
        if usage is not None:
            sums[0] += usage.input
            sums[1] += usage.cached_input
            sums[2] += usage.cache_write
            sums[3] += usage.output
        sums[4] += settlement.charge

    def record(self, m: Metrics) -> None:
        if self.released:
            m.holds_open.dec(self.released)
        for outcome, count in self.outcomes.items():
            m.settlements.labels(outcome).inc(count)
        for label, sums in self.sums.items():
            for kind, count in zip(_KINDS, sums, strict=False):
                if count:
                    m.tokens.labels(label, kind).inc(count)
            if sums[4]:
                m.credits.labels(label).inc(sums[4])


class Settler(BackgroundTask):
    name = "kg-settler"

    def __init__(
        self,
        store: KeyStore,
        metrics: Metrics,
        interval: float = 0.05,
        retry: float = 0.5,
        history_days: int = 0,
        alerts: Alerts | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.history_days = history_days
        self.alerts = alerts
        self.metrics = metrics
        self.interval = interval
        self.retry = retry
        self._queue: dict[str, list[Assessed]] = {}
        self._queued = 0
        self._wake = asyncio.Event()
        self.dropped = 0

    def add(self, item: Assessed) -> None:
        if self._queued >= MAX_QUEUED:
            self.dropped += 1
            self.metrics.settlements.labels("dropped").inc()
            return
        self._queue.setdefault(item.key_hash, []).append(item)
        self._queued += 1
        self._wake.set()

    @property
    def queued(self) -> int:
        return self._queued

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            # Let a batch gather: Envoy's messages and other streams arrive meanwhile.
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except StoreError:
                await asyncio.sleep(self.retry)
            except Exception as exc:  # a bug must not stop settlement for good
                log.error("settle_failed", error=type(exc).__name__)
                await asyncio.sleep(self.retry)

    async def flush(self) -> None:
        """Write everything queued; what a failed write held goes back to the queue."""
        if not self._queue:
            self._wake.clear()
            return
        batch, self._queue = self._queue, {}
        self._queued = 0
        self._wake.clear()
        calls = [
            items[start : start + MAX_PER_CALL]
            for items in batch.values()
            for start in range(0, len(items), MAX_PER_CALL)
        ]
        results = await asyncio.gather(
            *(
                self.store.settle(
                    items[0].key_hash, [a.settlement for a in items], self.history_days
                )
                for items in calls
            ),
            return_exceptions=True,
        )
        failed: BaseException | None = None
        tally = _Tally()
        events: list[str] = []
        for items, result in zip(calls, results, strict=True):
            if isinstance(result, BaseException):
                failed = result
                for item in items:
                    self._requeue(item)
                continue
            for item, word in zip(items, result, strict=False):
                tally.add(item, word)
            events += result[len(items) :]  # low-balance crossings, once each
        # What was charged is counted before anything else can go wrong.
        tally.record(self.metrics)
        if self.alerts is not None:
            for event in events:
                try:
                    await self.alerts.handle(event)
                except Exception as exc:  # one alert's failure loses no other
                    log.error("alert_failed", error=type(exc).__name__)
        if failed is not None:
            raise failed

    def _requeue(self, item: Assessed) -> None:
        self._queue.setdefault(item.key_hash, []).append(item)
        self._queued += 1
        self._wake.set()

    async def stop(self) -> None:
        await super().stop()
        try:
            await self.flush()  # what the last responses reported
        except Exception as exc:
            log.error("settle_on_stop_failed", error=type(exc).__name__, pending=self._queued)


# What settlement reads of an entry's metadata: the ticket keyguard set at Check and
# the usage Envoy extracted, each looked up by name (iterating a protobuf map or
# converting whole Structs costs several times as much per entry), and of the usage
# only the fields its kind needs (settle.assess_ticket).


def _no_usage(name: str) -> None:
    return None


def usage_reader(fields: Any) -> UsageReader:
    """Reads a usage Struct's fields by name: numbers and strings (nested values read as
    absent, as a usage that is not a flat count cannot be charged from)."""

    def read(name: str) -> Any:
        value = fields.get(name)
        if value is None:
            return None
        kind = value.WhichOneof("kind")
        if kind == "number_value":
            return value.number_value
        if kind == "string_value":
            return value.string_value
        return None

    return read


def assess_entry(entry: HTTPAccessLogEntry, prices: PriceTable) -> Assessed | Literal[False] | None:
    """What a finished request keyguard holds credits for costs; False for an entry
    without a ticket (denied, unmetered route, ...) or an intermediate one; None for a
    ticket that cannot be read."""
    common = entry.common_properties
    if common.intermediate_log_entry:
        return False  # the request has not finished yet
    metadata = common.metadata.filter_metadata
    authz = metadata.get(EXT_AUTHZ_NAMESPACE)
    if authz is None:
        return False
    fields = authz.fields
    hold = fields.get("hold")
    if hold is None:
        return False
    usage = metadata.get(USAGE_NAMESPACE)
    read = _no_usage if usage is None else usage_reader(usage.fields)
    code = entry.response.response_code.value
    parts = hold.string_value.split(" ", 5)
    if len(parts) != 6:  # a ticket of the older format: one entry per field
        parts = list(legacy_ticket(fields))
    hold_id, held, estimate, key_hash, dialect, model = parts
    return assess_ticket(
        hold_id,
        held,
        estimate,
        key_hash,
        dialect,
        model,
        read=read,
        response_code=code,
        prices=prices,
    )


class SettlementService(als_pb2_grpc.AccessLogServiceServicer):
    """Envoy's access log stream: every entry with a ticket becomes a settlement."""

    def __init__(self, settler: Settler, prices: PriceBook) -> None:
        self.settler = settler
        self.prices = prices

    def take(self, message: StreamAccessLogsMessage) -> int:
        """Queue the settlements of one message; how many entries carried a ticket."""
        taken = 0
        table = self.prices.table
        add = self.settler.add
        for entry in message.http_logs.log_entry:
            item = assess_entry(entry, table)
            if item is False:
                continue  # unfinished, or not metered by keyguard
            if item is None:
                log.warning("settle_unreadable_ticket")
                continue
            add(item)
            taken += 1
        return taken

    async def StreamAccessLogs(
        self,
        request_iterator: AsyncIterator[StreamAccessLogsMessage],
        context: grpc.aio.ServicerContext[StreamAccessLogsMessage, StreamAccessLogsResponse],
    ) -> StreamAccessLogsResponse:
        try:
            async for message in request_iterator:
                self.take(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken stream; Envoy opens a new one
            log.warning("access_log_stream_failed", error=type(exc).__name__)
        return StreamAccessLogsResponse()


ACCESS_LOG_SERVICE = "envoy.service.accesslog.v3.AccessLogService"


def add_settlement(server: grpc.aio.Server, service: SettlementService) -> None:
    handler = grpc.stream_unary_rpc_method_handler(
        service.StreamAccessLogs,
        request_deserializer=StreamAccessLogsMessage.FromString,
        response_serializer=StreamAccessLogsResponse.SerializeToString,
    )
    # (grpcio >= 1.63; the type stubs do not declare it yet.)
    server.add_registered_method_handlers(  # type: ignore[attr-defined]
        ACCESS_LOG_SERVICE, {"StreamAccessLogs": handler}
    )
