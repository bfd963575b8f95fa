"""The README is the user's manual: it must name every setting, reason and metric."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from keyguard.reasons import OUTCOMES
from keyguard.runtime.metrics import Metrics
from keyguard.settings import ENV_NAMES
from tests.support.procs import REPO

README = (REPO / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table() -> None:
    missing = [f"KEYGUARD_{suffix}" for suffix in ENV_NAMES if f"`KEYGUARD_{suffix}`" not in README]
    assert not missing, f"README's configuration table lacks {missing}"


def test_every_reason_code_is_documented() -> None:
    missing = [r.value for r in OUTCOMES if f"`{r.value}`" not in README]
    assert not missing


def test_every_metric_is_documented() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    names = set()
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        names.add(name)
    missing = sorted(n for n in names if f"`{n}`" not in README)
    assert not missing


def test_quick_start_names_the_two_commands() -> None:
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "make run" in quick and "make test" in quick
