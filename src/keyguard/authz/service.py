"""The Authorization servicer: Envoy's Check as a thin shell around the phases.

extract (request.py) → decide (decide.py) → render (render.py) → record (observe.py).
``Check`` never raises: any unexpected failure becomes a 500-class denial, so
that Envoy can never turn a gRPC error into an allow via failure_mode_allow.
"""

from __future__ import annotations

import time

import grpc
import structlog

from keyguard._proto.envoy.service.auth.v3 import external_auth_pb2_grpc
from keyguard._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from keyguard.authz.cache import KeyCache
from keyguard.authz.decide import Decider, Remaining
from keyguard.authz.decision import Decision
from keyguard.authz.observe import Recorder
from keyguard.authz.render import Renderer, denial_wire
from keyguard.authz.request import extract
from keyguard.meter.pricebook import PriceBook
from keyguard.reasons import Reason
from keyguard.runtime.metrics import Metrics
from keyguard.settings import Settings
from keyguard.store import KeyStore

log = structlog.get_logger("keyguard.decision")
_FAILED = Decision(Reason.INTERNAL_ERROR)
_FAILED_WIRE = denial_wire(Reason.INTERNAL_ERROR, False)


class AuthorizationService(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(
        self,
        settings: Settings,
        store: KeyStore,
        cache: KeyCache,
        metrics: Metrics,
        prices: PriceBook | None = None,
    ) -> None:
        self.decider = Decider(settings, store, cache, metrics, prices)
        self.renderer = Renderer(settings.strip_credentials, memo_size=4 * settings.cache_size)
        self.recorder = Recorder(metrics, settings.log_allows)
        self.hops = settings.xff_trusted_hops

    async def Check(
        self, request: CheckRequest, context: grpc.aio.ServicerContext[CheckRequest, CheckResponse]
    ) -> bytes:
        """The gRPC method: answers serialized bytes (see runtime/server.py's passthrough)."""
        return (await self.answer(request, context.time_remaining))[1]

    async def check(self, request: CheckRequest) -> CheckResponse:
        """The answer as a message, for callers in the same process (tests, tools)."""
        return CheckResponse.FromString((await self.answer(request))[1])

    async def answer(
        self, request: CheckRequest, remaining: Remaining | None = None
    ) -> tuple[Decision, bytes]:
        """One Check: the decision and its wire bytes, recorded once. ``remaining``: the
        seconds left before Envoy's deadline (nothing is spent once it has passed)."""
        start = time.perf_counter()
        request_id = ""
        try:
            facts = extract(request, self.hops)
            request_id = facts.request_id
            decider = self.decider
            found = decider.decide_now(facts)
            # Only a cache miss or a metered key needs the store (and a suspension).
            decision = found if type(found) is Decision else await decider.finish(found, remaining)  # type: ignore[arg-type]
            wire = self.renderer.render(decision, facts)
        except Exception:
            log.exception("check_failed", request_id=request_id)
            decision, wire = _FAILED, _FAILED_WIRE
        self.recorder.record(decision, request_id, time.perf_counter() - start)
        return decision, wire
