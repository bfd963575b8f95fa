"""The keys CLI against a real Redis: every command, and bad input that changes nothing."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import redis

from keyguard.keys import hash_key, key_type_of
from keyguard.store import id_key, record_key, usage_key
from tests.support.checks import create_key, keys_cli, store_snapshot
from tests.support.procs import free_port, run_cli


def snapshot(url: str) -> dict[str, object]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return store_snapshot(client)
    finally:
        client.close()


def test_create_prints_key_once_and_stores_only_its_hash(redis_url: str) -> None:
    created = create_key(redis_url, "--name", "team-a", "--quota", "10", "--models", "gpt-4o")
    assert {"id", "key", "type"} <= created.keys()
    assert key_type_of(created["key"]) == "standard"
    dump = json.dumps(snapshot(redis_url))
    assert created["key"] not in dump
    assert hash_key(created["key"]) in dump
    code, shown = keys_cli(redis_url, "show", created["id"], "--json")
    assert code == 0 and created["key"] not in shown
    info = json.loads(shown)
    assert info["remaining"] == 10 and info["used"] == 0 and info["models"] == ["gpt-4o"]


def test_human_output_of_create_show_and_list(redis_url: str) -> None:
    result = run_cli("keys", "create", "--name", "ops", "--unlimited", redis_url=redis_url)
    assert result.returncode == 0
    assert "shown only once" in result.stdout and "sk-" in result.stdout
    listing = run_cli("keys", "list", redis_url=redis_url)
    assert listing.returncode == 0 and "ops" in listing.stdout and "unlimited" in listing.stdout
    assert "sk-" not in listing.stdout


def test_subscription_create_and_set(redis_url: str) -> None:
    created = create_key(
        redis_url, "--type", "subscription", "--quota", "100", "--cycle", "30d", "--rpm", "60"
    )
    assert created["key"].startswith("sk-sub-") and created["type"] == "subscription"
    assert created["cycle"] == "30d" and created["cycle_quota"] == 100 and created["rpm"] == 60
    code, out = keys_cli(
        redis_url, "set", created["id"], "--json", "--quota", "50", "--allowed-ips", "10.0.0.0/8"
    )
    info = json.loads(out)
    assert code == 0 and info["cycle_quota"] == 50 and info["allowed_ips"] == ["10.0.0.0/8"]
    code, out = keys_cli(redis_url, "set", created["id"], "--json", "--allowed-ips", "*")
    assert json.loads(out)["allowed_ips"] is None


def test_set_topup_disable_enable_revoke(redis_url: str) -> None:
    created = create_key(redis_url, "--quota", "5")
    key_id = created["id"]
    code, out = keys_cli(redis_url, "set", key_id, "--json", "--models", "a,b", "--payg")
    assert code == 0 and json.loads(out)["models"] == ["a", "b"] and json.loads(out)["payg"]
    code, out = keys_cli(redis_url, "topup", key_id, "7", "--json")
    assert code == 0 and json.loads(out)["remaining"] == 12
    assert json.loads(keys_cli(redis_url, "disable", key_id, "--json")[1])["status"] == "disabled"
    assert json.loads(keys_cli(redis_url, "enable", key_id, "--json")[1])["status"] == "active"
    assert keys_cli(redis_url, "revoke", key_id)[0] == 0
    assert snapshot(redis_url) == {}
    code, out = keys_cli(redis_url, "list", "--json")
    assert code == 0 and json.loads(out) == []


BAD_INPUTS = {
    "unknown id": (["show", "kg_000000000000"], 1, "no key with id"),
    "unknown id disable": (["disable", "kg_000000000000"], 1, "no key with id"),
    "unknown id topup": (["topup", "kg_000000000000", "5"], 1, "no key with id"),
    "bad CIDR": (["create", "--allowed-ips", "10.0.0.0/33"], 2, "bad IP or CIDR"),
    "bad IP": (["create", "--allowed-ips", "not-an-ip"], 2, "bad IP or CIDR"),
    "bad date": (["create", "--expires", "31/12/2027"], 2, "bad date"),
    "past date": (["create", "--expires", "2001-01-01"], 2, "in the past"),
    "negative quota": (["create", "--quota", "-5"], 2, "negative"),
    "non-integer quota": (["create", "--quota", "1.5"], 2, "not a whole number"),
    "bad model list": (["create", "--models", "gpt-4o,,x"], 2, "bad model name"),
    "model with space": (["create", "--models", "gpt 4o"], 2, "bad model name"),
    "quota and unlimited": (["create", "--quota", "5", "--unlimited"], 2, "not allowed with"),
    "subscription without cycle": (
        ["create", "--type", "subscription", "--quota", "5"],
        2,
        "needs --quota",
    ),
    "cycle on standard key": (["create", "--cycle", "30d"], 2, "--cycle is for subscription"),
    "bad cycle": (
        ["create", "--type", "subscription", "--quota", "1", "--cycle", "x"],
        2,
        "duration",
    ),
    "zero topup": (["topup", "kg_000000000000", "0"], 2, "greater than 0"),
    "unknown type": (["create", "--type", "gold"], 2, "invalid choice"),
    "negative tpm": (["create", "--tpm", "-1"], 2, "negative"),
    "non-integer tpm": (["set", "kg_000000000000", "--tpm", "2.5"], 2, "not a whole number"),
    "bad env": (["create", "--env", "live env"], 2, "bad env 'live env'"),
    "bad owner": (["set", "kg_000000000000", "--owner", "team/a"], 2, "bad owner"),
    "bad list filter": (["list", "--env", "a b"], 2, "bad env"),
    "meta without =": (["create", "--meta", "team"], 2, "use KEY=VALUE"),
    "bad meta key": (["create", "--meta", "a b=c"], 2, "bad meta key"),
    "meta value too long": (["create", "--meta", "k=" + "x" * 257], 2, "at most 256"),
    "meta control char": (["set", "kg_000000000000", "--meta", "k=a\x1bb"], 2, "control"),
    "17 meta pairs": (
        ["create", *(arg for i in range(17) for arg in ("--meta", f"k{i}=v"))],
        2,
        "at most 16 meta pairs",
    ),
    "usage days 0": (["usage", "kg_000000000000", "--days", "0"], 2, "greater than 0"),
    "usage days 367": (["usage", "kg_000000000000", "--days", "367"], 2, "between 1 and 366"),
    "usage unknown id": (["usage", "kg_000000000000"], 1, "no key with id"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gets_one_line_error_and_changes_nothing(redis_url: str, case: str) -> None:
    create_key(redis_url, "--quota", "3")
    before = snapshot(redis_url)
    args, code, message = BAD_INPUTS[case]
    result = run_cli("keys", *args, redis_url=redis_url)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) <= 2  # argparse adds a usage line
    assert snapshot(redis_url) == before


def test_unparseable_or_unreachable_redis_url() -> None:
    result = run_cli("keys", "list", redis_url="http://example")
    assert result.returncode == 2 and "unsupported scheme" in result.stderr
    result = run_cli("keys", "list", redis_url="redis://127.0.0.1:notaport/0")
    assert result.returncode == 2 and "cannot parse" in result.stderr
    result = run_cli("keys", "list", redis_url=f"redis://:secretpw@127.0.0.1:{free_port()}/0")
    assert result.returncode == 1 and "Redis failed" in result.stderr
    assert "secretpw" not in result.stderr and "Traceback" not in result.stderr


def test_set_with_nothing_to_change(redis_url: str) -> None:
    created = create_key(redis_url, "--quota", "3")
    result = run_cli("keys", "set", created["id"], redis_url=redis_url)
    assert result.returncode == 2 and "nothing to change" in result.stderr


def test_topup_of_unlimited_key_is_refused(redis_url: str) -> None:
    created = create_key(redis_url, "--unlimited")
    result = run_cli("keys", "topup", created["id"], "5", redis_url=redis_url)
    assert result.returncode == 2 and "unlimited" in result.stderr


def test_balances_stop_at_10_to_the_15_credits_and_a_refusal_changes_nothing(
    redis_url: str,
) -> None:
    """Quotas and top-ups are bounded like prices, so every balance Redis's Lua compares
    stays exact (below 2^53); the limit itself is accepted."""
    limit = 10**15
    for args in (
        ("keys", "create", "--quota", str(limit + 1)),
        ("keys", "create", "--type", "subscription", "--quota", str(limit + 1), "--cycle", "1d"),
        ("plans", "create", "big", "--quota", str(limit + 1), "--cycle", "1d"),
    ):
        before = snapshot(redis_url)
        result = run_cli(*args, redis_url=redis_url)
        assert result.returncode == 2 and "larger than the limit" in result.stderr, args
        assert "Traceback" not in result.stderr
        assert snapshot(redis_url) == before
    created = create_key(redis_url, "--quota", str(limit - 10))
    result = run_cli("keys", "set", created["id"], "--quota", str(limit + 1), redis_url=redis_url)
    assert result.returncode == 2 and "larger than the limit" in result.stderr
    before = snapshot(redis_url)
    result = run_cli("keys", "topup", created["id"], "11", redis_url=redis_url)
    assert result.returncode == 2 and "above the limit" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(redis_url) == before
    code, out = keys_cli(redis_url, "topup", created["id"], "10", "--json")
    assert code == 0 and json.loads(out)["remaining"] == limit


# --- metadata and usage (issue 13, items 4 and 6) --------------------------------------


def stored_record(url: str, key_id: str) -> dict[str, str]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        key_hash = client.get(id_key(key_id))
        return {str(k): str(v) for k, v in client.hgetall(record_key(str(key_hash))).items()}
    finally:
        client.close()


def test_env_owner_and_meta_on_create_set_show_and_list(redis_url: str) -> None:
    created = create_key(
        redis_url,
        "--name",
        "search",
        "--env",
        "live",
        "--owner",
        "team-a",
        "--meta",
        "cost-center=42",
        "--meta",
        "note=ranking, v2",
    )
    key_id = created["id"]
    assert created["env"] == "live" and created["owner"] == "team-a"
    assert created["meta"] == {"cost-center": "42", "note": "ranking, v2"}
    # Stored as record fields; meta as compact JSON.
    rec = stored_record(redis_url, key_id)
    assert rec["env"] == "live" and rec["owner"] == "team-a"
    assert json.loads(rec["meta"]) == created["meta"] and " " not in rec["meta"].split('"')[0]

    # set merges meta: KEY=VALUE sets or replaces, KEY= removes; other settings stay.
    code, out = keys_cli(
        redis_url, "set", key_id, "--json", "--meta", "note=", "--meta", "tier=gold"
    )
    info = json.loads(out)
    assert code == 0 and info["meta"] == {"cost-center": "42", "tier": "gold"}
    assert info["env"] == "live" and info["owner"] == "team-a"
    code, out = keys_cli(redis_url, "set", key_id, "--json", "--owner", "team-b", "--env", "")
    info = json.loads(out)
    assert info["env"] is None and info["owner"] == "team-b" and len(info["meta"]) == 2

    text = run_cli("keys", "show", key_id, redis_url=redis_url)
    assert text.returncode == 0
    lines = {line.split()[0]: line.split(None, 1)[1] for line in text.stdout.splitlines()}
    assert lines["env"] == "-" and lines["owner"] == "team-b"
    assert json.loads(lines["meta"]) == {"cost-center": "42", "tier": "gold"}

    other = create_key(redis_url, "--env", "test", "--owner", "team-b")["id"]
    bare = create_key(redis_url, "--quota", "1")["id"]

    def listed(*filters: str) -> list[str]:
        code, out = keys_cli(redis_url, "list", "--json", *filters)
        assert code == 0
        return sorted(info["id"] for info in json.loads(out))

    assert listed() == sorted([key_id, other, bare])
    assert listed("--owner", "team-b") == sorted([key_id, other])
    assert listed("--env", "test", "--owner", "team-b") == [other]
    assert listed("--env", "live") == []
    assert listed("--env", "") == sorted([key_id, bare])  # '' = keys without an env
    assert listed("--owner", "") == [bare]

    table = run_cli("keys", "list", "--owner", "team-b", redis_url=redis_url).stdout
    header, *rows = table.splitlines()
    assert header.split() == ["ID", "TYPE", "STATUS", "REMAINING", "USED", "ENV", "OWNER", "NAME"]
    assert len(rows) == 2 and any("test" in row and "team-b" in row for row in rows)


def test_a_key_without_metadata_fields_reads_as_empty(redis_url: str) -> None:
    """Keys made before metadata existed have no env, owner or meta field: all empty."""
    created = create_key(redis_url, "--quota", "5")
    rec = stored_record(redis_url, created["id"])
    assert not {"env", "owner", "meta"} & rec.keys()
    assert created["env"] is None and created["owner"] is None and created["meta"] == {}
    code, out = keys_cli(redis_url, "set", created["id"], "--json", "--meta", "a=1")
    assert code == 0 and json.loads(out)["meta"] == {"a": "1"}
    code, out = keys_cli(redis_url, "set", created["id"], "--json", "--meta", "a=")
    assert json.loads(out)["meta"] == {}


def test_meta_stays_within_16_pairs_after_a_merge(redis_url: str) -> None:
    pairs = [arg for i in range(16) for arg in ("--meta", f"k{i}=v")]
    key_id = create_key(redis_url, *pairs)["id"]
    before = snapshot(redis_url)
    result = run_cli("keys", "set", key_id, "--meta", "k16=v", redis_url=redis_url)
    assert result.returncode == 2 and "would give it 17" in result.stderr
    assert snapshot(redis_url) == before
    code, out = keys_cli(redis_url, "set", key_id, "--json", "--meta", "k16=v", "--meta", "k0=")
    assert code == 0 and "k16" in json.loads(out)["meta"] and "k0" not in json.loads(out)["meta"]


def test_usage_history_text_and_json(redis_url: str) -> None:
    key_id = create_key(redis_url, "--quota", "1000")["id"]
    result = run_cli("keys", "usage", key_id, redis_url=redis_url)
    assert result.returncode == 0 and result.stdout.strip() == "no usage yet"
    code, out = keys_cli(redis_url, "usage", key_id, "--json")
    assert code == 0 and json.loads(out) == {"id": key_id, "days": []}

    # What settle.lua writes: kg:{H}:use:<UTC date>, "<model>|<kind>" -> count.
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    key_hash = client.get(id_key(key_id))
    today = dt.datetime.now(dt.UTC).date()
    for back, model, n in ((0, "gpt-4o", 3), (0, "claude-3-5-haiku", 1), (40, "gpt-4o", 9)):
        day = (today - dt.timedelta(days=back)).isoformat()
        client.hset(
            usage_key(str(key_hash), day),
            mapping={
                f"{model}|requests": n,
                f"{model}|input": 10 * n,
                f"{model}|output": 20 * n,
                f"{model}|cached": n,
                f"{model}|credits": 100 * n,
            },
        )
    client.close()

    code, out = keys_cli(redis_url, "usage", key_id, "--json")
    history = json.loads(out)
    assert code == 0 and history["id"] == key_id
    assert [(row["model"], row["requests"]) for row in history["days"]] == [
        ("claude-3-5-haiku", 1),
        ("gpt-4o", 3),
    ]
    assert history["days"][1] == {
        "date": today.isoformat(),
        "model": "gpt-4o",
        "requests": 3,
        "input_tokens": 30,
        "output_tokens": 60,
        "cached_tokens": 3,
        "credits": 300,
    }
    code, out = keys_cli(redis_url, "usage", key_id, "--json", "--days", "60")
    assert [row["requests"] for row in json.loads(out)["days"]] == [9, 1, 3]  # oldest first

    text = run_cli("keys", "usage", key_id, "--days", "60", redis_url=redis_url).stdout
    header, *rows, total = text.splitlines()
    assert header.split() == [
        "DATE",
        "MODEL",
        "REQUESTS",
        "INPUT",
        "OUTPUT",
        "CACHED",
        "CREDITS",
    ]
    assert len(rows) == 3 and rows[2].split() == [
        today.isoformat(),
        "gpt-4o",
        "3",
        "30",
        "60",
        "3",
        "300",
    ]
    assert total.split() == ["total", "13", "130", "260", "13", "1300"]
