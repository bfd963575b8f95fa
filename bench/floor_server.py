"""The floor: a trivial allow-all ext_authz servicer on grpc.aio.

It registers keyguard's own generated Authorization service exactly as
keyguard does, and answers every Check with one prebuilt OK CheckResponse,
so the difference between it and keyguard is keyguard's own work.

Run as a separate process: ``python -m bench.floor_server --listen 127.0.0.1:PORT``.
With ``--capture-dir DIR`` it is instead the capture servicer: it also writes each
CheckRequest it receives, as Envoy serialized it, to DIR/<n>.bin (the harness uses
these as the payloads of the direct gRPC runs). Capturing never runs in the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import grpc

from keyguard._proto.envoy.service.auth.v3 import external_auth_pb2_grpc
from keyguard._proto.envoy.service.auth.v3.external_auth_pb2 import (
    CheckRequest,
    CheckResponse,
    OkHttpResponse,
)
from keyguard._proto.google.rpc.status_pb2 import Status

OK = CheckResponse(status=Status(code=0), ok_response=OkHttpResponse())


class AllowAll(external_auth_pb2_grpc.AuthorizationServicer):
    async def Check(
        self, request: CheckRequest, context: grpc.aio.ServicerContext[CheckRequest, CheckResponse]
    ) -> CheckResponse:
        return OK


class Capture(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.count = 0

    async def Check(
        self, request: CheckRequest, context: grpc.aio.ServicerContext[CheckRequest, CheckResponse]
    ) -> CheckResponse:
        # Unknown fields (those keyguard's trimmed protos lack) are kept and re-serialized.
        path = self.directory / f"{self.count}.bin"
        self.count += 1
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(request.SerializeToString())
        tmp.rename(path)
        return OK


async def serve(listen: list[str], capture_dir: Path | None = None) -> None:
    # Same server options as keyguard with one worker.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    servicer: external_auth_pb2_grpc.AuthorizationServicer = (
        AllowAll() if capture_dir is None else Capture(capture_dir)
    )
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    for address in listen:
        if server.add_insecure_port(address) == 0 and not address.startswith("unix:"):
            raise OSError(f"cannot listen on {address}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("floor server ready", flush=True)
    await stop.wait()
    await server.stop(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", action="append", required=True, help="HOST:PORT or unix:PATH")
    parser.add_argument("--capture-dir", type=Path, help="capture servicer: write requests here")
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.capture_dir))


if __name__ == "__main__":
    main()
