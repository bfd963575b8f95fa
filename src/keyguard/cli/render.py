"""How the CLI prints: a record as aligned lines or JSON, the key list and the price
table as tables."""

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
        print(f"{name:{width}} {'-' if value is None else value}")


def print_created(key: str, info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps({**info, "key": key}))
        return
    print(f"Created key {info['id']}. Store it now; it is shown only once:\n\n  {key}\n")
    print_record(info, False)


def print_key_table(infos: list[dict[str, Any]]) -> None:
    print(f"{'ID':16} {'TYPE':12} {'STATUS':9} {'REMAINING':>10} {'USED':>10} NAME")
    for info in infos:
        remaining = "unlimited" if info["remaining"] is None else info["remaining"]
        print(
            f"{info['id']:16} {info['type']:12} {info['status']:9} {remaining!s:>10}"
            f" {info['used']:>10} {info['name']}"
        )


PRICE_COLUMNS = ("input", "output", "cached_input", "cache_write", "per_request", "max_output")


def print_price_table(infos: list[dict[str, Any]]) -> None:
    """Prices as a table: credits per 1M tokens, per request, and the output tokens held."""
    width = max([len("MODEL"), *(len(info["model"]) for info in infos)])
    print(f"{'MODEL':{width}} " + " ".join(f"{name.upper():>12}" for name in PRICE_COLUMNS))
    for info in infos:
        cells = ("-" if info[name] is None else str(info[name]) for name in PRICE_COLUMNS)
        print(f"{info['model']:{width}} " + " ".join(f"{cell:>12}" for cell in cells))
