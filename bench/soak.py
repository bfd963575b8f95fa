"""Soak: a steady open-loop rate through Envoy for N minutes, watching keyguard for leaks.

    python -m bench.soak [--minutes 10] [--rate 200] [--out DIR]

Every 10 s it samples keyguard's RSS (/proc/PID/status VmRSS), its open file descriptors
(/proc/PID/fd) and threads, and the p50/p99 latency of the requests answered in the last
10 s (measured from each request's scheduled time). It writes soak-<date>.json and
soak-<date>.png to DIR (default bench/results) and reports the growth of RSS and FDs from
minute 2 to the end; runs of 10 minutes or more fail (exit 1) when either grows by 10% or
more.

The traffic mix exercises every path that could keep state: metered keys (Lua spend),
unlimited keys (batched usage), a rotating pool of unknown keys (the negative cache), a
disabled key and requests without a key, over both Authorization and x-api-key.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from bench._hardening import (
    RESULTS_DIR,
    Sample,
    Shot,
    chat_shot,
    fd_count,
    machine_note,
    messages_shot,
    open_loop,
    percentile,
    rss_kib,
    thread_count,
    write_json,
)
from bench.system import cpu_seconds
from harness.cli import random_key
from harness.stack import Stack, running_stack

GROWTH_LIMIT = 0.10  # the full run's bar: < 10% growth from minute 2 to the end
BASELINE_AT = 120.0  # "minute 2"
FULL_RUN_MINUTES = 10.0
UNKNOWN_POOL = 1000  # distinct unknown keys: the negative cache sees churn, bounded


@dataclass
class Traffic:
    metered: list[str]
    unlimited: list[str]
    unknown: list[str]
    disabled: str

    def shot(self, i: int) -> Shot:
        """Request i of the mix: 85% valid (half metered), 10% unknown, 3% disabled, 2% none."""
        slot = i % 100
        via_header = messages_shot if i % 3 == 0 else chat_shot
        if slot < 85:
            pool = self.metered if slot % 2 else self.unlimited
            return via_header("valid", pool[(i // 100) % len(pool)])
        if slot < 95:
            return via_header("unknown", self.unknown[(i * 7919) % len(self.unknown)])
        if slot < 98:
            return via_header("disabled", self.disabled)
        return chat_shot("missing", None)


def make_traffic(stack: Stack, valid_keys: int = 10) -> Traffic:
    metered = [stack.create_key("--quota", "1000000000")[1] for _ in range(valid_keys)]
    unlimited = [stack.create_key("--unlimited")[1] for _ in range(valid_keys)]
    disabled_id, disabled = stack.create_key("--quota", "10")
    stack.keys("disable", disabled_id)
    unknown = [random_key() for _ in range(UNKNOWN_POOL)]
    return Traffic(metered, unlimited, unknown, disabled)


EXPECTED = {
    "valid": {"200"},
    "unknown": {"401-invalid_api_key"},
    "disabled": {"401-key_disabled"},
    "missing": {"401-missing_api_key"},
}


@dataclass
class Window:
    """Samples answered since the last tick."""

    latencies: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)

    def add(self, sample: Sample) -> None:
        self.latencies.append(sample.latency)
        self.outcomes[f"{sample.kind}:{sample.outcome}"] += 1


@dataclass
class SoakRecorder:
    pid: int
    window: Window = field(default_factory=Window)
    points: list[dict[str, Any]] = field(default_factory=list)
    totals: Counter[str] = field(default_factory=Counter)
    unexpected: int = 0
    wrong_allows: int = 0  # a key that is not valid got a 200
    credential_forwarded: int = 0
    sent: int = 0
    last_cpu: tuple[float, float] | None = None  # (t, keyguard CPU seconds) at the last tick

    def sink(self, sample: Sample) -> None:
        self.sent += 1
        self.window.add(sample)
        self.totals[f"{sample.kind}:{sample.outcome}"] += 1
        if sample.outcome not in EXPECTED[sample.kind]:
            self.unexpected += 1
            if sample.status == 200:
                self.wrong_allows += 1
        if sample.credential_forwarded:
            self.credential_forwarded += 1

    def tick(self, t: float) -> None:
        window, self.window = self.window, Window()
        lat = window.latencies
        cpu = cpu_seconds(self.pid)
        cpu_pct = None
        if self.last_cpu is not None:
            cpu_pct = round((cpu - self.last_cpu[1]) / (t - self.last_cpu[0]) * 100, 1)
        self.last_cpu = (t, cpu)
        self.points.append(
            {
                "t": round(t, 1),
                "rss_kib": rss_kib(self.pid),
                "fds": fd_count(self.pid),
                "threads": thread_count(self.pid),
                "keyguard_cpu_pct": cpu_pct,
                "loadavg_1m": round(os.getloadavg()[0], 2),
                "answered": len(lat),
                "p50_ms": round(percentile(lat, 50) * 1000, 3) if lat else None,
                "p99_ms": round(percentile(lat, 99) * 1000, 3) if lat else None,
                "max_ms": round(max(lat) * 1000, 3) if lat else None,
                "outcomes": dict(window.outcomes),
            }
        )


def growth(points: list[dict[str, Any]], metric: str, baseline_at: float) -> dict[str, Any]:
    """Growth of `metric` from the first sample at or after `baseline_at` to the last one."""
    after = [p for p in points if p["t"] >= baseline_at - 0.5]
    if len(after) < 2:
        return {"baseline": None, "end": None, "growth": None, "peak_growth": None}
    base, end = after[0][metric], after[-1][metric]
    peak = max(p[metric] for p in after)
    return {
        "baseline_t": after[0]["t"],
        "baseline": base,
        "end": end,
        "growth": round((end - base) / base, 4),
        "peak": peak,
        "peak_growth": round((peak - base) / base, 4),
    }


def run_soak(
    minutes: float,
    rate: float,
    *,
    sample_every: float = 10.0,
    baseline_at: float | None = None,
    settle: float = 2.0,
    log: Any = print,
) -> dict[str, Any]:
    """Run the soak; returns the result document (does not write or assert anything)."""
    duration = minutes * 60
    if baseline_at is None:
        baseline_at = BASELINE_AT if duration > BASELINE_AT + 2 * sample_every else duration * 0.2
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    machine_before = machine_note()
    with running_stack() as stack:
        traffic = make_traffic(stack)
        pid = stack.keyguard_pid
        recorder = SoakRecorder(pid, last_cpu=(0.0, cpu_seconds(pid)))
        start_point = {"rss_kib": rss_kib(pid), "fds": fd_count(pid), "threads": thread_count(pid)}
        log(f"soak: {minutes} min at {rate} rps, keyguard pid {pid}, start {start_point}")

        def ticker(t: float) -> None:
            recorder.tick(t)
            p = recorder.points[-1]
            log(
                f"  t={p['t']:6.1f}s rss={p['rss_kib'] / 1024:6.1f} MiB fds={p['fds']:3d}"
                f" thr={p['threads']:3d} cpu={p['keyguard_cpu_pct']}% p50={p['p50_ms']} ms"
                f" p99={p['p99_ms']} ms n={p['answered']}"
            )

        result = asyncio.run(
            open_loop(
                stack.base_url,
                rate=rate,
                duration=duration,
                plan=traffic.shot,
                sink=recorder.sink,
                ticker=ticker,
                tick_every=sample_every,
            )
        )
        # After the load: let connections and buffers settle, then one more sample.
        time.sleep(settle)
        after_point = {"rss_kib": rss_kib(pid), "fds": fd_count(pid), "threads": thread_count(pid)}
        alive = stack.keyguard_alive() and stack.keyguard_pid == pid
        logs = stack.keyguard.logs()
    points = recorder.points
    doc: dict[str, Any] = {
        "kind": "soak",
        "started": started,
        "minutes": minutes,
        "rate": rate,
        "driver": result.driver,
        "driver_cpu_s": result.driver_cpu_s,
        "sample_every_s": sample_every,
        "planned": result.planned,
        "sent": recorder.sent,
        "skipped": result.skipped,
        "unexpected_outcomes": recorder.unexpected,
        "wrong_allows": recorder.wrong_allows,
        "envoy_503": sum(n for k, n in recorder.totals.items() if k.endswith(":503-envoy")),
        "credential_forwarded": recorder.credential_forwarded,
        "totals": dict(sorted(recorder.totals.items())),
        "keyguard": {
            "pid_unchanged_and_alive": alive,
            "start": start_point,
            "after_load": after_point,
            "log_check_failed_lines": logs.count('"check_failed"'),
            "log_traceback_lines": logs.count("Traceback"),
        },
        "growth": {
            "rss_kib": growth(points, "rss_kib", baseline_at),
            "fds": growth(points, "fds", baseline_at),
            "threads": growth(points, "threads", baseline_at),
        },
        "p99_ms": {
            "median_of_windows": _median([p["p99_ms"] for p in points]),
            "max_of_windows": max((p["p99_ms"] for p in points if p["p99_ms"]), default=None),
        },
        "machine": {"before": machine_before, "after": machine_note()},
        "points": points,
    }
    return doc


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def verdict(doc: dict[str, Any], limit: float = GROWTH_LIMIT) -> dict[str, bool]:
    rss, fds = doc["growth"]["rss_kib"]["growth"], doc["growth"]["fds"]["growth"]
    return {
        "keyguard_alive": bool(doc["keyguard"]["pid_unchanged_and_alive"]),
        "no_wrong_allows": doc["wrong_allows"] == 0,
        "no_credential_forwarded": doc["credential_forwarded"] == 0,
        "rss_growth_below_limit": rss is not None and rss < limit,
        "fd_growth_below_limit": fds is not None and fds < limit,
    }


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = doc["points"]
    minutes = [p["t"] / 60 for p in points]
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    series = [
        ("keyguard RSS\n(MiB)", [p["rss_kib"] / 1024 for p in points]),
        ("keyguard\nopen FDs", [p["fds"] for p in points]),
        ("p99 latency\nlast 10 s (ms)", [p["p99_ms"] for p in points]),
        ("machine load\naverage (1 min)", [p.get("loadavg_1m") for p in points]),
    ]
    for ax, (label, values) in zip(axes, series, strict=True):
        ax.plot(minutes, values, marker=".", linewidth=1)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if label.startswith("keyguard"):
            ax.set_ylim(bottom=0, top=max(v for v in values) * 1.25 if values else 1)
        if label.startswith("p99"):
            ax.set_yscale("log")
    base_t = doc["growth"]["rss_kib"].get("baseline_t")
    if base_t is not None:
        for ax in axes:
            ax.axvline(base_t / 60, color="grey", linestyle="--", linewidth=0.8)
    axes[-1].set_xlabel("minutes")
    fig.suptitle(
        f"keyguard soak: {doc['rate']:g} rps through Envoy for {doc['minutes']:g} min\n"
        f"(RSS growth {_pct(doc['growth']['rss_kib']['growth'])},"
        f" FD growth {_pct(doc['growth']['fds']['growth'])} from the dashed line)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:+.1f}%"


def summary_markdown(doc: dict[str, Any], checks: dict[str, bool], png: str) -> str:
    g = doc["growth"]
    rss, fds = g["rss_kib"], g["fds"]
    lines = [
        f"# keyguard soak, {doc['started']}",
        "",
        f"{doc['rate']:g} rps through Envoy for {doc['minutes']:g} min ({doc['sent']} requests,"
        f" {doc['skipped']} skipped); driver: {doc['driver']}.",
        "",
        "| metric | at minute 2 | end | growth | peak growth |",
        "|---|---:|---:|---:|---:|",
        f"| keyguard RSS | {_mib(rss['baseline'])} | {_mib(rss['end'])} |"
        f" {_pct(rss['growth'])} | {_pct(rss['peak_growth'])} |",
        f"| keyguard open FDs | {fds['baseline']} | {fds['end']} | {_pct(fds['growth'])} |"
        f" {_pct(fds['peak_growth'])} |",
        "",
        f"p99 latency per 10 s window: median {doc['p99_ms']['median_of_windows']} ms,"
        f" worst {doc['p99_ms']['max_of_windows']} ms. Machine load average (1 min) per"
        f" window: median {_median([p.get('loadavg_1m') for p in doc['points']])},"
        f" max {max((p.get('loadavg_1m') or 0 for p in doc['points']), default=None)}"
        f" on {doc['machine']['before']['cpus']} CPUs.",
        f"Requests skipped (driver at its in-flight cap of 512, i.e. the stack stalled):"
        f" {doc['skipped']}.",
        f"Wrong allows: {doc['wrong_allows']}. Other unexpected answers:"
        f" {doc['unexpected_outcomes'] - doc['wrong_allows']}, of which"
        f" {doc['envoy_503']} were Envoy's fail-closed 503 (ext_authz timeout, 0.25 s)."
        f" keyguard alive with the same pid: {doc['keyguard']['pid_unchanged_and_alive']}.",
        "",
        "| check | result |",
        "|---|---|",
        *[f"| {name} | {'pass' if ok else 'FAIL'} |" for name, ok in checks.items()],
        "",
        f"![soak]({png})",
        "",
    ]
    return "\n".join(lines)


def _mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every `finally`: processes stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=FULL_RUN_MINUTES)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 120 or not 0 < args.rate <= 5000:
        parser.error("--minutes must be in (0, 120] and --rate in (0, 5000]")
    signal.signal(signal.SIGTERM, _on_sigterm)

    doc = run_soak(args.minutes, args.rate)
    checks = verdict(doc)
    full = args.minutes >= FULL_RUN_MINUTES
    if not full:  # growth is only judged on full runs
        checks = {k: v for k, v in checks.items() if "growth" not in k}
    doc["checks"] = checks
    stamp = time.strftime("%Y-%m-%d-%H%M")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"soak-{stamp}.png"
    plot(doc, png)
    write_json(out / f"soak-{stamp}.json", doc)
    (out / f"soak-{stamp}.md").write_text(summary_markdown(doc, checks, png.name))
    print(summary_markdown(doc, checks, png.name))
    print(f"wrote {out / f'soak-{stamp}.json'}, {png}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
