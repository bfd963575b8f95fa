"""`python -m bench.faults`: run the fault scenarios and write their report."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

import bench.faults
from bench._hardening import RESULTS_DIR, machine_note, write_json
from bench.faults.common import FULL, MODES, QUICK, STALL_PAUSE_S
from bench.faults.keyguard_restart import run_keyguard_restart
from bench.faults.quota_race import run_quota_race
from bench.faults.store_outage import run_store_outage
from bench.faults.summary import collect_checks, summary_markdown

DESCRIPTION = (bench.faults.__doc__ or "").splitlines()[0]


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every `finally`: processes stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=DESCRIPTION)
    parser.add_argument("--quick", action="store_true", help="short CI variant")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--only",
        default="outage,restart,race",
        help="comma-separated scenarios: outage, restart, race, stall (deny-mode outage with"
        " keyguard paused 0.4 s every second; not in the default set)",
    )
    parser.add_argument("--modes", default=",".join(MODES), help="store-error modes to run")
    args = parser.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not only <= {"outage", "restart", "race", "stall"} or not set(modes) <= set(MODES):
        parser.error("unknown scenario or mode")
    signal.signal(signal.SIGTERM, _on_sigterm)
    cfg = QUICK if args.quick else FULL
    doc: dict[str, Any] = {
        "kind": "faults",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "config": asdict(cfg),
        "driver": "python asyncio, raw HTTP/1.1 keep-alive connections, open loop",
        "machine": {"before": machine_note()},
    }
    if "outage" in only:
        doc["store_outage"] = {mode: run_store_outage(mode, cfg) for mode in modes}
    if "restart" in only:
        doc["keyguard_restart"] = run_keyguard_restart(cfg)
    if "race" in only:
        doc["quota_race"] = run_quota_race(cfg)
    if "stall" in only:
        doc["stall_outage"] = run_store_outage("deny", cfg, stall=STALL_PAUSE_S)
    doc["machine"]["after"] = machine_note()
    doc["checks"] = collect_checks(doc)
    doc["passed"] = all(doc["checks"].values())
    stamp = time.strftime("%Y-%m-%d")
    name = f"faults-quick-{stamp}" if args.quick else f"faults-{stamp}"
    out: Path = args.out
    write_json(out / f"{name}.json", doc)
    md = summary_markdown(doc)
    (out / f"{name}.md").write_text(md)
    print(md)
    print(f"wrote {out / (name + '.json')} and {name}.md")
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
