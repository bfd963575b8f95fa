"""Plans on a real Redis: `keyguard plans …`, keys on a plan, a plan change reaching a
running servicer (models and rate limits at once, the quota from the next cycle), delete
refused while keys remain, bad input that changes nothing, and the audit trail."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator
from contextlib import redirect_stdout
from typing import Any

import pytest
import redis

from keyguard.audit import Audit
from keyguard.authz.service import AuthorizationService
from keyguard.cli import main
from keyguard.keyring.plans import PLANS_SET, plan_key, plan_keys_key
from keyguard.runtime.invalidation import InvalidationListener
from keyguard.store import id_key, record_key
from tests.integration.conftest import service_for
from tests.support.checks import chat_body, check_request, create_key, http_status, keys_cli
from tests.support.checks import reason as reason_of
from tests.support.procs import run_cli


def plans_cli(redis_url: str, *args: str) -> tuple[int, str]:
    """`keyguard plans ARGS` in-process: (exit status, stdout)."""
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["plans", "--redis-url", redis_url, *args])
    return code, out.getvalue()


def plans_json(redis_url: str, *args: str) -> Any:
    code, out = plans_cli(redis_url, *args, "--json")
    assert code == 0, out
    return json.loads(out)


def show_key(redis_url: str, key_id: str) -> dict[str, Any]:
    code, out = keys_cli(redis_url, "show", key_id, "--json")
    assert code == 0
    return dict(json.loads(out))


def stored_record(redis_url: str, key_id: str) -> dict[str, str]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        key_hash = client.get(id_key(key_id))
        return {str(k): str(v) for k, v in client.hgetall(record_key(str(key_hash))).items()}
    finally:
        client.close()


def snapshot(url: str) -> dict[str, object]:
    """Every key in Redis and its value, the audit stream included."""
    client = redis.Redis.from_url(url, decode_responses=True)
    out: dict[str, object] = {}
    for key in client.scan_iter("*"):
        kind = client.type(key)
        if kind == "hash":
            out[key] = client.hgetall(key)
        elif kind == "set":
            out[key] = sorted(client.smembers(key))
        elif kind == "stream":
            out[key] = client.xrange(key)
        else:
            out[key] = client.get(key)
    client.close()
    return out


def audit_entries(url: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return Audit(client).read(limit=10_000)[0]
    finally:
        client.close()


@contextlib.asynccontextmanager
async def replica(redis_url: str) -> AsyncIterator[AuthorizationService]:
    """The servicer with its change listener, as `keyguard serve` runs it."""
    async with service_for(redis_url) as service:
        listener = InvalidationListener(service.decider.store, service.decider.cache)
        listener.start()
        try:
            await asyncio.wait_for(listener.connected.wait(), 5)
            yield service
        finally:
            await listener.stop()


async def ask(service: AuthorizationService, key: str, model: str = "gpt-4o") -> tuple[int, str]:
    request = check_request({"authorization": f"Bearer {key}"}, body=chat_body(model))
    response = await service.check(request)
    return http_status(response), reason_of(response)


# --- the plans commands ---------------------------------------------------------------


def test_create_list_show_set_delete(redis_url: str) -> None:
    created = plans_json(
        redis_url, "create", "pro", "--quota", "1000", "--cycle", "30d", "--models", "a,b"
    )
    assert created == {
        "name": "pro",
        "quota": 1000,
        "cycle": "30d",
        "models": ["a", "b"],
        "rpm": None,
        "tpm": None,
        "payg": False,
        "alert_below": None,
        "keys": 0,
        "created_at": created["created_at"],
    }
    plans_json(redis_url, "create", "basic", "--quota", "10", "--cycle", "1d", "--rpm", "5")
    assert [p["name"] for p in plans_json(redis_url, "list")] == ["basic", "pro"]
    shown = plans_json(redis_url, "show", "pro")
    assert shown == created
    edited = plans_json(
        redis_url, "set", "pro", "--models", "*", "--rpm", "60", "--tpm", "9000", "--payg"
    )
    assert edited["models"] is None and edited["rpm"] == 60 and edited["tpm"] == 9000
    assert edited["payg"] is True and edited["quota"] == 1000 and edited["cycle"] == "30d"
    edited = plans_json(redis_url, "set", "pro", "--rpm", "0", "--no-payg", "--cycle", "7d")
    assert edited["rpm"] is None and edited["payg"] is False and edited["cycle"] == "1w"

    table = run_cli("plans", "list", redis_url=redis_url)
    assert table.returncode == 0
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["NAME", "QUOTA", "CYCLE", "RPM", "TPM", "PAYG", "KEYS", "MODELS"]
    assert [row.split()[0] for row in rows] == ["basic", "pro"]
    text = run_cli("plans", "show", "basic", redis_url=redis_url)
    assert text.returncode == 0 and "rpm" in text.stdout and "5" in text.stdout

    assert plans_cli(redis_url, "delete", "basic")[0] == 0
    assert plans_json(redis_url, "delete", "pro") == {"name": "pro", "deleted": True}
    assert plans_json(redis_url, "list") == []
    gone = run_cli("plans", "list", redis_url=redis_url)
    assert gone.returncode == 0 and gone.stdout.strip() == "no plans yet"
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:  # nothing of a deleted plan is left in Redis
        assert list(client.scan_iter("kg:plan*")) == []
    finally:
        client.close()


def test_a_key_created_on_a_plan_copies_its_settings(redis_url: str) -> None:
    plans_json(
        redis_url,
        "create",
        "pro",
        "--quota",
        "500",
        "--cycle",
        "30d",
        "--models",
        "gpt-4o",
        "--rpm",
        "60",
        "--tpm",
        "1000",
        "--payg",
    )
    key = create_key(redis_url, "--plan", "pro", "--name", "alice", "--env", "live")
    assert key["key"].startswith("sk-sub-") and key["type"] == "subscription"
    assert key["plan"] == "pro" and key["name"] == "alice" and key["env"] == "live"
    assert key["cycle_quota"] == 500 and key["remaining"] == 500 and key["cycle"] == "30d"
    assert (key["models"], key["rpm"], key["tpm"], key["payg"]) == (["gpt-4o"], 60, 1000, True)
    assert show_key(redis_url, key["id"])["plan"] == "pro"
    assert stored_record(redis_url, key["id"])["plan"] == "pro"
    assert plans_json(redis_url, "show", "pro")["keys"] == 1
    # --type subscription may be given; keys not on a plan show no plan at all.
    create_key(redis_url, "--plan", "pro", "--type", "subscription")
    assert "plan" not in create_key(redis_url, "--quota", "5")
    assert plans_json(redis_url, "show", "pro")["keys"] == 2


def test_keys_set_on_a_plan_key_keeps_plan_settings_and_moves_keys(redis_url: str) -> None:
    plans_json(redis_url, "create", "pro", "--quota", "100", "--cycle", "30d", "--rpm", "60")
    plans_json(redis_url, "create", "max", "--quota", "900", "--cycle", "1d", "--models", "m1")
    key_id = create_key(redis_url, "--plan", "pro")["id"]
    for option in (["--quota", "5"], ["--rpm", "1"], ["--models", "x"], ["--payg"]):
        result = run_cli("keys", "set", key_id, *option, redis_url=redis_url)
        assert result.returncode == 2
        assert result.stderr.strip() == (
            f"keyguard: error: key {key_id} follows plan pro; change the plan"
            " or move the key with --plan"
        )
    # Its own settings stay its own.
    code, out = keys_cli(redis_url, "set", key_id, "--json", "--name", "n", "--owner", "team-a")
    assert code == 0 and json.loads(out)["owner"] == "team-a" and json.loads(out)["plan"] == "pro"
    code, out = keys_cli(redis_url, "set", key_id, "--json", "--expires", "+30d", "--meta", "a=b")
    assert code == 0 and json.loads(out)["expires_at"] and json.loads(out)["meta"] == {"a": "b"}

    # Move: settings copied (the quota and cycle from the next cycle), both sets updated.
    before = show_key(redis_url, key_id)
    code, out = keys_cli(redis_url, "set", key_id, "--json", "--plan", "max")
    moved = json.loads(out)
    assert code == 0 and moved["plan"] == "max" and moved["models"] == ["m1"]
    assert moved["rpm"] is None and moved["cycle_quota"] == 900 and moved["cycle"] == "1d"
    assert moved["remaining"] == before["remaining"] and moved["cycle_end"] == before["cycle_end"]
    assert plans_json(redis_url, "show", "pro")["keys"] == 0
    assert plans_json(redis_url, "show", "max")["keys"] == 1
    plans_json(redis_url, "set", "pro", "--models", "zzz")  # no longer reaches the key
    assert show_key(redis_url, key_id)["models"] == ["m1"]

    # Off its plan: it keeps its settings, now editable.
    code, out = keys_cli(redis_url, "set", key_id, "--json", "--plan", "", "--rpm", "7")
    off = json.loads(out)
    assert code == 0 and "plan" not in off and off["rpm"] == 7 and off["models"] == ["m1"]
    assert plans_json(redis_url, "show", "max")["keys"] == 0
    assert plans_cli(redis_url, "delete", "max")[0] == 0

    # A subscription key made on its own can join a plan.
    own = create_key(redis_url, "--type", "subscription", "--quota", "3", "--cycle", "1h")
    code, out = keys_cli(redis_url, "set", own["id"], "--json", "--plan", "pro")
    assert code == 0 and json.loads(out)["models"] == ["zzz"] and json.loads(out)["rpm"] == 60
    assert plans_json(redis_url, "show", "pro")["keys"] == 1


def test_delete_is_refused_while_keys_remain(redis_url: str) -> None:
    plans_json(redis_url, "create", "pro", "--quota", "10", "--cycle", "1d")
    first = create_key(redis_url, "--plan", "pro")["id"]
    second = create_key(redis_url, "--plan", "pro")["id"]
    before = snapshot(redis_url)
    result = run_cli("plans", "delete", "pro", redis_url=redis_url)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == (
        "keyguard: error: plan 'pro' still has 2 key(s); move them to another plan"
        " (keys set ID --plan NAME) or revoke them first"
    )
    assert snapshot(redis_url) == before
    assert keys_cli(redis_url, "revoke", first)[0] == 0  # a revoked key leaves the plan
    assert plans_json(redis_url, "show", "pro")["keys"] == 1
    assert plans_cli(redis_url, "delete", "pro")[0] == 1
    assert keys_cli(redis_url, "revoke", second)[0] == 0
    assert plans_cli(redis_url, "delete", "pro")[0] == 0
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert not client.exists(plan_key("pro"), plan_keys_key("pro"))
        assert client.smembers(PLANS_SET) == set()
    finally:
        client.close()


def test_a_stale_member_does_not_block_delete(redis_url: str) -> None:
    """An id left in a plan's set (a revoke that stopped half-way) is pruned."""
    plans_json(redis_url, "create", "pro", "--quota", "10", "--cycle", "1d")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        client.sadd(plan_keys_key("pro"), "kg_000000000000")
    finally:
        client.close()
    assert plans_cli(redis_url, "delete", "pro")[0] == 0


# --- a plan change on a running servicer -----------------------------------------------


async def until(predicate: Any, limit: float) -> float:
    """Polls an async predicate until it holds; answers the seconds it took."""
    start = time.monotonic()
    while not await predicate():
        assert time.monotonic() - start < limit, f"not within {limit} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def test_a_removed_model_is_refused_on_every_replica_within_a_second(redis_url: str) -> None:
    plans_json(redis_url, "create", "pro", "--quota", "1000", "--cycle", "30d", "--models", "a,b")
    keys = [create_key(redis_url, "--plan", "pro")["key"] for _ in range(2)]
    other = create_key(redis_url, "--models", "a,b")["key"]  # not on the plan

    async def go() -> float:
        async with replica(redis_url) as one, replica(redis_url) as two:
            for server in (one, two):  # every key's record is cached on both
                for key in (*keys, other):
                    assert await ask(server, key, "b") == (200, "ok")
            plans_json(redis_url, "set", "pro", "--models", "a")

            async def refused() -> bool:
                answers = [await ask(s, k, "b") for s in (one, two) for k in keys]
                return all(answer == (403, "model_not_allowed") for answer in answers)

            took = await until(refused, 1.0)
            for server in (one, two):
                for key in keys:
                    assert await ask(server, key, "a") == (200, "ok")
                assert await ask(server, other, "b") == (200, "ok")  # untouched
            return took

    assert asyncio.run(go()) < 1.0


def test_a_new_rate_limit_applies_at_once(redis_url: str) -> None:
    plans_json(redis_url, "create", "pro", "--quota", "1000", "--cycle", "30d", "--rpm", "1000")
    key = create_key(redis_url, "--plan", "pro")["key"]

    async def go() -> None:
        async with replica(redis_url) as service:
            for _ in range(5):
                assert await ask(service, key) == (200, "ok")
            plans_json(redis_url, "set", "pro", "--rpm", "1")

            async def limited() -> bool:
                return await ask(service, key) == (429, "rate_limit_exceeded")

            await until(limited, 1.0)
            assert await ask(service, key) == (429, "rate_limit_exceeded")
            plans_json(redis_url, "set", "pro", "--rpm", "0")  # the limit removed

            async def free() -> bool:
                return await ask(service, key) == (200, "ok")

            await until(free, 1.0)
            for _ in range(5):
                assert await ask(service, key) == (200, "ok")

    asyncio.run(go())


def test_a_new_quota_applies_from_the_next_cycle(redis_url: str) -> None:
    plans_json(redis_url, "create", "small", "--quota", "5", "--cycle", "2s")
    created = create_key(redis_url, "--plan", "small")
    key_id, key = created["id"], created["key"]

    async def go() -> None:
        async with replica(redis_url) as service:
            for _ in range(2):
                assert await ask(service, key) == (200, "ok")
            before = show_key(redis_url, key_id)
            plans_json(redis_url, "set", "small", "--quota", "10", "--cycle", "3s")
            info = show_key(redis_url, key_id)
            # This cycle goes on as it was: the balance and its end stay.
            assert (info["remaining"], info["cycle_used"]) == (3, 2)
            assert info["cycle_end"] == before["cycle_end"]
            assert (info["cycle_quota"], info["cycle"]) == (10, "3s")
            end = float(stored_record(redis_url, key_id)["cycle_end"])
            assert time.time() < end, "the cycle ended before the change was checked"
            await asyncio.sleep(end - time.time() + 0.1)
            assert await ask(service, key) == (200, "ok")  # the first of the new cycle
            info = show_key(redis_url, key_id)
            assert (info["remaining"], info["cycle_used"]) == (9, 1)
            # The next boundary is one new cycle (3 s) after the old one.
            assert float(stored_record(redis_url, key_id)["cycle_end"]) == end + 3

    asyncio.run(go())


# --- bad input ------------------------------------------------------------------------

BAD_INPUTS: dict[str, tuple[list[str], int, str]] = {
    "bad name": (["plans", "create", "Pro", "--quota", "1", "--cycle", "1d"], 2, "bad plan name"),
    "name too long": (
        ["plans", "create", "a" * 65, "--quota", "1", "--cycle", "1d"],
        2,
        "bad plan name",
    ),
    "no cycle": (["plans", "create", "new", "--quota", "1"], 2, "needs --quota N"),
    "no quota": (["plans", "create", "new", "--cycle", "1d"], 2, "needs --quota N"),
    "negative quota": (["plans", "create", "new", "--quota", "-1", "--cycle", "1d"], 2, "negative"),
    "bad cycle": (["plans", "create", "new", "--quota", "1", "--cycle", "soon"], 2, "duration"),
    "bad models": (["plans", "set", "pro", "--models", "a b"], 2, "bad model name"),
    "fractional rpm": (["plans", "set", "pro", "--rpm", "1.5"], 2, "not a whole number"),
    "exists": (["plans", "create", "pro", "--quota", "1", "--cycle", "1d"], 1, "already exists"),
    "nothing to change": (["plans", "set", "pro"], 2, "nothing to change"),
    "set unknown": (["plans", "set", "nope", "--rpm", "1"], 1, "no plan named 'nope'"),
    "show unknown": (["plans", "show", "nope"], 1, "no plan named 'nope'"),
    "delete unknown": (["plans", "delete", "nope"], 1, "no plan named 'nope'"),
    "delete in use": (["plans", "delete", "pro"], 1, "still has 1 key(s)"),
    "key on unknown plan": (["keys", "create", "--plan", "nope"], 1, "no plan named 'nope'"),
    "key with bad plan name": (["keys", "create", "--plan", "A!"], 2, "bad plan name"),
    "key on plan with quota": (
        ["keys", "create", "--plan", "pro", "--quota", "5"],
        2,
        "--quota comes from plan pro",
    ),
    "key on plan with models": (
        ["keys", "create", "--plan", "pro", "--models", "x"],
        2,
        "--models comes from plan pro",
    ),
    "standard key on plan": (
        ["keys", "create", "--plan", "pro", "--type", "standard"],
        2,
        "a key on a plan is a subscription key",
    ),
    "set plan-owned on plan key": (["keys", "set", "{sub}", "--tpm", "5"], 2, "follows plan pro"),
    "move with quota": (
        ["keys", "set", "{sub}", "--plan", "pro", "--quota", "5"],
        2,
        "--quota comes from plan pro",
    ),
    "move to unknown plan": (["keys", "set", "{sub}", "--plan", "nope"], 1, "no plan named"),
    "move standard key": (["keys", "set", "{std}", "--plan", "pro"], 2, "is a standard key"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gets_one_line_error_and_changes_nothing(redis_url: str, case: str) -> None:
    plans_json(redis_url, "create", "pro", "--quota", "10", "--cycle", "1d")
    ids = {
        "{sub}": create_key(redis_url, "--plan", "pro")["id"],
        "{std}": create_key(redis_url, "--quota", "3")["id"],
    }
    before = snapshot(redis_url)
    args, code, message = BAD_INPUTS[case]
    result = run_cli(*(ids.get(arg, arg) for arg in args), redis_url=redis_url)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) <= 2  # argparse adds a usage line
    assert snapshot(redis_url) == before


# --- audit ----------------------------------------------------------------------------


def test_every_plan_change_is_on_the_audit_trail(redis_url: str) -> None:
    plans_json(redis_url, "create", "pro", "--quota", "10", "--cycle", "1d", "--models", "a")
    key_id = create_key(redis_url, "--plan", "pro")["id"]
    plans_json(redis_url, "set", "pro", "--models", "*", "--quota", "20")
    keys_cli(redis_url, "set", key_id, "--plan", "")
    plans_cli(redis_url, "delete", "pro")
    entries = [(e["action"], e["target"], e["fields"]) for e in audit_entries(redis_url)]
    assert entries == [
        ("plan.create", "pro", {"quota": 10, "cycle": "1d", "models": "a"}),
        ("key.create", key_id, {"type": "subscription", "plan": "pro"}),
        ("plan.edit", "pro", {"quota": 20, "models": "*", "keys": 1}),
        ("key.edit", key_id, {"plan": ""}),
        ("plan.delete", "pro", {}),
    ]
    assert all(e["actor"].startswith("cli:") for e in audit_entries(redis_url))


def test_a_plan_threshold_reaches_its_keys(redis_url: str) -> None:
    from tests.support.procs import run_cli

    made = run_cli("plans", "create", "gold-alerts", "--quota", "1000", "--cycle", "30d",
                   "--alert-below", "10%", redis_url=redis_url)  # fmt: skip
    assert made.returncode == 0, made.stderr
    key = json.loads(
        run_cli("keys", "create", "--plan", "gold-alerts", "--json", redis_url=redis_url).stdout
    )
    assert key["alert_below"] == "10%"
    changed = run_cli("plans", "set", "gold-alerts", "--alert-below", "250", redis_url=redis_url)
    assert changed.returncode == 0, changed.stderr
    shown = json.loads(run_cli("keys", "show", key["id"], "--json", redis_url=redis_url).stdout)
    assert shown["alert_below"] == "250"
    plan = json.loads(run_cli("plans", "show", "gold-alerts", "--json", redis_url=redis_url).stdout)
    assert plan["alert_below"] == "250"
    bad = run_cli("plans", "set", "gold-alerts", "--alert-below", "150%", redis_url=redis_url)
    assert bad.returncode == 2 and "threshold" in bad.stderr
