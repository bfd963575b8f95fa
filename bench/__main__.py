"""`python -m bench [--quick] [--out DIR]`: measure keyguard against the floor and the limit.

Writes <date>.json, <date>.md and <date>.png to bench/results/ (or DIR); a second run the
same day writes <date>-2.*. A full run takes 6-8 minutes on 2 CPUs; --quick runs every
section with fewer and shorter loads in under 30 s.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from pathlib import Path

from bench import report
from bench.plan import Plan, Progress
from bench.run import Run

RESULTS = Path(__file__).resolve().parent / "results"
TOOLS = ("h2load", "wrk", "redis-server")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (under 30 s)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output directory")
    parser.add_argument(
        "--flood-seconds",
        type=float,
        help="time allowed to the unknown-key flood (default 80, quick 2); about 400 s sends "
        "all 1,000,000 keys on 2 CPUs instead of extrapolating",
    )
    args = parser.parse_args(argv)

    import shutil

    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        print(f"bench: missing tools: {', '.join(missing)} (see tools/bootstrap.sh)")
        return 2
    progress = Progress()
    plan = Plan.fast() if args.quick else Plan.full()
    if args.flood_seconds is not None:
        plan = dataclasses.replace(plan, flood_seconds=args.flood_seconds)
    run = Run(plan, progress)
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so every process the run
    # started is stopped on the way out instead of being left behind.
    signal.signal(signal.SIGTERM, _stop)
    results = run.execute()
    results["targets"] = report.targets(results)
    paths = report.write(results, args.out)
    progress(f"wrote {paths['json']}, {paths['md'].name}, {paths['png'].name}")
    for t in results["targets"]:
        verdict = "PASS" if t["pass"] else "FAIL"
        progress(f"  {verdict}  {t['description']}: {t['value']:.2f} ({t['op']} {t['limit']:g})")
    return 0


def _stop(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
