"""keyguard.cli: argument validation that happens before Redis is touched.

KEYGUARD_REDIS_URL points at a port where nothing listens, so a command that
got past validation fails with exit 1 ("Redis failed"), while a bad argument
must fail first, with exit 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from keyguard import cli
from keyguard.errors import InvalidChange
from keyguard.keyring.prices import fields_from_text, parse_price_table
from keyguard.prices import Price

DEAD_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture(autouse=True)
def dead_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KEYGUARD_REDIS_URL", "KEYGUARD_REDIS_TIMEOUT", "KEYGUARD_REDIS_TLS_CA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KEYGUARD_REDIS_URL", DEAD_REDIS)


def run(argv: list[str]) -> int:
    """main()'s exit code, whether it returns it or argparse raises SystemExit."""
    try:
        return cli.main(argv)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else 1


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert "Traceback" not in err
    line = lines[0]
    assert line.startswith("keyguard") and "error:" in line, line
    return line


def assert_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = run(argv)
    out, err = capsys.readouterr()
    assert code == 2, (code, err)
    assert out == ""
    line = one_line_error(err)
    assert "Redis failed" not in line
    return line


def future_date(days: int = 400) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).strftime("%Y-%m-%d")


# ----- values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--quota", "-5"], "negative"),
        (["--quota=-1"], "negative"),
        (["--quota", "1.5"], "not a whole number"),
        (["--quota", "ten"], "not a whole number"),
        (["--quota", ""], "not a whole number"),
        (["--rpm", "-1"], "negative"),
        (["--rpm", "fast"], "not a whole number"),
        (["--tpm", "-1"], "negative"),
        (["--tpm", "1e6"], "not a whole number"),
    ],
)
def test_bad_quota_numbers(
    args: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    line = assert_usage_error(["keys", "create", *args], capsys)
    assert fragment in line


@pytest.mark.parametrize(
    "ips",
    [
        "10.0.0.0/33",
        "300.1.1.1",
        "10.0.0.1/8/8",
        "not-an-ip",
        "10.0.0.0/8,,192.168.0.1",
        "10.0.0.0/8,",
        "2001:db8::/129",
        "2001:db8:::1",
        "",
    ],
)
def test_bad_cidr(ips: str, capsys: pytest.CaptureFixture[str]) -> None:
    line = assert_usage_error(["keys", "create", "--allowed-ips", ips], capsys)
    assert "--allowed-ips" in line


@pytest.mark.parametrize(
    "date",
    ["2027-13-01", "2027-02-30", "tomorrow", "31/01/2027", "2027-1-1x", "", "+0s", "+5x", "+-1d"],
)
def test_bad_date(date: str, capsys: pytest.CaptureFixture[str]) -> None:
    line = assert_usage_error(["keys", "create", "--expires", date], capsys)
    assert "--expires" in line


@pytest.mark.parametrize(
    "date",
    ["2020-01-01", "1999-12-31T23:59:59Z", "2001-01-01T00:00:00+02:00", "1970-01-01"],
)
def test_past_date(date: str, capsys: pytest.CaptureFixture[str]) -> None:
    line = assert_usage_error(["keys", "create", "--expires", date], capsys)
    assert "past" in line


@pytest.mark.parametrize(
    "models",
    ["a,,b", "bad model", ",gpt-4o", "gpt-4o,", "", "-gpt", "gpt 4o", "gpt\t4o", "a;b", "*,gpt-4o"],
)
def test_bad_model_names(models: str, capsys: pytest.CaptureFixture[str]) -> None:
    line = assert_usage_error(["keys", "create", "--models", models], capsys)
    assert "--models" in line


def test_model_name_too_long(capsys: pytest.CaptureFixture[str]) -> None:
    assert_usage_error(["keys", "create", "--models", "m" * 257], capsys)


@pytest.mark.parametrize("cycle", ["0", "0s", "-5s", "1.5h", "x", ""])
def test_bad_cycle(cycle: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["keys", "create", "--type", "subscription", "--quota", "10", "--cycle", cycle]
    line = assert_usage_error(argv, capsys)
    assert "--cycle" in line


def test_bad_type(capsys: pytest.CaptureFixture[str]) -> None:
    assert_usage_error(["keys", "create", "--type", "premium"], capsys)


# ----- combinations ---------------------------------------------------------------------------


def test_quota_with_unlimited(capsys: pytest.CaptureFixture[str]) -> None:
    line = assert_usage_error(["keys", "create", "--quota", "5", "--unlimited"], capsys)
    assert "--unlimited" in line or "--quota" in line


def test_subscription_without_cycle(capsys: pytest.CaptureFixture[str]) -> None:
    line = assert_usage_error(["keys", "create", "--type", "subscription", "--quota", "5"], capsys)
    assert "--cycle" in line


def test_subscription_without_quota(capsys: pytest.CaptureFixture[str]) -> None:
    line = assert_usage_error(
        ["keys", "create", "--type", "subscription", "--cycle", "30d"], capsys
    )
    assert "--quota" in line


def test_subscription_with_unlimited(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["keys", "create", "--type", "subscription", "--cycle", "30d", "--unlimited"]
    assert_usage_error(argv, capsys)


def test_cycle_on_standard_key(capsys: pytest.CaptureFixture[str]) -> None:
    line = assert_usage_error(["keys", "create", "--quota", "5", "--cycle", "30d"], capsys)
    assert "--cycle" in line
    line = assert_usage_error(["keys", "create", "--type", "standard", "--cycle", "1h"], capsys)
    assert "--cycle" in line


def test_set_quota_with_unlimited(capsys: pytest.CaptureFixture[str]) -> None:
    assert_usage_error(["keys", "set", "kg_000000000000", "--quota", "5", "--unlimited"], capsys)


def test_set_with_bad_values(capsys: pytest.CaptureFixture[str]) -> None:
    assert_usage_error(["keys", "set", "kg_000000000000", "--quota", "-1"], capsys)
    assert_usage_error(["keys", "set", "kg_000000000000", "--allowed-ips", "1.2.3.4/40"], capsys)
    assert_usage_error(["keys", "set", "kg_000000000000", "--expires", "2001-01-01"], capsys)
    assert_usage_error(["keys", "set", "kg_000000000000", "--models", "a,,b"], capsys)


def test_set_without_options_needs_no_redis(capsys: pytest.CaptureFixture[str]) -> None:
    line = assert_usage_error(["keys", "set", "kg_000000000000"], capsys)
    assert "nothing to change" in line


@pytest.mark.parametrize("amount", ["-5", "0", "abc", "1.5"])
def test_bad_topup_amount(amount: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert_usage_error(["keys", "topup", "kg_000000000000", amount], capsys)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["keys"],
        ["keys", "show"],
        ["keys", "topup", "kg_000000000000"],
        ["keys", "frobnicate"],
        ["keys", "create", "--bogus"],
        ["nope"],
    ],
)
def test_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert_usage_error(argv, capsys)


# ----- parser values --------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    return cli.build_parser().parse_args(argv)


def test_parser_normalises_values() -> None:
    args = parse(
        [
            "keys",
            "create",
            "--quota",
            "0",
            "--models",
            " gpt-4o , claude-3-5-haiku,gpt-4o",
            "--allowed-ips",
            "10.1.2.3/8, 2001:db8::1",
            "--cycle",
            "30d",
            "--expires",
            "never",
            "--payg",
        ]
    )
    assert args.quota == 0
    assert args.models == "gpt-4o,claude-3-5-haiku"
    assert args.allowed_ips == "10.0.0.0/8,2001:db8::1/128"
    assert args.cycle == 30 * 86400
    assert args.expires == ""
    assert args.payg is True


@pytest.mark.parametrize("value", ["*", " * "])
def test_star_means_all(value: str) -> None:
    args = parse(["keys", "create", "--models", value, "--allowed-ips", value])
    assert args.models == ""
    assert args.allowed_ips == ""


def test_expires_future_date_is_utc_midnight() -> None:
    date = future_date()
    args = parse(["keys", "create", "--expires", date])
    expected = datetime.fromisoformat(date).replace(tzinfo=UTC).timestamp()
    assert int(args.expires) == int(expected)


def test_expires_iso_with_zone() -> None:
    args = parse(["keys", "create", "--expires", "2999-01-31T12:00:00Z"])
    assert int(args.expires) == int(datetime(2999, 1, 31, 12, tzinfo=UTC).timestamp())
    args = parse(["keys", "create", "--expires", "2999-01-31T12:00:00+02:00"])
    assert int(args.expires) == int(datetime(2999, 1, 31, 10, tzinfo=UTC).timestamp())


def test_expires_relative() -> None:
    now = datetime.now(UTC).timestamp()
    args = parse(["keys", "create", "--expires", "+1h"])
    assert now + 3600 - 5 <= int(args.expires) <= now + 3600 + 5


def test_no_payg_flag() -> None:
    assert parse(["keys", "create", "--no-payg"]).payg is False
    assert parse(["keys", "create"]).payg is None


# ----- a valid command against a dead Redis ---------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["keys", "create"],
        ["keys", "create", "--quota", "100", "--models", "gpt-4o", "--json"],
        [
            "keys",
            "create",
            "--type",
            "subscription",
            "--quota",
            "10",
            "--cycle",
            "30d",
            "--allowed-ips",
            "10.0.0.0/8",
            "--expires",
            future_date(),
        ],
        ["keys", "list"],
        ["keys", "show", "kg_000000000000"],
        ["keys", "disable", "kg_000000000000"],
        ["keys", "topup", "kg_000000000000", "5"],
    ],
)
def test_valid_command_with_dead_redis_exits_1(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(argv)
    out, err = capsys.readouterr()
    assert code == 1, err
    assert "sk-" not in out + err  # a key that was never stored is never shown
    line = one_line_error(err)
    assert "Redis" in line
    assert "127.0.0.1:1" in line


def test_redis_url_flag_is_used_and_password_masked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KEYGUARD_REDIS_URL", "redis://127.0.0.1:6379/0")
    code = run(["keys", "--redis-url", "redis://:hunter2@127.0.0.1:1/0", "list"])
    _, err = capsys.readouterr()
    assert code == 1
    line = one_line_error(err)
    assert "hunter2" not in line
    assert "127.0.0.1:1" in line


def test_bad_redis_url_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KEYGUARD_REDIS_URL", "http://x")
    line = assert_usage_error(["keys", "list"], capsys)
    assert "KEYGUARD_REDIS_URL" in line


def test_tpm_is_parsed_for_create_and_set() -> None:
    assert parse(["keys", "create", "--tpm", "40000"]).tpm == 40000
    assert parse(["keys", "set", "kg_000000000000", "--tpm", "0"]).tpm == 0
    assert parse(["keys", "create"]).tpm is None


# ----- prices: bad input fails before Redis is touched -------------------------------------------

PRICE_FILE = """\
gpt-4o: {input: 2500000, output: 10000000, cached_input: 1250000}
gpt-4o-mini*: {input: 150000, output: 600000}
"*": {input: 1000000, output: 1000000, per_request: 10, max_output: 4096}
"""


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["prices", "set", "x", "--input", "-1", "--output", "1"], "input: -1 is negative"),
        (["prices", "set", "x", "--input", "1", "--output", "0.5"], "not a whole number"),
        (["prices", "set", "x", "--input", "1", "--output", "1", "--per-request", "-2"], "neg"),
        (["prices", "set", "x y", "--input", "1", "--output", "1"], "bad model"),
        (["prices", "set", "x", "--output", "1"], "required: --input"),
        (["prices", "show", "gpt-4o?"], "bad model"),
        (["prices", "remove", "**"], "bad model"),
        (["prices", "import", "/nonexistent.yaml"], "cannot read /nonexistent.yaml"),
        (["prices", "import"], "required: file"),
        (["prices"], "required"),
        (["prices", "frobnicate"], "invalid choice"),
    ],
)
def test_bad_price_input_needs_no_redis(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fragment in assert_usage_error(argv, capsys)


def test_bad_price_file_needs_no_redis(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "prices.yaml")
    Path(path).write_text(PRICE_FILE + "bad: {input: 1, output: -1}\n")
    line = assert_usage_error(["prices", "import", path, "--merge"], capsys)
    assert line == f"keyguard: error: {path}: bad: output: -1 is negative; use 0 or more"


@pytest.mark.parametrize(
    "argv",
    [
        ["prices", "list"],
        ["prices", "show", "*"],
        ["prices", "remove", "gpt-4o*"],
        ["prices", "set", "gpt-4o", "--input", "1", "--output", "2", "--json"],
    ],
)
def test_valid_price_command_with_dead_redis_exits_1(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(argv)
    _, err = capsys.readouterr()
    assert code == 1, err
    assert "Redis failed" in one_line_error(err)


def test_price_options_parse_to_field_names() -> None:
    args = parse(["prices", "set", "*", "--input", "1", "--output", "2", "--cache-write", "3"])
    assert (args.model, args.input, args.output, args.cache_write) == ("*", "1", "2", "3")
    assert args.cached_input is None and args.per_request is None and args.max_output is None
    assert parse(["prices", "import", "p.yaml"]).merge is False
    assert parse(["prices", "--redis-url", "redis://h:1/0", "list"]).redis_url == "redis://h:1/0"


# ----- prices: reading options and files (keyguard.keyring.prices) ------------------------------


def test_fields_from_text_keeps_what_is_not_a_number_for_the_core_to_refuse() -> None:
    fields = fields_from_text({"input": "10", "output": " 20 ", "cached_input": None, "x": "1.5"})
    assert fields == {"input": 10, "output": 20, "x": "1.5"}


def test_a_price_file_in_yaml_and_json_reads_the_same() -> None:
    from_yaml = parse_price_table(PRICE_FILE)
    from_json = parse_price_table(json.dumps(yaml.safe_load(PRICE_FILE)), as_json=True)
    assert from_yaml == from_json
    assert from_yaml == {
        "gpt-4o": Price(2500000, 10000000, 1250000, 2500000),
        "gpt-4o-mini*": Price(150000, 600000, 150000, 150000),
        "*": Price(1000000, 1000000, 1000000, 1000000, per_request=10, max_output=4096),
    }


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a: {input: 1, output: 1}\na: {input: 2, output: 2}\n", "line 2: 'a' is given twice"),
        ("*: {input: 1, output: 1}", 'write the default price as "*"'),
        ("a: {input: 1, output: 1, max_output: null, extra: 1}", "a: unknown field 'extra'"),
        ("a: [1, 2]", "a: expected a mapping of fields"),
        ("? [a, b]\n: {input: 1, output: 1}\n", "bad model"),
        ("null", "got an empty file"),
        ("a: {input: 1, output: 1}\n\tb: 1\n", "not valid YAML"),
    ],
)
def test_bad_price_files(text: str, fragment: str) -> None:
    with pytest.raises(InvalidChange) as caught:
        parse_price_table(text)
    message = str(caught.value)
    assert fragment in message and "\n" not in message
