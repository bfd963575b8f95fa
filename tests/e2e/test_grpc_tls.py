"""keyguard's gRPC listener over TLS and mutual TLS (issue 6), with certificates made here.

KEYGUARD_TLS_CERT / KEYGUARD_TLS_KEY turn on TLS; KEYGUARD_TLS_CLIENT_CA also demands a
client certificate signed by that CA. Shown with a Python gRPC client (with and without a
certificate) and with a real Envoy whose keyguard cluster uses a TLS transport socket
(UpstreamTlsContext: client certificate, trusted CA, SNI and SAN check). The filter chain is
the documented envoy/envoy.yaml; only the addresses and the transport socket change.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.cli import run_cli
from harness.envoy import EnvoyProcess, rewrite_config
from harness.keyguard import KeyguardServer, running_keyguard
from harness.net import free_port
from harness.paths import DEFAULT_CONFIG
from harness.redis import RedisServer, running_redis
from harness.upstream import DemoUpstream, running_upstream
from keyguard._proto.envoy.service.auth.v3 import external_auth_pb2_grpc
from keyguard._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from tests.support.certs import SERVER_DNS, Pki, make_pki
from tests.support.checks import check_request, http_status, reason

pytestmark = pytest.mark.e2e

UNKNOWN_KEY = "sk-" + "U" * 40


@dataclass
class TlsStack:
    pki: Pki
    redis: RedisServer
    keyguard: KeyguardServer
    key: str  # an unlimited key


def create_key(redis_url: str) -> str:
    result = run_cli("keys", "create", "--json", "--unlimited", redis_url=redis_url)
    if result.returncode != 0:  # pytest.fail, not assert: the repr would show stdout
        pytest.fail(f"keys create failed: {result.stderr[-2000:]}")
    return str(json.loads(result.stdout)["key"])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def mtls(pki: Pki) -> Iterator[TlsStack]:
    """Redis and `keyguard serve` with TLS and a required client certificate."""
    env = {
        "KEYGUARD_TLS_CERT": str(pki.server_cert),
        "KEYGUARD_TLS_KEY": str(pki.server_key),
        "KEYGUARD_TLS_CLIENT_CA": str(pki.ca),
    }
    with running_redis() as redis, running_keyguard(redis.url, env) as keyguard:
        stack = TlsStack(pki, redis, keyguard, create_key(redis.url))
        with secure_channel(keyguard.target, pki) as channel:
            wait_serving(channel, keyguard)
        yield stack


# ----- a gRPC client over TLS ---------------------------------------------------------------


@contextlib.contextmanager
def secure_channel(
    target: str,
    pki: Pki,
    *,
    root: Path | None = None,
    cert: tuple[Path, Path] | bool | None = True,
) -> Iterator[grpc.Channel]:
    """A TLS channel trusting `root` (default: the test CA), with the client certificate
    (cert=True), another one (a (cert, key) pair), or none (cert=None)."""
    if cert is True:
        cert = (pki.client_cert, pki.client_key)
    creds = grpc.ssl_channel_credentials(
        root_certificates=(root or pki.ca).read_bytes(),
        private_key=cert[1].read_bytes() if isinstance(cert, tuple) else None,
        certificate_chain=cert[0].read_bytes() if isinstance(cert, tuple) else None,
    )
    channel = grpc.secure_channel(target, creds)
    try:
        yield channel
    finally:
        channel.close()


def check(channel: grpc.Channel, request: CheckRequest, timeout: float = 5.0) -> CheckResponse:
    stub = external_auth_pb2_grpc.AuthorizationStub(channel)
    return stub.Check(request, timeout=timeout)  # type: ignore[no-any-return]


def health(channel: grpc.Channel) -> str:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def wait_serving(channel: grpc.Channel, keyguard: KeyguardServer, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(grpc.RpcError):
            if health(channel) == "SERVING":
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"keyguard not SERVING over TLS:\n{keyguard.logs()[-3000:]}")
        time.sleep(0.1)


def bearer(key: str) -> CheckRequest:
    return check_request({"authorization": f"Bearer {key}"})


def assert_refused(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as err:
        check(channel, bearer(UNKNOWN_KEY), timeout=3.0)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value


# ----- (a) and (b): a Python client -----------------------------------------------------------


def test_client_with_certificate_is_served(mtls: TlsStack) -> None:
    with secure_channel(mtls.keyguard.target, mtls.pki) as channel:
        assert health(channel) == "SERVING"
        allowed = check(channel, bearer(mtls.key))
        assert (http_status(allowed), reason(allowed)) == (200, "ok")
        denied = check(channel, bearer(UNKNOWN_KEY))
        assert (http_status(denied), reason(denied)) == (401, "invalid_api_key")


@pytest.mark.parametrize("variant", ["no certificate", "certificate from another CA"])
def test_client_without_a_trusted_certificate_is_refused(mtls: TlsStack, variant: str) -> None:
    cert = (
        None
        if variant == "no certificate"
        else (
            mtls.pki.other_client_cert,
            mtls.pki.other_client_key,
        )
    )
    with secure_channel(mtls.keyguard.target, mtls.pki, cert=cert) as channel:
        assert_refused(channel)


def test_plaintext_client_is_refused(mtls: TlsStack) -> None:
    channel = grpc.insecure_channel(mtls.keyguard.target)
    try:
        assert_refused(channel)
    finally:
        channel.close()


def test_client_refuses_a_server_it_does_not_trust(mtls: TlsStack) -> None:
    with secure_channel(mtls.keyguard.target, mtls.pki, root=mtls.pki.other_ca) as channel:
        assert_refused(channel)


def test_server_tls_without_client_ca_needs_no_client_certificate(pki: Pki) -> None:
    env = {"KEYGUARD_TLS_CERT": str(pki.server_cert), "KEYGUARD_TLS_KEY": str(pki.server_key)}
    with running_redis() as redis, running_keyguard(redis.url, env) as keyguard:
        key = create_key(redis.url)
        with secure_channel(keyguard.target, pki, cert=None) as channel:
            wait_serving(channel, keyguard)
            resp = check(channel, bearer(key))
            assert (http_status(resp), reason(resp)) == (200, "ok")
        # `keyguard health --tls-ca` speaks TLS too.
        result = run_cli(
            "health", "--target", keyguard.target, "--tls-ca", str(pki.ca), redis_url=redis.url
        )
        assert (result.returncode, result.stdout.strip()) == (0, "SERVING"), result.stderr
        channel = grpc.insecure_channel(keyguard.target)
        try:
            assert_refused(channel)
        finally:
            channel.close()


# ----- (c) a real Envoy with a TLS transport socket to keyguard -------------------------------


def tls_transport_socket(pki: Pki, *, client_cert: bool) -> dict[str, Any]:
    common: dict[str, Any] = {
        "alpn_protocols": ["h2"],
        "validation_context": {
            "trusted_ca": {"filename": str(pki.ca)},
            "match_typed_subject_alt_names": [
                {"san_type": "DNS", "matcher": {"exact": SERVER_DNS}}
            ],
        },
    }
    if client_cert:
        common["tls_certificates"] = [
            {
                "certificate_chain": {"filename": str(pki.client_cert)},
                "private_key": {"filename": str(pki.client_key)},
            }
        ]
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
            ".UpstreamTlsContext",
            "sni": SERVER_DNS,
            "common_tls_context": common,
        },
    }


@contextlib.contextmanager
def tls_envoy(
    stack: TlsStack, upstream: DemoUpstream, tmp: Path, *, client_cert: bool
) -> Iterator[EnvoyProcess]:
    """envoy/envoy.yaml on test ports, its keyguard cluster speaking TLS."""
    listen_port, admin_port = free_port(), free_port()
    doc = yaml.safe_load(DEFAULT_CONFIG.read_text())
    rewrite_config(
        doc,
        listen_port=listen_port,
        admin_port=admin_port,
        upstream_port=upstream.port,
        keyguard_port=stack.keyguard.port,
    )
    (cluster,) = (c for c in doc["static_resources"]["clusters"] if c["name"] == "keyguard")
    cluster["transport_socket"] = tls_transport_socket(stack.pki, client_cert=client_cert)
    path = tmp / ("envoy-mtls.yaml" if client_cert else "envoy-tls-no-cert.yaml")
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with EnvoyProcess(path, listen_port=listen_port, admin_port=admin_port) as envoy:
        yield envoy


def chat(http: httpx.Client, key: str) -> httpx.Response:
    return http.post(
        "/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )


def test_envoy_over_mtls(mtls: TlsStack, tmp_path: Path) -> None:
    with (
        running_upstream() as upstream,
        tls_envoy(mtls, upstream, tmp_path, client_cert=True) as envoy,
        httpx.Client(base_url=envoy.base_url, trust_env=False, timeout=10.0) as http,
    ):
        # The first Check opens the TLS connection; give it a moment before asserting.
        deadline = time.monotonic() + 10
        while (resp := chat(http, mtls.key)).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert resp.status_code == 200, (resp.status_code, resp.text[:500], envoy.logs()[-3000:])
        assert "x-echo-headers" in resp.headers, "the allowed request did not reach the upstream"
        for _ in range(5):
            assert chat(http, mtls.key).status_code == 200
        before = upstream.requests()
        denied = chat(http, UNKNOWN_KEY)
        assert denied.status_code == 401, denied.text[:500]
        assert denied.headers["x-keyguard-reason"] == "invalid_api_key"
        assert denied.json()["error"]["code"] == "invalid_api_key"
        missing = http.post("/v1/messages", json={"model": "claude-3-5-haiku"})
        assert missing.status_code == 401 and missing.json()["type"] == "error"
        assert upstream.requests() == before, "a denied request reached the upstream"
        stats = envoy.stats("cluster.keyguard|ext_authz")
        assert stats.get("cluster.keyguard.ssl.handshake", 0) >= 1, stats
        assert stats.get("cluster.keyguard.ssl.connection_error", 0) == 0, stats
        assert stats.get("http.llm_ingress.ext_authz.denied", 0) == 2, stats


def test_envoy_without_client_certificate_fails_closed(mtls: TlsStack, tmp_path: Path) -> None:
    """keyguard refuses Envoy's handshake; Envoy answers 503 and lets nothing through."""
    with (
        running_upstream() as upstream,
        tls_envoy(mtls, upstream, tmp_path, client_cert=False) as envoy,
        httpx.Client(base_url=envoy.base_url, trust_env=False, timeout=10.0) as http,
    ):
        for _ in range(3):
            resp = chat(http, mtls.key)
            assert resp.status_code == 503, (resp.status_code, resp.text[:300])
            assert "x-echo-headers" not in resp.headers
        assert upstream.requests() == 0, "a request reached the upstream"
        stats = envoy.stats("cluster.keyguard|ext_authz")
        assert stats.get("cluster.keyguard.ssl.handshake", 0) == 0, stats
        assert stats.get("cluster.keyguard.upstream_cx_connect_fail", 0) >= 1, stats
        assert stats.get("http.llm_ingress.ext_authz.error", 0) == 3, stats
