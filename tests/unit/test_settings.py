"""keyguard.settings: loading and validating KEYGUARD_* settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from keyguard.settings import DEFAULTS, ENV_NAMES, Settings, SettingsError, load, mask_url


def test_defaults_from_empty_env() -> None:
    settings = load(env={})
    assert settings == Settings()
    assert settings.listen == ("127.0.0.1:9001",)
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.metrics_port == 9090
    assert settings.request_cost == 1
    assert settings.strip_credentials is True
    assert settings.xff_trusted_hops == 0
    assert settings.on_store_error == "deny"


def test_load_ignores_unrelated_variables() -> None:
    assert load(env={"KEYGUARD_NOPE": "x", "PATH": "/bin", "keyguard_listen": "bad"}) == DEFAULTS


def test_every_field_has_an_env_name() -> None:
    assert set(ENV_NAMES.values()) == {f.name for f in dataclasses.fields(Settings)}
    assert ENV_NAMES["REDIS_URL"] == "redis_url"


def test_settings_are_frozen() -> None:
    settings = load(env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.request_cost = 5  # type: ignore[misc]


def test_env_values_are_parsed() -> None:
    settings = load(
        env={
            "KEYGUARD_LISTEN": " 127.0.0.1:9001 , unix:/run/keyguard.sock ,",
            "KEYGUARD_REDIS_URL": "redis://:secret@redis.local:6380/2",
            "KEYGUARD_REQUEST_COST": " 3 ",
            "KEYGUARD_STRIP_CREDENTIALS": "false",
            "KEYGUARD_XFF_TRUSTED_HOPS": "2",
            "KEYGUARD_ON_STORE_ERROR": "cached",
            "KEYGUARD_CACHE_TTL": "2.5",
            "KEYGUARD_REDIS_TIMEOUT": "0.05",
            "KEYGUARD_METRICS_PORT": "0",
            "KEYGUARD_LOG_LEVEL": "DEBUG",
        }
    )
    assert settings.listen == ("127.0.0.1:9001", "unix:/run/keyguard.sock")
    assert settings.redis_url == "redis://:secret@redis.local:6380/2"
    assert settings.request_cost == 3
    assert settings.strip_credentials is False
    assert settings.xff_trusted_hops == 2
    assert settings.on_store_error == "cached"
    assert settings.cache_ttl == 2.5
    assert settings.redis_timeout == 0.05
    assert settings.metrics_port == 0


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        (" yes ", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("False", False),
        ("no", False),
        ("off", False),
    ],
)
def test_bool_values(raw: str, value: bool) -> None:
    assert load(env={"KEYGUARD_STRIP_CREDENTIALS": raw}).strip_credentials is value


def test_overrides_win_over_env() -> None:
    settings = load(
        env={"KEYGUARD_REQUEST_COST": "3", "KEYGUARD_LISTEN": "127.0.0.1:1"},
        overrides={"request_cost": "7", "listen": "0.0.0.0:9001,[::]:9002"},
    )
    assert settings.request_cost == 7
    assert settings.listen == ("0.0.0.0:9001", "[::]:9002")


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("KEYGUARD_STRIP_CREDENTIALS", "maybe"),
        ("KEYGUARD_STRIP_CREDENTIALS", ""),
        ("KEYGUARD_STRIP_CREDENTIALS", "2"),
        ("KEYGUARD_LOG_ALLOWS", "ja"),
        ("KEYGUARD_REQUEST_COST", "-1"),
        ("KEYGUARD_REQUEST_COST", "1.5"),
        ("KEYGUARD_REQUEST_COST", "one"),
        ("KEYGUARD_REQUEST_COST", ""),
        ("KEYGUARD_XFF_TRUSTED_HOPS", "-2"),
        ("KEYGUARD_METRICS_PORT", "-1"),
        ("KEYGUARD_METRICS_PORT", "65536"),
        ("KEYGUARD_METRICS_PORT", "http"),
        ("KEYGUARD_WORKERS", "0"),
        ("KEYGUARD_CACHE_SIZE", "0"),
        ("KEYGUARD_NEGATIVE_CACHE_SIZE", "-5"),
        ("KEYGUARD_CACHE_TTL", "-1"),
        ("KEYGUARD_CACHE_TTL", "nan"),
        ("KEYGUARD_CACHE_TTL", "soon"),
        ("KEYGUARD_GRACE_SECONDS", "-0.5"),
        ("KEYGUARD_REDIS_TIMEOUT", "0"),
        ("KEYGUARD_REDIS_TIMEOUT", "-1"),
        ("KEYGUARD_REDIS_LINGER_MS", "-1"),
        ("KEYGUARD_REDIS_LINGER_MS", "51"),
        ("KEYGUARD_REDIS_LINGER_MS", "200"),  # not below the 0.2 s timeout
        ("KEYGUARD_REDIS_LINGER_MS", "soon"),
        ("KEYGUARD_LISTEN", "foo"),
        ("KEYGUARD_LISTEN", ""),
        ("KEYGUARD_LISTEN", ","),
        ("KEYGUARD_LISTEN", "127.0.0.1"),
        ("KEYGUARD_LISTEN", "127.0.0.1:"),
        ("KEYGUARD_LISTEN", ":9001"),
        ("KEYGUARD_LISTEN", "127.0.0.1:0"),
        ("KEYGUARD_LISTEN", "127.0.0.1:65536"),
        ("KEYGUARD_LISTEN", "127.0.0.1:http"),
        ("KEYGUARD_LISTEN", "127.0.0.1:9001,foo"),
        ("KEYGUARD_LISTEN", "unix:"),
        ("KEYGUARD_REDIS_URL", "http://x"),
        ("KEYGUARD_REDIS_URL", "redis://:99999"),
        ("KEYGUARD_REDIS_URL", "redis://host:port"),
        ("KEYGUARD_REDIS_URL", "localhost:6379"),
        ("KEYGUARD_REDIS_URL", ""),
        ("KEYGUARD_REDIS_URL", "redis://"),
        ("KEYGUARD_REDIS_URL", "redis:///0"),
        ("KEYGUARD_REDIS_URL", "unix://"),
        ("KEYGUARD_REDIS_URL", "redis://[::1"),
        ("KEYGUARD_REDIS_URL", "redis://h1:6379,h2:6379/0"),  # several hosts need +cluster
        ("KEYGUARD_REDIS_URL", "redis+cluster://h1:7000,h2:99999"),
        ("KEYGUARD_REDIS_URL", "redis+cluster://h1:7000,:7001"),
        ("KEYGUARD_REDIS_URL", "redis+sentinel://s1:26379,s2:26379"),  # no master name
        ("KEYGUARD_ON_STORE_ERROR", "ignore"),
        ("KEYGUARD_ON_STORE_ERROR", ""),
        ("KEYGUARD_ON_STORE_ERROR", "DENY "),
        ("KEYGUARD_LOG_LEVEL", "verbose"),
        ("KEYGUARD_TLS_CERT", "/nonexistent/cert.pem"),
        ("KEYGUARD_TLS_KEY", "/nonexistent/key.pem"),
        ("KEYGUARD_TLS_CLIENT_CA", "/nonexistent/ca.pem"),
        ("KEYGUARD_REDIS_TLS_CA", "/nonexistent/ca.pem"),
        ("KEYGUARD_REDIS_TLS_CERT", "/nonexistent/cert.pem"),
        ("KEYGUARD_REDIS_TLS_KEY", "/nonexistent/key.pem"),
    ],
)
def test_bad_value_names_the_variable(name: str, raw: str) -> None:
    with pytest.raises(SettingsError) as info:
        load(env={name: raw})
    message = str(info.value)
    assert name in message
    assert "\n" not in message


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)


def test_bad_override_names_the_flag() -> None:
    with pytest.raises(SettingsError, match="--request-cost"):
        load(env={}, overrides={"request_cost": "-3"})
    with pytest.raises(SettingsError, match="--strip-credentials"):
        load(env={}, overrides={"strip_credentials": "perhaps"})


def test_tls_cert_without_key(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(SettingsError) as info:
        load(env={"KEYGUARD_TLS_CERT": str(cert)})
    assert "KEYGUARD_TLS_CERT" in str(info.value)
    assert "KEYGUARD_TLS_KEY" in str(info.value)


def test_tls_key_without_cert(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("x")
    with pytest.raises(SettingsError, match="KEYGUARD_TLS_KEY"):
        load(env={"KEYGUARD_TLS_KEY": str(key)})


def test_tls_client_ca_without_cert(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(SettingsError, match="KEYGUARD_TLS_CLIENT_CA"):
        load(env={"KEYGUARD_TLS_CLIENT_CA": str(ca)})


def test_tls_files_that_exist_are_accepted(tmp_path: Path) -> None:
    paths = {}
    for name in ("cert", "key", "ca"):
        path = tmp_path / f"{name}.pem"
        path.write_text("x")
        paths[name] = str(path)
    settings = load(
        env={
            "KEYGUARD_TLS_CERT": paths["cert"],
            "KEYGUARD_TLS_KEY": paths["key"],
            "KEYGUARD_TLS_CLIENT_CA": paths["ca"],
            "KEYGUARD_REDIS_TLS_CA": paths["ca"],
        }
    )
    assert settings.tls_cert == paths["cert"]
    assert settings.redis_tls_ca == paths["ca"]


def test_tls_path_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="KEYGUARD_REDIS_TLS_CA"):
        load(env={"KEYGUARD_REDIS_TLS_CA": str(tmp_path)})


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://localhost",
        "redis://user:pw@redis.example:6380/3",
        "rediss://redis.example:6380/0",
        "redis://[::1]:6379/0",
        "unix:///run/redis.sock",
        "unix:///run/redis.sock?db=2",
        "redis+cluster://10.0.0.1:7000",
        "rediss+cluster://10.0.0.1:7000",
        "redis+sentinel://sentinel.local:26379/mymaster",
        "redis+sentinel://:pw@sentinel.local:26379/mymaster/2",
    ],
)
def test_good_redis_urls(url: str) -> None:
    assert load(env={"KEYGUARD_REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize(
    "url",
    [
        # The multi-host forms that keyguard.store.connect documents and parses.
        "redis+cluster://10.0.0.1:7000,10.0.0.2:7001",
        "redis+sentinel://s1:26379,s2:26379,s3:26379/mymaster",
        "redis+sentinel://:pw@s1:26379,s2:26379/mymaster/0",
    ],
)
def test_multi_host_cluster_and_sentinel_urls_are_accepted(url: str) -> None:
    assert load(env={"KEYGUARD_REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:secret@host:6379/0", "redis://user:***@host:6379/0"),
        ("rediss://user:p%40ss@host/0", "rediss://user:***@host/0"),
        ("redis://pw:pw@host/0", "redis://pw:***@host/0"),
        ("redis://u:p@ss@host/0", "redis://u:***@host/0"),
        ("redis+sentinel://:pw@s1:26379/mymaster", "redis+sentinel://:***@s1:26379/mymaster"),
        ("redis://user@host:6379/0", "redis://user@host:6379/0"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize("password", ["secret", "hunter2", "p%40ss", "s3cr3t!"])
def test_mask_url_never_shows_the_password(password: str) -> None:
    masked = mask_url(f"redis://admin:{password}@redis.internal:6379/0")
    assert password not in masked
    assert "admin" in masked
    assert "redis.internal" in masked


def test_masked_settings_hide_the_password() -> None:
    settings = load(env={"KEYGUARD_REDIS_URL": "redis://:topsecret@host:6379/0"})
    masked = settings.masked()
    assert "topsecret" not in repr(masked)
    assert masked["redis_url"] == "redis://:***@host:6379/0"
    assert masked["request_cost"] == settings.request_cost


def test_mask_url_unparseable() -> None:
    assert "secret" not in mask_url("redis://:secret@[::1")
