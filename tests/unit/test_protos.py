"""The wire contract: keyguard's protos match Envoy's, and the generated code is current."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.procs import REPO

GENERATED = REPO / "src" / "keyguard" / "_proto"


def _keyguard_names() -> list[str]:
    """Every message, enum and method keyguard declares, as kind:full_name."""
    code = (
        "import json, importlib\n"
        "from tests.support.describe_protos import MODULES\n"
        "names = []\n"
        "def walk(d):\n"
        "    names.append('message:' + d.full_name)\n"
        "    names.extend('enum:' + e.full_name for e in d.enum_types)\n"
        # Map entries too: their value field's type (Struct in filter_metadata) is contract.
        "    for n in d.nested_types:\n"
        "        walk(n)\n"
        "for mod in MODULES['keyguard']:\n"
        "    m = importlib.import_module(mod)\n"
        "    for d in m.DESCRIPTOR.message_types_by_name.values():\n"
        "        walk(d)\n"
        "    enums = m.DESCRIPTOR.enum_types_by_name.values()\n"
        "    names.extend('enum:' + e.full_name for e in enums)\n"
        "    for s in m.DESCRIPTOR.services_by_name.values():\n"
        "        names.extend('method:' + s.full_name + '.' + x.name for x in s.methods)\n"
        "print(json.dumps(names))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    return list(json.loads(out.stdout))


def _describe(side: str, names: list[str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "tests.support.describe_protos", side, *names],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return dict(json.loads(out.stdout))


def test_every_declared_field_matches_envoy_xds_protos() -> None:
    names = _keyguard_names()
    assert "message:envoy.service.auth.v3.CheckRequest" in names
    assert "method:envoy.service.auth.v3.Authorization.Check" in names
    assert "method:envoy.service.accesslog.v3.AccessLogService.StreamAccessLogs" in names
    assert "message:envoy.data.accesslog.v3.ResponseFlags" in names
    assert "message:envoy.config.core.v3.Metadata.FilterMetadataEntry" in names
    ours = _describe("keyguard", names)
    theirs = _describe("xds", names)
    checked = 0
    for name, mine in ours.items():
        official = theirs[name]
        if name.startswith("message:"):
            for field, spec in mine["fields"].items():
                assert field in official["fields"], f"{name}.{field} is not in Envoy's proto"
                assert spec == official["fields"][field], f"{name}.{field} differs from Envoy's"
                checked += 1
        elif name.startswith("enum:"):
            for value, number in mine["values"].items():
                assert official["values"].get(value) == number, f"{name}.{value} differs"
                checked += 1
        else:
            assert mine == official, f"{name} differs"
    # A sanity floor: the contract covers the fields the decision and settlement read.
    assert checked > 90


def test_generated_code_is_current(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "genprotos.py"), str(tmp_path)],
        check=True,
        cwd=REPO,
    )
    fresh = tmp_path / "keyguard" / "_proto"
    committed = sorted(
        p.relative_to(GENERATED)
        for p in GENERATED.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    regenerated = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    assert committed == regenerated, "make protos would add or remove files"
    differing = [
        str(p) for p in committed if not filecmp.cmp(GENERATED / p, fresh / p, shallow=False)
    ]
    assert not differing, f"make protos would change: {differing}; run `make protos` and commit"
