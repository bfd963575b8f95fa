"""A short soak (bench/soak.py) through a real Envoy: leak checks only, no timing.

After ~30 s of mixed traffic keyguard must hold no more file descriptors than a few above
its warmed-up count and must not have grown its RSS by more than 30 MiB.
"""

from __future__ import annotations

import pytest

from bench.soak import run_soak

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WARMUP_S = 10.0
FD_SLACK = 3
RSS_SLACK_KIB = 30 * 1024


def _quiet(_: str) -> None:
    pass


@pytest.mark.timeout(120)
def test_short_soak_leaks_nothing() -> None:
    doc = run_soak(0.5, 100, sample_every=5.0, baseline_at=WARMUP_S, settle=2.0, log=_quiet)
    keyguard = doc["keyguard"]
    assert keyguard["pid_unchanged_and_alive"]
    assert doc["credential_forwarded"] == 0
    warmed = next(p for p in doc["points"] if p["t"] >= WARMUP_S - 0.5)
    after = keyguard["after_load"]
    assert after["fds"] <= warmed["fds"] + FD_SLACK, (warmed, after, doc["points"])
    assert after["rss_kib"] - warmed["rss_kib"] <= RSS_SLACK_KIB, (warmed, after)
    assert after["threads"] <= warmed["threads"] + 2, (warmed, after)
