"""keyguard.keys: key format, hashing and generation."""

from __future__ import annotations

import hashlib
import re
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyguard.keys import (
    GENERATED_BODY_LEN,
    MIN_BODY_LEN,
    generate_key,
    generate_key_id,
    hash_key,
    key_type_of,
)

ALNUM = string.ascii_letters + string.digits


def body(n: int) -> str:
    """n alphanumerics, covering upper case, lower case and digits."""
    return (ALNUM * (n // len(ALNUM) + 1))[:n]


def test_min_body_len_is_32() -> None:
    assert MIN_BODY_LEN == 32


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("sk-" + body(31), None),
        ("sk-" + body(32), "standard"),
        ("sk-" + body(33), "standard"),
        ("sk-" + body(200), "standard"),
        ("sk-sub-" + body(31), None),
        ("sk-sub-" + body(32), "subscription"),
        ("sk-sub-" + body(33), "subscription"),
        ("sk-sub-" + body(500), "subscription"),
        ("sk-" + "0" * 32, "standard"),
        ("sk-" + "Z" * 32, "standard"),
        ("sk-sub-" + "a" * 32, "subscription"),
    ],
)
def test_length_boundaries(key: str, expected: str | None) -> None:
    assert key_type_of(key) == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        # "sk-sub" without the dash: a standard key whose body starts with "sub".
        ("sk-sub" + body(32), "standard"),
        ("sk-sub" + body(29), "standard"),  # body is "sub" + 29 = 32 alnum
        ("sk-sub" + body(28), None),  # body is 31 alnum
        ("sk-subx" + body(31), "standard"),
        # "sk-sub-" with too short a body is not a standard key either: "-" is not alnum.
        ("sk-sub-" + body(31), None),
        ("sk-sub-" + body(100)[:-1] + "-", None),
        ("sk-sub-", None),
        ("sk-sub", None),
        ("sk-sub--" + body(32), None),
        ("sk-sub-sub-" + body(32), None),
        ("sk-sub-" + "sub" + body(29), "subscription"),
    ],
)
def test_sub_prefix_edge_cases(key: str, expected: str | None) -> None:
    assert key_type_of(key) == expected


@pytest.mark.parametrize(
    "key",
    [
        "",
        "sk-",
        "sk",
        "s",
        body(40),  # no prefix
        "SK-" + body(32),  # the prefix is case-sensitive
        "Sk-" + body(32),
        "sk_" + body(32),
        "pk-" + body(32),
        " sk-" + body(32),
        "sk-" + body(32) + " ",
        "sk-" + body(32) + "\n",
        "sk-" + body(16) + " " + body(16),
        "sk-" + body(16) + "-" + body(16),
        "sk-" + body(16) + "_" + body(16),
        "sk-" + body(16) + "." + body(16),
        "sk-" + body(16) + "/" + body(16),
        "sk-" + body(16) + "=" + body(16),
        "sk-" + body(16) + "+" + body(16),
        "sk-" + body(32) + "\x00",
        "sk-" + body(31) + "é",  # Latin letter outside ASCII
        "sk-" + "é" * 32,
        "sk-" + "\uff11" * 32,  # full-width digit: str.isalnum() is True, but not [A-Za-z0-9]
        "sk-" + "\u0663" * 32,  # Arabic-Indic digit
        "sk-" + "ß" * 32,
        "sk-" + body(31) + "😀",
        "sk-\u200b" + body(32),  # zero-width space
        "sk-sub-" + body(31) + "é",
        "sk-sub-" + body(16) + " " + body(16),
        "sk-sub-" + body(16) + "_" + body(16),
        "sk-sub-" + "\uff11" * 32,
    ],
)
def test_rejects_malformed(key: str) -> None:
    assert key_type_of(key) is None


@given(st.text(max_size=80))
def test_key_type_of_agrees_with_the_regex(text: str) -> None:
    if re.fullmatch(r"sk-sub-[A-Za-z0-9]{32,}", text):
        expected: str | None = "subscription"
    elif re.fullmatch(r"sk-[A-Za-z0-9]{32,}", text):
        expected = "standard"
    else:
        expected = None
    assert key_type_of(text) == expected


@given(st.text(alphabet=ALNUM, min_size=0, max_size=70), st.sampled_from(["sk-", "sk-sub-"]))
def test_key_type_of_on_alnum_bodies(tail: str, prefix: str) -> None:
    key = prefix + tail
    result = key_type_of(key)
    if len(tail) < 32:
        # Too short, and a short "sk-sub-" key is no standard key: "-" is not alnum.
        assert result is None
    else:
        assert result == ("standard" if prefix == "sk-" else "subscription")


@pytest.mark.parametrize(("key_type", "prefix"), [("standard", "sk-"), ("subscription", "sk-sub-")])
def test_generated_keys_are_valid_and_typed(key_type: str, prefix: str) -> None:
    for _ in range(50):
        key = generate_key(key_type)
        assert key.startswith(prefix)
        tail = key[len(prefix) :]
        assert len(tail) == GENERATED_BODY_LEN
        assert GENERATED_BODY_LEN >= MIN_BODY_LEN
        assert set(tail) <= set(ALNUM)
        assert key_type_of(key) == key_type


def test_generated_standard_key_is_never_read_as_subscription() -> None:
    # A standard key's body could start with "sub" but never with "sub-".
    for _ in range(200):
        assert key_type_of(generate_key("standard")) == "standard"


@pytest.mark.parametrize("key_type", ["standard", "subscription"])
def test_generated_keys_are_unique(key_type: str) -> None:
    keys = {generate_key(key_type) for _ in range(2000)}
    assert len(keys) == 2000


def test_generated_keys_use_the_whole_alphabet() -> None:
    seen: set[str] = set()
    for _ in range(200):
        seen.update(generate_key("standard")[3:])
    # 200 * 48 draws from 62 symbols: every symbol shows up.
    assert seen == set(ALNUM)


@pytest.mark.parametrize("key", ["sk-" + body(32), "sk-sub-" + body(48), "sk-" + body(100)])
def test_hash_key_is_sha256_hex_of_whole_key(key: str) -> None:
    digest = hash_key(key)
    assert digest == hashlib.sha256(key.encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert key not in digest


def test_hash_key_covers_prefix_and_whole_body() -> None:
    tail = body(48)
    assert hash_key("sk-" + tail) != hash_key("sk-sub-" + tail)
    assert hash_key("sk-" + tail) != hash_key("sk-" + tail[:-1] + ("a" if tail[-1] != "a" else "b"))
    assert hash_key("sk-" + tail) != hash_key("sk-" + tail[:32])


def test_hash_key_is_deterministic() -> None:
    key = generate_key("standard")
    assert hash_key(key) == hash_key(key)


def test_hash_key_known_vector() -> None:
    key = "sk-" + "a" * 32
    assert hash_key(key) == hashlib.sha256(b"sk-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").hexdigest()


def test_generate_key_id_shape_and_uniqueness() -> None:
    ids = [generate_key_id() for _ in range(2000)]
    for key_id in ids:
        assert re.fullmatch(r"kg_[0-9a-f]{12}", key_id)
        assert key_type_of(key_id) is None  # an id is never usable as a key
    assert len(set(ids)) == len(ids)
