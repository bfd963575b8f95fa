"""Hypothesis strategies for the fuzz test: request descriptions (tests.support.fuzz_spec)
over a set of real keys, each with the meaning the oracle needs.

Every strategy is built once: building strategies inside a draw costs more than the Check.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

from tests.support.fuzz_spec import (
    GARBAGE,
    INVALID,
    MISSING,
    Body,
    FuzzKey,
    Header,
    Source,
    Spec,
)
from tests.support.oracle import model_reading

ALNUM = string.ascii_letters + string.digits


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
        ("Modell", "gpt-4o"),  # not "model" in any case
        ("mod\u0435l", "gpt-4o"),  # a Cyrillic e: no ASCII case of "model"
        ("temperature", 0.5),
        ("tools", None),
    )
)
FILLER_TEXT = st.one_of(st.text(max_size=40), HUGE)
# Every key equal to "model" ignoring ASCII case is a model field (Go's encoding/json
# reads keys that way), escaped or not.
MODEL_KEYS = st.sampled_from(
    ('"model"', '"mod\\u0065l"', '"\\u006dodel"', '"Model"', '"MODEL"', '"mOdEl"', '"MODE\\u004c"')
)
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
NO_MODEL = frozenset({"none"})


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
        return Body(b"", draw(EMPTY_CTYPES), NO_MODEL)
    if kind == "simple":  # what SDKs send
        model = draw(SIMPLE_MODELS)
        data = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
        return Body(data.encode(), draw(EMPTY_CTYPES), frozenset({"=" + model}))
    if kind == "json":
        data, reading = draw(json_bodies())
        choice = draw(JSON_CTYPE_CHOICES)
        if choice == "multipart":
            return Body(data, OTHER_MULTIPART, NO_MODEL)
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
            return Body(data, OTHER_MULTIPART, NO_MODEL)
        return Body(data, None if choice == "none" else "application/json", NO_MODEL)
    if kind == "array":
        return Body(b'[{"model": "gpt-4o"}]', "application/json", NO_MODEL)
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
AZURE_ACTIONS = st.sampled_from(("chat/completions", "embeddings", "completions?api-version=1"))
BEDROCK_ACTIONS = st.sampled_from(
    ("invoke", "invoke-with-response-stream", "converse", "converse-stream", "other")
)
PATHS_STRATEGY = st.one_of(
    st.sampled_from(PATHS),
    st.builds(lambda p, q: p + "?" + q, st.sampled_from(PATHS[:6]), st.text(max_size=40)),
    st.builds(lambda m, a: f"/v1beta/models/{m}:{a}", GEMINI_MODELS, GEMINI_ACTIONS),
    st.builds(lambda m, a: f"/openai/deployments/{m}/{a}", GEMINI_MODELS, AZURE_ACTIONS),
    st.builds(lambda m, a: f"/model/{quote(m, safe='')}/{a}", GEMINI_MODELS, BEDROCK_ACTIONS),
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
                nothing = Body(b"", None, NO_MODEL)
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
