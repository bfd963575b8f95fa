"""The Envoy configs under test, all derived from the deployed envoy/*.yaml.

Every setup is the documented config with its addresses moved to loopback test ports
(harness.envoy.rewrite_config) and one change: the catch-all route answers with
`direct_response`, so the upstream is never the bottleneck and is never contacted. The
HTTP filters still run before the router: ext_authz checks every request first.

Setups differ only in the auth filter: none, Envoy's native api_key_auth, or the
deployed ext_authz filter pointed at the floor servicer, keyguard over TCP, or keyguard
over a Unix socket.

The metering setups keep everything of envoy.yaml (ext_authz, the usage filters, the gRPC
access log to keyguard) and answer every request with an OpenAI chat completion that
carries its usage (`application/json`), so json_to_metadata reads it and the access log
brings it to keyguard as a real upstream's answer would; only the keyguard they call
differs (metering on or off).
"""

from __future__ import annotations

import copy
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.payloads import chat_completion_response
from harness.envoy import rewrite_config, validate_config, write_config
from harness.net import free_port
from harness.paths import DEFAULT_CONFIG, UNIX_CONFIG

EXT_AUTHZ = "envoy.filters.http.ext_authz"
API_KEY_AUTH = "envoy.filters.http.api_key_auth"
DIRECT_BODY = "ok\n"


@dataclass
class EnvoySetup:
    name: str
    label: str
    config: Path
    listen_port: int
    admin_port: int
    checks_with: str  # "none" | "api_key_auth" | "ext_authz"


def hcm_of(doc: dict[str, Any]) -> dict[str, Any]:
    listener = doc["static_resources"]["listeners"][0]
    hcm: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def _direct_response_catch_all(hcm: dict[str, Any]) -> None:
    for vhost in hcm["route_config"]["virtual_hosts"]:
        for route in vhost["routes"]:
            if route["match"].get("prefix") == "/":
                route.pop("route", None)
                route["direct_response"] = {"status": 200, "body": {"inline_string": DIRECT_BODY}}
                return
    raise ValueError("the deployed config has no catch-all prefix / route")


def json_response_catch_all(hcm: dict[str, Any], body: bytes) -> None:
    """The catch-all route answers `body` as application/json, as an LLM API would."""
    _direct_response_catch_all(hcm)
    for vhost in hcm["route_config"]["virtual_hosts"]:
        for route in vhost["routes"]:
            if route["match"].get("prefix") == "/":
                route["direct_response"]["body"] = {"inline_string": body.decode()}
                route["response_headers_to_add"] = [
                    {
                        "header": {"key": "content-type", "value": "application/json"},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    }
                ]


def _drop_auth_filter(hcm: dict[str, Any]) -> int:
    """Remove ext_authz and its per-route settings; returns where it stood in the chain."""
    filters = hcm["http_filters"]
    index = next(i for i, f in enumerate(filters) if f["name"] == EXT_AUTHZ)
    del filters[index]
    for vhost in hcm["route_config"]["virtual_hosts"]:
        for route in vhost["routes"]:
            per_filter = route.get("typed_per_filter_config", {})
            per_filter.pop(EXT_AUTHZ, None)
            if not per_filter:
                route.pop("typed_per_filter_config", None)
    return index


def api_key_auth_filter(keys: dict[str, str]) -> dict[str, Any]:
    """Envoy's in-process API key check, reading `Authorization: Bearer <key>`."""
    return {
        "name": API_KEY_AUTH,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth",
            "credentials": [{"key": key, "client": client} for client, key in keys.items()],
            "key_sources": [{"header": "Authorization"}],
        },
    }


def render_setups(
    out_dir: Path,
    *,
    floor_port: int,
    keyguard_port: int,
    keyguard_socket: str,
    api_keys: dict[str, str],
) -> list[EnvoySetup]:
    tcp_doc = yaml.safe_load(DEFAULT_CONFIG.read_text())
    unix_doc = yaml.safe_load(UNIX_CONFIG.read_text())
    # Never contacted (direct_response), but the cluster must point somewhere on loopback.
    unused_upstream = free_port()
    specs: list[tuple[str, str, dict[str, Any], dict[str, Any], str]] = [
        ("none", "no auth filter", tcp_doc, {"keyguard_port": floor_port}, "none"),
        ("api_key_auth", "native api_key_auth", tcp_doc, {"keyguard_port": floor_port}, "api"),
        ("floor", "ext_authz → floor servicer", tcp_doc, {"keyguard_port": floor_port}, "ext"),
        (
            "keyguard_tcp",
            "ext_authz → keyguard (TCP)",
            tcp_doc,
            {"keyguard_port": keyguard_port},
            "ext",
        ),
        (
            "keyguard_unix",
            "ext_authz → keyguard (Unix socket)",
            unix_doc,
            {"keyguard_socket": keyguard_socket},
            "ext",
        ),
    ]
    setups: list[EnvoySetup] = []
    for name, label, source, target, kind in specs:
        doc = copy.deepcopy(source)
        listen_port, admin_port = free_port(), free_port()
        rewrite_config(
            doc,
            listen_port=listen_port,
            admin_port=admin_port,
            upstream_port=unused_upstream,
            **target,
        )
        hcm = hcm_of(doc)
        _direct_response_catch_all(hcm)
        checks_with = "ext_authz"
        if kind in ("none", "api"):
            index = _drop_auth_filter(hcm)
            checks_with = "none"
            if kind == "api":
                hcm["http_filters"].insert(index, api_key_auth_filter(api_keys))
                checks_with = "api_key_auth"
        path = write_config(doc, out_dir / f"envoy-{name}.yaml")
        setups.append(EnvoySetup(name, label, path, listen_port, admin_port, checks_with))
    return setups


def _deployed_on_free_ports(keyguard_port: int) -> tuple[dict[str, Any], int, int]:
    """envoy.yaml (TCP) on free ports, calling keyguard at `keyguard_port`."""
    doc = yaml.safe_load(DEFAULT_CONFIG.read_text())
    listen_port, admin_port = free_port(), free_port()
    rewrite_config(
        doc,
        listen_port=listen_port,
        admin_port=admin_port,
        upstream_port=free_port(),  # never contacted (direct_response)
        keyguard_port=keyguard_port,
    )
    return doc, listen_port, admin_port


def usage_answering_config(keyguard_port: int) -> tuple[dict[str, Any], int, int]:
    """envoy.yaml as deployed on free ports, calling keyguard at `keyguard_port`, its
    catch-all route answering a JSON chat completion with usage: (config, listen, admin)."""
    doc, listen_port, admin_port = _deployed_on_free_ports(keyguard_port)
    json_response_catch_all(hcm_of(doc), chat_completion_response())
    return doc, listen_port, admin_port


def render_metering_setups(
    out_dir: Path, *, metering_off_port: int, metering_on_port: int
) -> list[EnvoySetup]:
    """envoy.yaml as deployed, answering JSON chat completions with usage, calling a
    keyguard with KEYGUARD_METERING=request (off) or =tokens (on)."""
    setups: list[EnvoySetup] = []
    for name, label, port in (
        ("metering_off", "metering off (KEYGUARD_METERING=request)", metering_off_port),
        ("metering_on", "metering on (KEYGUARD_METERING=tokens)", metering_on_port),
    ):
        doc, listen_port, admin_port = usage_answering_config(port)
        path = write_config(doc, out_dir / f"envoy-{name}.yaml")
        setups.append(EnvoySetup(name, label, path, listen_port, admin_port, "ext_authz"))
    return setups


def capture_config(out_dir: Path, capture_port: int) -> tuple[Path, int, int]:
    """The deployed TCP config, ext_authz pointed at the capture servicer."""
    doc, listen_port, admin_port = _deployed_on_free_ports(capture_port)
    _direct_response_catch_all(hcm_of(doc))
    return write_config(doc, out_dir / "envoy-capture.yaml"), listen_port, admin_port


def validate_all(paths: list[Path]) -> None:
    """`envoy --mode validate` on every config, in parallel; raises on the first failure."""

    def one(path: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
        return path, validate_config(path, timeout=120)

    with ThreadPoolExecutor(max_workers=len(paths)) as pool:
        for path, proc in pool.map(one, paths):
            if proc.returncode != 0:
                raise RuntimeError(f"envoy rejects {path.name}:\n{proc.stdout}\n{proc.stderr}")
