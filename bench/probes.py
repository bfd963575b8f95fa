"""Reading what the servers under test did: gRPC answers, HTTP statuses, /metrics, Redis."""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping

import grpc
import redis

from bench.payloads import CHECK_PATH
from keyguard._proto.envoy.service.auth.v3.external_auth_pb2 import CheckResponse


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        named = head == name or head.startswith(name + "{")
        if named and all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def redis_command_calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(entry["calls"])
        for name, entry in stats.items()
        if isinstance(entry, dict)
    }


def grpc_check(target: str, message: bytes, timeout: float = 5.0) -> CheckResponse:
    """One Check with a Python gRPC client: reads what h2load cannot, the grpc-status."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(CHECK_PATH, request_serializer=None, response_deserializer=None)
        reply = call(message, timeout=timeout)  # raises on any non-OK grpc-status
    return CheckResponse.FromString(reply)


def allowed(resp: CheckResponse) -> bool:
    return resp.status.code == 0 and resp.HasField("ok_response")


def upstream_header(resp: CheckResponse, name: str) -> str:
    for option in resp.ok_response.headers:
        if option.header.key == name:
            return option.header.value
    return ""


def hold_metadata(resp: CheckResponse) -> dict[str, str]:
    """The settlement ticket keyguard hands Envoy in an allow's dynamic_metadata."""
    fields = resp.dynamic_metadata.fields
    return {name: str(value.string_value or value.number_value) for name, value in fields.items()}


def metric_by_label(text: str, name: str, label: str) -> dict[str, float]:
    """Every sample of `name`, keyed by the value of one label: {"usage": 12.0, ...}."""
    out: dict[str, float] = {}
    prefix = f'{name}{{{label}="'
    for line in text.splitlines():
        if line.startswith(prefix):
            head, _, value = line.rpartition(" ")
            out[head[len(prefix) :].partition('"')[0]] = float(value)
    return out


def deny_reason(resp: CheckResponse) -> str:
    for option in resp.denied_response.headers:
        if option.header.key == "x-keyguard-reason":
            return option.header.value
    return ""


def http_status(
    url: str, headers: Mapping[str, str], timeout: float = 5.0, body: bytes | None = None
) -> int:
    """One HTTP/1.1 GET (a POST of `body` if given), with curl when installed, ignoring
    proxy settings."""
    if shutil.which("curl"):
        cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--noproxy", "*"]
        cmd += ["--max-time", str(timeout)]
        for name, value in headers.items():
            cmd += ["-H", f"{name}: {value}"]
        if body is not None:
            cmd += ["--data-binary", "@-"]
        out = subprocess.run([*cmd, url], input=body or b"", capture_output=True, check=False)
        return int(out.stdout.decode().strip() or 0)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(  # noqa: S310 (http:// only)
        url, data=body, headers=dict(headers), method="POST" if body is not None else "GET"
    )
    try:
        with opener.open(request, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
