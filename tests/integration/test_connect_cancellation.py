"""One cancelled caller must not cancel the others (found by bench.faults under load).

When keyguard is slow (CPU starvation, a Redis reconnect), Envoy's 0.25 s ext_authz deadline
passes and grpc cancels those Check coroutines. If one of them was the caller that opened
the pipelined Redis connection, `PipelinedRedis._ensure` stores its CancelledError in the
shared `_connecting` future, so every caller waiting on that connect ends cancelled too,
including the health loop (`HealthReporter._run`), which then stops for good: health
stays frozen at its last value (SERVING through a Redis outage, or NOT_SERVING for ever
after Redis is back, which with the shipped liveness probe restarts keyguard every minute).

"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from keyguard.runtime.health import HealthReporter
from keyguard.runtime.metrics import Metrics
from keyguard.settings import Settings
from keyguard.store.pipeline import PipelinedRedis
from tests.integration.conftest import run


@pytest.fixture
def hung_connect_port() -> Iterator[int]:
    """A listener whose accept backlog is full: a new TCP connect stays pending."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        fillers = []
        try:
            for _ in range(3):
                filler = socket.socket()
                filler.setblocking(False)
                fillers.append(filler)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
            yield port
        finally:
            for filler in fillers:
                filler.close()


def test_a_cancelled_connector_does_not_cancel_the_other_waiters(hung_connect_port: int) -> None:
    async def scenario() -> None:
        url = f"redis://127.0.0.1:{hung_connect_port}/0"
        rc = PipelinedRedis(replace(Settings(), redis_url=url, redis_timeout=2.0))
        try:
            first = asyncio.create_task(rc.execute("PING"))  # opens the connection
            await asyncio.sleep(0.05)
            second = asyncio.create_task(rc.execute("PING"))  # waits for the same connect
            await asyncio.sleep(0.05)
            first.cancel()  # grpc cancels a Check at Envoy's deadline
            await asyncio.gather(first, second, return_exceptions=True)
            assert not second.cancelled(), "nobody cancelled the second caller"
        finally:
            rc.close()

    run(scenario)


class _Servicer:
    def __init__(self) -> None:
        self.statuses: list[int] = []

    async def set(self, name: str, status: int) -> None:
        self.statuses.append(status)


class _Store:
    """ping: the first one fails with something other than StoreError, then it answers."""

    def __init__(self) -> None:
        self.pings = 0

    async def ping(self) -> None:
        self.pings += 1
        if self.pings == 1:
            raise RuntimeError("a bug or a driver surprise in one probe")

    async def flush_usage(self) -> None:
        pass


def test_health_loop_survives_a_failed_probe() -> None:
    """Defence in depth: whatever one probe raises, the next probe still runs."""

    async def scenario() -> None:
        store: Any = _Store()
        servicer = _Servicer()
        reporter = HealthReporter(servicer, store, Metrics(CollectorRegistry()), False, 0.01)
        reporter.start()
        try:
            await asyncio.sleep(0.3)
            assert store.pings > 1, "the health loop stopped after its first probe"
            assert reporter.store_up is True
        finally:
            with contextlib.suppress(RuntimeError):  # the dead loop's exception
                await reporter.shutdown()

    run(scenario)
