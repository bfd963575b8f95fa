"""Redis authentication and TLS (issue 6), against real redis-server processes.

* `requirepass`: the default user with a password in the URL.
* An ACL user limited to keyguard's key prefix, its event channel and the commands keyguard
  needs (docs/redis-acl.md): every CLI command and `keyguard serve` work, nothing is
  refused along the way (ACL LOG stays empty), and anything outside `kg:*` is refused.
* A wrong password: Checks fail closed with 503 store_unavailable; the CLI prints one line
  and exits 1, without a traceback and without the password.
* TLS with certificates made in the test (`--tls-auth-clients yes`): decisions work over
  `rediss://`; without a client certificate, or trusting the wrong CA, keyguard fails
  closed.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import pytest
import redis

from keyguard._proto.envoy.service.accesslog.v3.als_pb2 import StreamAccessLogsMessage
from keyguard._proto.envoy.service.accesslog.v3.als_pb2_grpc import AccessLogServiceStub
from keyguard.meter.ticket import parse_ticket
from tests.support.certs import Pki, make_pki
from tests.support.checks import check_request, http_status, reason
from tests.support.grpc_client import Client, wait_until
from tests.support.procs import REPO, RedisServer, free_port, run_cli, running_keyguard

ACL_DOC = REPO / "docs" / "redis-acl.md"


def documented_acl(user: str = "keyguard") -> list[str]:
    """The rules of the `user USER on >PASSWORD ...` line in docs/redis-acl.md."""
    prefix = f"user {user} on >PASSWORD "
    for line in ACL_DOC.read_text().splitlines():
        if line.startswith(prefix):
            return line.split()[4:]
    raise AssertionError(f"no '{prefix}...' line in {ACL_DOC}")


KEYGUARD_ACL = documented_acl()
SIDECAR_ACL = documented_acl("keyguard-sidecar")
# URL-unsafe characters on purpose: the URL carries it percent-encoded.
ACL_PASSWORD = "kg-Pa$$:w/rd@7f3a"
ADMIN_PASSWORD = "admin-9b1c2d"
WRONG_PASSWORD = "not-the-password-4e5f6a"


@pytest.fixture
def redis_process() -> Iterator[list[RedisServer]]:
    """Collects the redis-servers a test starts; all are stopped at the end."""
    started: list[RedisServer] = []
    try:
        yield started
    finally:
        for server in started:
            server.close()


def start_redis(
    started: list[RedisServer], extra_args: list[str], port: int | None = None
) -> RedisServer:
    server = RedisServer(extra_args=extra_args, port=port)
    started.append(server)
    server.start()
    return server


def cli(*args: str, url: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A `keyguard keys ... --json` command that must succeed; its JSON output."""
    result = run_cli("keys", *args, "--json", redis_url=url, env=env)
    if result.returncode != 0:
        pytest.fail(f"keys {args[0]} failed ({result.returncode}): {result.stderr[-2000:]}")
    return dict(json.loads(result.stdout)) if result.stdout.strip().startswith("{") else {}


def decide(client: Client, key: str, path: str = "/v1/chat/completions") -> tuple[int, str]:
    resp = client.check(check_request({"authorization": f"Bearer {key}"}, path=path))
    return http_status(resp), reason(resp)


def eventually(call: Any, want: tuple[int, str], timeout: float = 5.0) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while True:
        got: tuple[int, str] = call()
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def assert_one_line_error(result: subprocess.CompletedProcess[str], secret: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("keyguard: error:"), lines[0]
    assert "Traceback" not in result.stderr
    for text in (result.stdout, result.stderr):
        assert secret not in text and quote(secret, safe="") not in text


def assert_serves_decisions(url: str, env: Mapping[str, str] | None = None) -> None:
    """Keys made by the CLI, decided by `keyguard serve`, changed again by the CLI."""
    unlimited = cli("create", "--unlimited", "--name", "u", url=url, env=env)
    quota = cli("create", "--quota", "2", "--models", "gpt-4o,claude-3-5-haiku", url=url, env=env)
    sub = cli(
        "create", "--type", "subscription", "--quota", "5", "--cycle", "30d", url=url, env=env
    )
    listed = run_cli("keys", "list", "--json", redis_url=url, env=env)
    assert listed.returncode == 0, listed.stderr
    assert {k["id"] for k in json.loads(listed.stdout)} == {unlimited["id"], quota["id"], sub["id"]}
    with running_keyguard(url, env) as server, Client(server.target) as client:
        wait_until(lambda: client.health_status() == "SERVING", timeout=15)
        assert decide(client, unlimited["key"]) == (200, "ok")
        assert decide(client, sub["key"]) == (200, "ok")
        assert decide(client, "sk-" + "Q" * 40) == (401, "invalid_api_key")
        # The metered path: the spend script, twice, then the quota is gone.
        body = b'{"model": "gpt-4o"}'
        for want in ((200, "ok"), (200, "ok"), (402, "insufficient_quota")):
            resp = client.check(
                check_request({"x-api-key": quota["key"]}, path="/v1/chat/completions", body=body)
            )
            assert (http_status(resp), reason(resp)) == want
        # CLI changes reach the server's cache over the event channel.
        cli("topup", quota["id"], "1", url=url, env=env)
        cli("disable", unlimited["id"], url=url, env=env)
        assert eventually(lambda: decide(client, unlimited["key"]), (401, "key_disabled")) == (
            401,
            "key_disabled",
        )
        cli("enable", unlimited["id"], url=url, env=env)
        assert eventually(lambda: decide(client, unlimited["key"]), (200, "ok")) == (200, "ok")
        cli("set", sub["id"], "--rpm", "100", "--name", "renamed", url=url, env=env)
        assert eventually(lambda: decide(client, sub["key"]), (200, "ok")) == (200, "ok")
        resp = client.check(
            check_request({"x-api-key": quota["key"]}, path="/v1/chat/completions", body=body)
        )
        assert (http_status(resp), reason(resp)) == (200, "ok")
        # Usage of unlimited keys is written back in batches (the add_used script).
        wait_until(lambda: cli("show", unlimited["id"], url=url, env=env)["used"] >= 2, timeout=10)
        cli("revoke", sub["id"], url=url, env=env)
        assert eventually(lambda: decide(client, sub["key"]), (401, "invalid_api_key")) == (
            401,
            "invalid_api_key",
        )
        logs = server.logs()
    assert "Traceback" not in logs, logs[-3000:]


# ----- requirepass ----------------------------------------------------------------------------


def test_requirepass_in_the_url(redis_process: list[RedisServer]) -> None:
    password = "s3cret-requirepass"
    server = start_redis(redis_process, ["--requirepass", password])
    url = f"redis://:{password}@127.0.0.1:{server.port}/0"
    assert_serves_decisions(url)
    # Without the password the same server refuses keyguard: fail closed.
    bare = f"redis://127.0.0.1:{server.port}/0"
    result = run_cli("keys", "list", redis_url=bare)
    assert_one_line_error(result, password)


# ----- ACL user -------------------------------------------------------------------------------


@pytest.fixture
def acl_redis(redis_process: list[RedisServer]) -> RedisServer:
    return start_redis(
        redis_process,
        [
            *("--user", "default", "on", f">{ADMIN_PASSWORD}", "~*", "&*", "+@all"),
            *("--user", "keyguard", "on", f">{ACL_PASSWORD}", *KEYGUARD_ACL),
            *("--user", "keyguard-sidecar", "on", f">{ACL_PASSWORD}", *SIDECAR_ACL),
        ],
    )


def acl_url(server: RedisServer, password: str = ACL_PASSWORD, user: str = "keyguard") -> str:
    return f"redis://{user}:{quote(password, safe='')}@127.0.0.1:{server.port}/0"


def admin_client(server: RedisServer) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, password=ADMIN_PASSWORD)


def test_acl_user_runs_cli_and_server_without_a_refusal(acl_redis: RedisServer) -> None:
    admin = admin_client(acl_redis)
    try:
        admin.acl_log_reset()
        assert_serves_decisions(acl_url(acl_redis))
        refused = admin.acl_log()
        assert refused == [], f"keyguard needed more than the documented ACL: {refused}"
        # Nothing keyguard wrote lies outside its prefix.
        assert all(k.startswith(b"kg:") for k in admin.scan_iter(count=1000))
    finally:
        admin.close()


def test_acl_user_meters_tokens_without_a_refusal(acl_redis: RedisServer, tmp_path: Path) -> None:
    """Token metering under the documented ACL: prices, a hold at Check, a settlement
    from an access-log message, live holds in `keys show`, revoke of every metering key."""
    url = acl_url(acl_redis)
    admin = admin_client(acl_redis)
    try:
        admin.acl_log_reset()
        prices = tmp_path / "prices.json"
        prices.write_text(json.dumps({"gpt-4o": {"input": 1_000_000, "output": 2_000_000}}))
        imported = run_cli("prices", "import", str(prices), redis_url=url)
        assert imported.returncode == 0, imported.stderr
        key = cli("create", "--quota", "1000000", "--tpm", "100000", url=url)
        env = {"KEYGUARD_METERING": "tokens"}
        with running_keyguard(url, env) as server, Client(server.target) as client:
            wait_until(lambda: client.health_status() == "SERVING", timeout=15)
            body = b'{"model": "gpt-4o", "max_tokens": 10}'
            resp = client.check(check_request({"x-api-key": key["key"]}, body=body))
            assert (http_status(resp), reason(resp)) == (200, "ok")
            ticket = {k: v.string_value for k, v in resp.dynamic_metadata.fields.items()}
            fields = parse_ticket(ticket["hold"])
            assert fields is not None, ticket
            assert cli("show", key["id"], url=url)["held"] == int(fields["held"]) > 0
            send_access_log(
                server.target, ticket, {"prompt_tokens": 10.0, "completion_tokens": 4.0}
            )
            wait_until(lambda: cli("show", key["id"], url=url)["used"] > 0, timeout=10)
            shown = cli("show", key["id"], url=url)
            # gpt-4o at 1 credit per input and 2 per output token: 10 + 8.
            assert (shown["used"], shown["held"], shown["tokens_out"]) == (18, 0, 4)
            logs = server.logs()
        cli("revoke", key["id"], url=url)
        refused = admin.acl_log()
        assert refused == [], f"token metering needed more than the documented ACL: {refused}"
        assert "Traceback" not in logs, logs[-3000:]
    finally:
        admin.close()


def send_access_log(target: str, ticket: dict[str, str], usage: dict[str, float]) -> None:
    """What Envoy's gRPC access log sends for one finished request."""
    message = StreamAccessLogsMessage()
    entry = message.http_logs.log_entry.add()
    metadata = entry.common_properties.metadata.filter_metadata
    metadata["envoy.filters.http.ext_authz"].update(ticket)
    metadata["keyguard.usage"].update(usage)
    entry.response.response_code.value = 200
    with grpc.insecure_channel(target) as channel:
        AccessLogServiceStub(channel).StreamAccessLogs(iter([message]), timeout=5)


def test_the_sidecar_user_serves_and_settles_but_cannot_manage_keys(
    acl_redis: RedisServer, tmp_path: Path
) -> None:
    admin_url = acl_url(acl_redis)
    sidecar_url = acl_url(acl_redis, user="keyguard-sidecar")
    admin = admin_client(acl_redis)
    try:
        prices = tmp_path / "prices.json"
        prices.write_text(json.dumps({"gpt-4o": {"input": 1_000_000, "output": 2_000_000}}))
        assert run_cli("prices", "import", str(prices), redis_url=admin_url).returncode == 0
        key = cli("create", "--quota", "100", "--alert-below", "50", url=admin_url)
        admin.acl_log_reset()
        env = {"KEYGUARD_METERING": "tokens"}
        with running_keyguard(sidecar_url, env) as server, Client(server.target) as client:
            wait_until(lambda: client.health_status() == "SERVING", timeout=15)
            body = b'{"model": "gpt-4o", "max_tokens": 10}'
            resp = client.check(check_request({"x-api-key": key["key"]}, body=body))
            assert (http_status(resp), reason(resp)) == (200, "ok")
            ticket = {k: v.string_value for k, v in resp.dynamic_metadata.fields.items()}
            # 60 + 2 * 20 = 100 credits: the balance crosses the alert threshold.
            send_access_log(
                server.target, ticket, {"prompt_tokens": 60.0, "completion_tokens": 20.0}
            )
            wait_until(lambda: cli("show", key["id"], url=admin_url)["used"] == 100, timeout=10)
            wait_until(lambda: admin.scard("kg:{alerts}:below") == 1, timeout=10)
            # A change by the admin user still reaches the sidecar's cache.
            cli("disable", key["id"], url=admin_url)
            assert eventually(lambda: decide(client, key["key"]), (401, "key_disabled")) == (
                401,
                "key_disabled",
            )
            logs = server.logs()
        refused = admin.acl_log()
        assert refused == [], f"the sidecar needed more than its documented ACL: {refused}"
        assert "Traceback" not in logs, logs[-3000:]
        # What the sidecar's user may not do: manage keys or prices.
        for args in (
            ("keys", "create", "--quota", "5"),
            ("keys", "disable", key["id"]),
            ("keys", "revoke", key["id"]),
            ("prices", "set", "gpt-4o", "--input", "1", "--output", "1"),
        ):
            result = run_cli(*args, redis_url=sidecar_url)
            assert result.returncode != 0, args
            assert "Traceback" not in result.stderr and ACL_PASSWORD not in result.stderr
        assert cli("show", key["id"], url=admin_url)["status"] == "disabled"
    finally:
        admin.close()


def test_acl_user_is_refused_outside_its_prefix(acl_redis: RedisServer) -> None:
    user = redis.Redis(
        host="127.0.0.1", port=acl_redis.port, username="keyguard", password=ACL_PASSWORD
    )
    admin = admin_client(acl_redis)
    try:
        admin.set("app:secret", "x")
        assert user.ping()
        user.set("kg:probe", "1")  # inside the prefix: allowed
        refused = [
            lambda: user.get("app:secret"),
            lambda: user.set("other", "1"),
            lambda: user.hgetall("session:1"),
            lambda: user.delete("app:secret"),
            lambda: user.keys("*"),
            lambda: user.scan(0),
            lambda: user.flushall(),
            lambda: user.config_get("requirepass"),
            lambda: user.acl_list(),
            lambda: user.publish("other-channel", "x"),
            lambda: user.eval("return redis.call('GET', KEYS[1])", 1, "app:secret"),
            lambda: user.eval("return redis.call('GET', 'app:secret')", 0),
            lambda: user.execute_command("SELECT", "1"),
            lambda: user.execute_command("SHUTDOWN", "NOSAVE"),
        ]
        for call in refused:
            with pytest.raises(redis.exceptions.ResponseError) as err:
                call()
            message = str(err.value).lower()
            assert "permission" in message or "can't access" in message, message
        pubsub = user.pubsub()
        try:
            with pytest.raises(redis.exceptions.ResponseError):
                pubsub.subscribe("other-channel")
                pubsub.get_message(timeout=1.0)
        finally:
            pubsub.close()
        assert admin.get("app:secret") == b"x"
    finally:
        user.close()
        admin.close()


def test_wrong_password_fails_closed(acl_redis: RedisServer) -> None:
    """Checks are 503 store_unavailable; the CLI prints one line and exits 1."""
    good_url = acl_url(acl_redis)
    created = cli("create", "--unlimited", url=good_url)
    bad_url = acl_url(acl_redis, WRONG_PASSWORD)
    for args in (("keys", "list"), ("keys", "show", created["id"]), ("keys", "create")):
        assert_one_line_error(run_cli(*args, redis_url=bad_url), WRONG_PASSWORD)
    with running_keyguard(bad_url) as server, Client(server.target) as client:
        time.sleep(1.5)  # a few health probes
        assert client.health_status() == "NOT_SERVING"
        for _ in range(3):
            assert decide(client, created["key"]) == (503, "store_unavailable")
            assert decide(client, created["key"], "/v1/messages") == (503, "store_unavailable")
        logs = server.logs()
    assert WRONG_PASSWORD not in logs and quote(WRONG_PASSWORD, safe="") not in logs, logs[-2000:]


# ----- TLS ------------------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def tls_redis(redis_process: list[RedisServer], pki: Pki) -> RedisServer:
    """redis-server on a TLS port only, demanding client certificates signed by the test CA."""
    port = free_port()
    args = [
        *("--port", "0", "--tls-port", str(port)),
        *("--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key)),
        *("--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "yes"),
    ]
    return start_redis(redis_process, args, port=port)


def tls_env(pki: Pki, *, cert: bool = True, ca: Path | None = None) -> dict[str, str]:
    env = {"KEYGUARD_REDIS_TLS_CA": str(ca or pki.ca)}
    if cert:
        env["KEYGUARD_REDIS_TLS_CERT"] = str(pki.client_cert)
        env["KEYGUARD_REDIS_TLS_KEY"] = str(pki.client_key)
    return env


def tls_url(server: RedisServer) -> str:
    return f"rediss://127.0.0.1:{server.port}/0"


def test_tls_with_a_client_certificate(tls_redis: RedisServer, pki: Pki) -> None:
    assert_serves_decisions(tls_url(tls_redis), tls_env(pki))


def test_plain_connection_to_the_tls_port_fails_closed(tls_redis: RedisServer, pki: Pki) -> None:
    assert_one_line_error(
        run_cli("keys", "list", redis_url=f"redis://127.0.0.1:{tls_redis.port}/0"), "PRIVATE KEY"
    )


@pytest.mark.parametrize(
    "variant", ["no client certificate", "untrusted server", "client cert from another CA"]
)
def test_tls_fails_closed(tls_redis: RedisServer, pki: Pki, variant: str) -> None:
    good_env = tls_env(pki)
    created = cli("create", "--unlimited", url=tls_url(tls_redis), env=good_env)
    if variant == "no client certificate":
        env = tls_env(pki, cert=False)
    elif variant == "untrusted server":
        env = tls_env(pki, ca=pki.other_ca)
    else:
        env = {
            **good_env,
            "KEYGUARD_REDIS_TLS_CERT": str(pki.other_client_cert),
            "KEYGUARD_REDIS_TLS_KEY": str(pki.other_client_key),
        }
    result = run_cli("keys", "list", redis_url=tls_url(tls_redis), env=env)
    assert_one_line_error(result, "PRIVATE KEY")
    with running_keyguard(tls_url(tls_redis), env) as server, Client(server.target) as client:
        time.sleep(1.5)
        assert client.health_status() == "NOT_SERVING"
        for _ in range(3):
            assert decide(client, created["key"]) == (503, "store_unavailable")
        assert "Traceback" not in server.logs()
