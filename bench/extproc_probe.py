"""A measuring probe for settlement design (a), the one not built: ext_proc.

Issue 12 offered two ways for Envoy to bring a response's usage to keyguard: (a) an
``ExternalProcessor/Process`` stream per HTTP request in observability mode, keyguard
reading the JSON body or SSE stream itself, and (b) Envoy's json_to_metadata and
sse_to_metadata filters plus the gRPC access log, batched (what keyguard ships). This
module is the least design (a) could do, to compare it with (b) as built: a grpc.aio
servicer on uvloop (keyguard's stack) that takes each request's stream, collects the
response body and reads its usage with keyguard's own parser, and the ticket's hold id
from the forwarded ext_authz metadata, then counts what it read. It writes nothing to
Redis: a real design (a) would also settle, as (b) does, so its cost here is a lower
bound. ``python -m bench.settlement_designs`` runs both through Envoy.

Run alone: ``python -m bench.extproc_probe PORT STATS_FILE``; it writes its counts to
STATS_FILE as JSON every 0.2 s until SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import uvloop
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc

from keyguard.meter.settle import EXT_AUTHZ_NAMESPACE
from keyguard.meter.usage import usage_from_json

ProcessingRequest = ext_proc_pb2.ProcessingRequest
ProcessingResponse = ext_proc_pb2.ProcessingResponse


class Probe(ext_proc_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.counts = {"streams": 0, "with_hold": 0, "usage_read": 0, "body_bytes": 0}

    async def Process(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        self.counts["streams"] += 1
        hold = ""
        chunks: list[bytes] = []
        async for message in request_iterator:
            metadata = message.metadata_context.filter_metadata
            if not hold and EXT_AUTHZ_NAMESPACE in metadata:
                fields = metadata[EXT_AUTHZ_NAMESPACE].fields
                hold = fields["hold"].string_value if "hold" in fields else ""
            if message.HasField("response_body"):
                chunks.append(message.response_body.body)
                if message.response_body.end_of_stream:
                    break
        body = b"".join(chunks)
        self.counts["body_bytes"] += len(body)
        if hold:
            self.counts["with_hold"] += 1
            if usage_from_json(body) is not None:
                self.counts["usage_read"] += 1
        # Observability mode: Envoy never waits for an answer, so none is sent.
        return
        yield  # an async generator: a streaming response with no messages


async def _serve(port: int, stats: Path) -> None:
    server = grpc.aio.server()
    probe = Probe()
    ext_proc_grpc.add_ExternalProcessorServicer_to_server(probe, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        stats.write_text(json.dumps(probe.counts))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)
    stats.write_text(json.dumps(probe.counts))
    await server.stop(0)


def main(argv: list[str]) -> None:
    port, stats = int(argv[0]), Path(argv[1])
    uvloop.run(_serve(port, stats))


if __name__ == "__main__":
    main(sys.argv[1:])
