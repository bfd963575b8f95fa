"""The `keyguard` command: `serve`, `health`, and `keys …` for operators.

Bad input gets a one-line error and a non-zero exit, and changes nothing:
every argument is validated before Redis is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import redis.exceptions

from keyguard import __version__
from keyguard.keys import generate_key, generate_key_id, hash_key
from keyguard.policy import parse_duration
from keyguard.record import (
    STATUS_ACTIVE,
    STATUS_DISABLED,
    TYPE_STANDARD,
    TYPE_SUBSCRIPTION,
    parse_networks,
)
from keyguard.settings import ENV_NAMES, Settings, SettingsError, load, mask_url
from keyguard.startup import StartupError

EXIT_RUNTIME = 1
EXIT_USAGE = 2
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,255}$")
ALL = "*"


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# ----- argument types: each raises ArgumentTypeError with a clear message ---------------


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative; use 0 or more")
    return value


def _pos_int(text: str) -> int:
    value = _nonneg_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def _models(text: str) -> str:
    if text.strip() == ALL:
        return ""
    items = [item.strip() for item in text.split(",")]
    for item in items:
        if not _MODEL_NAME.match(item):
            raise argparse.ArgumentTypeError(
                f"bad model name {item!r}: use a comma list such as gpt-4o,claude-3-5-haiku"
                " (or '*' for all models)"
            )
    return ",".join(dict.fromkeys(items))


def _ips(text: str) -> str:
    if text.strip() == ALL:
        return ""
    try:
        nets = parse_networks(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"bad IP or CIDR in {text!r} ({exc}); use e.g. 10.0.0.0/8,2001:db8::1 (or '*' for any)"
        ) from None
    return ",".join(str(n) for n in nets)


def _expires(text: str) -> str:
    value = text.strip()
    if value.lower() == "never":
        return ""
    if value.startswith("+"):
        try:
            seconds = parse_duration(value[1:])
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return str(int(time.time()) + seconds)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad date {text!r}: use YYYY-MM-DD, an ISO date-time such as 2027-01-31T12:00:00Z,"
            " +30d, or never"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # dates without a zone are UTC
    stamp = when.timestamp()
    if stamp <= time.time():
        raise argparse.ArgumentTypeError(f"expiry {text!r} is in the past")
    return str(int(stamp))


def _duration(text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# ----- presentation ------------------------------------------------------------------------


def _iso(stamp: str) -> str | None:
    if not stamp:
        return None
    return datetime.fromtimestamp(float(stamp), tz=UTC).isoformat().replace("+00:00", "Z")


def _fmt_seconds(seconds: int) -> str:
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def describe(raw: dict[str, str]) -> dict[str, Any]:
    """A key record for people and scripts. It never contains the key."""
    unlimited = raw.get("unlimited") == "1"
    out: dict[str, Any] = {
        "id": raw.get("id"),
        "name": raw.get("name", ""),
        "type": raw.get("type"),
        "status": raw.get("status"),
        "created_at": _iso(raw.get("created_at", "")),
        "expires_at": _iso(raw.get("expires_at", "")),
        "models": raw["models"].split(",") if raw.get("models") else None,
        "allowed_ips": raw["allowed_ips"].split(",") if raw.get("allowed_ips") else None,
        "unlimited": unlimited,
        "remaining": None if unlimited else int(raw.get("remaining") or 0),
        "used": int(raw.get("used") or 0),
        "payg": raw.get("payg") == "1",
        "payg_used": int(raw.get("payg_used") or 0),
        "rpm": int(raw.get("rpm") or 0) or None,
    }
    if raw.get("type") == TYPE_SUBSCRIPTION:
        out["cycle"] = _fmt_seconds(int(raw.get("cycle_seconds") or 0))
        out["cycle_quota"] = int(raw.get("cycle_quota") or 0)
        out["cycle_used"] = int(raw.get("cycle_used") or 0)
        out["cycle_end"] = _iso(raw.get("cycle_end", ""))
    return out


def _print_record(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(info))
        return
    for name, value in info.items():
        if isinstance(value, list):
            value = ",".join(value)
        print(f"{name:12} {'-' if value is None else value}")


# ----- commands ----------------------------------------------------------------------------


def _admin(args: argparse.Namespace) -> Any:
    from keyguard.store.admin import KeyAdmin
    from keyguard.store.connect import sync_client

    overrides = {"redis_url": args.redis_url} if args.redis_url else {}
    settings = load(overrides=overrides)
    return KeyAdmin(sync_client(settings)), settings


def _fields_from_options(args: argparse.Namespace, creating: bool, key_type: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    if args.name is not None:
        fields["name"] = args.name
    if args.models is not None:
        fields["models"] = args.models
    if args.allowed_ips is not None:
        fields["allowed_ips"] = args.allowed_ips
    if args.expires is not None:
        fields["expires_at"] = args.expires
    if args.payg is not None:
        fields["payg"] = "1" if args.payg else "0"
    if args.rpm is not None:
        fields["rpm"] = str(args.rpm)
    if args.unlimited:
        if key_type == TYPE_SUBSCRIPTION:
            raise CliError("a subscription key has a cycle quota; --unlimited is for standard keys")
        fields["unlimited"] = "1"
    if args.quota is not None:
        if key_type == TYPE_SUBSCRIPTION:
            fields["cycle_quota"] = str(args.quota)
            if creating:
                fields["remaining"] = str(args.quota)
        else:
            fields["remaining"] = str(args.quota)
            fields["unlimited"] = "0"
    if args.cycle is not None:
        if key_type != TYPE_SUBSCRIPTION:
            raise CliError("--cycle is for subscription keys (--type subscription)")
        fields["cycle_seconds"] = str(args.cycle)
    return fields


def cmd_create(args: argparse.Namespace) -> int:
    key_type = args.type
    if args.quota is not None and args.unlimited:
        raise CliError("use either --quota or --unlimited, not both")
    if key_type == TYPE_SUBSCRIPTION and (args.quota is None or args.cycle is None):
        raise CliError("a subscription key needs --quota N (per cycle) and --cycle (e.g. 30d)")
    fields = _fields_from_options(args, creating=True, key_type=key_type)
    now = int(time.time())
    key = generate_key(key_type)
    key_id = generate_key_id()
    record = {
        "id": key_id,
        "name": "",
        "type": key_type,
        "status": STATUS_ACTIVE,
        "created_at": str(now),
        "expires_at": "",
        "models": "",
        "allowed_ips": "",
        "unlimited": "1" if args.quota is None and key_type == TYPE_STANDARD else "0",
        "remaining": "0",
        "used": "0",
        "payg": "0",
        "payg_used": "0",
        "rpm": "0",
        **fields,
    }
    if key_type == TYPE_SUBSCRIPTION:
        record["cycle_used"] = "0"
        record["cycle_end"] = str(now + int(record["cycle_seconds"]))
    admin, _ = _admin(args)
    admin.create(hash_key(key), record)
    info = describe(record)
    if args.json:
        print(json.dumps({**info, "key": key}))
    else:
        print(f"Created key {key_id}. Store it now; it is shown only once:\n\n  {key}\n")
        _print_record(info, False)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    admin, _ = _admin(args)
    infos = [describe(raw) for raw in admin.list()]
    if args.json:
        print(json.dumps(infos))
        return 0
    print(f"{'ID':16} {'TYPE':12} {'STATUS':9} {'REMAINING':>10} {'USED':>10} NAME")
    for info in infos:
        remaining = "unlimited" if info["remaining"] is None else info["remaining"]
        print(
            f"{info['id']:16} {info['type']:12} {info['status']:9} {remaining!s:>10}"
            f" {info['used']:>10} {info['name']}"
        )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    admin, _ = _admin(args)
    _print_record(describe(admin.get(args.id)[1]), args.json)
    return 0


def _set_status(args: argparse.Namespace, status: str) -> int:
    admin, _ = _admin(args)
    info = describe(admin.update(args.id, {"status": status}))
    if args.json:
        print(json.dumps(info))
    else:
        print(f"key {args.id} {status}")
    return 0


def cmd_disable(args: argparse.Namespace) -> int:
    return _set_status(args, STATUS_DISABLED)


def cmd_enable(args: argparse.Namespace) -> int:
    return _set_status(args, STATUS_ACTIVE)


def cmd_revoke(args: argparse.Namespace) -> int:
    admin, _ = _admin(args)
    admin.revoke(args.id)
    print(json.dumps({"id": args.id, "revoked": True}) if args.json else f"key {args.id} revoked")
    return 0


def cmd_topup(args: argparse.Namespace) -> int:
    admin, _ = _admin(args)
    _, raw = admin.get(args.id)
    if raw.get("unlimited") == "1":
        raise CliError(f"key {args.id} is unlimited; top-up applies to keys with a quota")
    _print_record(describe(admin.topup(args.id, args.amount)), args.json)
    return 0


_SET_OPTIONS = (
    "name", "quota", "cycle", "models", "allowed_ips", "expires", "payg", "rpm",
)  # fmt: skip


def cmd_set(args: argparse.Namespace) -> int:
    if args.quota is not None and args.unlimited:
        raise CliError("use either --quota or --unlimited, not both")
    if not args.unlimited and all(getattr(args, name) is None for name in _SET_OPTIONS):
        raise CliError("nothing to change: give at least one option")
    admin, _ = _admin(args)
    _, raw = admin.get(args.id)
    fields = _fields_from_options(args, creating=False, key_type=raw.get("type", TYPE_STANDARD))
    if not fields:
        raise CliError("nothing to change: give at least one option")
    _print_record(describe(admin.update(args.id, fields)), args.json)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    overrides = {
        name: value
        for name in ENV_NAMES.values()
        if (value := getattr(args, name, None)) is not None
    }
    settings = load(overrides=overrides)
    if settings.workers > 1 and "KEYGUARD__WORKER_INDEX" not in os.environ:
        from keyguard.workers import run_workers

        return run_workers(settings)
    from keyguard.server import run

    run(settings)
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = args.target
    if args.tls_ca:
        with open(args.tls_ca, "rb") as handle:
            ca = handle.read()
        cert = key = None
        if args.tls_cert:  # for a listener that requires client certificates (mTLS)
            with open(args.tls_cert, "rb") as handle:
                cert = handle.read()
            with open(args.tls_key or args.tls_cert, "rb") as handle:
                key = handle.read()
        creds = grpc.ssl_channel_credentials(ca, private_key=key, certificate_chain=cert)
        channel = grpc.secure_channel(target, creds)
    else:
        channel = grpc.insecure_channel(target)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(
            health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
        )
    except grpc.RpcError as exc:
        print(f"keyguard health: {target}: {exc.code().name}", file=sys.stderr)
        return EXIT_RUNTIME
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else EXIT_RUNTIME


# ----- parser ------------------------------------------------------------------------------


def _key_options(parser: argparse.ArgumentParser, creating: bool) -> None:
    parser.add_argument("--name", help="a label for people")
    if creating:
        parser.add_argument(
            "--type", choices=[TYPE_STANDARD, TYPE_SUBSCRIPTION], default=TYPE_STANDARD
        )
    quota = parser.add_mutually_exclusive_group()
    quota.add_argument(
        "--quota",
        type=_nonneg_int,
        help="units left (standard) or units per cycle (subscription)",
    )
    quota.add_argument("--unlimited", action="store_true", help="no quota (standard keys)")
    parser.add_argument("--cycle", type=_duration, help="billing cycle, e.g. 30d, 1h, 5s")
    parser.add_argument("--models", type=_models, help="allowed models: a,b ('*' = all)")
    parser.add_argument(
        "--allowed-ips", type=_ips, help="allowed client IPs/CIDRs: a,b ('*' = any)"
    )
    parser.add_argument(
        "--expires", type=_expires, help="YYYY-MM-DD or ISO date-time (UTC), +30d, or never"
    )
    parser.add_argument(
        "--payg",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pay-as-you-go once the quota is used up",
    )
    parser.add_argument("--rpm", type=_nonneg_int, help="requests per minute (0 = no limit)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="keyguard", description="Envoy ext_authz API-key guard for LLM APIs.")
    parser.add_argument("--version", action="version", version=f"keyguard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = sub.add_parser("serve", help="run the ext_authz gRPC server")
    for env_suffix, name in ENV_NAMES.items():
        default = getattr(Settings(), name)
        shown = ",".join(default) if isinstance(default, tuple) else default
        serve.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            metavar="VALUE",
            help=f"env KEYGUARD_{env_suffix} (default: {shown})",
        )
    serve.set_defaults(func=cmd_serve)

    health = sub.add_parser("health", help="ask a running server's gRPC health service")
    health.add_argument("--target", default="127.0.0.1:9001", help="HOST:PORT or unix:PATH")
    health.add_argument("--service", default="", help="service name to ask about")
    health.add_argument("--timeout", type=float, default=2.0)
    health.add_argument("--tls-ca", help="CA file when the server uses TLS")
    health.add_argument("--tls-cert", help="client certificate, for an mTLS listener")
    health.add_argument("--tls-key", help="client key, for an mTLS listener")
    health.set_defaults(func=cmd_health)

    keys = sub.add_parser("keys", help="manage API keys")
    keys.add_argument("--redis-url", help="default: env KEYGUARD_REDIS_URL")
    ksub = keys.add_subparsers(dest="keys_command", required=True, parser_class=_Parser)

    def add(name: str, func: Any, help_text: str, with_id: bool = True) -> argparse.ArgumentParser:
        p = ksub.add_parser(name, help=help_text)
        if with_id:
            p.add_argument("id", help="the key's public id (kg_…)")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("--redis-url", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.set_defaults(func=func)
        return p

    create = add("create", cmd_create, "create a key and print it once", with_id=False)
    _key_options(create, creating=True)
    add("list", cmd_list, "list keys", with_id=False)
    add("show", cmd_show, "show a key's settings and usage (never the key)")
    add("disable", cmd_disable, "disable a key (reversible)")
    add("enable", cmd_enable, "enable a disabled key")
    add("revoke", cmd_revoke, "delete a key for good")
    topup = add("topup", cmd_topup, "add quota to a key")
    topup.add_argument("amount", type=_pos_int)
    setp = add("set", cmd_set, "change a key's settings")
    _key_options(setp, creating=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"keyguard: error: {exc}", file=sys.stderr)
        return exc.code
    except SettingsError as exc:
        print(f"keyguard: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StartupError as exc:
        print(f"keyguard: error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except LookupError as exc:  # UnknownKeyId
        print(f"keyguard: error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except (redis.exceptions.RedisError, OSError) as exc:
        url = getattr(args, "redis_url", None) or os.environ.get(
            "KEYGUARD_REDIS_URL", Settings().redis_url
        )
        print(
            f"keyguard: error: Redis failed ({type(exc).__name__}: {exc}) at {mask_url(url)}",
            file=sys.stderr,
        )
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return 130
