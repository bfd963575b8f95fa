"""keyguard.request.extract: CheckRequest → RequestFacts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyguard._proto.envoy.config.core.v3.address_pb2 import Address, SocketAddress
from keyguard._proto.envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from keyguard._proto.envoy.service.auth.v3.attribute_context_pb2 import AttributeContext
from keyguard._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from keyguard.authz.request import Credential, extract
from keyguard.model import ModelLookup

KEY = "sk-" + "A1b2C3d4" * 5
OTHER = "sk-" + "Z9y8X7w6" * 5


def check_request(
    headers: dict[str, str] | None = None,
    *,
    header_map: list[tuple[str, str | bytes]] | None = None,
    path: str = "/v1/chat/completions",
    source: str | None = "10.1.2.3",
    body: str = "",
    raw_body: bytes = b"",
    request_id: str = "",
) -> CheckRequest:
    """A CheckRequest as Envoy sends it: either the headers map or header_map entries.

    A bytes value in header_map goes into raw_value, as with encode_raw_headers.
    """
    http = AttributeContext.HttpRequest(
        id=request_id, method="POST", path=path, body=body, raw_body=raw_body
    )
    if header_map is not None:
        entries = [
            HeaderValue(key=k, raw_value=v) if isinstance(v, bytes) else HeaderValue(key=k, value=v)
            for k, v in header_map
        ]
        http.header_map.CopyFrom(HeaderMap(headers=entries))
    for name, value in (headers or {}).items():
        http.headers[name] = value
    attributes = AttributeContext(request=AttributeContext.Request(http=http))
    if source is not None:
        attributes.source.address.CopyFrom(
            Address(socket_address=SocketAddress(address=source, port_value=54321))
        )
    return CheckRequest(attributes=attributes)


# ----- credential -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [f"Bearer {KEY}", f"bearer {KEY}", f"BEARER {KEY}", f"BeArEr {KEY}", f"  Bearer   {KEY}  "],
)
def test_bearer_scheme_is_case_insensitive(value: str) -> None:
    assert extract(check_request({"authorization": value})).credential == KEY


def test_x_api_key() -> None:
    assert extract(check_request({"x-api-key": KEY})).credential == KEY
    assert extract(check_request({"x-api-key": f"  {KEY} "})).credential == KEY


def test_authorization_wins_over_x_api_key() -> None:
    facts = extract(check_request({"authorization": f"Bearer {KEY}", "x-api-key": OTHER}))
    assert facts.credential == KEY


@pytest.mark.parametrize(
    "authorization",
    [
        f"Basic {KEY}",
        f"Token {KEY}",
        f"Bearer:{KEY}",
        f"Bearer\t{KEY}x",
        KEY,
        "Digest abc",
        f"Bearerx {KEY}",
    ],
)
def test_non_bearer_authorization_is_malformed_even_with_good_x_api_key(
    authorization: str,
) -> None:
    facts = extract(check_request({"authorization": authorization, "x-api-key": KEY}))
    assert facts.credential is Credential.MALFORMED
    facts = extract(check_request({"authorization": authorization}))
    assert facts.credential is Credential.MALFORMED


def test_bad_bearer_key_is_returned_as_is_not_the_x_api_key() -> None:
    # The format check happens later; the point is that x-api-key is not consulted.
    facts = extract(check_request({"authorization": "Bearer not-a-key", "x-api-key": KEY}))
    assert facts.credential == "not-a-key"


@pytest.mark.parametrize("value", ["", " ", "\t", "Bearer", "Bearer ", "bearer    "])
def test_empty_authorization_is_missing(value: str) -> None:
    assert extract(check_request({"authorization": value})).credential is Credential.MISSING
    facts = extract(check_request({"authorization": value, "x-api-key": KEY}))
    assert facts.credential is Credential.MISSING


@pytest.mark.parametrize("value", ["", "  "])
def test_empty_x_api_key_is_missing(value: str) -> None:
    assert extract(check_request({"x-api-key": value})).credential is Credential.MISSING


def test_no_credential_is_missing() -> None:
    facts = extract(check_request({"content-type": "application/json"}))
    assert facts.credential is Credential.MISSING
    assert extract(check_request()).credential is Credential.MISSING


@pytest.mark.parametrize(
    "name", ["Authorization", "AUTHORIZATION", "authorization", "AuThOrIzAtIoN"]
)
def test_header_map_names_are_case_insensitive(name: str) -> None:
    facts = extract(check_request(header_map=[(name, f"Bearer {KEY}")]))
    assert facts.credential == KEY


@pytest.mark.parametrize("name", ["X-Api-Key", "X-API-KEY", "x-api-key"])
def test_header_map_x_api_key_names_are_case_insensitive(name: str) -> None:
    assert extract(check_request(header_map=[(name, KEY)])).credential == KEY


def test_headers_map_names_are_case_insensitive() -> None:
    # Envoy lower-cases names in the headers map, but do not depend on it.
    assert extract(check_request({"X-Api-Key": KEY})).credential == KEY
    assert extract(check_request({"Authorization": f"Bearer {KEY}"})).credential == KEY


def test_header_map_raw_value() -> None:
    facts = extract(check_request(header_map=[("authorization", f"Bearer {KEY}".encode())]))
    assert facts.credential == KEY
    facts = extract(check_request(header_map=[("x-api-key", KEY.encode())]))
    assert facts.credential == KEY


def test_header_map_raw_value_with_invalid_utf8_does_not_raise() -> None:
    facts = extract(check_request(header_map=[("x-api-key", b"sk-\xff\xfe")]))
    assert isinstance(facts.credential, str)
    assert facts.credential != KEY


def test_header_map_authorization_wins_over_x_api_key() -> None:
    facts = extract(
        check_request(header_map=[("x-api-key", OTHER), ("Authorization", f"Bearer {KEY}")])
    )
    assert facts.credential == KEY
    facts = extract(check_request(header_map=[("x-api-key", KEY), ("authorization", "Basic x")]))
    assert facts.credential is Credential.MALFORMED


@pytest.mark.parametrize(
    "entries",
    [
        [("authorization", f"Bearer {KEY}"), ("authorization", f"Bearer {KEY}")],
        [("authorization", f"Bearer {KEY}"), ("Authorization", f"Bearer {OTHER}")],
        [("authorization", f"Bearer {KEY}"), ("AUTHORIZATION", b"Bearer x")],
        [("x-api-key", KEY), ("x-api-key", KEY)],
        [("X-Api-Key", KEY), ("x-api-key", OTHER)],
        [("authorization", f"Bearer {KEY}"), ("authorization", ""), ("x-api-key", KEY)],
    ],
)
def test_duplicated_credential_headers_are_malformed(
    entries: list[tuple[str, str | bytes]],
) -> None:
    assert extract(check_request(header_map=entries)).credential is Credential.MALFORMED


def test_header_map_is_used_instead_of_headers_when_present() -> None:
    request = check_request({"x-api-key": OTHER}, header_map=[("x-api-key", KEY)])
    assert extract(request).credential == KEY


# ----- request id, path, body, anthropic ------------------------------------------------------


def test_request_id_from_header() -> None:
    facts = extract(check_request({"x-request-id": "rid-123"}, request_id="envoy-id"))
    assert facts.request_id == "rid-123"
    facts = extract(check_request(header_map=[("X-Request-Id", "rid-456")]))
    assert facts.request_id == "rid-456"


def test_request_id_falls_back_to_envoy_id() -> None:
    assert extract(check_request(request_id="envoy-id")).request_id == "envoy-id"
    assert extract(check_request()).request_id == ""


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/chat/completions", "/v1/chat/completions"),
        ("/v1/chat/completions?stream=true", "/v1/chat/completions"),
        ("/v1/messages?beta=true&x=/models/a:b", "/v1/messages"),
        ("/v1/models?", "/v1/models"),
        ("/?a?b", "/"),
        ("", ""),
    ],
)
def test_path_query_string_is_stripped(path: str, expected: str) -> None:
    assert extract(check_request(path=path)).path == expected


@pytest.mark.parametrize(
    ("path", "anthropic"),
    [
        ("/v1/messages", True),
        ("/anthropic/v1/messages", True),
        ("/v1/messages?beta=true", True),
        ("/messages", True),
        ("/v1/chat/completions", False),
        ("/v1/messages/count_tokens", False),
        ("/v1/messages/", False),
        ("/v1/mymessages", False),
        ("/v1/completions", False),
        ("/v1/chat/completions?x=/messages", False),
        ("", False),
    ],
)
def test_anthropic_only_for_paths_ending_in_messages(path: str, anthropic: bool) -> None:
    assert extract(check_request(path=path)).anthropic is anthropic


def test_body_from_raw_body() -> None:
    facts = extract(
        check_request(
            {"content-type": "application/json"},
            raw_body=b'{"model":"gpt-4o","messages":[]}',
        )
    )
    assert facts.model() == "gpt-4o"


def test_body_from_body_string() -> None:
    facts = extract(check_request(body='{"model":"claude-3-5-haiku","x":"é"}'))
    assert facts.model() == "claude-3-5-haiku"


def test_raw_body_wins_over_body_string() -> None:
    facts = extract(check_request(body='{"model":"from-body"}', raw_body=b'{"model":"from-raw"}'))
    assert facts.model() == "from-raw"


def test_no_body_gives_no_model() -> None:
    assert extract(check_request()).model() == ModelLookup.NONE


def test_model_from_gemini_path() -> None:
    facts = extract(check_request(path="/v1beta/models/gemini-1.5-pro:generateContent?alt=sse"))
    assert facts.model() == "gemini-1.5-pro"


def test_content_type_is_passed_to_the_model_reader() -> None:
    body = b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n--XyZ--\r\n'
    facts = extract(
        check_request(
            header_map=[("Content-Type", "multipart/form-data; boundary=XyZ")],
            path="/v1/audio/transcriptions",
            raw_body=body,
        )
    )
    assert facts.content_type == "multipart/form-data; boundary=XyZ"
    assert facts.model() == "whisper-1"


def test_model_is_read_lazily_and_once() -> None:
    request = check_request(raw_body=b'{"model":"gpt-4o"}')
    facts = extract(request)
    # Not read yet: a body changed before the first read is the one read.
    request.attributes.request.http.raw_body = b'{"model":"first"}'
    assert facts.model() == "first"
    request.attributes.request.http.raw_body = b'{"model":"changed"}'
    assert facts.model() == "first"


# ----- client IP ------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["10.1.2.3", "2001:db8::7", "::ffff:10.0.0.1"])
def test_client_ip_from_source_address(source: str) -> None:
    assert extract(check_request(source=source)).client_ip == source


def test_client_ip_without_source_address_is_none() -> None:
    assert extract(check_request(source=None)).client_ip is None


def test_xff_ignored_without_trusted_hops() -> None:
    request = check_request({"x-forwarded-for": "1.1.1.1, 2.2.2.2"}, source="10.1.2.3")
    assert extract(request).client_ip == "10.1.2.3"
    assert extract(request, trusted_hops=0).client_ip == "10.1.2.3"


@pytest.mark.parametrize(
    ("xff", "hops", "expected"),
    [
        ("1.1.1.1", 1, "1.1.1.1"),
        ("1.1.1.1, 2.2.2.2, 3.3.3.3", 1, "3.3.3.3"),
        ("1.1.1.1, 2.2.2.2, 3.3.3.3", 2, "2.2.2.2"),
        ("1.1.1.1, 2.2.2.2, 3.3.3.3", 3, "1.1.1.1"),
        ("1.1.1.1, 2.2.2.2, 3.3.3.3", 4, None),
        ("1.1.1.1,2.2.2.2", 2, "1.1.1.1"),
        (" 1.1.1.1 ,  2001:db8::1 ", 1, "2001:db8::1"),
        ("1.1.1.1, , 2.2.2.2,", 2, "1.1.1.1"),
        ("", 1, None),
    ],
)
def test_xff_trusted_hops(xff: str, hops: int, expected: str | None) -> None:
    request = check_request({"x-forwarded-for": xff}, source="10.1.2.3")
    assert extract(request, trusted_hops=hops).client_ip == expected


def test_xff_trusted_hops_without_xff_is_none_not_the_source() -> None:
    assert extract(check_request(source="10.1.2.3"), trusted_hops=1).client_ip is None


def test_xff_joined_across_multiple_headers() -> None:
    request = check_request(
        header_map=[
            ("X-Forwarded-For", "1.1.1.1, 2.2.2.2"),
            ("x-api-key", KEY),
            ("x-forwarded-for", "3.3.3.3"),
            ("x-forwarded-for", b"4.4.4.4, 5.5.5.5"),
        ],
        source="10.1.2.3",
    )
    assert extract(request, trusted_hops=1).client_ip == "5.5.5.5"
    assert extract(request, trusted_hops=2).client_ip == "4.4.4.4"
    assert extract(request, trusted_hops=3).client_ip == "3.3.3.3"
    assert extract(request, trusted_hops=4).client_ip == "2.2.2.2"
    assert extract(request, trusted_hops=5).client_ip == "1.1.1.1"
    assert extract(request, trusted_hops=6).client_ip is None
    assert extract(request).client_ip == "10.1.2.3"


def test_unrelated_headers_are_ignored() -> None:
    headers = {f"x-h{i}": "v" for i in range(50)}
    headers["x-api-key"] = KEY
    facts = extract(check_request(headers))
    assert facts.credential == KEY
    assert facts.content_type == ""


header_names = st.sampled_from(
    ["authorization", "Authorization", "x-api-key", "X-Forwarded-For", "x-request-id", "x-other"]
)
header_values = st.one_of(st.text(max_size=60), st.binary(max_size=60))


@settings(max_examples=300, deadline=None)
@given(
    entries=st.lists(st.tuples(header_names, header_values), max_size=6),
    path=st.text(max_size=40),
    hops=st.integers(0, 4),
)
def test_extract_never_raises(entries: list[tuple[str, str | bytes]], path: str, hops: int) -> None:
    facts = extract(check_request(header_map=entries, path=path), trusted_hops=hops)
    assert isinstance(facts.credential, str)
    assert "?" not in facts.path
    assert facts.client_ip is None or isinstance(facts.client_ip, str)
