"""keyguard.keyring.values: the text forms of a key change."""

from __future__ import annotations

import json

import pytest

from keyguard.errors import InvalidChange
from keyguard.keyring import values
from keyguard.keyring.values import duration as parse_duration

# ----- duration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30d", 30 * 86400),
        ("1d", 86400),
        ("1h", 3600),
        ("24h", 86400),
        ("15m", 900),
        ("5s", 5),
        ("1s", 1),
        ("90", 90),
        ("1", 1),
        ("2w", 14 * 86400),
        ("5S", 5),
        ("1H", 3600),
        (" 30d ", 30 * 86400),
        ("007s", 7),
    ],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "x",
        "s",
        "d",
        "-5s",
        "-5",
        "+5s",
        "0",
        "0s",
        "0d",
        "1.5h",
        "1,5h",
        "1e3",
        "5 s",
        "5ss",
        "5sec",
        "5y",
        "h5",
        "5h30m",
        "\u0661\u0662s",  # Arabic-Indic digits are str.isdigit() but not a duration
        "²s",
    ],
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


# ----- env, owner, meta (issue 13, item 4) -----------------------------------------------


@pytest.mark.parametrize(
    ("text", "stored"),
    [("live", "live"), (" test ", "test"), ("team-a", "team-a"), ("a.b_c:d@e", "a.b_c:d@e")],
)
def test_env_and_owner_take_short_identifiers(text: str, stored: str) -> None:
    assert values.env(text) == stored
    assert values.owner(text) == stored


def test_an_empty_env_or_owner_removes_it() -> None:
    assert values.env("") == "" and values.owner("  ") == ""


@pytest.mark.parametrize("text", ["-live", "live env", "a/b", "x" * 65, "é", "a\nb", "a\x00"])
def test_bad_env_or_owner_is_one_line(text: str) -> None:
    for parse, what in ((values.env, "env"), (values.owner, "owner")):
        with pytest.raises(InvalidChange, match=f"^bad {what} ") as info:
            parse(text)
        assert "\n" not in str(info.value)


def test_meta_item() -> None:
    assert values.meta_item("team=search ranking") == ("team", "search ranking")
    assert values.meta_item("cost-center=a=b") == ("cost-center", "a=b")
    assert values.meta_item("gone=") == ("gone", "")  # removes 'gone'
    assert values.meta_item("v=" + "é" * 256) == ("v", "é" * 256)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("novalue", "use KEY=VALUE"),
        ("=x", "bad meta key ''"),
        ("a b=x", "bad meta key"),
        ("k=" + "x" * 257, "257 characters; at most 256"),
        ("k=a\nb", "control character"),
        ("k=a\tb", "control character"),
        ("k=\x1b[31m", "control character"),
    ],
)
def test_bad_meta_item_is_one_line(text: str, message: str) -> None:
    with pytest.raises(InvalidChange, match=message) as info:
        values.meta_item(text)
    assert "\n" not in str(info.value)


def test_merge_meta_sets_replaces_and_removes() -> None:
    assert values.merge_meta({}, []) == ""
    assert values.merge_meta({}, [("a", "1"), ("b", "2")]) == '{"a":"1","b":"2"}'
    assert values.merge_meta({"a": "1", "b": "2"}, [("a", "3"), ("b", "")]) == '{"a":"3"}'
    assert values.merge_meta({"a": "1"}, [("a", "")]) == ""
    assert values.merge_meta({}, [("nope", "")]) == ""  # removing what is not there
    assert json.loads(values.merge_meta({}, [("k", "ünï")])) == {"k": "ünï"}


def test_merge_meta_is_bounded() -> None:
    sixteen = {f"k{i}": "v" for i in range(16)}
    assert len(json.loads(values.merge_meta(sixteen, []))) == 16
    with pytest.raises(InvalidChange, match="at most 16 meta pairs; this would give it 17"):
        values.merge_meta(sixteen, [("k16", "v")])
    # Replacing or removing within the bound is fine.
    assert len(json.loads(values.merge_meta(sixteen, [("k16", "v"), ("k0", "")]))) == 16
    big = [(f"k{i}", "é" * 256) for i in range(16)]  # 16 x 512 bytes of UTF-8
    with pytest.raises(InvalidChange, match="at most 4096 bytes as JSON"):
        values.merge_meta({}, big)
