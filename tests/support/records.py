"""KeyRecord instances for unit tests of pure logic."""

from __future__ import annotations

import dataclasses

from keyguard.record import TYPE_STANDARD, KeyRecord

BASE = KeyRecord(
    key_hash="f" * 64,
    id="kg_a1b2c3d4e5f6",
    name="n",
    type=TYPE_STANDARD,
    status="active",
    created_at=0.0,
    expires_at=None,
    models=None,
    allowed_ips=None,
    unlimited=True,
    payg=False,
    rpm=0,
    remaining=0,
    used=0,
    cycle_quota=0,
    cycle_seconds=0,
    cycle_end=None,
)


def make_record(**changes: object) -> KeyRecord:
    """An active, unlimited standard key with ``changes`` applied."""
    return dataclasses.replace(BASE, **changes)  # type: ignore[arg-type]
