"""The keys CLI against a real Redis: every command, and bad input that changes nothing."""

from __future__ import annotations

import json

import pytest
import redis

from keyguard.audit import AUDIT_STREAM
from keyguard.keys import hash_key, key_type_of
from tests.support.checks import create_key, keys_cli
from tests.support.procs import free_port, run_cli


def snapshot(url: str) -> dict[str, object]:
    client = redis.Redis.from_url(url, decode_responses=True)
    out: dict[str, object] = {}
    for key in client.scan_iter("*"):
        if key == AUDIT_STREAM:  # the trail of changes; tests/integration/test_admin_api.py
            continue
        kind = client.type(key)
        if kind == "hash":
            out[key] = client.hgetall(key)
        elif kind == "set":
            out[key] = sorted(client.smembers(key))
        else:
            out[key] = client.get(key)
    client.close()
    return out


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
