"""`keyguard plans …`: each command calls one ``Plans`` method and prints its answer."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from keyguard.cli import argtypes
from keyguard.cli.render import print_record
from keyguard.errors import InvalidChange
from keyguard.keyring import values
from keyguard.keyring.plans import PlanChange, Plans
from keyguard.settings import load
from keyguard.store.connect import sync_client

Command = Callable[[argparse.Namespace], int]


def _plan_name_arg(text: str) -> str:
    try:
        return values.plan_name(text)
    except InvalidChange as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def key_plan_arg(text: str) -> str:
    """``keys create/set --plan NAME`` ('' on set: take the key off its plan)."""
    try:
        return values.key_plan(text)
    except InvalidChange as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_plan_name_arg.__name__ = "plan_name"  # argparse names the type in its messages
key_plan_arg.__name__ = "plan_name"


def _plans(args: argparse.Namespace) -> Plans:
    overrides = {"redis_url": args.redis_url} if args.redis_url else {}
    return Plans(sync_client(load(overrides=overrides)))


def _change(args: argparse.Namespace) -> PlanChange:
    return PlanChange(
        quota=args.quota,
        cycle=args.cycle,
        models=args.models,
        rpm=args.rpm,
        tpm=args.tpm,
        payg=args.payg,
        alert_below=args.alert_below,
    )


def print_plan_table(infos: list[dict[str, Any]]) -> None:
    width = max([len("NAME"), *(len(info["name"]) for info in infos)])
    print(
        f"{'NAME':{width}} {'QUOTA':>12} {'CYCLE':>6} {'RPM':>8} {'TPM':>10} {'PAYG':5}"
        f" {'KEYS':>6} MODELS"
    )
    for info in infos:
        models = ",".join(info["models"]) if info["models"] else "*"
        print(
            f"{info['name']:{width}} {info['quota']:>12} {info['cycle']:>6}"
            f" {info['rpm'] or '-'!s:>8} {info['tpm'] or '-'!s:>10}"
            f" {'yes' if info['payg'] else 'no':5} {info['keys']:>6} {models}"
        )


def cmd_create(args: argparse.Namespace) -> int:
    print_record(_plans(args).create(args.name, _change(args)), args.json)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    infos = _plans(args).list()
    if args.json:
        print(json.dumps(infos))
    elif infos:
        print_plan_table(infos)
    else:
        print("no plans yet")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    print_record(_plans(args).show(args.name), args.json)
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    print_record(_plans(args).edit(args.name, _change(args)), args.json)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    _plans(args).delete(args.name)
    print(
        json.dumps({"name": args.name, "deleted": True})
        if args.json
        else f"plan {args.name} deleted"
    )
    return 0


def _plan_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quota", type=argtypes.nonneg_int, help="units per cycle")
    parser.add_argument("--cycle", type=argtypes.duration, help="billing cycle, e.g. 30d, 1h, 5s")
    parser.add_argument("--models", type=argtypes.models, help="allowed models: a,b ('*' = all)")
    parser.add_argument(
        "--rpm", type=argtypes.nonneg_int, help="requests per minute (0 = no limit)"
    )
    parser.add_argument("--tpm", type=argtypes.nonneg_int, help="tokens per minute (0 = no limit)")
    parser.add_argument(
        "--alert-below",
        type=argtypes.alert_below,
        help="low-balance alert for the plan's keys: credits or N%% of the quota; 0 = none",
    )
    parser.add_argument(
        "--payg",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pay-as-you-go once the cycle quota is used up",
    )


def add_plans_parser(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """``keyguard plans …`` and its subcommands, under ``sub`` (the top-level subparsers)."""
    plans = sub.add_parser("plans", help="manage plans: settings that subscription keys follow")
    plans.add_argument("--redis-url", help="default: env KEYGUARD_REDIS_URL")
    psub = plans.add_subparsers(dest="plans_command", required=True, parser_class=parser_class)

    def add(name: str, func: Command, help_text: str, with_name: bool = True) -> Any:
        p = psub.add_parser(name, help=help_text)
        if with_name:
            p.add_argument("name", type=_plan_name_arg, help="the plan's name, e.g. pro")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("--redis-url", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.set_defaults(func=func)
        return p

    _plan_options(add("create", cmd_create, "create a plan (needs --quota and --cycle)"))
    add("list", cmd_list, "list plans", with_name=False)
    add("show", cmd_show, "show a plan's settings and how many keys follow it")
    _plan_options(add("set", cmd_set, "change a plan and every key on it"))
    add("delete", cmd_delete, "delete a plan that no key follows")
