"""`keyguard serve`: the composition root. It builds the store, cache, servicer and
background tasks, serves gRPC, drains on a signal and tears everything down."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health_pb2_grpc
from prometheus_client import CollectorRegistry

from keyguard import __version__
from keyguard._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from keyguard.authz.cache import KeyCache
from keyguard.authz.service import AuthorizationService
from keyguard.errors import StartupError, StoreError
from keyguard.meter.pricebook import PriceBook
from keyguard.meter.service import SettlementService, Settler, add_settlement
from keyguard.runtime import logs
from keyguard.runtime.alerts import Alerts, WebhookSender
from keyguard.runtime.health import HealthReporter, HealthServicer
from keyguard.runtime.invalidation import InvalidationListener
from keyguard.runtime.metrics import Metrics, serve_metrics
from keyguard.runtime.tasks import UsageFlusher
from keyguard.settings import Settings
from keyguard.store import Commands
from keyguard.store.commands import make_commands
from keyguard.store.redis import RedisKeyStore

log = structlog.get_logger("keyguard.server")


def _server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if not settings.tls_cert:
        return None
    try:
        key = Path(settings.tls_key).read_bytes()
        cert = Path(settings.tls_cert).read_bytes()
        client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    except OSError as exc:
        raise StartupError(f"cannot read a TLS file: {exc}") from None
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def _passthrough(response: bytes | CheckResponse) -> bytes:
    return response if isinstance(response, bytes) else response.SerializeToString()


AUTHORIZATION_SERVICE = "envoy.service.auth.v3.Authorization"


def add_authorization(server: grpc.aio.Server, service: AuthorizationService) -> None:
    """Serve Authorization/Check, answering with bytes the service serialized (or prebuilt).

    A registered method, as generated code registers it: the core matches it in C,
    where a generic handler costs a Python lookup per call.
    """
    check = grpc.unary_unary_rpc_method_handler(
        service.Check,
        request_deserializer=CheckRequest.FromString,
        response_serializer=_passthrough,
    )
    # (grpcio >= 1.63; the type stubs do not declare it yet.)
    server.add_registered_method_handlers(AUTHORIZATION_SERVICE, {"Check": check})  # type: ignore[attr-defined]


def _bind(server: grpc.aio.Server, address: str, creds: grpc.ServerCredentials | None) -> None:
    if address.startswith("unix:"):
        path = address[len("unix:") :].removeprefix("//")
        # A socket file left by a killed process would make bind fail.
        with contextlib.suppress(FileNotFoundError):
            if Path(path).is_socket():
                os.unlink(path)
    try:
        if creds is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, creds)
    except RuntimeError:  # grpc's "Failed to bind to address"
        bound = 0
    if bound == 0:
        raise StartupError(
            f"cannot listen on {address}: the address is in use, or not allowed here"
        )


async def serve(
    settings: Settings,
    registry: CollectorRegistry | None = None,
    commands: Callable[[Settings], Commands] = make_commands,
) -> None:
    """Run until SIGTERM/SIGINT. ``commands`` builds the Redis client (a benchmark can
    put another one in)."""
    metrics_registry = registry or CollectorRegistry()
    metrics = Metrics(metrics_registry)
    if settings.metrics_port:
        serve_metrics(settings.metrics_host, settings.metrics_port, metrics_registry)

    store = RedisKeyStore(commands(settings), metrics)
    cache = KeyCache(
        settings.cache_size,
        settings.cache_ttl,
        settings.negative_cache_size,
        settings.negative_cache_ttl,
    )
    prices = PriceBook()
    listener = InvalidationListener(store, cache, prices=prices)
    flusher = UsageFlusher(store)
    webhook = None
    if settings.alert_webhook_url:
        webhook = WebhookSender(settings.alert_webhook_url, settings.alert_webhook_secret, metrics)
    alerts = Alerts(store, metrics, webhook)
    settler = Settler(store, metrics, history_days=settings.usage_retention_days, alerts=alerts)

    # SO_REUSEPORT only when workers share a port on purpose: otherwise a
    # leftover server would silently take half of the connections.
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 1 if settings.workers > 1 else 0)],
    )
    service = AuthorizationService(settings, store, cache, metrics, prices)
    add_authorization(server, service)
    # Settlement (Envoy's access log) on the same listen addresses as Check.
    add_settlement(server, SettlementService(settler, prices))
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reporter = HealthReporter(
        health_servicer, store, metrics, serve_without_store=settings.on_store_error == "allow"
    )

    await reporter.begin()
    if settings.metering == "tokens":
        await _load_prices(prices, store)
    creds = _server_credentials(settings)
    for address in settings.listen:
        _bind(server, address, creds)
    await server.start()
    for address in settings.listen:
        if address.startswith("unix:"):
            os.chmod(address[len("unix:") :].removeprefix("//"), int(settings.socket_mode, 8))
    listener.start()
    reporter.start()
    flusher.start()
    settler.start()
    if webhook is not None:
        webhook.start()
    log.info("started", version=__version__, pid=os.getpid(), settings=settings.masked())

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    # Drain: report NOT_SERVING but keep answering for the grace period, so
    # Envoy and the kubelet can stop sending before the port closes. A second
    # signal cuts the drain short.
    log.info("stopping", grace_seconds=settings.grace_seconds)
    await reporter.shutdown()
    stop.clear()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=settings.grace_seconds)
    await server.stop(1.0)
    metrics.apply()  # what the last Checks queued
    await listener.stop()
    await flusher.stop()  # and writes what the last Checks counted
    await settler.stop()  # and what the last access log entries reported
    if webhook is not None:
        await webhook.stop()
    await store.close()
    log.info("stopped")
    logs.flush()


async def _load_prices(prices: PriceBook, store: RedisKeyStore) -> None:
    """The price table before the first Check. With Redis down it stays empty (so
    metered keys are denied, never free) until the change feed connects and loads it."""
    try:
        await prices.reload(store)
    except StoreError:
        log.warning("prices_not_loaded")


def run(settings: Settings) -> None:
    logs.configure(settings.log_level)
    if settings.event_loop == "uvloop":
        # Measured: about 12% less CPU per Check than the stock loop (README, Benchmarks).
        import uvloop

        uvloop.run(serve(settings))
    else:
        asyncio.run(serve(settings))
