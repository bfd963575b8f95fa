"""A low-balance alert end to end on a real Redis: a key created with --alert-below, its
balance crossing the threshold through settlement, the alert in `keyguard alerts list`
and GET /v1/alerts once, the gauge, and re-arming after a top-up."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import redis
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from keyguard.admin.app import create_app
from keyguard.admin.auth import TokenStore
from keyguard.admin.settings import AdminSettings
from keyguard.keys import hash_key
from keyguard.meter.service import Settler
from keyguard.meter.settle import Assessed, Outcome
from keyguard.runtime.alerts import Alerts
from keyguard.runtime.metrics import Metrics
from keyguard.settings import Settings
from keyguard.store import Settlement
from keyguard.store.redis import make_store
from tests.support.checks import create_key, keys_cli
from tests.support.procs import run_cli


def charge(key_hash: str, hold_id: str, credits: int) -> Assessed:
    settlement = Settlement(hold_id, 0, credits, model="gpt-4o*")
    return Assessed(key_hash, settlement, Outcome.USAGE, None, "gpt-4o*")


def test_a_crossing_is_listed_once_and_rearms_after_a_topup(redis_url: str) -> None:
    created = create_key(redis_url, "--quota", "1000", "--alert-below", "20%")
    key_hash = hash_key(created["key"])
    assert created["alert_below"] == "20%"
    metrics = Metrics(CollectorRegistry())

    async def settle(*items: Assessed) -> None:
        store = make_store(replace(Settings(), redis_url=redis_url), metrics)
        settler = Settler(store, metrics, alerts=Alerts(store, metrics, None))
        try:
            for item in items:
                settler.add(item)
            await settler.flush()
        finally:
            await store.close()

    asyncio.run(settle(charge(key_hash, "h1", 700)))  # 300 left: above 200
    asyncio.run(settle(charge(key_hash, "h2", 150), charge(key_hash, "h3", 10)))  # 140: below
    asyncio.run(settle(charge(key_hash, "h4", 40)))  # still below: no second alert
    assert metrics.registry.get_sample_value("keyguard_keys_below_alert") == 1
    assert metrics.registry.get_sample_value("keyguard_low_balance_alerts_total") == 1

    listed = run_cli("alerts", "list", "--json", redis_url=redis_url)
    assert listed.returncode == 0, listed.stderr
    alerts = json.loads(listed.stdout)
    assert [(a["key_id"], a["remaining"], a["threshold"], a["below_now"]) for a in alerts] == [
        (created["id"], 140, 200, True)
    ]

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        token = TokenStore(client).create("viewer", "v").token
        with TestClient(create_app(AdminSettings(), client), base_url="http://127.0.0.1") as http:
            page = http.get("/v1/alerts", headers={"authorization": f"Bearer {token}"}).json()
            assert [a["key_id"] for a in page["items"]] == [created["id"]]
            assert page["next_cursor"] is None
    finally:
        client.close()

    code, _ = keys_cli(redis_url, "topup", created["id"], "5000")
    assert code == 0
    asyncio.run(settle(charge(key_hash, "h5", 1)))  # back above: re-armed
    assert metrics.registry.get_sample_value("keyguard_keys_below_alert") == 0
    asyncio.run(settle(charge(key_hash, "h6", 4000)))  # below again: a second alert
    again = json.loads(run_cli("alerts", "list", "--json", redis_url=redis_url).stdout)
    assert len(again) == 2 and again[-1]["remaining"] < again[-1]["threshold"]


def test_bad_thresholds_are_one_line_errors(redis_url: str) -> None:
    for bad in ("150%", "0%", "-5", "1.5", "ten"):
        result = run_cli("keys", "create", f"--alert-below={bad}", redis_url=redis_url)
        assert result.returncode == 2, (bad, result.stderr)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
