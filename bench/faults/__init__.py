"""Faults under load: Redis and keyguard killed mid-load, and a quota race, through Envoy.

    python -m bench.faults [--quick] [--out DIR] [--only outage,restart,race]

Each scenario runs the whole stack (redis-server with AOF and fsync always, the demo
upstream, `keyguard serve`, Envoy from envoy/envoy.yaml) on loopback, drives it with an
open-loop schedule (see bench/_hardening.py) and checks (one module per scenario):

1. Redis outage, once per KEYGUARD_ON_STORE_ERROR mode (deny, allow, cached): load at a
   fixed rate mixing a valid metered key (80%), an unknown well-formed key (10%) and a
   disabled key (10%). Redis is SIGKILLed at t=20 s and restarted on the same port at
   t=30 s (its AOF brings the keys back). Nothing is allowed that should not be (in
   `allow` mode an unknown key may be let through while Redis is down, marked
   x-keyguard-degraded: these are counted as degraded allows and must fall inside the
   outage), keyguard keeps its pid, health returns to SERVING, every acknowledged spend
   survived the crash, and the time from Redis's return to the first correct
   (non-degraded) allow is measured.
2. keyguard SIGKILLed under load and restarted after 5 s: Envoy answers 503 meanwhile,
   the upstream receives exactly as many requests as the client saw 200s, and the
   restarted keyguard serves again (time to the first allow is measured).
3. Quota race: 8 concurrent clients spend a key with 100 units: exactly 100 get 200,
   the rest 402, and `keyguard keys show` says remaining 0, used 100.

`--quick` shortens everything (12 s of load at 100 rps, Redis down 3 s) for CI. Results go
to DIR/faults[-quick]-<date>.json and .md (default DIR: bench/results). Exit status 0 when
every check passed.
"""

from bench.faults.common import MODES, QUICK
from bench.faults.keyguard_restart import run_keyguard_restart
from bench.faults.quota_race import run_quota_race
from bench.faults.store_outage import run_store_outage

__all__ = ["MODES", "QUICK", "run_keyguard_restart", "run_quota_race", "run_store_outage"]
