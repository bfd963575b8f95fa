"""grpc.health.v1 wired to Redis reachability and to shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from grpc_health.v1 import health, health_pb2

from keyguard.metrics import Metrics
from keyguard.store import KeyStore, StoreError

log = structlog.get_logger("keyguard.health")
# The aio servicer is untyped in grpc-stubs.
HealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]
SERVICES = ("", "envoy.service.auth.v3.Authorization")
# SERVING while the process runs, whatever Redis does: for liveness probes, so
# that a Redis outage takes a pod out of rotation without restarting it (and
# emptying the cache that KEYGUARD_ON_STORE_ERROR=cached serves from).
LIVENESS_SERVICE = "liveness"


class HealthReporter:
    """Probes Redis every ``interval`` seconds and sets SERVING / NOT_SERVING."""

    def __init__(
        self,
        servicer: Any,
        store: KeyStore,
        metrics: Metrics,
        serve_without_store: bool,
        interval: float = 1.0,
    ) -> None:
        self.servicer = servicer
        self.store = store
        self.metrics = metrics
        self.serve_without_store = serve_without_store
        self.interval = interval
        self.store_up: bool | None = None
        self.shutting_down = False
        self._task: asyncio.Task[None] | None = None

    async def _set(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in SERVICES:
            await self.servicer.set(name, status)

    async def begin(self) -> None:
        """Before the first probe: grpc's servicer starts at SERVING, but nothing
        is known about the store yet, and a keyguard without it can only deny."""
        await self._set(self.serve_without_store)
        await self.servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)

    async def probe_once(self) -> None:
        try:
            await self.store.ping()
            up = True
        except StoreError:
            up = False
        self.metrics.store_up.set(1 if up else 0)
        if up != self.store_up:
            log.info("store_up" if up else "store_down")
            self.store_up = up
        if not self.shutting_down:
            await self._set(up or self.serve_without_store)

    async def _run(self) -> None:
        while True:
            # Nothing may end this loop but cancellation: a dead loop would
            # freeze the health status at whatever it last said.
            try:
                await self.probe_once()
            except asyncio.CancelledError:
                if self.shutting_down:
                    raise
                log.warning("health_probe_cancelled")
            except Exception as exc:
                log.error("health_probe_failed", error=type(exc).__name__)
            try:
                await self.store.flush_usage()
            except asyncio.CancelledError:
                if self.shutting_down:
                    raise
            except Exception as exc:
                if not isinstance(exc, StoreError):
                    log.error("usage_flush_failed", error=type(exc).__name__)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="kg-health")

    async def shutdown(self) -> None:
        self.shutting_down = True
        await self._set(False)
        await self.servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
