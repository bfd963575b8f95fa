"""The `keyguard` command: `serve`, `health`, `keys …`, `plans …`, `prices …`, `admin …` and
`audit`.

A thin layer: ``argtypes`` validates every argument before anything is touched,
``keys`` and ``prices`` call the management core (``keyguard.keyring``), ``render``
prints.
Bad input gets a one-line error and a non-zero exit, and changes nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import redis.exceptions

from keyguard import __version__
from keyguard.cli.admin import add_admin_parsers
from keyguard.cli.alerts import add_alerts_parser
from keyguard.cli.keys import add_keys_parser
from keyguard.cli.plans import add_plans_parser
from keyguard.cli.prices import add_prices_parser
from keyguard.cli.serve import add_serve_parsers
from keyguard.errors import EXIT_RUNTIME, EXIT_USAGE, KeyguardError
from keyguard.settings import Settings, mask_url


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="keyguard", description="Envoy ext_authz API-key guard for LLM APIs.")
    parser.add_argument("--version", action="version", version=f"keyguard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_serve_parsers(sub)
    add_keys_parser(sub, _Parser)
    add_prices_parser(sub, _Parser)
    add_plans_parser(sub, _Parser)
    add_admin_parsers(sub, _Parser)
    add_alerts_parser(sub, _Parser)
    return parser


def _redis_failed(args: argparse.Namespace, exc: Exception) -> int:
    url = getattr(args, "redis_url", None) or os.environ.get(
        "KEYGUARD_REDIS_URL", Settings().redis_url
    )
    print(
        f"keyguard: error: Redis failed ({type(exc).__name__}: {exc}) at {mask_url(url)}",
        file=sys.stderr,
    )
    return EXIT_RUNTIME


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyguardError as exc:
        print(f"keyguard: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (redis.exceptions.RedisError, OSError) as exc:
        return _redis_failed(args, exc)
    except KeyboardInterrupt:
        return 130
    return code
