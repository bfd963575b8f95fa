"""`keyguard serve --workers N`: a small supervisor around N server processes.

gRPC Python serves one event loop per process, so a second core needs a
second process. On TCP the workers share the port with SO_REUSEPORT and the
kernel spreads connections; a Unix socket cannot be shared that way, so
worker i listens on PATH.i and Envoy lists every socket as an endpoint.
Metrics use prometheus_client's multiprocess mode: the supervisor serves one
/metrics that sums all workers.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import structlog
from prometheus_client import CollectorRegistry, multiprocess

from keyguard.runtime import logs
from keyguard.runtime.metrics import serve_metrics
from keyguard.settings import Settings

log = structlog.get_logger("keyguard.workers")
WORKER_ENV = "KEYGUARD__WORKER_INDEX"


def worker_listen(listen: tuple[str, ...], index: int) -> str:
    return ",".join(f"{a}.{index}" if a.startswith("unix:") else a for a in listen)


def _env_value(value: object) -> str:
    """A setting written back as the KEYGUARD_* text that settings.load() parses."""
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _spawn(settings: Settings, index: int, multiproc_dir: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        WORKER_ENV: str(index),
        "PROMETHEUS_MULTIPROC_DIR": multiproc_dir,
        "KEYGUARD_LISTEN": worker_listen(settings.listen, index),
        "KEYGUARD_METRICS_PORT": "0",
        "KEYGUARD_WORKERS": str(settings.workers),
    }
    # Flags given to the supervisor reach the worker through its environment.
    for name in settings.__dataclass_fields__:
        if name in ("listen", "metrics_port", "workers"):
            continue
        env[f"KEYGUARD_{name.upper()}"] = _env_value(getattr(settings, name))
    return subprocess.Popen([sys.executable, "-m", "keyguard", "serve"], env=env)


def run_workers(settings: Settings) -> int:
    logs.configure(settings.log_level)
    multiproc_dir = tempfile.mkdtemp(prefix="keyguard-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if settings.metrics_port:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=multiproc_dir)  # type: ignore[no-untyped-call]
            serve_metrics(settings.metrics_host, settings.metrics_port, registry)
        workers = {i: _spawn(settings, i, multiproc_dir) for i in range(settings.workers)}
        log.info("workers_started", pids=[p.pid for p in workers.values()])
        while not stopping:
            time.sleep(0.2)
            for index, proc in list(workers.items()):
                if proc.poll() is not None and not stopping:
                    log.warning("worker_exited", index=index, pid=proc.pid, code=proc.returncode)
                    multiprocess.mark_process_dead(proc.pid, multiproc_dir)  # type: ignore[no-untyped-call]
                    time.sleep(0.5)
                    workers[index] = _spawn(settings, index, multiproc_dir)
        for proc in workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + settings.grace_seconds + 5
        for proc in workers.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.info("workers_stopped")
        return 0
    finally:
        shutil.rmtree(multiproc_dir, ignore_errors=True)
