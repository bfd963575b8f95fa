"""One started process: its log file, its readiness wait, and a stop by its own pid.

Every launcher in this package is a `Child`. Nothing is ever signalled by name: a child
stops the process it started (and, for `keyguard serve --workers N`, the workers of that
process), so a suite or a benchmark can never touch someone else's server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


class StartError(RuntimeError):
    """A process did not come up; the message says which and why."""


@dataclass(frozen=True)
class RunOptions:
    """How children run. The defaults suit tests and benchmarks; `make run` changes all three.

    log_dir: write `<name>.log` there and keep it (default: a temp file removed on close).
    own_group: start each child in its own process group, so a terminal's Ctrl-C reaches
        only the launcher, which then stops the children in order.
    abort: set (e.g. by a signal handler) to give up any readiness wait in progress.
    """

    log_dir: Path | None = None
    own_group: bool = False
    abort: threading.Event | None = None


DEFAULT_RUN = RunOptions()


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`; a no-op for a process that has exited."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def children(pid: int) -> list[int]:
    """Direct children of a process (e.g. the workers of `keyguard serve --workers 2`)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            found.extend(int(c) for c in (task / "children").read_text().split())
    return sorted(set(found))


class Child:
    """A process started by a launcher. Subclasses say what to run and when it is ready."""

    def __init__(self, name: str, run: RunOptions = DEFAULT_RUN) -> None:
        self.name = name
        self.run = run
        if run.log_dir is not None:
            self.log_path = run.log_dir / f"{name}.log"
        else:
            self.log_path = Path(tempfile.mkstemp(prefix=f"kg-{name}-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                list(args),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                process_group=0 if self.run.own_group else None,
            )

    def wait_ready(self, ready: Callable[[], bool], timeout: float, what: str = "") -> None:
        """Poll `ready` until true; fails at once if the process exits or abort is set."""
        what = what or self.name
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.run.abort is not None and self.run.abort.is_set():
                raise StartError(f"interrupted while waiting for {what}")
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise StartError(f"{what} exited with status {code} while starting:\n{self.tail()}")
            with contextlib.suppress(OSError):
                if ready():
                    return
            time.sleep(0.02)
        raise StartError(f"{what} not ready after {timeout:g}s:\n{self.tail()}")

    def terminate(self) -> None:
        """Send SIGTERM without waiting (see stop_together)."""
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def reap(self, timeout: float = 10.0) -> None:
        """Wait for the exit, SIGKILL after `timeout`; the child can be started again."""
        if self.proc is not None:
            try:
                self.proc.wait(timeout=max(0.1, timeout))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def stop(self, timeout: float = 10.0) -> None:
        self.terminate()
        self.reap(timeout)

    def kill(self) -> None:
        """SIGKILL (no drain, no flush), like an OOM kill."""
        if self.running():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 15) -> str:
        text = self.logs().splitlines()[-lines:]
        return f"--- {self.name} log (last {len(text)} lines)\n" + "\n".join(text)

    def close(self) -> None:
        """Stop, and remove the log unless it was asked for in a log_dir."""
        self.stop()
        if self.run.log_dir is None:
            self.log_path.unlink(missing_ok=True)


def stop_together(started: Iterable[Child], timeout: float = 15.0) -> None:
    """SIGTERM every child first, then wait for each: stopping N servers takes one grace
    period, not N. Later children are signalled first (Envoy before keyguard before Redis)."""
    ordered = list(started)[::-1]
    for child in ordered:
        with contextlib.suppress(OSError):
            child.terminate()
    deadline = time.monotonic() + timeout
    for child in ordered:
        child.reap(deadline - time.monotonic())


def kill_if_still(pids: Iterable[int], marker: bytes) -> None:
    """SIGKILL each pid whose command line still contains `marker` (not a reused pid)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            if marker in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
