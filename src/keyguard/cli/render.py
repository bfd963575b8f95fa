"""How the CLI prints: a record as aligned lines or JSON, the key list, the price
table and a key's usage history as tables."""

from __future__ import annotations

import json
from typing import Any


def print_record(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(info))
        return
    width = max((len(name) for name in info), default=0)
    for name, value in info.items():
        if isinstance(value, list):
            value = ",".join(value)
        elif isinstance(value, dict):  # meta: JSON, unambiguous whatever the values hold
            value = json.dumps(value, ensure_ascii=False) if value else None
        print(f"{name:{width}} {'-' if value is None else value}")


def print_created(key: str, info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps({**info, "key": key}))
        return
    print(f"Created key {info['id']}. Store it now; it is shown only once:\n\n  {key}\n")
    print_record(info, False)


def print_key_table(infos: list[dict[str, Any]]) -> None:
    env_width = max([len("ENV"), *(len(info.get("env") or "-") for info in infos)])
    owner_width = max([len("OWNER"), *(len(info.get("owner") or "-") for info in infos)])
    print(
        f"{'ID':16} {'TYPE':12} {'STATUS':9} {'REMAINING':>10} {'USED':>10}"
        f" {'ENV':{env_width}} {'OWNER':{owner_width}} NAME"
    )
    for info in infos:
        remaining = "unlimited" if info["remaining"] is None else info["remaining"]
        print(
            f"{info['id']:16} {info['type']:12} {info['status']:9} {remaining!s:>10}"
            f" {info['used']:>10} {info.get('env') or '-':{env_width}}"
            f" {info.get('owner') or '-':{owner_width}} {info['name']}"
        )


USAGE_COLUMNS = (
    ("REQUESTS", "requests"),
    ("INPUT", "input_tokens"),
    ("OUTPUT", "output_tokens"),
    ("CACHED", "cached_tokens"),
    ("CREDITS", "credits"),
)


def print_usage(rows: list[dict[str, Any]]) -> None:
    """A key's usage history (``Keyring.usage``'s days), oldest first, with a total."""
    if not rows:
        print("no usage yet")
        return
    width = max([len("MODEL"), *(len(row["model"]) for row in rows)])
    counts = [[str(row[name]) for _, name in USAGE_COLUMNS] for row in rows]
    totals = [str(sum(row[name] for row in rows)) for _, name in USAGE_COLUMNS]
    cell = max([12, *(len(c) for c in totals)])
    print(f"{'DATE':10} {'MODEL':{width}} " + " ".join(f"{t:>{cell}}" for t, _ in USAGE_COLUMNS))
    for row, cells in zip(rows, counts, strict=True):
        print(f"{row['date']:10} {row['model']:{width}} " + " ".join(f"{c:>{cell}}" for c in cells))
    if len(rows) > 1:
        print(f"{'total':10} {'':{width}} " + " ".join(f"{c:>{cell}}" for c in totals))


PRICE_COLUMNS = ("input", "output", "cached_input", "cache_write", "per_request", "max_output")


def print_price_table(infos: list[dict[str, Any]]) -> None:
    """Prices as a table: credits per 1M tokens, per request, and the output tokens held."""
    width = max([len("MODEL"), *(len(info["model"]) for info in infos)])
    print(f"{'MODEL':{width}} " + " ".join(f"{name.upper():>12}" for name in PRICE_COLUMNS))
    for info in infos:
        cells = ("-" if info[name] is None else str(info[name]) for name in PRICE_COLUMNS)
        print(f"{info['model']:{width}} " + " ".join(f"{cell:>12}" for cell in cells))
