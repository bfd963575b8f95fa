"""keyguard.keyring.values: the text forms of a key change."""

from __future__ import annotations

import pytest

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
