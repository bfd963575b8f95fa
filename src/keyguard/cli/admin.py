"""`keyguard admin serve`, `keyguard admin tokens …` and `keyguard audit`.

The admin server itself is ``keyguard.admin``; tokens are ``admin.auth.TokenStore`` and
the trail is ``keyguard.audit.Audit``: each command calls one of them and prints.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from keyguard.audit import Audit, parse_since
from keyguard.errors import InvalidChange
from keyguard.settings import load
from keyguard.store.connect import SyncClient, sync_client

Command = Callable[[argparse.Namespace], int]


def _client(args: argparse.Namespace) -> SyncClient:
    overrides = {"redis_url": args.redis_url} if args.redis_url else {}
    return sync_client(load(overrides=overrides))


def cmd_serve(args: argparse.Namespace) -> int:
    from keyguard.admin.app import run
    from keyguard.admin.settings import load_admin

    overrides = {
        name: value
        for name in ("listen", "max_body", "redis_url")
        if (value := getattr(args, name, None)) is not None
    }
    run(load_admin(overrides=overrides))
    return 0


def _tokens(args: argparse.Namespace) -> Any:
    from keyguard.admin.auth import TokenStore

    return TokenStore(_client(args))


def cmd_tokens_create(args: argparse.Namespace) -> int:
    created = _tokens(args).create(args.role, args.name or "")
    if args.json:
        print(json.dumps({**created.info, "token": created.token}))
    else:
        print(
            f"Created {args.role} token {created.info['id']}. Store it now; it is shown"
            f" only once:\n\n  {created.token}\n"
        )
    return 0


def cmd_tokens_list(args: argparse.Namespace) -> int:
    infos = _tokens(args).list()
    if args.json:
        print(json.dumps(infos))
        return 0
    print(f"{'ID':17} {'ROLE':7} {'CREATED':21} NAME")
    for info in infos:
        print(f"{info['id']:17} {info['role']:7} {info['created_at'] or '-':21} {info['name']}")
    return 0


def cmd_tokens_revoke(args: argparse.Namespace) -> int:
    _tokens(args).revoke(args.id)
    print(json.dumps({"id": args.id, "revoked": True}) if args.json else f"token {args.id} revoked")
    return 0


def _since(text: str) -> int:
    try:
        return parse_since(text)
    except InvalidChange as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_audit(args: argparse.Namespace) -> int:
    audit = Audit(_client(args))
    entries: list[dict[str, Any]] = []
    cursor = None
    while True:  # the stream is bounded (MAXLEN ~), so is this
        page, cursor = audit.read(target=args.key, since_ms=args.since, after=cursor, limit=1000)
        entries += page
        if cursor is None:
            break
    if args.limit:
        entries = entries[-args.limit :]
    if args.json:
        print(json.dumps(entries))
        return 0
    for entry in entries:
        fields = " ".join(f"{name}={json.dumps(value)}" for name, value in entry["fields"].items())
        line = f"{entry['time']}  {entry['actor']}  {entry['action']}  {entry['target']}"
        print(f"{line}  {fields}".rstrip())
    return 0


def _positive(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number greater than 0")
    return int(text)


def add_admin_parsers(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """``keyguard admin …`` and ``keyguard audit``, under the top-level subparsers."""
    admin = sub.add_parser("admin", help="the admin HTTP API and its tokens")
    asub = admin.add_subparsers(dest="admin_command", required=True, parser_class=parser_class)

    serve = asub.add_parser("serve", help="run the admin HTTP API (one for the whole fleet)")
    serve.add_argument("--listen", help="HOST:PORT (env KEYGUARD_ADMIN_LISTEN, 127.0.0.1:8080)")
    serve.add_argument(
        "--max-body", help="largest request body in bytes (env KEYGUARD_ADMIN_MAX_BODY, 65536)"
    )
    serve.add_argument("--redis-url", help="default: env KEYGUARD_REDIS_URL")
    serve.set_defaults(func=cmd_serve)

    tokens = asub.add_parser("tokens", help="manage admin API tokens")
    tokens.add_argument("--redis-url", help="default: env KEYGUARD_REDIS_URL")
    tsub = tokens.add_subparsers(dest="tokens_command", required=True, parser_class=parser_class)

    def add(name: str, func: Command, help_text: str) -> Any:
        p = tsub.add_parser(name, help=help_text)
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("--redis-url", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.set_defaults(func=func)
        return p

    create = add("create", cmd_tokens_create, "create a token and print it once")
    create.add_argument("--role", required=True, choices=("admin", "viewer"))
    create.add_argument("--name", help="a label for people")
    add("list", cmd_tokens_list, "list tokens (never the tokens themselves)")
    revoke = add("revoke", cmd_tokens_revoke, "revoke a token at once")
    revoke.add_argument("id", help="the token's id (kgt_…)")

    audit = sub.add_parser("audit", help="the audit trail of changes (keys, prices, tokens)")
    audit.add_argument("--key", help="only changes to this key id, model pattern or token id")
    audit.add_argument(
        "--since", type=_since, help="1h, 7d, 2027-01-31, 2027-01-31T12:00:00Z or epoch seconds"
    )
    audit.add_argument("--limit", type=_positive, help="only the last N entries")
    audit.add_argument("--json", action="store_true", help="print JSON")
    audit.add_argument("--redis-url", help="default: env KEYGUARD_REDIS_URL")
    audit.set_defaults(func=cmd_audit)
