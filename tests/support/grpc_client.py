"""A small synchronous gRPC client for keyguard's Check and health services."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keyguard._proto.envoy.service.auth.v3 import external_auth_pb2_grpc
from keyguard._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse


class Client:
    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = external_auth_pb2_grpc.AuthorizationStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def check(self, request: CheckRequest, timeout: float = 5.0) -> CheckResponse:
        return self.stub.Check(request, timeout=timeout)  # type: ignore[no-any-return]

    def health_status(self) -> str:
        try:
            reply = self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0)
        except grpc.RpcError as exc:
            return f"error:{exc.code().name}"
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> float:
    """Poll until ``predicate`` is true; returns the seconds it took, or raises."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(step)
