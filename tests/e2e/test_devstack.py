"""`make run` (tools/devstack.py): every curl line it prints gets the status it announces."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness.paths import DEFAULT_CONFIG, MULTIWORKER_CONFIG, REPO, UNIX_CONFIG
from harness.stack import render_free

DEVSTACK = REPO / "tools" / "devstack.py"
RAW_KEY = re.compile(r"sk-(?:sub-)?[A-Za-z0-9]{32,}")


def run_devstack_check(config: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    args = [
        sys.executable,
        str(DEVSTACK),
        "--envoy-config",
        str(config),
        "--redis-port",
        "0",
        "--metrics-port",
        "0",
        "--check",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGTERM lets devstack stop its own children (they run in their own process groups).
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        pytest.fail(f"devstack --check timed out:\n{out}")
    return subprocess.CompletedProcess(args, proc.returncode, out, "")


@pytest.mark.e2e
@pytest.mark.parametrize(
    "source",
    [DEFAULT_CONFIG, UNIX_CONFIG, MULTIWORKER_CONFIG],
    ids=["tcp", "unix", "multiworker"],
)
def test_devstack_check_passes(source: Path, tmp_path: Path) -> None:
    config = render_free(source, tmp_path)
    result = run_devstack_check(config)
    # Only the deliberately unknown demo key may appear in full.
    leaked = {k for k in RAW_KEY.findall(result.stdout) if set(k[3:]) != {"0"}}
    assert not leaked, "devstack --check printed a raw key"
    assert result.returncode == 0, result.stdout
    checks = [line for line in result.stdout.splitlines() if line.startswith(("ok ", "FAIL"))]
    assert len(checks) >= 9 and all(line.startswith("ok ") for line in checks), result.stdout
    # Each check announces its status in a printed curl line.
    assert result.stdout.count("# expect ") == len(checks)
    # One printed command per check: a plain curl, or a loop around one.
    commands = result.stdout.count("\ncurl ") + result.stdout.count("\nfor i in ")
    assert commands == len(checks)
    # `make run` shows token metering: the demo key's balance drops by what the one
    # request's usage costs at the demo prices.
    metering = re.search(
        r"cost (\d+) credits at the demo prices; KG_DEMO_KEY's balance went (\d+) -> (\d+)",
        result.stdout,
    )
    assert metering is not None, result.stdout
    cost, before, after = (int(g) for g in metering.groups())
    assert cost > 0 and before - after == cost
    # `make run` starts the admin API and dashboard too, with a first admin token
    # (masked in --check output, which may land in CI logs).
    assert "admin API: ok" in result.stdout, result.stdout
    assert re.search(r"^admin +http://127\.0\.0\.1:\d+/ ", result.stdout, re.M), result.stdout
    token_line = next(line for line in result.stdout.splitlines() if line.startswith("admin token"))
    assert "…" in token_line and len(token_line.split()[2]) < 20
