"""A decision as plain data, and the two stages a decision can wait in.

``Decider.decide_now`` answers without I/O whenever it can; otherwise it hands back a
stage saying what is missing:

* ``NeedsRecord``: the key is well-formed but not (freshly) cached: look it up.
* ``NeedsSpend``: the record is judged and admits the request; the metered step
  (quota, cycle, rate limit) must run in the store.

``Decider.finish`` takes either and returns the ``Decision``. Rendering it to bytes is
``render.Renderer``'s job, and recording it ``observe.Recorder``'s.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

from keyguard.authz.cache import CacheEntry
from keyguard.authz.request import RequestFacts
from keyguard.policy import SpendResult
from keyguard.reasons import Reason
from keyguard.record import KeyRecord


class Billing(enum.StrEnum):
    """How an allowed request is paid for; sent upstream as x-keyguard-billing."""

    QUOTA = "quota"
    PAYG = "payg"
    UNLIMITED = "unlimited"
    UNMETERED = "unmetered"  # allowed while the store was down: nothing was spent


class Ticket(NamedTuple):
    """What the settlement of a token-metered request needs, handed to Envoy in the
    allow's dynamic metadata (namespace envoy.filters.http.ext_authz) and back to
    keyguard in the access log. Minted by keyguard; a client can send none of it.
    (A named tuple: one is made per metered Check.)"""

    hold_id: str
    key_hash: str
    held: int  # credits held in the store (0: none, e.g. an unlimited key)
    estimate: int  # credits to charge when the response reports no usage
    model: str  # the model the request named (priced at settlement)
    anthropic: bool  # Anthropic usage semantics (input_tokens excludes cached ones)


@dataclass(slots=True)
class Decision:
    reason: Reason
    record: KeyRecord | None = None  # None: no key identified (or unknown while degraded)
    billing: Billing | None = None  # set on allows
    spend: SpendResult | None = None  # the metered step's answer, for rate-limit headers
    degraded: bool = False  # allowed by the outage fallback
    ticket: Ticket | None = None  # token metering: the request's hold, to settle later
    model: str = ""  # the refused model, named in a model_not_priced denial

    @property
    def key_id(self) -> str:
        return self.record.id if self.record is not None else ""


@dataclass(slots=True)
class NeedsRecord:
    facts: RequestFacts
    key_hash: str
    stale: CacheEntry | None  # an expired cache entry, for the outage fallback


@dataclass(slots=True)
class NeedsSpend:
    facts: RequestFacts
    entry: CacheEntry  # fresh: from the cache within its TTL, or just read
    ticket: Ticket | None = None  # token metering: the hold to place with the spend
    cost: int = 0  # request metering: the units to spend (without a ticket)


Stage = NeedsRecord | NeedsSpend
