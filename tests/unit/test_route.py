"""Per-route settings from Envoy's context_extensions, and what they do to a decision."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from keyguard._proto.envoy.service.auth.v3.external_auth_pb2 import CheckResponse
from keyguard.authz.route import DEFAULT, route_settings
from keyguard.keys import hash_key
from keyguard.reasons import Reason
from tests.support.checks import check_request, http_status
from tests.unit.test_metering import Meter


@pytest.mark.parametrize(
    ("extensions", "expected"),
    [
        ({}, DEFAULT),
        ({"other.filter": "x"}, DEFAULT),
        ({"keyguard.meter": "off"}, ("off", None, None, None)),
        ({"keyguard.cost": "40000"}, ("request", 40000, None, None)),
        ({"keyguard.key_types": "subscription"}, (None, None, {"subscription"}, None)),
        (
            {"keyguard.key_types": "standard, subscription", "keyguard.dialect": "anthropic"},
            (None, None, {"standard", "subscription"}, True),
        ),
        ({"keyguard.dialect": "openai"}, (None, None, None, False)),
    ],
)
def test_good_settings(extensions: dict[str, str], expected: Any) -> None:
    settings = route_settings(extensions)
    if expected is DEFAULT:
        assert settings == DEFAULT
        return
    meter, cost, types, anthropic = expected
    assert settings.error == ""
    assert (settings.meter, settings.cost, settings.anthropic) == (meter, cost, anthropic)
    assert settings.key_types == (frozenset(types) if types else None)


@pytest.mark.parametrize(
    "extensions",
    [
        {"keyguard.meter": "free"},
        {"keyguard.cost": "-1"},
        {"keyguard.cost": "1.5"},
        {"keyguard.cost": "10", "keyguard.meter": "tokens"},
        {"keyguard.key_types": "admin"},
        {"keyguard.key_types": ""},
        {"keyguard.dialect": "gemini"},
        {"keyguard.colour": "blue"},
    ],
)
def test_bad_settings_name_the_setting(extensions: dict[str, str]) -> None:
    error = route_settings(extensions).error
    assert "keyguard." in error
    assert "\n" not in error


def check(m: Meter, key: str, extensions: dict[str, str], body: dict[str, Any] | None = None,
          path: str = "/v1/chat/completions") -> CheckResponse:  # fmt: skip
    payload = json.dumps(body or {"model": "gpt-4o", "max_tokens": 10}).encode()
    request = check_request({"authorization": f"Bearer {key}"}, path=path, body=payload)
    request.attributes.context_extensions.update(extensions)
    _decision, wire = asyncio.run(m.service.answer(request))
    return CheckResponse.FromString(wire)


def test_a_bad_route_setting_is_a_500_never_an_allow() -> None:
    m = Meter()
    response = check(m, m.key(), {"keyguard.meter": "free"})
    assert http_status(response) == 500
    assert json.loads(response.denied_response.body)["error"]["code"] == (
        Reason.ROUTE_CONFIG_INVALID.value
    )


def test_a_route_for_subscription_keys_refuses_standard_ones() -> None:
    m = Meter()
    response = check(m, m.key(), {"keyguard.key_types": "subscription"})
    assert http_status(response) == 403
    assert "key_type_not_allowed" in response.denied_response.body


def test_meter_off_spends_nothing_and_holds_nothing() -> None:
    m = Meter()
    key = m.key(remaining="5")
    for _ in range(3):
        response = check(m, key, {"keyguard.meter": "off"}, {"model": "unpriced-model"})
        assert http_status(response) == 200
        assert "hold" not in response.dynamic_metadata.fields
    assert (m.field(key, "remaining"), m.field(key, "held")) == (5, 0)


def test_a_route_cost_is_spent_per_request_at_check() -> None:
    m = Meter()
    key = m.key(remaining="100")
    statuses = [http_status(check(m, key, {"keyguard.cost": "40"})) for _ in range(3)]
    assert statuses == [200, 200, 402]
    assert m.field(key, "remaining") == 20
    assert m.store.records[hash_key(key)]["used"] == "80"


def test_the_route_dialect_shapes_the_error_body() -> None:
    m = Meter()
    response = check(m, "sk-" + "x" * 10, {"keyguard.dialect": "anthropic"})
    body = json.loads(response.denied_response.body)
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    openai = check(m, "sk-" + "x" * 10, {"keyguard.dialect": "openai"}, path="/v1/messages")
    assert "code" in json.loads(openai.denied_response.body)["error"]
