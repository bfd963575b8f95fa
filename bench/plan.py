"""How much a benchmark run measures (full or --quick), and its console progress lines."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import TypeVar

T = TypeVar("T")
P = TypeVar("P")


def setting(full: T, quick: T) -> T:
    """A plan field: its value in a full run and in a --quick run, side by side."""
    return field(default=full, metadata={"quick": quick})


def quick_variant(cls: type[P]) -> P:
    """The --quick instance: every field that has a quick value takes it."""
    return cls(**{f.name: f.metadata["quick"] for f in fields(cls) if "quick" in f.metadata})


@dataclass(frozen=True)
class Plan:
    quick: bool = setting(False, True)
    cpu_checks: int = setting(8_000, 2_000)
    cpu_reps: int = setting(7, 1)
    cpu_warmup: int = setting(2_000, 200)
    workers_checks: int = setting(6_000, 2_000)
    # Long enough to send well past the negative cache's cap (100,000 keys at about 2,000
    # new keys/s): the RSS at 1M is extrapolated from the growth past the cap, and a
    # window of a few thousand keys there is all noise (RSS moves in arena-sized steps).
    flood_seconds: float = setting(80.0, 2.0)
    flood_max_keys: int = 1_000_000
    e2e_seconds: float = setting(3.0, 1.0)
    e2e_rounds: int = setting(5, 1)
    rate_seconds: float = setting(4.0, 1.5)
    rate_warmup: float = setting(1.0, 0.3)
    rate_setups: tuple[str, ...] = setting(
        ("api_key_auth", "floor", "keyguard_tcp"), ("api_key_auth", "keyguard_tcp")
    )
    rate_rounds: int = setting(3, 1)
    # Token metering through Envoy: requests per round per mode (all answered), rounds.
    meter_requests: int = setting(15_000, 2_000)
    meter_rounds: int = setting(5, 1)

    @classmethod
    def full(cls) -> Plan:
        return cls()

    @classmethod
    def fast(cls) -> Plan:
        """Every section, with fewer and shorter loads (under 30 s)."""
        return quick_variant(cls)


class Progress:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {message}", flush=True)
