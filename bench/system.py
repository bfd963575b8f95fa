"""What the machine and the processes under test are doing: /proc readers and tool versions."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from harness.envoy import envoy_binary
from harness.process import children

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name is in parentheses and may contain spaces.
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int, include_children: bool = False) -> float:
    """utime + stime of a process (all its threads, dead ones included), in seconds."""
    fields = _stat_fields(pid)
    ticks = int(fields[11]) + int(fields[12])
    total = ticks / CLK_TCK
    if include_children:
        for child in children(pid):
            with contextlib.suppress(OSError):  # a worker that just exited
                total += cpu_seconds(child)
    return total


def rss_bytes(pid: int) -> int:
    """Resident set size from /proc/PID/statm."""
    resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return resident * PAGE


@dataclass
class CpuMeter:
    """CPU seconds of one or more processes between start() and stop()."""

    pids: list[int]
    include_children: bool = False
    _start: float = 0.0

    def _total(self) -> float:
        return sum(cpu_seconds(pid, self.include_children) for pid in self.pids)

    def start(self) -> None:
        self._start = self._total()

    def stop(self) -> float:
        return self._total() - self._start


def loadavg() -> str:
    """1, 5 and 15 minute load averages: other work on the machine adds noise."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (user, nice, system, irq, softirq)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / CLK_TCK


def children_cpu_seconds() -> float:
    """CPU time of this process's finished, waited-for children (h2load, wrk)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class OtherLoad:
    """CPU that processes outside the measurement used meanwhile: the noise indicator.

    machine busy time - (the measured processes + our finished load generators).
    """

    def __init__(self, pids: list[int]) -> None:
        self.meter = CpuMeter(pids, include_children=True)

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.busy0 = machine_busy_seconds()
        self.kids0 = children_cpu_seconds()
        self.meter.start()

    def stop(self) -> float:
        """Other work, in percent of one CPU, averaged over the measurement."""
        ours = self.meter.stop() + children_cpu_seconds() - self.kids0
        other = machine_busy_seconds() - self.busy0 - ours
        wall = time.monotonic() - self.t0
        return max(0.0, other / wall * 100.0) if wall > 0 else 0.0


def _first_line(cmd: list[str]) -> str:
    exe = shutil.which(cmd[0]) if not os.path.isabs(cmd[0]) else cmd[0]
    if not exe:
        return "not installed"
    try:
        out = subprocess.run(
            [exe, *cmd[1:]], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({type(exc).__name__})"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0].strip() if text else "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, object]:
    import grpc
    from google.protobuf import __version__ as protobuf_version
    from google.protobuf.internal import api_implementation

    import keyguard

    envoy = _first_line([str(envoy_binary()), "--version"])
    match = re.search(r"/(\d+\.\d+\.\d+)/", envoy)
    redis_line = _first_line(["redis-server", "--version"])
    redis_match = re.search(r"v=(\S+)", redis_line)
    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "grpcio": grpc.__version__,
        "protobuf": protobuf_version,
        "protobuf_backend": api_implementation.Type(),
        "keyguard": keyguard.__version__,
        "envoy": match.group(1) if match else envoy,
        "envoy_build": envoy,
        "redis": redis_match.group(1) if redis_match else redis_line,
        "wrk": _first_line(["wrk", "--version"]).split(" [")[0],
        "h2load": _first_line(["h2load", "--version"]),
        "cpu_count": os.cpu_count() or 0,
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
    }
