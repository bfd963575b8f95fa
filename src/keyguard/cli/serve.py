"""`keyguard serve` (the sidecar, or its workers supervisor) and `keyguard health`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from keyguard.errors import EXIT_RUNTIME
from keyguard.settings import ENV_NAMES, Settings, load


def cmd_serve(args: argparse.Namespace) -> int:
    overrides = {
        name: value
        for name in ENV_NAMES.values()
        if (value := getattr(args, name, None)) is not None
    }
    settings = load(overrides=overrides)
    if settings.workers > 1 and "KEYGUARD__WORKER_INDEX" not in os.environ:
        from keyguard.runtime.workers import run_workers

        return run_workers(settings)
    from keyguard.runtime.server import run

    run(settings)
    return 0


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def cmd_health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = args.target
    if args.tls_ca:
        cert = key = None
        if args.tls_cert:  # for a listener that requires client certificates (mTLS)
            cert = _read(args.tls_cert)
            key = _read(args.tls_key or args.tls_cert)
        creds = grpc.ssl_channel_credentials(
            _read(args.tls_ca), private_key=key, certificate_chain=cert
        )
        channel = grpc.secure_channel(target, creds)
    else:
        channel = grpc.insecure_channel(target)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(
            health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
        )
    except grpc.RpcError as exc:
        print(f"keyguard health: {target}: {exc.code().name}", file=sys.stderr)
        return EXIT_RUNTIME
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else EXIT_RUNTIME


def add_serve_parsers(sub: Any) -> None:
    """``keyguard serve`` (one flag per setting) and ``keyguard health``."""
    serve = sub.add_parser("serve", help="run the ext_authz gRPC server")
    for env_suffix, name in ENV_NAMES.items():
        default = getattr(Settings(), name)
        shown = ",".join(default) if isinstance(default, tuple) else default
        serve.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            metavar="VALUE",
            help=f"env KEYGUARD_{env_suffix} (default: {shown})",
        )
    serve.set_defaults(func=cmd_serve)

    health = sub.add_parser("health", help="ask a running server's gRPC health service")
    health.add_argument("--target", default="127.0.0.1:9001", help="HOST:PORT or unix:PATH")
    health.add_argument("--service", default="", help="service name to ask about")
    health.add_argument("--timeout", type=float, default=2.0)
    health.add_argument("--tls-ca", help="CA file when the server uses TLS")
    health.add_argument("--tls-cert", help="client certificate, for an mTLS listener")
    health.add_argument("--tls-key", help="client key, for an mTLS listener")
    health.set_defaults(func=cmd_health)
