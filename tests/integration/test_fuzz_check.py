"""Property-based fuzzing of the Check handler (issue 6), in-process over a real Redis.

Each example is generated as a *description* of a request whose meaning is known (which
header carries which key, where the model sits in the body, which address the client has),
and is then turned into a CheckRequest. An oracle written here, from that description and
the documented rules rather than from keyguard's code, says what the answer must be:

1. every answer is a well-formed CheckResponse: one of ok_response / denied_response; a
   denial has an HTTP status keyguard documents and a JSON body in the OpenAI shape, or the
   Anthropic shape for `/messages` paths; never an exception, never a 500;
2. an allow happens only for the one effective credential header (Authorization wins over
   x-api-key) carrying a known, active key whose policy admits the request, and it names
   that key; every deny has the reason the oracle expects;
3. no answer (allow or deny) contains a real key, a key body or a presented credential, and
   no log line a real key or key body;
4. duplicated credential headers are 401 invalid_api_key.

Two x-api-key values are ambiguous even beside one Authorization header (401), and a
bodyless method (GET/HEAD/OPTIONS/DELETE) that does carry a body has its model read.

The example budget comes from KEYGUARD_FUZZ_EXAMPLES (default 20,000, shared by the two
fuzz tests); run a long profile with e.g. KEYGUARD_FUZZ_EXAMPLES=500000.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import json
import os
import re
import string
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from keyguard import logs
from keyguard._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from keyguard.keys import hash_key
from keyguard.service import AuthorizationService
from keyguard.store import record_key
from tests.integration.conftest import run, service_for
from tests.support.checks import check_request, create_key, http_status, keys_cli, reason
from tests.support.contract import ANTHROPIC_TYPES

TOTAL_EXAMPLES = max(2, int(os.environ.get("KEYGUARD_FUZZ_EXAMPLES", "20000")))
GENERAL_EXAMPLES = TOTAL_EXAMPLES * 3 // 4
DUPLICATE_EXAMPLES = TOTAL_EXAMPLES - GENERAL_EXAMPLES

# pytest-timeout's 300 s default would cut a long local profile short.
pytestmark = pytest.mark.timeout(max(300, TOTAL_EXAMPLES // 25))

FUZZ_SETTINGS: dict[str, Any] = {
    "deadline": None,
    "print_blob": True,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
}

ALNUM = string.ascii_letters + string.digits
DENY_STATUSES = frozenset({400, 401, 402, 403, 429, 500, 503})
# The documented Gemini path form: the path ends in "/models/<model>:<action>".
GEMINI_PATH = re.compile(r"/models/([^/:?]+):[A-Za-z]+$")
MAX_MODEL_LEN = 256

# ----- the keys ----------------------------------------------------------------------------

ALLOWED_MODELS = frozenset({"gpt-4o", "claude-3-5-haiku"})
COMBO_MODELS = frozenset({"gpt-4o"})
IP_NETS = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))
COMBO_NETS = (ipaddress.ip_network("10.0.0.0/8"),)
BIG = "1000000000"

# label → `keys create` options
KEY_SPECS: dict[str, tuple[str, ...]] = {
    "unlimited": ("--unlimited",),
    "models": ("--unlimited", "--models", ",".join(sorted(ALLOWED_MODELS))),
    "ips": ("--unlimited", "--allowed-ips", "10.0.0.0/8,2001:db8::/32"),
    "disabled": ("--unlimited",),
    "expired": ("--unlimited",),
    "quota0": ("--quota", "0"),
    "quota": ("--quota", BIG),
    "payg": ("--quota", "0", "--payg"),
    "subscription": ("--type", "subscription", "--quota", BIG, "--cycle", "30d"),
    "rpm": ("--unlimited", "--rpm", "2"),
    "combo": ("--quota", BIG, "--allowed-ips", "10.0.0.0/8", "--models", "gpt-4o"),
}
KEY_NETS = {"ips": IP_NETS, "combo": COMBO_NETS}
KEY_MODELS = {"models": ALLOWED_MODELS, "combo": COMBO_MODELS}


@dataclass(frozen=True)
class FuzzKey:
    label: str
    id: str
    key: str = field(repr=False)

    @property
    def body(self) -> str:
        return self.key.removeprefix("sk-sub-").removeprefix("sk-")


def create_keys(redis_url: str) -> dict[str, FuzzKey]:
    keys: dict[str, FuzzKey] = {}
    for label, options in KEY_SPECS.items():
        data = create_key(redis_url, "--name", f"fuzz-{label}", *options)
        keys[label] = FuzzKey(label, str(data["id"]), str(data["key"]))
    code, out = keys_cli(redis_url, "disable", keys["disabled"].id)
    assert code == 0, out
    client = redis.Redis.from_url(redis_url)
    try:
        expired = record_key(hash_key(keys["expired"].key))
        client.hset(expired, "expires_at", str(int(time.time()) - 100))
    finally:
        client.close()
    return keys


# ----- what a generated request means ------------------------------------------------------

# Meaning of one credential header's value: a real key (by label), or one of these.
MISSING = "missing"  # empty, or a Bearer scheme with nothing after it
INVALID = "invalid"  # malformed, wrong scheme, or a well-formed key no store holds
GARBAGE = "garbage"  # random text: missing or invalid, never a key


@dataclass
class Header:
    name: str
    container: str  # "map" (the headers map) or "raw" (header_map, encode_raw_headers)
    value: str = ""  # the map value, or header_map's string `value`
    raw: bytes = b""  # header_map's raw_value
    cred: str | None = None  # "authorization" / "x-api-key" for credential headers
    meaning: str = ""  # for credential headers: a key label, MISSING, INVALID or GARBAGE


@dataclass(frozen=True)
class Body:
    data: bytes
    content_type: str | None  # None: no content-type header
    model: frozenset[str]  # possible readings: "=NAME", "required" or "any"


@dataclass(frozen=True)
class Source:
    kind: str  # "none" (no source), "pipe", "socket"
    address: str = ""


@dataclass
class Spec:
    headers: list[Header]
    path: str
    body: Body
    body_field: str  # "raw_body", "body" (the string field), or "both" (raw_body wins)
    decoy_body: str
    source: Source
    method: str
    request_id: str
    empty: bool = False  # a bare CheckRequest(): no attributes at all

    def build(self) -> CheckRequest:
        req = CheckRequest()
        if self.empty:
            return req
        http = req.attributes.request.http
        http.path = self.path
        http.method = self.method
        http.id = self.request_id
        for h in self.headers:
            if h.container == "map":
                http.headers[h.name] = h.value
            else:
                entry = http.header_map.headers.add()
                entry.key = h.name
                if h.value:
                    entry.value = h.value
                if h.raw:
                    entry.raw_value = h.raw
        data = self.body.data
        if data:
            if self.body_field == "body":
                http.body = data.decode("utf-8")
            else:
                http.raw_body = data
                if self.body_field == "both":
                    http.body = self.decoy_body
            http.size = len(data) + (1000 if len(data) % 3 == 0 else 0)
        if self.source.kind == "pipe":
            req.attributes.source.address.pipe.path = self.source.address
        elif self.source.kind == "socket":
            req.attributes.source.address.socket_address.address = self.source.address
            req.attributes.source.address.socket_address.port_value = 40000
        return req

    # -- the oracle's view of the request --

    def active_headers(self) -> list[Header]:
        # Envoy sends header_map (encode_raw_headers) or the headers map, never both;
        # when header_map has entries it is the one that counts.
        raw = [h for h in self.headers if h.container == "raw"]
        return raw if raw else [h for h in self.headers if h.container == "map"]

    @property
    def bare_path(self) -> str:
        return "" if self.empty else self.path.partition("?")[0]

    @property
    def anthropic(self) -> bool:
        return self.bare_path.endswith("/messages")

    def client_ip(self) -> str | None:
        return self.source.address if self.source.kind == "socket" else None

    def presented(self) -> list[str]:
        """The credential header values as keyguard reads them."""
        out = []
        for h in self.headers:
            if h.cred is not None:
                out.append(h.value or h.raw.decode("utf-8", errors="replace"))
        return out


# ----- the oracle --------------------------------------------------------------------------

Outcome = tuple[int, str, str]  # (HTTP status, reason, key id for allows)


def effective_meanings(spec: Spec) -> set[str]:
    if spec.empty:
        return {MISSING}
    active = spec.active_headers()
    auth = [h for h in active if h.cred == "authorization"]
    api_key = [h for h in active if h.cred == "x-api-key"]
    if auth:
        if len(auth) > 1:
            return {INVALID}
        meanings = {auth[0].meaning}
        if len(api_key) > 1:
            # Two x-api-key values are ambiguous whichever header would win.
            return {INVALID}
        return meanings
    if api_key:
        return {INVALID} if len(api_key) > 1 else {api_key[0].meaning}
    return {MISSING}


def ip_admitted(address: str | None, nets: tuple[Any, ...]) -> bool:
    if not address:
        return False
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == net.version and addr in net for net in nets)


# Methods that carry no body: unless the path names a model, a model list does not apply.
BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


def model_readings(spec: Spec) -> frozenset[str]:
    match = GEMINI_PATH.search(spec.bare_path)
    if match:
        return frozenset({"=" + match.group(1)})
    if spec.method.upper() in BODYLESS_METHODS and not spec.body.data:
        return frozenset({"n/a"})
    return spec.body.model


def key_outcomes(label: str, spec: Spec, keys: dict[str, FuzzKey]) -> set[Outcome]:
    if label == "disabled":
        return {(401, "key_disabled", "")}
    if label == "expired":
        return {(401, "key_expired", "")}
    nets = KEY_NETS.get(label)
    if nets is not None and not ip_admitted(spec.client_ip(), nets):
        return {(403, "ip_not_allowed", "")}
    allow = (200, "ok", keys[label].id)
    if label == "quota0":
        metered = {(402, "insufficient_quota", "")}
    elif label == "rpm":
        metered = {allow, (429, "rate_limit_exceeded", "")}
    else:
        metered = {allow}
    models = KEY_MODELS.get(label)
    if models is None:
        return metered
    out: set[Outcome] = set()
    for reading in model_readings(spec):
        if reading == "n/a":
            out |= metered
        elif reading == "required":
            out.add((400, "model_required", ""))
        elif reading == "any":
            out |= {(400, "model_required", ""), (403, "model_not_allowed", "")}
        elif reading[1:] in models:
            out |= metered
        else:
            out.add((403, "model_not_allowed", ""))
    return out


def expected_outcomes(spec: Spec, keys: dict[str, FuzzKey]) -> set[Outcome]:
    out: set[Outcome] = set()
    for meaning in effective_meanings(spec):
        if meaning == MISSING:
            out.add((401, "missing_api_key", ""))
        elif meaning == INVALID:
            out.add((401, "invalid_api_key", ""))
        elif meaning == GARBAGE:
            out |= {(401, "missing_api_key", ""), (401, "invalid_api_key", "")}
        else:
            out |= key_outcomes(meaning, spec, keys)
    return out


# ----- checking one answer -----------------------------------------------------------------


def header_dict(options: Any) -> dict[str, str]:
    return {o.header.key: o.header.value for o in options}


def outcome_of(resp: CheckResponse, anthropic: bool) -> Outcome:
    """Assert property 1 (a well-formed answer) and return what it decided."""
    kind = resp.WhichOneof("http_response")
    if kind == "ok_response":
        assert resp.status.code == 0, resp
        headers = header_dict(resp.ok_response.headers)
        assert {"authorization", "x-api-key"} <= set(resp.ok_response.headers_to_remove)
        return (200, "ok", headers.get("x-keyguard-key-id", ""))
    assert kind == "denied_response", f"no http_response at all: {resp}"
    denied = resp.denied_response
    status = http_status(resp)
    assert status in DENY_STATUSES, status
    assert resp.status.code != 0, "a denial with gRPC status OK"
    why = reason(resp)
    headers = header_dict(denied.headers)
    assert headers.get("content-type") == "application/json", headers
    body = json.loads(denied.body)
    if anthropic:
        assert body.get("type") == "error", body
        assert set(body["error"]) == {"type", "message"}, body
        assert body["error"]["type"] == ANTHROPIC_TYPES[why], body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    else:
        assert set(body) == {"error"}, body
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, body
        assert error["code"] == why and error["param"] is None, body
        assert isinstance(error["message"], str) and error["message"]
    if why == "rate_limit_exceeded":
        assert int(headers["retry-after"]) >= 1, headers
    return (status, why, "")


def leaks(secrets: list[str], blobs: list[bytes]) -> list[str]:
    return [s for s in secrets for blob in blobs if s.encode("utf-8", "replace") in blob]


@dataclass
class Harness:
    loop: asyncio.AbstractEventLoop
    service: AuthorizationService
    keys: dict[str, FuzzKey]
    log: io.StringIO  # what keyguard's configured logger wrote
    secrets: list[str]

    def check(self, request: CheckRequest) -> CheckResponse:
        return self.loop.run_until_complete(self.service.check(request))

    def verify(self, spec: Spec) -> Outcome:
        expected = expected_outcomes(spec, self.keys)
        self.log.seek(0)
        self.log.truncate()
        resp = self.check(spec.build())
        logs.flush()
        written = self.log.getvalue()
        got = outcome_of(resp, spec.anthropic)
        note(f"expected one of {sorted(expected)}, got {got}")
        assert got in expected, f"got {got}, expected one of {sorted(expected)}"
        # Property 3: no real key or key body in the answer or the logs, and no presented
        # credential in the answer (a log line may carry a request id equal to some text).
        answer = resp.SerializeToString()
        found = leaks(self.secrets, [answer, written.encode()])
        presented = [p.strip() for p in spec.presented()]
        shown = [p for p in presented if len(p) >= 32 or (len(p) >= 8 and p.startswith("sk-"))]
        found += leaks(shown, [answer])
        assert not found, f"credential material in the answer or logs: {found[:1]!r}"
        # Every line is a JSON object, and each Check logged exactly one decision.
        entries = [json.loads(line) for line in written.splitlines()]
        assert [e["event"] for e in entries].count("decision") == 1, written
        return got


@contextlib.contextmanager
def harness(redis_url: str) -> Iterator[Harness]:
    """The real servicer over a real Redis, on one event loop for all examples."""
    keys = create_keys(redis_url)
    secrets = [k.key for k in keys.values()] + [k.body for k in keys.values()]
    loop = asyncio.new_event_loop()
    # A generous Redis timeout: a loaded CI machine must not turn into 503s here.
    manager = service_for(redis_url, redis_timeout=5.0)
    try:
        service = loop.run_until_complete(manager.__aenter__())
        try:
            log = io.StringIO()
            logs.configure("debug", log)
            try:
                yield Harness(loop, service, keys, log, secrets)
            finally:
                logs.reset()
        finally:
            loop.run_until_complete(manager.__aexit__(None, None, None))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


# ----- strategies --------------------------------------------------------------------------
# Every strategy is built once: building strategies inside a draw costs more than the Check.


def ascii_lower(text: str) -> str:
    return text.translate(str.maketrans(string.ascii_uppercase, string.ascii_lowercase))


RESERVED = frozenset({"authorization", "x-api-key", "content-type"})


def plain_name(name: str) -> bool:
    return name.lower() not in RESERVED and ascii_lower(name) not in RESERVED


def no_real_key(text: str) -> bool:
    return "sk-" not in text


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


WS = st.sampled_from(("", "", " ", "  ", "\t", " \t"))
BAD_UTF8 = st.sampled_from((b"\xff", b"\xfe\xff", b"\x80", b"\xc3(", b"\xed\xa0\x80", b"\xf0\x28"))
INDEX = st.integers(0, 1 << 16)
ALNUM_CHAR = st.sampled_from(ALNUM)
AUTH_NAMES = ("authorization", "Authorization", "AUTHORIZATION", "aUtHoRiZaTiOn")
API_KEY_NAMES = ("x-api-key", "X-Api-Key", "X-API-KEY", "x-Api-kEy")
AUTH_NAME_CHOICES = st.sampled_from(AUTH_NAMES)
API_KEY_NAME_CHOICES = st.sampled_from(API_KEY_NAMES)
DECOY_RAW = st.binary(max_size=40)
KNOWN_NAMES = (
    "x-request-id",
    "x-forwarded-for",
    "x-envoy-auth-partial-body",
    "host",
    ":path",
    ":authority",
    "user-agent",
    "anthropic-version",
    "cookie",
    "x-keyguard-key-id",
    "x-keyguard-degraded",
    "authorization2",
    "x-api-key-2",
    "proxy-authorization",
)
HUGE = st.builds(
    lambda n, c, p: p + c * n,
    st.integers(60_000, 70_000),
    st.sampled_from(("a", "x", "0", "é")),
    st.sampled_from(("", "sk-", "Bearer ", "Bearer sk-")),
)
GARBAGE_TEXT = st.text(max_size=80).filter(no_real_key)
UNKNOWN_KEY = st.builds(
    lambda p, b: p + b, st.sampled_from(("sk-", "sk-sub-", "sk-subx")), st.text(ALNUM, min_size=32)
)
MUTATIONS = st.sampled_from(
    ("drop", "add", "case", "replace", "short", "dash", "scheme", "upper", "wide", "nul", "dot")
)
AUTH_KINDS = st.sampled_from(
    ("valid",) * 10 + ("scheme", "mutated", "unknown", "missing", "garbage", "huge", "extra")
)
API_KEY_KINDS = st.sampled_from(
    ("valid",) * 10 + ("bearer", "mutated", "unknown", "missing", "garbage", "huge")
)
SCHEMES = st.sampled_from(("Bearer", "bearer", "BEARER", "BeArEr"))
SEPARATORS = st.sampled_from((" ", "  ", " \t", "    "))
WRONG_SCHEMES = st.sampled_from(
    ("Basic {}", "Token {}", "Bearerx {}", "Bearer:{}", "Bearer\t{}", "{}", "Bear {}")
)
AUTH_MISSING = st.sampled_from(("", " ", "\t", "Bearer", "Bearer ", "bearer    "))
API_KEY_MISSING = st.sampled_from(("", " ", "\t  "))
ENCODINGS = st.sampled_from(("raw", "raw", "value", "both", "bad_utf8"))
CREDS = st.sampled_from(("authorization", "x-api-key"))
CREDENTIAL_COUNTS = st.sampled_from((0, 1, 1, 1, 1, 1, 2, 2))
OTHER_NAMES = st.one_of(st.sampled_from(KNOWN_NAMES), st.text(max_size=30)).filter(plain_name)
OTHER_VALUES = st.one_of(
    st.text(max_size=60),
    st.sampled_from(("10.1.2.3", "2001:db8::1", "10.0.0.1, 11.0.0.1", "true")),
    HUGE,
)
CTYPE_NAMES = st.sampled_from(("content-type", "Content-Type", "CONTENT-TYPE"))
MODES = st.sampled_from(("map", "raw", "raw", "both"))
CONTAINERS = st.sampled_from(("map", "raw"))
BODY_FIELDS = st.sampled_from(("raw_body", "raw_body", "body", "both"))
METHODS = st.sampled_from(
    ("POST", "POST", "POST", "GET", "get", "HEAD", "DELETE", "", "PUT", "OPTIONS", "POST\x00")
)
SMALL_TEXT = st.text(max_size=30)

# -- bodies --

MODEL_NAMES = (
    "gpt-4o",
    "claude-3-5-haiku",
    "gpt-4o-mini",
    "GPT-4O",
    "claude-3-5-haiku-20241022",
    "gpt-4o ",
    " gpt-4o",
    "gpt-4o\u200b",
    "gemini-1.5-pro",
    "whisper-1",
    "\uff47\uff50\uff54-4o",  # full-width look-alike
)
ODD_JSON_MODELS: tuple[Any, ...] = ("", "m" * 300, None, True, 42, 1.5, (), {"a": 1}, ("gpt-4o",))
JSON_MODEL_VALUES = st.one_of(st.sampled_from(MODEL_NAMES), st.sampled_from(ODD_JSON_MODELS))
FILLERS = st.sampled_from(
    (
        ("messages", ({"role": "user", "content": "hello"},)),
        ("max_tokens", 1024),
        ("stream", True),
        ("metadata", {"model": "gpt-4o"}),  # nested: not the request's model
        ("model_name", "gpt-4o"),
        ("Model", "gpt-4o"),  # JSON keys are case-sensitive
        ("temperature", 0.5),
        ("tools", None),
    )
)
FILLER_TEXT = st.one_of(st.text(max_size=40), HUGE)
MODEL_KEYS = st.sampled_from(('"model"', '"mod\\u0065l"', '"\\u006dodel"'))
BOUNDARIES = st.text(ALNUM + "-_'", min_size=8, max_size=40)
MULTIPART_KINDS = st.sampled_from(("model", "model", "file", "field"))
MULTIPART_VALUES = st.one_of(
    st.sampled_from(MODEL_NAMES).map(str.encode),
    st.sampled_from((b"", b"   ", b"\xff\xfe", b"m" * 300)),
)
PADS = st.sampled_from((b"", b" "))
FILE_CONTENT = st.binary(max_size=300)
FIELD_NAMES = st.sampled_from((b"purpose", b"model_name", b"language"))
JSON_TYPES = st.sampled_from(
    ("application/json", "application/json; charset=utf-8", "text/plain", "APPLICATION/JSON")
)
OTHER_MULTIPART = "multipart/form-data; boundary=kgNoSuchBoundary7MA4YWxk"
RANDOM_CTYPES = st.text(max_size=40).filter(
    lambda t: not t.lower().startswith("multipart/form-data")
)
BODY_KINDS = st.sampled_from(
    ("empty", "simple", "simple", "simple", "json", "json", "multipart", "garbage", "array")
)
SIMPLE_MODELS = st.sampled_from(MODEL_NAMES[:4])
JSON_CTYPE_CHOICES = st.sampled_from(("json", "json", "none", "random", "multipart"))
MULTIPART_CTYPE_CHOICES = st.sampled_from(
    ("own", "own", "quoted", "upper", "other", "json", "none")
)
GARBAGE_BODIES = st.binary(max_size=400)
GARBAGE_CTYPES = st.one_of(st.none(), RANDOM_CTYPES, JSON_TYPES)
EMPTY_CTYPES = st.one_of(st.none(), JSON_TYPES)
REQUIRED = frozenset({"required"})


def model_reading(values: list[Any]) -> str:
    """What the model reader must make of the model values it saw, in order."""
    found: str | None = None
    for value in values:
        if not isinstance(value, str) or not value or len(value) > MAX_MODEL_LEN:
            return "required"
        if found is not None and found != value:
            return "required"
        found = value
    return "required" if found is None else "=" + found


@dataclass
class JsonEntry:
    start: int  # byte offsets of the value in the document
    end: int
    value: Any
    is_model: bool


def truncate(draw: st.DrawFn, data: bytes, spans: list[tuple[int, int]]) -> tuple[bytes, int]:
    """A third of bodies are cut short, as Envoy's allow_partial_message does: anywhere,
    or (half of the time) in or just around one of `spans`, where the model value is."""
    if draw(st.integers(0, 2)) != 0:
        return data, len(data)
    if spans and draw(st.booleans()):
        start, end = spans[draw(INDEX) % len(spans)]
        cut = min(len(data), max(0, start - 1 + draw(INDEX) % (end - start + 3)))
    else:
        cut = draw(INDEX) % (len(data) + 1)
    return data[:cut], cut


@st.composite
def json_bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    """A JSON object (maybe truncated) and the model reading it carries."""
    entries: list[tuple[str, Any, bool]] = []
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.integers(0, 2)) == 0:
            name, value = draw(FILLERS)
            if draw(st.integers(0, 5)) == 0:
                value = draw(FILLER_TEXT)
            entries.append((json.dumps(name), value, False))
        else:
            entries.append((draw(MODEL_KEYS), draw(JSON_MODEL_VALUES), True))
    ascii_only = draw(st.booleans())
    out = bytearray(draw(WS).encode() + b"{")
    spans: list[JsonEntry] = []
    for i, (key_json, value, is_model) in enumerate(entries):
        if i:
            out += b","
        out += (draw(WS) + key_json + draw(WS) + ":" + draw(WS)).encode()
        encoded = json.dumps(value, ensure_ascii=ascii_only).encode()
        # (Not in a value with escapes: bytes inside `\u001f` would make it invalid JSON,
        # not just non-UTF-8, and the reader stops at invalid JSON.)
        if (
            not is_model
            and isinstance(value, str)
            and b"\\" not in encoded
            and draw(st.integers(0, 4)) == 0
        ):
            # Non-UTF-8 bytes inside a string value: the reader sees U+FFFD there.
            at = 1 + draw(INDEX) % (len(encoded) - 1)
            encoded = encoded[:at] + draw(BAD_UTF8) + encoded[at:]
        spans.append(JsonEntry(len(out), len(out) + len(encoded), value, is_model))
        out += encoded + draw(WS).encode()
    out += b"}"
    data, cut = truncate(draw, bytes(out), [(e.start, e.end) for e in spans if e.is_model])
    # A value counts once it is complete in the prefix; a number counts as soon as any
    # digit of it is there (a prefix of a number is a number).
    seen = [
        e.value
        for e in spans
        if e.is_model and (e.end <= cut or (isinstance(e.value, int | float) and e.start < cut))
    ]
    return data, model_reading(seen)


@st.composite
def multipart_bodies(draw: st.DrawFn) -> tuple[bytes, str, str]:
    """A multipart/form-data body (maybe truncated), its boundary and its model reading."""
    boundary = draw(BOUNDARIES)
    delimiter = b"--" + boundary.encode()
    out = bytearray()
    models: list[tuple[int, bytes]] = []  # (offset after the value's CRLF, value)
    hot: list[tuple[int, int]] = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(MULTIPART_KINDS)
        out += delimiter + b"\r\n"
        if kind == "model":
            value = draw(PADS) + draw(MULTIPART_VALUES) + draw(PADS)
            out += b'Content-Disposition: form-data; name="model"\r\n\r\n' + value + b"\r\n"
            models.append((len(out), value))
            hot.append((len(out) - len(value) - 2, len(out)))
        elif kind == "file":
            content = draw(FILE_CONTENT).replace(delimiter, b"")
            out += (
                b'Content-Disposition: form-data; name="file"; filename="audio.wav"\r\n'
                b"Content-Type: audio/wav\r\n\r\n" + content + b"\r\n"
            )
        else:
            name = draw(FIELD_NAMES)
            out += b'Content-Disposition: form-data; name="' + name + b'"\r\n\r\ngpt-4o\r\n'
    out += delimiter + b"--\r\n"
    data, cut = truncate(draw, bytes(out), hot)
    seen: list[Any] = []
    for end, value in models:
        if end > cut:
            break
        try:
            seen.append(value.decode("utf-8").strip(" "))
        except UnicodeDecodeError:
            seen.append(None)
    return data, boundary, model_reading(seen)


@st.composite
def bodies(draw: st.DrawFn) -> Body:
    kind = draw(BODY_KINDS)
    if kind == "empty":
        return Body(b"", draw(EMPTY_CTYPES), REQUIRED)
    if kind == "simple":  # what SDKs send
        model = draw(SIMPLE_MODELS)
        data = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
        return Body(data.encode(), draw(EMPTY_CTYPES), frozenset({"=" + model}))
    if kind == "json":
        data, reading = draw(json_bodies())
        choice = draw(JSON_CTYPE_CHOICES)
        if choice == "multipart":
            return Body(data, OTHER_MULTIPART, REQUIRED)
        if choice == "random":
            return Body(data, draw(RANDOM_CTYPES), frozenset({reading}))
        ctype = None if choice == "none" else draw(JSON_TYPES)
        return Body(data, ctype, frozenset({reading}))
    if kind == "multipart":
        data, boundary, reading = draw(multipart_bodies())
        choice = draw(MULTIPART_CTYPE_CHOICES)
        if choice == "own":
            return Body(data, f"multipart/form-data; boundary={boundary}", frozenset({reading}))
        if choice == "quoted":
            ctype = f'multipart/form-data; charset=utf-8; boundary="{boundary}"'
            return Body(data, ctype, frozenset({reading}))
        if choice == "upper":
            return Body(data, f"Multipart/Form-Data; BOUNDARY={boundary}", frozenset({reading}))
        if choice == "other":
            return Body(data, OTHER_MULTIPART, REQUIRED)
        return Body(data, None if choice == "none" else "application/json", REQUIRED)
    if kind == "array":
        return Body(b'[{"model": "gpt-4o"}]', "application/json", REQUIRED)
    return Body(draw(GARBAGE_BODIES), draw(GARBAGE_CTYPES), frozenset({"any"}))


BODIES = bodies()

# -- paths and addresses --

PATHS = (
    "/v1/chat/completions",
    "/v1/messages",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/audio/transcriptions",
    "/v1/models",
    "",
    "/",
    "//",
    "/v1/messages?x",
    "/v1/messages/",
    "/V1/MESSAGES",
    "/v1/messages#frag",
    "/v1/méssages",
    "/v1/chat/completions/../messages",
    "/anthropic/v1/messages?beta=true",
    "/v1beta/models/gemini-pro",
    "/v1beta/models/:generateContent",
    "/v1/models?/models/gpt-4o:generate",
    "/v1beta/models/gpt-4o:generateContent/x",
)
GOOD_ADDRESSES = (
    "10.1.2.3",
    "10.255.255.255",
    "2001:db8::1",
    "2001:db8:ffff::abcd",
    "::ffff:10.0.0.7",
)
BAD_ADDRESSES = (
    "11.0.0.1",
    "127.0.0.1",
    "9.255.255.255",
    "2001:db9::1",
    "::1",
    "::ffff:11.0.0.1",
    "0.0.0.0",
    "",
    "localhost",
    "10.0.0.1:80",
    " 10.0.0.1",
    "10.0.0.1 ",
    "10.0.0",
    "[2001:db8::1]",
    "10.0.0.1/8",
    "0x0a000001",
    "010.001.002.003",
)
GEMINI_MODELS = st.sampled_from(tuple(m for m in MODEL_NAMES if m.strip() == m))
GEMINI_ACTIONS = st.sampled_from(("generateContent", "streamGenerateContent", "x1"))
PATHS_STRATEGY = st.one_of(
    st.sampled_from(PATHS),
    st.builds(lambda p, q: p + "?" + q, st.sampled_from(PATHS[:6]), st.text(max_size=40)),
    st.builds(lambda m, a: f"/v1beta/models/{m}:{a}", GEMINI_MODELS, GEMINI_ACTIONS),
    st.text(max_size=60),
)
GOOD_SOURCES = st.sampled_from(GOOD_ADDRESSES).map(lambda a: Source("socket", a))
SOURCES = st.one_of(
    GOOD_SOURCES,
    GOOD_SOURCES,
    st.just(Source("none")),
    st.just(Source("pipe", "/run/envoy.sock")),
    st.sampled_from(GOOD_ADDRESSES + BAD_ADDRESSES).map(lambda a: Source("socket", a)),
    st.ip_addresses().map(lambda a: Source("socket", str(a))),
    st.text(max_size=40).map(lambda a: Source("socket", a)),
)


# -- credentials and whole requests --


def dedupe_map_names(headers: list[Header]) -> list[Header]:
    """The headers map holds each exact name once; drop later repeats so the oracle agrees."""
    seen: set[str] = set()
    out = []
    for h in headers:
        if h.container == "map":
            if h.name in seen:
                continue
            seen.add(h.name)
        out.append(h)
    return out


def mutate(draw: st.DrawFn, key: str) -> str:
    """A near miss of a real key: never that key, never a key any store holds."""
    prefix = "sk-sub-" if key.startswith("sk-sub-") else "sk-"
    body = key[len(prefix) :]
    i = draw(INDEX) % len(body)
    head, char, tail = body[:i], body[i], body[i + 1 :]
    kind = draw(MUTATIONS)
    if kind == "drop":
        return key[:-1]
    if kind == "add":
        return key + draw(ALNUM_CHAR)
    if kind == "case" and char.isalpha():
        return prefix + head + char.swapcase() + tail
    if kind == "replace":
        other = ALNUM[(ALNUM.index(char) + 1 + draw(INDEX) % 61) % 62]
        return prefix + head + other + tail
    if kind == "short":
        return prefix + body[:31]
    if kind == "dash":
        return prefix + head + "-" + char + tail
    if kind == "scheme":
        return "sk_" + body
    if kind == "upper":
        return key.upper()
    if kind == "wide":  # a full-width look-alike of one character
        return prefix + head + chr(0xFEE0 + ord(char)) + tail
    if kind == "nul":
        return key + "\x00"
    return prefix + head + "." + tail


class Requests:
    """Strategies for request descriptions, over one set of real keys."""

    def __init__(self, keys: dict[str, FuzzKey]) -> None:
        self.keys = keys
        # Keys with rules that read the request come up more often.
        self.labels = st.sampled_from((*sorted(keys), "models", "models", "combo", "combo", "ips"))

    def authorization(self, draw: st.DrawFn) -> tuple[str, str]:
        """An Authorization value and what it means."""
        kind = draw(AUTH_KINDS)
        label = draw(self.labels)
        key = self.keys[label].key
        if kind == "valid":
            return draw(WS) + draw(SCHEMES) + draw(SEPARATORS) + key + draw(WS), label
        if kind == "scheme":
            return draw(WRONG_SCHEMES).format(key), INVALID
        if kind == "mutated":
            return "Bearer " + mutate(draw, key), INVALID
        if kind == "unknown":
            return "Bearer " + draw(UNKNOWN_KEY), INVALID
        if kind == "missing":
            return draw(AUTH_MISSING), MISSING
        if kind == "huge":
            return "Bearer " + draw(HUGE), INVALID
        if kind == "extra":
            return f"Bearer {key} {draw(st.sampled_from(('x', 'Bearer', key)))}", INVALID
        return draw(GARBAGE_TEXT), GARBAGE

    def api_key(self, draw: st.DrawFn) -> tuple[str, str]:
        """An x-api-key value and what it means."""
        kind = draw(API_KEY_KINDS)
        label = draw(self.labels)
        key = self.keys[label].key
        if kind == "valid":
            return draw(WS) + key + draw(WS), label
        if kind == "bearer":
            return "Bearer " + key, INVALID
        if kind == "mutated":
            return mutate(draw, key), INVALID
        if kind == "unknown":
            return draw(UNKNOWN_KEY), INVALID
        if kind == "missing":
            return draw(API_KEY_MISSING), MISSING
        if kind == "huge":
            return draw(HUGE), INVALID
        return draw(GARBAGE_TEXT), GARBAGE

    def credential(self, draw: st.DrawFn, cred: str, container: str) -> Header:
        if cred == "authorization":
            text, meaning = self.authorization(draw)
            name = draw(AUTH_NAME_CHOICES)
        else:
            text, meaning = self.api_key(draw)
            name = draw(API_KEY_NAME_CHOICES)
        header = Header(name=name, container=container, cred=cred, meaning=meaning)
        if container == "map":
            header.value = text
            return header
        encoding = draw(ENCODINGS)
        if encoding == "value":
            header.value = text
        elif encoding == "both" and text:
            header.value = text  # a non-empty `value` wins over raw_value
            header.raw = draw(DECOY_RAW)
        elif encoding == "bad_utf8":
            raw = text.encode()
            at = draw(INDEX) % (len(raw) + 1)
            header.raw = raw[:at] + draw(BAD_UTF8) + raw[at:]
            if meaning != GARBAGE:
                header.meaning = INVALID  # U+FFFD is neither a key character nor whitespace
        else:
            header.raw = text.encode()
        return header

    @staticmethod
    def other(draw: st.DrawFn, container: str) -> Header:
        header = Header(name=draw(OTHER_NAMES), container=container)
        value = draw(OTHER_VALUES)
        if container == "raw" and draw(st.booleans()):
            header.raw = value.encode() + draw(st.sampled_from((b"", b"\xff\xfe")))
        else:
            header.value = value
        return header

    def specs(self, duplicate: str | None = None) -> st.SearchStrategy[Spec]:
        """Request descriptions; with `duplicate`, that credential header appears 2-4 times."""

        @st.composite
        def build(draw: st.DrawFn) -> Spec:
            if duplicate is None and draw(st.integers(0, 60)) == 0:
                nothing = Body(b"", None, REQUIRED)
                return Spec([], "", nothing, "raw_body", "", Source("none"), "", "", empty=True)
            mode = draw(MODES)

            def container() -> str:
                return mode if mode != "both" else draw(CONTAINERS)

            headers: list[Header] = []
            if duplicate is not None:
                where = "raw" if mode == "both" else mode
                names = AUTH_NAMES if duplicate == "authorization" else API_KEY_NAMES
                for i in range(draw(st.integers(2, 4))):
                    h = self.credential(draw, duplicate, where)
                    if where == "map":
                        h.name = names[i]  # distinct case variants of one header
                    headers.append(h)
                if duplicate == "authorization":
                    for _ in range(draw(st.integers(0, 2))):
                        headers.append(self.credential(draw, "x-api-key", where))
            else:
                for _ in range(draw(CREDENTIAL_COUNTS)):
                    headers.append(self.credential(draw, draw(CREDS), container()))
            for _ in range(draw(st.integers(0, 4))):
                headers.append(self.other(draw, container()))
            body = draw(BODIES)
            if body.content_type is not None:
                # content-type goes where it is read: header_map when that has entries.
                has_raw = mode == "raw" or any(h.container == "raw" for h in headers)
                headers.append(
                    Header(draw(CTYPE_NAMES), "raw" if has_raw else "map", body.content_type)
                )
            order = draw(st.permutations(range(len(headers))))
            headers = dedupe_map_names([headers[i] for i in order])
            # The string `body` field can only carry UTF-8; raw_body wins when both are set.
            body_field = draw(BODY_FIELDS)
            if body_field == "body" and not is_utf8(body.data):
                body_field = "raw_body"
            return Spec(
                headers=headers,
                path=draw(PATHS_STRATEGY),
                body=body,
                body_field=body_field,
                decoy_body=draw(SMALL_TEXT),
                source=draw(SOURCES),
                method=draw(METHODS),
                request_id=draw(SMALL_TEXT),
            )

        return build()


# ----- the tests ---------------------------------------------------------------------------


def run_property(
    redis_url: str,
    examples: int,
    strategy: Callable[[Requests], st.SearchStrategy[Spec]],
    extra: Callable[[Spec, Outcome], None] | None = None,
) -> None:
    with harness(redis_url) as h:

        @settings(max_examples=examples, **FUZZ_SETTINGS)
        @given(spec=strategy(Requests(h.keys)))
        def prop(spec: Spec) -> None:
            got = h.verify(spec)
            if extra is not None:
                extra(spec, got)

        prop()


def test_fuzz_check_answers_match_the_oracle(redis_url: str) -> None:
    """Properties 1-3 over arbitrary requests."""
    run_property(redis_url, GENERAL_EXAMPLES, lambda requests: requests.specs())


def test_fuzz_duplicate_credential_headers_are_invalid(redis_url: str) -> None:
    """Property 4: two or more Authorization, or x-api-key without Authorization → 401."""

    def strategy(requests: Requests) -> st.SearchStrategy[Spec]:
        return st.one_of(requests.specs("authorization"), requests.specs("x-api-key"))

    def must_be_invalid(spec: Spec, got: Outcome) -> None:
        assert got == (401, "invalid_api_key", ""), got

    run_property(redis_url, DUPLICATE_EXAMPLES, strategy, must_be_invalid)


# ----- regression tests for what fuzzing turned up -----------------------------------------


def test_duplicate_x_api_key_beside_authorization_is_ambiguous(redis_url: str) -> None:
    first = create_key(redis_url, "--unlimited")["key"]
    second = create_key(redis_url, "--unlimited")["key"]
    request = check_request(
        raw_headers=[
            ("authorization", f"Bearer {first}"),
            ("x-api-key", second),
            ("x-api-key", first),
        ]
    )

    async def scenario() -> tuple[int, str]:
        async with service_for(redis_url) as svc:
            resp = await svc.check(request)
            return http_status(resp), reason(resp)

    assert run(scenario) == (401, "invalid_api_key")
