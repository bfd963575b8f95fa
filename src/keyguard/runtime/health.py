"""grpc.health.v1 wired to Redis reachability and to shutdown."""

from __future__ import annotations

from typing import Any

import structlog
from grpc_health.v1 import health, health_pb2

from keyguard.errors import StoreError
from keyguard.runtime.metrics import Metrics
from keyguard.runtime.tasks import PeriodicTask
from keyguard.store import KeyStore

log = structlog.get_logger("keyguard.health")
# The aio servicer is untyped in grpc-stubs.
HealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]
SERVICES = ("", "envoy.service.auth.v3.Authorization")
# SERVING while the process runs, whatever Redis does: for liveness probes, so
# that a Redis outage takes a pod out of rotation without restarting it (and
# emptying the cache that KEYGUARD_ON_STORE_ERROR=cached serves from).
LIVENESS_SERVICE = "liveness"


class HealthReporter(PeriodicTask):
    """Probes Redis every ``interval`` seconds and sets SERVING / NOT_SERVING."""

    name = "kg-health"
    label = "health_probe"

    def __init__(
        self,
        servicer: Any,
        store: KeyStore,
        metrics: Metrics,
        serve_without_store: bool,
        interval: float = 1.0,
    ) -> None:
        super().__init__(interval)
        self.servicer = servicer
        self.store = store
        self.metrics = metrics
        self.serve_without_store = serve_without_store
        self.store_up: bool | None = None

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

    async def tick(self) -> None:
        try:
            await self.store.ping()
            up = True
        except StoreError:
            up = False
        self.metrics.store_up.set(1 if up else 0)
        if up != self.store_up:
            log.info("store_up" if up else "store_down")
            self.store_up = up
        if not self.stopping:
            await self._set(up or self.serve_without_store)

    async def shutdown(self) -> None:
        """NOT_SERVING for every service (the drain begins), and no more probes."""
        self.stopping = True
        await self._set(False)
        await self.servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.stop()
