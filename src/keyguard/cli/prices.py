"""`keyguard prices …`: each command calls one ``PriceEditor`` method and prints its
answer; the amounts go to the core as text, where they are validated."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from keyguard.cli.render import print_price_table, print_record
from keyguard.keyring.prices import PriceEditor, fields_from_text, price_info
from keyguard.settings import load
from keyguard.store.connect import sync_client

Command = Callable[[argparse.Namespace], int]

# Option → price field; every amount is whole credits (per 1M tokens unless noted).
AMOUNT_OPTIONS = {
    "input": "per 1M uncached input tokens",
    "output": "per 1M output tokens",
    "cached_input": "per 1M input tokens read from a prompt cache (default: --input)",
    "cache_write": "per 1M input tokens written to a prompt cache (default: --input)",
    "per_request": "per request, on top (default 0)",
    "max_output": "output tokens to hold for when a request sets no limit",
}


def _book(args: argparse.Namespace) -> PriceEditor:
    overrides = {"redis_url": args.redis_url} if args.redis_url else {}
    return PriceEditor(sync_client(load(overrides=overrides)))


def cmd_set(args: argparse.Namespace) -> int:
    fields = fields_from_text({name: getattr(args, name) for name in AMOUNT_OPTIONS})
    price = _book(args).set(args.model, fields)
    print_record(price_info(args.model, price), args.json)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    prices = _book(args).prices()
    if args.json:  # the import format: `prices list --json > prices.json` round-trips
        print(json.dumps({pattern: asdict(price) for pattern, price in prices.items()}))
    else:
        print_price_table([price_info(pattern, price) for pattern, price in prices.items()])
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    print_record(price_info(args.model, _book(args).get(args.model)), args.json)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    _book(args).remove(args.model)
    if args.json:
        print(json.dumps({"model": args.model, "removed": True}))
    else:
        print(f"price for {args.model} removed")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    table, removed = _book(args).import_file(args.file, merge=args.merge)
    if args.json:
        print(json.dumps({"imported": sorted(table), "removed": removed, "merge": args.merge}))
        return 0
    how = "merged into the table" if args.merge else "the table replaced"
    print(f"imported {len(table)} price(s) from {args.file}, {how}")
    if removed:
        print(f"removed {len(removed)}: {', '.join(removed)}")
    return 0


def add_prices_parser(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """``keyguard prices …`` and its subcommands, under ``sub`` (the top-level subparsers)."""
    prices = sub.add_parser("prices", help="manage the model price table (shared by all servers)")
    prices.add_argument("--redis-url", help="default: env KEYGUARD_REDIS_URL")
    psub = prices.add_subparsers(dest="prices_command", required=True, parser_class=parser_class)

    def add(name: str, func: Command, help_text: str) -> Any:
        p = psub.add_parser(name, help=help_text)
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("--redis-url", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.set_defaults(func=func)
        return p

    model_help = "a model name, a prefix ending in '*' (gpt-4o*), or '*' for the default price"
    setp = add("set", cmd_set, "set (or replace) the price of a model pattern")
    setp.add_argument("model", help=model_help)
    for name, help_text in AMOUNT_OPTIONS.items():
        required = name in ("input", "output")
        setp.add_argument(
            "--" + name.replace("_", "-"), metavar="N", required=required, help=help_text
        )
    add("list", cmd_list, "list the price table")
    show = add("show", cmd_show, "show the price of a model pattern")
    show.add_argument("model", help=model_help)
    remove = add("remove", cmd_remove, "remove the price of a model pattern")
    remove.add_argument("model", help=model_help)
    imp = add("import", cmd_import, "replace the price table with a YAML or JSON file")
    imp.add_argument(
        "file", help="YAML or JSON (.json): {model: {input: N, output: N, ...}}; - = stdin"
    )
    imp.add_argument(
        "--merge",
        action="store_true",
        help="keep the prices of models the file does not name",
    )
