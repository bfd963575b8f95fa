"""The `keyguard` command: as a subprocess (`run_cli`), or `keys` in-process (fast)."""

from __future__ import annotations

import io
import json
import os
import secrets
import string
import subprocess
import sys
from collections.abc import Mapping
from contextlib import redirect_stdout
from typing import Any

from harness.paths import VENV_BIN


def keyguard_cmd() -> list[str]:
    exe = VENV_BIN / "keyguard"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "keyguard"]


def run_cli(
    *args: str, redis_url: str, check: bool = False, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "KEYGUARD_REDIS_URL": redis_url, **(env or {})}
    return subprocess.run(
        [*keyguard_cmd(), *args],
        capture_output=True,
        text=True,
        env=full_env,
        check=check,
        timeout=60,
    )


def keys_cli(redis_url: str, *args: str) -> tuple[int, str]:
    """`keyguard keys ARGS` in-process: (exit status, stdout). stderr is not captured."""
    from keyguard.cli import main

    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["keys", "--redis-url", redis_url, *args])
    return code, out.getvalue()


def create_key(redis_url: str, *options: str) -> dict[str, Any]:
    """`keyguard keys create --json OPTIONS` in-process; returns the printed JSON."""
    code, out = keys_cli(redis_url, "create", "--json", *options)
    if code != 0:
        # Not the output: it may hold a freshly made key.
        raise RuntimeError(f"keyguard keys create {' '.join(options)} exited with {code}")
    return dict(json.loads(out))


def random_key(prefix: str = "sk-") -> str:
    """A well-formed key that no store holds."""
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(40))
