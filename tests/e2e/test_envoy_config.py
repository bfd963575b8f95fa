"""Every Envoy config under envoy/ is accepted by the real Envoy binary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.envoy import render_config, validate_config
from harness.paths import ENVOY_DIR

CONFIGS = sorted(ENVOY_DIR.glob("*.yaml"))
EXT_AUTHZ = "envoy.filters.http.ext_authz"


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def test_configs_exist() -> None:
    assert {"envoy.yaml", "envoy-unix.yaml", "envoy-multiworker.yaml"} <= {p.name for p in CONFIGS}


@pytest.mark.e2e
@pytest.mark.parametrize("config", CONFIGS, ids=_ids(CONFIGS))
def test_config_validates_as_shipped(config: Path) -> None:
    result = validate_config(config)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("config", CONFIGS, ids=_ids(CONFIGS))
def test_config_validates_after_rendering(config: Path, tmp_path: Path) -> None:
    # The tests run the rendered form, so it must stay a valid config too.
    rendered = render_config(
        config,
        tmp_path,
        listen_port=20000,
        admin_port=20001,
        upstream_port=20002,
        keyguard_port=20003,
        keyguard_socket=str(tmp_path / "kg.sock"),
    )
    result = validate_config(rendered)
    assert result.returncode == 0, result.stdout + result.stderr


def _hcm(doc: dict[str, Any]) -> dict[str, Any]:
    listener = doc["static_resources"]["listeners"][0]
    hcm: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def _routes(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (vhost,) = _hcm(doc)["route_config"]["virtual_hosts"]
    return {r["match"].get("path") or r["match"]["prefix"]: r for r in vhost["routes"]}


def _ext_authz(doc: dict[str, Any]) -> dict[str, Any]:
    hcm = _hcm(doc)
    filters = hcm["http_filters"]
    assert filters[-1]["name"] == "envoy.filters.http.router", "router must be last"
    (authz,) = (f["typed_config"] for f in filters if f["name"] == EXT_AUTHZ)
    found: dict[str, Any] = authz
    return found


@pytest.mark.parametrize("config", CONFIGS, ids=_ids(CONFIGS))
def test_ext_authz_fails_closed(config: Path) -> None:
    # These settings are the security contract; a typo would still validate.
    authz = _ext_authz(yaml.safe_load(config.read_text()))
    assert authz["failure_mode_allow"] is False
    assert authz["status_on_error"] == {"code": "ServiceUnavailable"}
    assert authz["transport_api_version"] == "V3"
    assert authz["grpc_service"] == {"envoy_grpc": {"cluster_name": "keyguard"}, "timeout": "0.25s"}
    assert authz["with_request_body"] == {
        "max_request_bytes": 65536,
        "allow_partial_message": True,
        "pack_as_bytes": True,
    }


@pytest.mark.parametrize("config", CONFIGS, ids=_ids(CONFIGS))
def test_routes(config: Path) -> None:
    routes = _routes(yaml.safe_load(config.read_text()))
    assert list(routes)[-1] == "/", "the catch-all route must come last"
    healthz = routes["/healthz"]
    assert healthz["direct_response"]["status"] == 200
    assert healthz["typed_per_filter_config"][EXT_AUTHZ]["disabled"] is True
    models = routes["/v1/models"]["typed_per_filter_config"][EXT_AUTHZ]
    assert models["check_settings"] == {
        "disable_request_body_buffering": True,
        # keyguard's per-route settings (README, Metering): listing models is not metered.
        "context_extensions": {"keyguard.meter": "off"},
    }
    # Each documented per-route setting is shown on a route.
    extensions = {
        path: r["typed_per_filter_config"][EXT_AUTHZ]["check_settings"]["context_extensions"]
        for path, r in routes.items()
        if "check_settings" in r.get("typed_per_filter_config", {}).get(EXT_AUTHZ, {})
    }
    assert extensions["/v1/images/"] == {"keyguard.cost": "40000"}
    assert extensions["/v1/batches"] == {"keyguard.key_types": "subscription"}
    assert extensions["/anthropic/"] == {"keyguard.dialect": "anthropic"}
    # Only /healthz may skip keyguard.
    skipping = [
        p
        for p, r in routes.items()
        if "disabled" in r.get("typed_per_filter_config", {}).get(EXT_AUTHZ, {})
    ]
    assert skipping == ["/healthz"]
