"""`keyguard prices …` and the metering fields of `keyguard keys …`, against a real Redis:
every command, its JSON shape, the change event, and bad input that changes nothing."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from keyguard.cli import main
from keyguard.keys import hash_key
from keyguard.prices import Price
from keyguard.store import (
    EVENTS_CHANNEL,
    PRICES_CHANGED,
    PRICES_KEY,
    holds_key,
    ratelimit_key,
    record_key,
    settled_key,
    tpm_key,
)
from tests.support.checks import create_key, keys_cli, store_snapshot
from tests.support.procs import run_cli
from tests.support.topologies import redis_cluster

Cli = Callable[..., tuple[int, str, str]]

GPT_4O = {"input": 2500000, "output": 10000000, "cached_input": 1250000}
TABLE = {
    "gpt-4o": GPT_4O,
    "gpt-4o-mini*": {"input": 150000, "output": 600000},
    "*": {"input": 1000000, "output": 1000000, "per_request": 10, "max_output": 4096},
}
TABLE_YAML = """\
# prices in credits per 1M tokens (1 credit = 1 micro-dollar)
gpt-4o: {input: 2500000, output: 10000000, cached_input: 1250000}
gpt-4o-mini*:
  input: 150000
  output: 600000
"*": {input: 1000000, output: 1000000, per_request: 10, max_output: 4096}
"""


def full(fields: dict[str, int]) -> dict[str, int | None]:
    """A price's JSON shape, with the defaults filled in."""
    return {
        "input": fields["input"],
        "output": fields["output"],
        "cached_input": fields.get("cached_input", fields["input"]),
        "cache_write": fields.get("cache_write", fields["input"]),
        "per_request": fields.get("per_request", 0),
        "max_output": fields.get("max_output"),
    }


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_url, decode_responses=True)
    yield conn
    conn.close()


@pytest.fixture
def cli(redis_url: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    """`keyguard prices ARGS` in-process: (exit status, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        try:
            code = main(["prices", "--redis-url", redis_url, *args])
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run


def snapshot(client: redis.Redis) -> dict[str, object]:
    return store_snapshot(client)


@contextmanager
def events(redis_url: str) -> Iterator[Callable[[], list[str]]]:
    """Subscribe to kg:events; the callable returns what was published since."""
    conn = redis.Redis.from_url(redis_url, decode_responses=True)
    pubsub = conn.pubsub()
    pubsub.subscribe(EVENTS_CHANNEL)
    assert pubsub.get_message(timeout=5) is not None  # the subscription's confirmation

    def received() -> list[str]:
        out = []
        while (message := pubsub.get_message(timeout=0.3)) is not None:
            out.append(message["data"])
        return out

    try:
        yield received
    finally:
        pubsub.close()
        conn.close()


def words(text: str) -> list[str]:
    return text.split()


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("keyguard") and "error:" in lines[0], err
    assert "Traceback" not in err
    return lines[0]


# ----- set, show, list, remove ------------------------------------------------------------------


def test_set_show_list_remove(cli: Cli, client: redis.Redis) -> None:
    code, out, _ = cli(
        *words("set gpt-4o --input 2500000 --output 10000000 --cached-input 1250000 --json")
    )
    assert code == 0
    assert json.loads(out) == {"model": "gpt-4o", **full(GPT_4O)}
    stored = client.hgetall(PRICES_KEY)
    assert stored == {"gpt-4o": Price(2500000, 10000000, 1250000, 2500000).to_json()}

    args = words("--input 1 --output 2 --cache-write 3 --per-request 4 --max-output 512")
    code, out, _ = cli("set", "*", *args)
    assert code == 0
    assert "max_output" in out and "512" in out  # the human form: one aligned line per field

    code, out, _ = cli("show", "*", "--json")
    assert code == 0
    assert json.loads(out) == {
        "model": "*",
        "input": 1,
        "output": 2,
        "cached_input": 1,
        "cache_write": 3,
        "per_request": 4,
        "max_output": 512,
    }

    code, out, _ = cli("list", "--json")
    assert code == 0
    assert json.loads(out) == {
        "*": json.loads(client.hget(PRICES_KEY, "*") or ""),
        "gpt-4o": full(GPT_4O),
    }
    code, out, _ = cli("list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["MODEL", "INPUT", "OUTPUT"]
    assert [line.split()[0] for line in lines[1:]] == ["*", "gpt-4o"]
    assert lines[2].split() == ["gpt-4o", "2500000", "10000000", "1250000", "2500000", "0", "-"]

    code, out, _ = cli("remove", "gpt-4o", "--json")
    assert code == 0 and json.loads(out) == {"model": "gpt-4o", "removed": True}
    code, out, _ = cli("remove", "*")
    assert code == 0 and out.strip() == "price for * removed"
    assert client.exists(PRICES_KEY) == 0
    code, out, _ = cli("list", "--json")
    assert code == 0 and json.loads(out) == {}


def test_set_replaces_the_whole_price(cli: Cli) -> None:
    cli("set", "gpt-4o", "--input", "10", "--output", "20", "--cached-input", "5")
    code, out, _ = cli("set", "gpt-4o", "--input", "30", "--output", "40", "--json")
    assert code == 0
    # Not merged with the old price: cached_input falls back to the new input.
    assert json.loads(out)["cached_input"] == 30


def test_unknown_model_on_show_and_remove_is_exit_1(cli: Cli, client: redis.Redis) -> None:
    cli("set", "gpt-4o*", "--input", "1", "--output", "1")
    before = snapshot(client)
    for command in ("show", "remove"):
        # Show and remove take the pattern itself, not a model it would price.
        code, out, err = cli(command, "gpt-4o-mini")
        assert code == 1 and out == ""
        assert one_line_error(err) == "keyguard: error: no price for model 'gpt-4o-mini'"
    assert snapshot(client) == before


def test_an_unreadable_stored_price_is_named_and_can_be_removed(
    cli: Cli, client: redis.Redis
) -> None:
    client.hset(PRICES_KEY, "gpt-4o", '{"input": 1.5, "output": 1}')
    for args in (("list",), ("show", "gpt-4o")):
        code, out, err = cli(*args)
        assert code == 1 and out == ""
        assert "stored price for 'gpt-4o' is unreadable" in one_line_error(err)
    assert cli("remove", "gpt-4o")[0] == 0


# ----- import ------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml", ""])
def test_import_replaces_the_table(
    cli: Cli, client: redis.Redis, tmp_path: Path, suffix: str
) -> None:
    cli("set", "claude-3-opus", "--input", "15000000", "--output", "75000000")
    cli("set", "gpt-4o", "--input", "1", "--output", "1")
    path = tmp_path / f"prices{suffix}"
    path.write_text(json.dumps(TABLE) if suffix in (".json", "") else TABLE_YAML)
    code, out, _ = cli("import", str(path), "--json")
    assert code == 0
    assert json.loads(out) == {
        "imported": ["*", "gpt-4o", "gpt-4o-mini*"],
        "removed": ["claude-3-opus"],
        "merge": False,
    }
    assert {p: json.loads(text) for p, text in client.hgetall(PRICES_KEY).items()} == {
        pattern: full(fields) for pattern, fields in TABLE.items()
    }


def test_import_merge_keeps_other_models(cli: Cli, client: redis.Redis, tmp_path: Path) -> None:
    cli("set", "claude-3-opus", "--input", "15000000", "--output", "75000000")
    cli("set", "gpt-4o", "--input", "1", "--output", "1")
    path = tmp_path / "prices.yaml"
    path.write_text(TABLE_YAML)
    code, out, _ = cli("import", str(path), "--merge")
    assert code == 0
    assert "imported 3 price(s)" in out and "merged" in out and "removed" not in out
    assert sorted(client.hkeys(PRICES_KEY)) == ["*", "claude-3-opus", "gpt-4o", "gpt-4o-mini*"]
    assert json.loads(client.hget(PRICES_KEY, "gpt-4o") or "") == full(GPT_4O)


def test_list_json_round_trips_through_import(
    cli: Cli, client: redis.Redis, tmp_path: Path
) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(TABLE))
    assert cli("import", str(path))[0] == 0
    before = client.hgetall(PRICES_KEY)
    code, out, _ = cli("list", "--json")
    assert code == 0
    exported = tmp_path / "exported.json"
    exported.write_text(out)
    client.delete(PRICES_KEY)
    assert cli("import", str(exported))[0] == 0
    assert client.hgetall(PRICES_KEY) == before


def test_import_from_stdin(cli: Cli, client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(TABLE_YAML))
    code, out, _ = cli("import", "-", "--json")
    assert code == 0
    assert json.loads(out)["imported"] == ["*", "gpt-4o", "gpt-4o-mini*"]
    assert len(client.hkeys(PRICES_KEY)) == 3


GOOD = '"gpt-4o": {"input": 1, "output": 2}'


def with_x(fields: str) -> str:
    """A JSON table with one good entry and model "x" priced with ``fields``."""
    return f'{{{GOOD}, "x": {{{fields}}}}}'


BAD_IMPORTS: dict[str, tuple[str, str, str]] = {
    # case: (file name, content, fragment of the one-line error)
    "negative": ("p.json", with_x('"input": -1, "output": 1'), "x: input: -1 is negative"),
    "float": ("p.json", with_x('"input": 2.5, "output": 1'), "not a whole number"),
    "boolean": ("p.yaml", "x: {input: true, output: 1}", "not a whole number"),
    "text amount": ("p.yaml", "x: {input: lots, output: 1}", "not a whole number"),
    "unknown field": ("p.json", with_x('"input": 1, "outptu": 1'), "unknown field 'outptu'"),
    "camel case field": ("p.yaml", "x: {input: 1, output: 1, cachedInput: 1}", "unknown field"),
    "missing output": ("p.yaml", "x: {input: 1}", "missing 'output'"),
    "zero max_output": ("p.yaml", "x: {input: 1, output: 1, max_output: 0}", "greater than 0"),
    "too large": ("p.yaml", f"x: {{input: {10**16}, output: 1}}", "larger than"),
    "bad pattern": ("p.json", '{"gpt 4o": {"input": 1, "output": 1}}', "bad model 'gpt 4o'"),
    "star inside": ("p.yaml", "gpt-*-mini: {input: 1, output: 1}", "bad model"),
    "number as model": ("p.yaml", "4: {input: 1, output: 1}", "a model pattern is text"),
    "entry not a mapping": ("p.yaml", "gpt-4o: 2500000", "expected a mapping of fields"),
    "file is a list": ("p.json", "[1, 2]", "expected a mapping of model → price, got a list"),
    "file is text": ("p.yaml", "just some words", "got a str"),
    "empty file": ("p.yaml", "", "got an empty file"),
    "empty mapping": ("p.json", "{}", "no prices in it"),
    "duplicate in JSON": ("p.json", f"{{{GOOD}, {GOOD}}}", "'gpt-4o' is given twice"),
    "duplicate in YAML": ("p.yaml", "a: {input: 1, output: 1}\n" * 2, "'a' is given twice"),
    "broken JSON": ("p.json", f"{{{GOOD},", "not valid JSON"),
    "broken YAML": ("p.yaml", "a: {input: 1\nb: [", "not valid YAML"),
    "bare star in YAML": ("p.yaml", "*: {input: 1, output: 1}", 'write the default price as "*"'),
    "not UTF-8": ("p.yaml", "\udcff", "not UTF-8"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMPORTS))
def test_bad_import_is_one_line_and_changes_nothing(
    cli: Cli, client: redis.Redis, tmp_path: Path, redis_url: str, case: str
) -> None:
    cli("set", "claude-3-opus", "--input", "15000000", "--output", "75000000")
    before = snapshot(client)
    name, content, fragment = BAD_IMPORTS[case]
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    with events(redis_url) as received:
        for merge in ((), ("--merge",)):
            code, out, err = cli("import", str(path), *merge)
            assert code == 2 and out == ""
            line = one_line_error(err)
            assert fragment in line and str(path) in line
        assert received() == []
    assert snapshot(client) == before


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["import", "/nonexistent/prices.yaml"], "cannot read /nonexistent/prices.yaml"),
        (["import", "."], "cannot read ."),
        (["set", "x", "--input", "-5", "--output", "1"], "input: -5 is negative"),
        (["set", "x", "--input", "1.5", "--output", "1"], "input: '1.5' is not a whole number"),
        (["set", "x", "--input", "1", "--output", "1e6"], "not a whole number"),
        (["set", "x", "--input", "1", "--output", "1", "--max-output", "0"], "greater than 0"),
        (["set", "x", "--input", "1"], "required: --output"),
        (["set", "gpt 4o", "--input", "1", "--output", "1"], "bad model 'gpt 4o'"),
        (["set", "*gpt", "--input", "1", "--output", "1"], "bad model"),
        (["set", "", "--input", "1", "--output", "1"], "bad model"),
        (["show", "a,b"], "bad model"),
        (["remove", "gpt-4o**"], "bad model"),
    ],
)
def test_bad_price_input_gets_one_line_error_and_changes_nothing(
    redis_url: str, client: redis.Redis, args: list[str], fragment: str
) -> None:
    client.hset(PRICES_KEY, "gpt-4o", Price(1, 2, 1, 1).to_json())
    before = snapshot(client)
    with events(redis_url) as received:
        # A real process: the exit status and stderr exactly as a shell sees them.
        result = run_cli("prices", *args, redis_url=redis_url)
        assert received() == []
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert fragment in one_line_error(result.stderr)
    assert snapshot(client) == before


def test_every_change_publishes_prices_changed(cli: Cli, redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(TABLE))
    with events(redis_url) as received:
        assert cli("set", "gpt-4o", "--input", "1", "--output", "1")[0] == 0
        assert received() == [PRICES_CHANGED]
        assert cli("import", str(path))[0] == 0
        assert received() == [PRICES_CHANGED]
        assert cli("import", str(path), "--merge")[0] == 0
        assert received() == [PRICES_CHANGED]
        assert cli("remove", "gpt-4o")[0] == 0
        assert received() == [PRICES_CHANGED]
        # Reading, and a refused change, publish nothing.
        assert cli("list")[0] == 0 and cli("show", "*")[0] == 0
        assert cli("remove", "gpt-4o")[0] == 1
        assert cli("set", "x", "--input", "-1", "--output", "1")[0] == 2
        assert received() == []


def test_prices_with_redis_down_is_exit_1(redis_url: str) -> None:
    result = run_cli("prices", "list", redis_url="redis://127.0.0.1:1/0")
    assert result.returncode == 1 and "Redis failed" in one_line_error(result.stderr)


# ----- keys: --tpm and the metering fields -------------------------------------------------------


def test_tpm_on_create_and_set(redis_url: str, client: redis.Redis) -> None:
    created = create_key(redis_url, "--quota", "100", "--tpm", "40000", "--rpm", "60")
    assert created["tpm"] == 40000 and created["rpm"] == 60
    key_hash = hash_key(created["key"])
    assert client.hget(record_key(key_hash), "tpm") == "40000"

    # A tpm change starts a clean token window; the request window is left alone.
    client.set(tpm_key(key_hash), "123")
    client.set(ratelimit_key(key_hash), "7")
    code, out = keys_cli(redis_url, "set", created["id"], "--tpm", "1000", "--json")
    assert code == 0 and json.loads(out)["tpm"] == 1000
    assert client.exists(tpm_key(key_hash)) == 0 and client.exists(ratelimit_key(key_hash)) == 1

    code, out = keys_cli(redis_url, "set", created["id"], "--tpm", "0", "--json")
    assert code == 0 and json.loads(out)["tpm"] is None  # 0 = no limit, shown as none
    assert client.hget(record_key(key_hash), "tpm") == "0"


def test_show_has_the_metering_fields_and_an_honest_negative_remaining(
    redis_url: str, client: redis.Redis
) -> None:
    created = create_key(redis_url, "--quota", "100")
    for name in ("held", "tokens_in", "tokens_out", "cached_tokens"):
        assert created[name] == 0
    assert created["tpm"] is None
    # What the hold and settle scripts leave behind once usage overshot the quota.
    client.hset(
        record_key(hash_key(created["key"])),
        mapping={
            "remaining": "-40",
            "used": "140",
            "held": "25",
            "tokens_in": "1200",
            "tokens_out": "300",
            "cached_tokens": "800",
            "tpm": "5000",
        },
    )
    # `held` shows what live holds hold (expired ones no longer count): one of 25.
    client.zadd(holds_key(hash_key(created["key"])), {"h1:25": (time.time() + 600) * 1000})
    code, out = keys_cli(redis_url, "show", created["id"], "--json")
    info = json.loads(out)
    assert code == 0
    assert {
        name: info[name]
        for name in ("remaining", "used", "held", "tokens_in", "tokens_out", "cached_tokens", "tpm")
    } == {
        "remaining": -40,
        "used": 140,
        "held": 25,
        "tokens_in": 1200,
        "tokens_out": 300,
        "cached_tokens": 800,
        "tpm": 5000,
    }

    code, out = keys_cli(redis_url, "show", created["id"])
    fields = dict(line.split(maxsplit=1) for line in out.splitlines() if len(line.split()) == 2)
    assert code == 0
    assert fields["remaining"] == "-40" and fields["held"] == "25"
    assert fields["cached_tokens"] == "800" and fields["tpm"] == "5000"
    code, out = keys_cli(redis_url, "list")
    row = out.splitlines()[1].split()
    assert code == 0 and row[3:5] == ["-40", "140"]


def test_revoke_removes_every_key_of_the_api_key(redis_url: str, client: redis.Redis) -> None:
    created = create_key(redis_url, "--quota", "100", "--tpm", "10")
    key_hash = hash_key(created["key"])
    for name in (tpm_key, ratelimit_key, holds_key, settled_key):
        client.set(name(key_hash), "1")
    assert keys_cli(redis_url, "revoke", created["id"])[0] == 0
    assert snapshot(client) == {}


def test_bad_tpm_is_one_line_and_changes_nothing(redis_url: str, client: redis.Redis) -> None:
    created = create_key(redis_url, "--quota", "3")
    before = snapshot(client)
    for args in (["create", "--tpm", "-1"], ["set", created["id"], "--tpm", "many"]):
        result = run_cli("keys", *args, redis_url=redis_url)
        assert result.returncode == 2 and result.stdout == ""
        assert "--tpm" in one_line_error(result.stderr)
    assert snapshot(client) == before


@pytest.mark.slow
def test_prices_on_a_redis_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The import script and the change event on a real 3-master cluster."""
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(TABLE))
    with redis_cluster(3) as ports:
        url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)

        def prices(*args: str) -> tuple[int, str]:
            code = main(["prices", "--redis-url", url, *args])
            return code, capsys.readouterr().out

        assert prices("set", "claude-3-opus", "--input", "1", "--output", "1")[0] == 0
        code, out = prices("import", str(path), "--json")
        assert code == 0 and json.loads(out)["removed"] == ["claude-3-opus"]
        assert prices("import", str(path), "--merge")[0] == 0
        code, out = prices("list", "--json")
        assert code == 0 and json.loads(out) == {p: full(f) for p, f in TABLE.items()}
        assert prices("remove", "*")[0] == 0
        assert prices("show", "*")[0] == 1
