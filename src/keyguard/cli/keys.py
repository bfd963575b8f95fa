"""`keyguard keys …`: each command parses nothing itself (argparse did, through
``cli.argtypes``), calls one ``Keyring`` method and prints its answer."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from keyguard.cli import argtypes
from keyguard.cli.plans import key_plan_arg
from keyguard.cli.render import print_created, print_key_table, print_record, print_usage
from keyguard.keyring import KEY_TYPES, KeyChange, Keyring
from keyguard.record import TYPE_STANDARD, TYPE_SUBSCRIPTION
from keyguard.settings import load
from keyguard.store.connect import sync_client

Command = Callable[[argparse.Namespace], int]


def _keyring(args: argparse.Namespace) -> Keyring:
    overrides = {"redis_url": args.redis_url} if args.redis_url else {}
    return Keyring(sync_client(load(overrides=overrides)))


def _change(args: argparse.Namespace) -> KeyChange:
    return KeyChange(
        name=args.name,
        quota=args.quota,
        unlimited=args.unlimited,
        cycle=args.cycle,
        models=args.models,
        allowed_ips=args.allowed_ips,
        expires=args.expires,
        payg=args.payg,
        rpm=args.rpm,
        tpm=args.tpm,
        env=args.env,
        owner=args.owner,
        meta=tuple(args.meta) if args.meta else None,
        alert_below=args.alert_below,
        plan=args.plan,
    )


def cmd_create(args: argparse.Namespace) -> int:
    change = _change(args)
    # A key on a plan is a subscription key: --type may be left out then.
    key_type = args.type or (TYPE_SUBSCRIPTION if args.plan else TYPE_STANDARD)
    created = _keyring(args).create(key_type, change)
    print_created(created.key, created.info, args.json)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    infos = _keyring(args).list(env=args.env, owner=args.owner)
    if args.json:
        print(json.dumps(infos))
    else:
        print_key_table(infos)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    print_record(_keyring(args).show(args.id), args.json)
    return 0


def _set_status(args: argparse.Namespace, enabled: bool) -> int:
    info = _keyring(args).set_status(args.id, enabled)
    if args.json:
        print(json.dumps(info))
    else:
        print(f"key {args.id} {info['status']}")
    return 0


def cmd_disable(args: argparse.Namespace) -> int:
    return _set_status(args, enabled=False)


def cmd_enable(args: argparse.Namespace) -> int:
    return _set_status(args, enabled=True)


def cmd_revoke(args: argparse.Namespace) -> int:
    _keyring(args).revoke(args.id)
    print(json.dumps({"id": args.id, "revoked": True}) if args.json else f"key {args.id} revoked")
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    history = _keyring(args).usage(args.id, args.days)
    if args.json:
        print(json.dumps(history))
    else:
        print_usage(history["days"])
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    rotated = _keyring(args).rotate(args.id, args.grace)
    if args.json:
        print(
            json.dumps(
                {"id": args.id, "key": rotated.key, "grace_until": rotated.info.get("grace_until")}
            )
        )
    else:
        until = rotated.info.get("grace_until")
        print(
            f"Rotated key {args.id}. Store the new key now; it is shown only once:\n\n"
            f"  {rotated.key}\n\nThe previous key works until {until}."
        )
    return 0


def cmd_topup(args: argparse.Namespace) -> int:
    print_record(_keyring(args).topup(args.id, args.amount), args.json)
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    print_record(_keyring(args).edit(args.id, _change(args)), args.json)
    return 0


def _key_options(parser: argparse.ArgumentParser, creating: bool) -> None:
    parser.add_argument("--name", help="a label for people")
    if creating:
        parser.add_argument(
            "--type", choices=KEY_TYPES, help="standard (default) or subscription (with --plan)"
        )
    parser.add_argument(
        "--plan",
        type=key_plan_arg,
        help="the plan the key follows (its quota, cycle, models, limits, payg)"
        + ("" if creating else "; moves the key ('' = off its plan, keeping its settings)"),
    )
    quota = parser.add_mutually_exclusive_group()
    quota.add_argument(
        "--quota",
        type=argtypes.nonneg_int,
        help="units left (standard) or units per cycle (subscription)",
    )
    quota.add_argument("--unlimited", action="store_true", help="no quota (standard keys)")
    parser.add_argument("--cycle", type=argtypes.duration, help="billing cycle, e.g. 30d, 1h, 5s")
    parser.add_argument("--models", type=argtypes.models, help="allowed models: a,b ('*' = all)")
    parser.add_argument(
        "--allowed-ips", type=argtypes.allowed_ips, help="allowed client IPs/CIDRs: a,b ('*' = any)"
    )
    parser.add_argument(
        "--expires",
        type=argtypes.expires,
        help="YYYY-MM-DD or ISO date-time (UTC), +30d, or never",
    )
    parser.add_argument(
        "--payg",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pay-as-you-go once the quota is used up",
    )
    parser.add_argument(
        "--rpm", type=argtypes.nonneg_int, help="requests per minute (0 = no limit)"
    )
    parser.add_argument("--tpm", type=argtypes.nonneg_int, help="tokens per minute (0 = no limit)")
    parser.add_argument(
        "--alert-below",
        type=argtypes.alert_below,
        help="low-balance alert: credits (50000) or a percentage of the quota (10%%); 0 = none",
    )
    parser.add_argument(
        "--env", type=argtypes.env, help="the key's environment, e.g. live, test ('' = none)"
    )
    parser.add_argument(
        "--owner", type=argtypes.owner, help="who the key belongs to, e.g. team-a ('' = none)"
    )
    parser.add_argument(
        "--meta",
        type=argtypes.meta_item,
        action="append",
        metavar="KEY=VALUE",
        help="a label (repeatable; at most 16 per key); KEY= removes KEY",
    )


def add_keys_parser(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """``keyguard keys …`` and its subcommands, under ``sub`` (the top-level subparsers)."""
    keys = sub.add_parser("keys", help="manage API keys")
    keys.add_argument("--redis-url", help="default: env KEYGUARD_REDIS_URL")
    ksub = keys.add_subparsers(dest="keys_command", required=True, parser_class=parser_class)

    def add(name: str, func: Command, help_text: str, with_id: bool = True) -> Any:
        p = ksub.add_parser(name, help=help_text)
        if with_id:
            p.add_argument("id", help="the key's public id (kg_…)")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("--redis-url", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.set_defaults(func=func)
        return p

    create = add("create", cmd_create, "create a key and print it once", with_id=False)
    _key_options(create, creating=True)
    listp = add("list", cmd_list, "list keys", with_id=False)
    listp.add_argument("--env", type=argtypes.env, help="only keys with this env ('' = none)")
    listp.add_argument("--owner", type=argtypes.owner, help="only keys with this owner ('' = none)")
    add("show", cmd_show, "show a key's settings and usage (never the key)")
    add("disable", cmd_disable, "disable a key (reversible)")
    add("enable", cmd_enable, "enable a disabled key")
    add("revoke", cmd_revoke, "delete a key for good")
    usage = add("usage", cmd_usage, "a key's usage per day and model")
    usage.add_argument(
        "--days", type=argtypes.pos_int, default=30, help="the last N UTC days (1-366; 30)"
    )
    rotate = add("rotate", cmd_rotate, "give a key a new secret, the old one working for --grace")
    rotate.add_argument(
        "--grace",
        type=argtypes.grace,
        default=0,
        help="how long the previous secret keeps working: 24h, 30m, 0 (default: 0, at once)",
    )
    topup = add("topup", cmd_topup, "add quota to a key")
    topup.add_argument("amount", type=argtypes.pos_int)
    setp = add("set", cmd_set, "change a key's settings")
    _key_options(setp, creating=False)
