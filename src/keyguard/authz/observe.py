"""Record: a decision's metrics and its one log line, once per Check."""

from __future__ import annotations

from keyguard.authz.decision import Decision
from keyguard.reasons import Reason
from keyguard.runtime import logs
from keyguard.runtime.metrics import Metrics


class Recorder:
    def __init__(self, metrics: Metrics, log_allows: bool) -> None:
        self.metrics = metrics
        self.log_allows = log_allows

    def record(self, decision: Decision, request_id: str, elapsed: float) -> None:
        m = self.metrics
        m.observe(m.check_duration, elapsed)
        reason = decision.reason
        if reason is Reason.OK:
            m.count(m.allow_degraded if decision.degraded else m.allow_ok)
            if not self.log_allows:
                return
            verdict = "allow"
        else:
            m.count(m.deny_by_reason[reason])
            verdict = "deny"
        record = decision.record
        logs.decision(
            request_id,
            verdict,
            reason.value,
            round(elapsed * 1000, 3),
            record.id if record is not None else "",
            decision.degraded,
        )
