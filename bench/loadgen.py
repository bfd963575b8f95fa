"""The load generators (h2load, wrk): command lines and output parsers. No Python in the load."""

from __future__ import annotations

import itertools
import math
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bench.payloads import CHECK_PATH

GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")


class LoadError(RuntimeError):
    """A load run failed or its output could not be trusted."""


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class H2loadResult:
    requests: int
    succeeded: int
    status_2xx: int
    seconds: float
    rps: float
    raw: str = field(repr=False, default="")


_FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
_REQUESTS = re.compile(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded")
_STATUS = re.compile(r"status codes: (\d+) 2xx")


def parse_h2load(text: str) -> H2loadResult:
    fin = _FINISHED.search(text)
    req = _REQUESTS.search(text)
    status = _STATUS.search(text)
    if not (fin and req and status):
        raise LoadError(f"cannot parse h2load output:\n{text[-2000:]}")
    seconds = float(fin.group(1)) / (1000.0 if fin.group(2) == "ms" else 1.0)
    return H2loadResult(
        requests=int(req.group(1)),
        succeeded=int(req.group(2)),
        status_2xx=int(status.group(1)),
        seconds=seconds,
        rps=float(fin.group(3)),
        raw=text,
    )


def _run(cmd: list[str], timeout: float) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"{cmd[0]} did not finish within {timeout:.0f}s") from exc
    if out.returncode != 0:
        raise LoadError(f"{' '.join(cmd)} exited {out.returncode}:\n{out.stderr[-2000:]}")
    return out.stdout


def h2load_grpc(
    target: str,
    body: Path,
    requests: int,
    clients: int = 4,
    streams: int = 16,
    timeout: float = 300.0,
) -> H2loadResult:
    """`requests` unary Checks over h2c with prior knowledge; every one must be HTTP 200.

    h2load cannot read grpc-status (it is in the trailers): callers verify the decisions
    separately.
    """
    cmd = ["h2load", "-n", str(requests), "-c", str(clients), "-m", str(streams), "-t", "1"]
    for header in GRPC_HEADERS:
        cmd += ["-H", header]
    cmd += ["-d", str(body), f"http://{target}{CHECK_PATH}"]
    result = parse_h2load(_run(cmd, timeout))
    if result.succeeded != requests or result.status_2xx != requests:
        raise LoadError(
            f"h2load: {result.succeeded}/{requests} succeeded, {result.status_2xx} HTTP 2xx"
        )
    return result


def h2load_http(
    url: str,
    headers: dict[str, str],
    requests: int,
    body: Path | None = None,
    clients: int = 32,
    timeout: float = 300.0,
) -> H2loadResult:
    """Closed loop over HTTP/1.1 (like wrk -c`clients`), but a fixed number of requests,
    every one answered before h2load exits: none is cut off mid-flight when the time is
    up, so every hold a request placed is settled. With `body`, each request is a POST."""
    cmd = ["h2load", "--h1", "-n", str(requests), "-c", str(clients), "-t", "1"]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    if body is not None:
        cmd += ["-d", str(body)]
    return parse_h2load(_run([*cmd, url], timeout))


@dataclass
class FixedRateResult:
    rate: int
    seconds: float
    sent: int
    measured: int
    achieved_rps: float
    non_200: int  # answered with another status (e.g. 503: ext_authz timed out)
    failed: int  # no response at all
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    # How evenly h2load spread the sends: gaps between consecutive request starts.
    send_gap_p50_us: float
    send_gap_p99_us: float


def h2load_fixed_rate(
    url: str,
    headers: dict[str, str],
    rate: int,
    seconds: float,
    warmup: float,
    log_file: Path,
    connections: int = 50,
    timeout: float = 120.0,
) -> FixedRateResult:
    """Open-loop load at `rate` requests/s over h2c, latency of every request.

    h2load's --rps is per connection, and its rate timer never ticks faster than every
    10 ms, so one connection at 1,000 rps would send bursts of 10. Instead `connections`
    connections each send rate/connections requests/s, and are opened 1 ms apart
    (-r 1 --rate-period 1ms) so their timers are out of phase. Requests are HTTP/2
    streams (-m), so a slow response never delays the next send. Latency is measured from
    each request's send to the end of its response (--log-file).
    """
    per_conn = rate / connections
    if per_conn != int(per_conn) or per_conn > 100:
        raise ValueError("rate must be a multiple of connections, at most 100 per connection")
    total = int(rate * (seconds + warmup))
    log_file.unlink(missing_ok=True)
    cmd = [
        "h2load",
        "-n",
        str(total),
        "-c",
        str(connections),
        "-r",
        "1",
        "--rate-period",
        "1ms",
        "--rps",
        str(int(per_conn)),
        "-m",
        "16",
        "-t",
        "1",
        "--log-file",
        str(log_file),
    ]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    cmd.append(url)
    _run(cmd, timeout)
    rows: list[tuple[int, int, int]] = []
    for line in log_file.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            rows.append((int(parts[0]), int(parts[1]), int(parts[2])))
    if len(rows) < total * 0.95:
        raise LoadError(f"h2load logged {len(rows)} of {total} requests")
    rows.sort()
    t0 = rows[0][0]
    kept = [r for r in rows if r[0] >= t0 + warmup * 1e6]
    starts = [r[0] for r in kept]
    span = (starts[-1] - starts[0]) / 1e6 if len(starts) > 1 else 0.0
    # Every answered request counts, whatever its status: a 503 after the ext_authz
    # timeout is latency a client saw.
    latencies = sorted(r[2] / 1000.0 for r in kept if r[1] != -1)
    gaps = sorted(float(b - a) for a, b in itertools.pairwise(starts))
    return FixedRateResult(
        rate=rate,
        seconds=round(span, 3),
        sent=len(rows),
        measured=len(kept),
        achieved_rps=round(len(kept) / span, 1) if span else 0.0,
        non_200=sum(1 for r in kept if r[1] not in (200, -1)),
        failed=sum(1 for r in kept if r[1] == -1),
        p50_ms=percentile(latencies, 50),
        p90_ms=percentile(latencies, 90),
        p99_ms=percentile(latencies, 99),
        p999_ms=percentile(latencies, 99.9),
        max_ms=latencies[-1],
        send_gap_p50_us=percentile(gaps, 50),
        send_gap_p99_us=percentile(gaps, 99),
    )


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
_LAT = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", re.M)
_WRK_TOTAL = re.compile(r"(\d+) requests in ([\d.]+)(us|ms|s|m),")
_WRK_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def parse_wrk(text: str) -> WrkResult:
    lat = {int(m.group(1)): float(m.group(2)) * _UNITS[m.group(3)] for m in _LAT.finditer(text)}
    total = _WRK_TOTAL.search(text)
    rps = _WRK_RPS.search(text)
    if not (total and rps) or set(lat) != {50, 75, 90, 99}:
        raise LoadError(f"cannot parse wrk output:\n{text[-2000:]}")
    non2xx = _WRK_NON2XX.search(text)
    sock = _WRK_SOCKET.search(text)
    return WrkResult(
        requests=int(total.group(1)),
        seconds=float(total.group(2)) * _UNITS[total.group(3)] / 1000.0,
        rps=float(rps.group(1)),
        p50_ms=lat[50],
        p75_ms=lat[75],
        p90_ms=lat[90],
        p99_ms=lat[99],
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(int(g) for g in sock.groups()) if sock else 0,
    )


def wrk(
    url: str,
    headers: dict[str, str],
    seconds: float,
    connections: int = 32,
    threads: int = 1,
) -> WrkResult:
    """Closed loop: `connections` HTTP/1.1 keep-alive connections, each sending back to back."""
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "5s",
    ]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    cmd.append(url)
    return parse_wrk(_run(cmd, timeout=seconds + 60))
