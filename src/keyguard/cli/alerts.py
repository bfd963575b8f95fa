"""`keyguard alerts list`: the low-balance alerts settlement recorded, oldest first."""

from __future__ import annotations

import argparse
import json
from typing import Any

from keyguard.cli import argtypes
from keyguard.keyring.alerts import alerts_with_state
from keyguard.settings import load
from keyguard.store.connect import sync_client


def cmd_list(args: argparse.Namespace) -> int:
    overrides = {"redis_url": args.redis_url} if args.redis_url else {}
    client = sync_client(load(overrides=overrides))
    items, _ = alerts_with_state(client, key_id=args.key, limit=args.limit)
    if args.json:
        print(json.dumps(items))
        return 0
    if not items:
        print("no alerts")
        return 0
    print(f"{'AT':24} {'KEY':16} {'REMAINING':>12} {'THRESHOLD':>12} NOW")
    for item in items:
        now = "below" if item["below_now"] else "back above"
        print(
            f"{item['at']:24} {item['key_id']:16} {item['remaining']:>12}"
            f" {item['threshold']:>12} {now}"
        )
    return 0


def add_alerts_parser(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    alerts = sub.add_parser("alerts", help="low-balance alerts")
    alerts.add_argument("--redis-url", help="default: env KEYGUARD_REDIS_URL")
    asub = alerts.add_subparsers(dest="alerts_command", required=True, parser_class=parser_class)
    listp = asub.add_parser("list", help="the alerts recorded, oldest first")
    listp.add_argument("--key", help="only this key id's")
    listp.add_argument("--limit", type=argtypes.pos_int, default=100, help="at most this many")
    listp.add_argument("--json", action="store_true", help="print JSON")
    listp.add_argument("--redis-url", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    listp.set_defaults(func=cmd_list)
