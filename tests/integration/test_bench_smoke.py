"""`python -m bench --quick` runs end to end and writes well-formed results.

This checks the harness, not the figures: no timing thresholds here.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import report
from harness.paths import REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        any(shutil.which(tool) is None for tool in ("h2load", "wrk", "redis-server")),
        reason="the benchmark needs h2load (nghttp2-client), wrk and redis-server",
    ),
]

DECISION_SETUPS = (
    "floor",
    "floor_4k",
    "b_unlimited_cost0",
    "b_unlimited_cost1",
    "b_unlimited_cost0_nolog",
    "c_quota_rpm",
    "c_tokens_hold",
    "d_models_4k",
)
E2E_SETUPS = ("none", "api_key_auth", "floor", "keyguard_tcp", "keyguard_unix")
TARGETS = (
    "b_cpu",
    "c_cpu",
    "c_tokens_cpu",
    "d_cpu",
    "e2e_rps",
    "p99_1000rps",
    "flood_rss",
    "flood_lookups",
    "metering_rps",
    "metering_spend_calls",
    "metering_settle_calls",
)


def positive(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def assert_positive(section: dict[str, Any], *names: str, where: str) -> None:
    for name in names:
        assert positive(section.get(name)), f"{where}.{name} = {section.get(name)!r}"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"bench --quick failed:\n{proc.stdout[-4000:]}\n{proc.stderr}"
    files = sorted(out.glob("*.json"))
    assert len(files) == 1, f"expected one JSON result, found {files}"
    return json.loads(files[0].read_text()), files[0]


def test_writes_json_markdown_and_chart(quick_run: tuple[dict[str, Any], Path]) -> None:
    results, json_path = quick_run
    stem = json_path.stem
    assert stem == results["date"]
    md = json_path.with_name(f"{stem}.md")
    png = json_path.with_name(f"{stem}.png")
    assert md.is_file() and "## Targets" in md.read_text()
    assert png.is_file() and png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert png.stat().st_size > 10_000


def test_records_versions(quick_run: tuple[dict[str, Any], Path]) -> None:
    env = quick_run[0]["environment"]
    for name in ("python", "grpcio", "protobuf", "protobuf_backend", "envoy", "redis"):
        assert isinstance(env[name], str) and env[name] and env[name] != "unknown", name
    for tool in ("wrk", "h2load"):
        assert tool in env[tool].lower()
    assert positive(env["cpu_count"])
    assert quick_run[0]["mode"] == "quick"


def test_decision_cpu_section(quick_run: tuple[dict[str, Any], Path]) -> None:
    section = quick_run[0]["decision_cpu"]
    assert set(section) == set(DECISION_SETUPS)
    for name in DECISION_SETUPS:
        row = section[name]
        assert_positive(row, "checks", "cpu_us_per_check", "rps", "payload_bytes", where=name)
        assert "grpc-status OK" in row["verified"]
        if name.startswith(("b_", "c_", "d_")):
            assert "keyguard_decisions_total" in row["verified"]
    # The quota setups are the ones with a Redis call per Check.
    assert positive(section["c_quota_rpm"]["redis_calls_per_check"])
    assert positive(section["c_tokens_hold"]["redis_calls_per_check"])
    assert "with a hold in dynamic_metadata" in section["c_tokens_hold"]["verified"]


def test_unknown_key_flood_section(quick_run: tuple[dict[str, Any], Path]) -> None:
    flood = quick_run[0]["unknown_key_flood"]
    assert_positive(
        flood,
        "distinct_keys",
        "checks",
        "cpu_us_per_check",
        "redis_lookups",
        "redis_lookups_per_distinct_key",
        "rss_start_mb",
        "rss_max_mb",
        "rss_end_mb",
        "rss_projected_1m_mb",
        "negative_entry_bytes",
        where="unknown_key_flood",
    )
    assert flood["checks"] > flood["distinct_keys"]  # some keys were repeated
    assert "Python" in flood["driver"]
    assert isinstance(flood["projected"], bool) and flood["note"]


def test_end_to_end_and_fixed_rate_sections(quick_run: tuple[dict[str, Any], Path]) -> None:
    results = quick_run[0]
    assert set(results["e2e"]) == set(E2E_SETUPS)
    for name, row in results["e2e"].items():
        assert_positive(row, "rps", "p50_ms", "p99_ms", "requests", where=f"e2e.{name}")
        # Counts only: a loaded machine may time out a Check (503); that is not a harness bug.
        assert isinstance(row["non_2xx"], int) and row["non_2xx"] >= 0
        assert "good key 200" in row["verified"]
    for name in ("api_key_auth", "keyguard_tcp"):
        row = results["fixed_rate"][name]
        assert_positive(
            row, "p50_ms", "p99_ms", "p999_ms", "achieved_rps", where=f"fixed_rate.{name}"
        )
        assert row["rate"] == 1000
        assert isinstance(row["non_200"], int) and isinstance(row["failed"], int)
    assert results["fixed_rate_tool"]


def test_metering_section(quick_run: tuple[dict[str, Any], Path]) -> None:
    meter = quick_run[0]["metering"]
    for name in ("metering_off", "metering_on"):
        row = meter[name]
        assert_positive(
            row,
            "rps",
            "requests",
            "keyguard_cpu_us_per_request",
            "envoy_cpu_us_per_request",
            "spend_calls",
            "redis_scripts",
            where=f"metering.{name}",
        )
        assert "good key 200" in row["verified"]
        assert isinstance(row["problems"], list)
    # Metering on settles what it held; off never settles anything.
    assert positive(meter["metering_on"]["settle_calls"])
    assert meter["metering_off"]["settle_calls"] == 0
    assert positive(meter["metering_on"]["used_delta"])
    assert positive(meter["rps_ratio"]) and positive(meter["keyguard_cpu_ratio"])


def test_workers_section(quick_run: tuple[dict[str, Any], Path]) -> None:
    workers = quick_run[0]["workers"]
    for count in ("1", "2"):
        assert_positive(workers[count], "rps", "cpu_us_per_check", where=f"workers.{count}")
    assert positive(workers["speedup"])


def test_targets_are_ratios_with_verdicts(quick_run: tuple[dict[str, Any], Path]) -> None:
    targets = {t["id"]: t for t in quick_run[0]["targets"]}
    assert set(targets) == set(TARGETS)
    for tid, target in targets.items():
        assert isinstance(target["pass"], bool), tid
        assert math.isfinite(target["value"]) and positive(target["limit"]), tid
        assert target["op"] in ("<=", ">=", "<")


def test_a_second_run_the_same_day_keeps_the_first(
    quick_run: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    results, _ = quick_run
    first = report.write(results, tmp_path)
    before = first["json"].read_bytes()
    second = report.write(results, tmp_path)
    assert first["json"].stem == results["date"]
    assert {p.stem for p in second.values()} == {results["date"] + "-2"}
    assert first["json"].read_bytes() == before
    assert all(p.is_file() for p in second.values())


def test_the_settlement_design_comparison_runs_and_checks_what_it_measured(
    tmp_path: Path,
) -> None:
    """`python -m bench.settlement_designs`: both designs through Envoy, every request
    allowed, and the ext_proc probe read a hold id and usage from every response."""
    out = tmp_path / "designs.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.settlement_designs", "--rounds", "1",
         "--requests", "400", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(out.read_text())["summary"]
    for design in ("a", "b"):
        assert summary[design]["ok"] == 400
        assert summary[design]["rounds_with_problems"] == 0
        assert positive(summary[design]["rps"]) and positive(summary[design]["keyguard_us"])
    assert summary["a"]["usage_read"] == summary["a"]["with_hold"] == 400
    assert summary["b"]["streams"] == 0  # design (b) never opens an ext_proc stream
    assert positive(summary["rps_a_over_b"])
