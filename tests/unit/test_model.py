"""keyguard.model: reading the requested model from path, JSON or multipart bodies."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyguard.model import (
    MAX_MODEL_LEN,
    ModelLookup,
    model_from_json,
    model_from_multipart,
    model_from_path,
    read_model,
)

JSON = "application/json"
CHAT = "/v1/chat/completions"


def read_json(body: str | bytes, path: str = CHAT) -> str:
    raw = body.encode() if isinstance(body, str) else body
    return read_model(path, JSON, raw)


def chat_body(*, model_first: bool = True, model: str = "gpt-4o-2024-08-06") -> str:
    """A realistic chat-completions request of about 4 KB."""
    messages = [
        {"role": "system", "content": 'You are a careful assistant. Answer in "plain" text.'},
    ]
    for i in range(12):
        messages.append(
            {
                "role": "user" if i % 2 == 0 else "assistant",
                "content": (
                    f'Turn {i}: quote "this", a backslash \\ a tab\t, unicode é, ☃ and 😀; '
                    'the word model and "model": "fake" appear in text. ' * 2
                ),
            }
        )
    fields: dict[str, object] = {
        "messages": messages,
        "temperature": 0.2,
        "max_tokens": 1024,
        "stream": True,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "parameters": {"type": "object", "properties": {"model": {"type": "string"}}},
                },
            }
        ],
        "metadata": {"model": "not-this-one", "user": "u-1"},
        "stop": None,
        "n": 1,
    }
    if model_first:
        return json.dumps({"model": model, **fields}, indent=1, ensure_ascii=False)
    return json.dumps({**fields, "model": model}, indent=1, ensure_ascii=False)


def test_chat_body_is_about_4kb() -> None:
    size = len(chat_body().encode())
    assert 3500 <= size <= 6000


# ----- JSON -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"model":"gpt-4o"}', "gpt-4o"),
        ('{"model": "gpt-4o", "messages": []}', "gpt-4o"),
        ('{"messages": [], "model": "gpt-4o"}', "gpt-4o"),
        ('  \n\t\r {\n  "model"\n  :\n  "gpt-4o"\n  ,\n  "n" : 1\n}\n', "gpt-4o"),
        ('{"a":"x\\"y","b":"\\\\","model":"m1"}', "m1"),
        ('{"a":"\\"model\\":\\"x\\"","model":"m2"}', "m2"),
        ('{"a":"\\u0022model\\u0022: \\u0022x","model":"m3"}', "m3"),
        ('{"mo\\u0064el":"escaped-key"}', "escaped-key"),
        ('{"model":"caf\\u00e9"}', "café"),
        ('{"model":"claude-3-5-haiku-20241022","max_tokens":1}', "claude-3-5-haiku-20241022"),
        ('{"model":"ft:gpt-4o-mini:org:custom:id1"}', "ft:gpt-4o-mini:org:custom:id1"),
        # Go's encoding/json matches keys ignoring case: "Model" is a model field to it.
        ('{"Model":"x"}', "x"),
        ('{"MODEL":"x","n":1}', "x"),
        ('{"moDEL":"x","model":"x"}', "x"),
        ('{"mod\u0435l":"x"}', ModelLookup.NONE),  # a Cyrillic e is no ASCII case of e
        ('{"model ":"x"}', ModelLookup.NONE),
        ('{"models":"x"}', ModelLookup.NONE),
        ("{}", ModelLookup.NONE),
        ('{"messages":[]}', ModelLookup.NONE),
    ],
)
def test_json_top_level_model(body: str, expected: str) -> None:
    assert read_json(body) == expected
    assert model_from_json(body) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"metadata":{"model":"x"},"model":"y"}', "y"),
        ('{"model":"y","metadata":{"model":"x"}}', "y"),
        ('{"messages":[{"model":"x"}]}', ModelLookup.NONE),
        ('{"messages":[{"role":"user","model":"x"}],"n":1}', ModelLookup.NONE),
        ('{"a":{"b":{"c":{"model":"deep"}}}}', ModelLookup.NONE),
        ('{"a":[[[{"model":"deep"}]]],"model":"top"}', "top"),
        ('{"tools":[{"function":{"parameters":{"model":"x"}}}],"model":"top"}', "top"),
        ('{"text":"\\"model\\":\\"x\\""}', ModelLookup.NONE),
    ],
)
def test_json_nested_model_is_ignored(body: str, expected: str) -> None:
    assert read_json(body) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"model":"a","model":"b"}', ModelLookup.AMBIGUOUS),
        ('{"model":"a","n":1,"model":"b"}', ModelLookup.AMBIGUOUS),
        ('{"model":"a","mo\\u0064el":"b"}', ModelLookup.AMBIGUOUS),
        ('{"model":"a","model":"a"}', "a"),
        ('{"model":"a","n":1,"model":"a"}', "a"),
        ('{"model":1}', ModelLookup.AMBIGUOUS),
        ('{"model":1.5}', ModelLookup.AMBIGUOUS),
        ('{"model":null}', ModelLookup.AMBIGUOUS),
        ('{"model":true}', ModelLookup.AMBIGUOUS),
        ('{"model":["gpt-4o"]}', ModelLookup.AMBIGUOUS),
        ('{"model":{"name":"gpt-4o"}}', ModelLookup.AMBIGUOUS),
        ('{"model":""}', ModelLookup.AMBIGUOUS),
        ('{"model":"' + "m" * (MAX_MODEL_LEN + 1) + '"}', ModelLookup.AMBIGUOUS),
        ('{"model":"a","model":null}', ModelLookup.AMBIGUOUS),
        # {"model":"gpt-4o-mini","Model":"gpt-4o"} is gpt-4o to a Go upstream.
        ('{"model":"gpt-4o-mini","Model":"gpt-4o"}', ModelLookup.AMBIGUOUS),
        ('{"Model":"a","mODEL":"b"}', ModelLookup.AMBIGUOUS),
        ('{"model":"a","MODEL":null}', ModelLookup.AMBIGUOUS),
        ('{"model":"a","Model":1', ModelLookup.AMBIGUOUS),  # cut off inside a number
    ],
)
def test_json_duplicates_and_non_strings(body: str, expected: str) -> None:
    assert read_json(body) == expected


def test_json_model_of_max_length_is_read() -> None:
    name = "m" * MAX_MODEL_LEN
    assert read_json('{"model":"' + name + '"}') == name


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"null",
        b"true",
        b"42",
        b'"model"',
        b'["model","gpt-4o"]',
        b'[{"model":"gpt-4o"}]',
        b"model=gpt-4o",
        b"garbage",
        b"{",
        b'{"',
        b'{"model"',
        b'{"model":',
        b'{"model" "gpt-4o"}',
        b'{model:"gpt-4o"}',
        b"{'model':'gpt-4o'}",
        b'{"model":"gpt-4o\x00',
        b"\xff\xfe\xfd",
        b'{"model":"\xff\xfe',
        b"\xef\xbb\xbf",  # a lone UTF-8 BOM
        b"\x00" * 64,
        b"{" * 10_000,
        b'{"a":' + b"[" * 100_000,
        b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b',"model":"x"}',
    ],
)
def test_json_garbage_gives_none_without_raising(body: bytes) -> None:
    assert read_json(body) == ModelLookup.NONE


def test_invalid_utf8_elsewhere_does_not_hide_the_model() -> None:
    body = b'{"model":"gpt-4o","messages":[{"content":"\xff\xfe\xc3"}]}'
    assert read_json(body) == "gpt-4o"


def test_utf8_model_name_is_decoded() -> None:
    assert read_json('{"model":"modèle-☃"}'.encode()) == "modèle-☃"


def test_invalid_utf8_in_model_never_matches_the_plain_name() -> None:
    result = read_json(b'{"model":"gpt-4o\xff"}')
    assert result != "gpt-4o"
    assert result != "gpt-4o\xff"


# ----- truncated JSON (Envoy allow_partial_message) -------------------------------------------


def test_truncated_prefix_model_first_at_every_index() -> None:
    model = "gpt-4o-2024-08-06"
    body = chat_body(model_first=True, model=model)
    raw = body.encode()
    value = json.dumps(model)
    # The prefix holds the whole model value once it reaches the closing quote.
    complete_at = len(body[: body.index(value) + len(value)].encode())
    for cut in range(len(raw) + 1):
        expected = model if cut >= complete_at else ModelLookup.NONE
        got = read_json(raw[:cut])
        assert got == expected, f"cut at {cut}: {got!r}"


def test_truncated_prefix_at_every_index_compact_json() -> None:
    model = "claude-3-5-sonnet-20241022"
    body = json.dumps(json.loads(chat_body(model=model)), separators=(",", ":"))
    assert body.startswith('{"model":"claude')
    complete_at = len('{"model":"') + len(model) + 1
    for cut in range(len(body) + 1):
        expected = model if cut >= complete_at else ModelLookup.NONE
        assert model_from_json(body[:cut]) == expected, cut


def test_truncated_prefix_model_last_is_none_until_complete() -> None:
    model = "gpt-4o-mini"
    body = chat_body(model_first=False, model=model)
    raw = body.encode()
    assert read_json(raw) == model
    # Every strict prefix that stops before the model value is complete: NONE.
    value = json.dumps(model)
    complete_at = len(body[: body.rindex(value) + len(value)].encode())
    for cut in range(0, complete_at, 7):
        assert read_json(raw[:cut]) == ModelLookup.NONE, cut
    assert read_json(raw[: complete_at - 1]) == ModelLookup.NONE
    assert read_json(raw[:complete_at]) == model


def test_truncated_after_complete_model_then_partial_duplicate() -> None:
    # The prefix cannot tell a second "model" that was cut off; the first one stands.
    assert read_json('{"model":"a","n":1,"model":"b') == "a"
    assert read_json('{"model":"a","n":1,"mod') == "a"


# ----- multipart/form-data --------------------------------------------------------------------


def multipart(
    boundary: str, parts: list[tuple[str, bytes, str | None]], *, close: bool = True
) -> bytes:
    """Build a form body; each part is (name, value, filename or None)."""
    out = b""
    for name, value, filename in parts:
        out += b"--" + boundary.encode() + b"\r\n"
        disposition = f'Content-Disposition: form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
            out += disposition.encode() + b"\r\nContent-Type: audio/mpeg\r\n\r\n"
        else:
            out += disposition.encode() + b"\r\n\r\n"
        out += value + b"\r\n"
    if close:
        out += b"--" + boundary.encode() + b"--\r\n"
    return out


AUDIO = bytes(range(256)) * 8  # binary, with CRLFs and invalid UTF-8 inside
BOUNDARY = "----WebKitFormBoundary7MA4YWxkTrZu0gW"


def transcription(model: str = "whisper-1", boundary: str = BOUNDARY) -> bytes:
    return multipart(
        boundary,
        [
            ("file", AUDIO, "speech.mp3"),
            ("model", model.encode(), None),
            ("response_format", b"json", None),
            ("language", b"en", None),
        ],
    )


@pytest.mark.parametrize(
    "content_type",
    [
        f"multipart/form-data; boundary={BOUNDARY}",
        f'multipart/form-data; boundary="{BOUNDARY}"',
        f"multipart/form-data;boundary={BOUNDARY}",
        f"Multipart/Form-Data; Boundary={BOUNDARY}",
        f"multipart/form-data; charset=utf-8; boundary={BOUNDARY}",
        f"multipart/form-data; boundary={BOUNDARY}; charset=utf-8",
        f'multipart/form-data; boundary="{BOUNDARY}"; charset=utf-8',
    ],
)
def test_multipart_model_among_file_parts(content_type: str) -> None:
    assert read_model("/v1/audio/transcriptions", content_type, transcription()) == "whisper-1"


def test_multipart_quoted_boundary_with_special_characters() -> None:
    boundary = "a'b()+_=-./?c"
    body = transcription("gpt-4o-transcribe", boundary)
    ctype = f'multipart/form-data; boundary="{boundary}"'
    assert read_model("/v1/audio/transcriptions", ctype, body) == "gpt-4o-transcribe"


def test_multipart_model_first_and_last() -> None:
    ctype = f"multipart/form-data; boundary={BOUNDARY}"
    first = multipart(BOUNDARY, [("model", b"whisper-1", None), ("file", AUDIO, "a.wav")])
    last = multipart(BOUNDARY, [("file", AUDIO, "a.wav"), ("model", b"whisper-1", None)])
    assert read_model("/v1/audio/translations", ctype, first) == "whisper-1"
    assert read_model("/v1/audio/translations", ctype, last) == "whisper-1"


def test_multipart_unquoted_field_name() -> None:
    body = (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=model\r\n\r\nwhisper-1\r\n"
        f"--{BOUNDARY}--\r\n"
    ).encode()
    ctype = f"multipart/form-data; boundary={BOUNDARY}"
    assert read_model("/v1/audio/transcriptions", ctype, body) == "whisper-1"


def test_multipart_missing_model_field_is_none() -> None:
    body = multipart(BOUNDARY, [("file", AUDIO, "a.mp3"), ("language", b"en", None)])
    ctype = f"multipart/form-data; boundary={BOUNDARY}"
    assert read_model("/v1/audio/transcriptions", ctype, body) == ModelLookup.NONE


@pytest.mark.parametrize("name", ["models", "model_id", "xmodel", "my model", "Model_"])
def test_multipart_similar_field_names_are_not_the_model(name: str) -> None:
    body = multipart(BOUNDARY, [(name, b"gpt-4o", None)])
    ctype = f"multipart/form-data; boundary={BOUNDARY}"
    assert read_model("/v1/audio/transcriptions", ctype, body) == ModelLookup.NONE


def test_multipart_file_named_model_is_not_the_model_field() -> None:
    # A file part whose *filename* is "model" is not the form field "model".
    body = multipart(
        BOUNDARY,
        [("file", b"RIFF....WAVEfmt \r\nmore audio", "model"), ("model", b"whisper-1", None)],
    )
    ctype = f"multipart/form-data; boundary={BOUNDARY}"
    assert read_model("/v1/audio/transcriptions", ctype, body) == "whisper-1"


def test_multipart_file_named_model_without_model_field_is_none() -> None:
    body = multipart(BOUNDARY, [("file", b"whisper-1\r\naudio", "model")])
    ctype = f"multipart/form-data; boundary={BOUNDARY}"
    assert read_model("/v1/audio/transcriptions", ctype, body) == ModelLookup.NONE


def test_multipart_two_different_models_is_ambiguous() -> None:
    body = multipart(BOUNDARY, [("model", b"whisper-1", None), ("model", b"gpt-4o", None)])
    ctype = f"multipart/form-data; boundary={BOUNDARY}"
    assert read_model("/v1/audio/transcriptions", ctype, body) == ModelLookup.AMBIGUOUS


def test_multipart_same_model_twice_is_that_model() -> None:
    body = multipart(BOUNDARY, [("model", b"whisper-1", None), ("model", b"whisper-1", None)])
    ctype = f"multipart/form-data; boundary={BOUNDARY}"
    assert read_model("/v1/audio/transcriptions", ctype, body) == "whisper-1"


@pytest.mark.parametrize("value", [b"", b"   ", b"\xff\xfe", b"m" * (MAX_MODEL_LEN + 1)])
def test_multipart_unusable_model_value(value: bytes) -> None:
    body = multipart(BOUNDARY, [("model", value, None)])
    ctype = f"multipart/form-data; boundary={BOUNDARY}"
    assert read_model("/v1/audio/transcriptions", ctype, body) == ModelLookup.AMBIGUOUS


def test_multipart_truncated_bodies() -> None:
    ctype = f"multipart/form-data; boundary={BOUNDARY}"
    full = multipart(BOUNDARY, [("model", b"whisper-1", None), ("file", AUDIO, "a.mp3")])
    value_end = full.index(b"whisper-1") + len(b"whisper-1")
    # Until the CRLF after the value arrives, the value may still be growing.
    for cut in range(value_end + 2):
        assert model_from_multipart(full[:cut], ctype) == ModelLookup.NONE, cut
    for cut in range(value_end + 2, len(full) + 1, 97):
        assert model_from_multipart(full[:cut], ctype) == "whisper-1", cut


@pytest.mark.parametrize(
    "content_type",
    ["multipart/form-data", "multipart/form-data; charset=utf-8", "multipart/form-data; boundary="],
)
def test_multipart_without_boundary_is_none(content_type: str) -> None:
    assert read_model("/v1/audio/transcriptions", content_type, transcription()) == ModelLookup.NONE


def test_multipart_with_wrong_boundary_is_none() -> None:
    ctype = "multipart/form-data; boundary=not-the-one"
    assert read_model("/v1/audio/transcriptions", ctype, transcription()) == ModelLookup.NONE


def test_multipart_with_non_latin1_boundary_does_not_raise() -> None:
    body = transcription()
    for ctype in ("multipart/form-data; boundary=€uro", 'multipart/form-data; boundary="日本"'):
        assert read_model("/v1/audio/transcriptions", ctype, body) == ModelLookup.NONE


def test_json_body_with_multipart_content_type_is_not_parsed_as_json() -> None:
    ctype = f"multipart/form-data; boundary={BOUNDARY}"
    assert read_model(CHAT, ctype, b'{"model":"gpt-4o"}') == ModelLookup.NONE


# ----- Gemini-style path ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1beta/models/gemini-1.5-pro:generateContent", "gemini-1.5-pro"),
        ("/v1beta/models/gemini-1.5-flash:streamGenerateContent", "gemini-1.5-flash"),
        ("/v1/models/gemini-2.0-flash-001:countTokens", "gemini-2.0-flash-001"),
        ("/v1beta/models/text-embedding-004:embedContent", "text-embedding-004"),
        ("/gemini/v1beta/models/gemini-pro:generateContent", "gemini-pro"),
        ("/v1beta/models/gemini-pro", None),
        ("/v1beta/models/:generateContent", None),
        ("/v1/models", None),
        ("/v1/chat/completions", None),
        ("/v1/messages", None),
        ("", None),
    ],
)
def test_model_from_path(path: str, expected: str | None) -> None:
    assert model_from_path(path) == expected


def test_gemini_path_needs_no_body() -> None:
    path = "/v1beta/models/gemini-1.5-pro:generateContent"
    assert read_model(path, JSON, b"") == "gemini-1.5-pro"
    assert read_model(path, "", b"garbage") == "gemini-1.5-pro"


def test_a_body_naming_another_model_than_the_path_is_ambiguous() -> None:
    # Which of the two the upstream serves depends on the upstream: neither may be allowed.
    path = "/v1beta/models/gemini-1.5-pro:generateContent"
    assert read_json('{"model":"gpt-4o"}', path) == ModelLookup.AMBIGUOUS
    assert read_json('{"model":"a","model":"b"}', path) == ModelLookup.AMBIGUOUS
    assert read_json('{"Model":"gpt-4o"}', path) == ModelLookup.AMBIGUOUS
    ctype = f"multipart/form-data; boundary={BOUNDARY}"
    assert read_model(path, ctype, transcription()) == ModelLookup.AMBIGUOUS
    # The same model in both, or none in the body, is the path's model.
    assert read_json('{"model":"gemini-1.5-pro"}', path) == "gemini-1.5-pro"
    assert read_json('{"contents":[]}', path) == "gemini-1.5-pro"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/openai/deployments/gpt-4o/chat/completions", "gpt-4o"),
        ("/openai/deployments/my-mini/embeddings", "my-mini"),
        ("/azure/openai/deployments/gpt-4o-mini/completions", "gpt-4o-mini"),
        ("/openai/deployments//chat/completions", None),
        ("/openai/deployments", None),
        (
            "/model/anthropic.claude-3-5-sonnet-20240620-v1:0/invoke",
            "anthropic.claude-3-5-sonnet-20240620-v1:0",
        ),
        ("/model/amazon.nova-pro-v1:0/converse", "amazon.nova-pro-v1:0"),
        ("/model/meta.llama3-8b-instruct-v1:0/converse-stream", "meta.llama3-8b-instruct-v1:0"),
        (
            "/model/anthropic.claude-3-haiku-20240307-v1:0/invoke-with-response-stream",
            "anthropic.claude-3-haiku-20240307-v1:0",
        ),
        (
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.x/invoke",
            "arn:aws:bedrock:us-east-1:1:inference-profile/us.x",
        ),
        ("/model/x/other", None),
        ("/model//invoke", None),
    ],
)
def test_azure_and_bedrock_paths_name_the_model(path: str, expected: str | None) -> None:
    assert model_from_path(path) == expected
    if expected is not None:
        assert read_model(path, JSON, b"{}") == expected
        assert read_json('{"model":"other"}', path) == ModelLookup.AMBIGUOUS


def test_an_allowed_body_model_cannot_smuggle_another_deployment() -> None:
    # Was 200 for a key limited to gpt-4o-mini: the deployment in the path is what is served.
    path = "/openai/deployments/gpt-4o/chat/completions"
    assert read_json('{"model":"gpt-4o-mini"}', path) == ModelLookup.AMBIGUOUS


def test_no_body_and_no_model_path_is_none() -> None:
    assert read_model(CHAT, JSON, b"") == ModelLookup.NONE
    assert read_model(CHAT, "", b"") == ModelLookup.NONE


def test_content_type_other_than_multipart_is_read_as_json() -> None:
    for ctype in ("", "text/plain", "application/json; charset=utf-8", "APPLICATION/JSON"):
        assert read_model(CHAT, ctype, b'{"model":"gpt-4o"}') == "gpt-4o"


# ----- never raises ---------------------------------------------------------------------------


def is_model_answer(result: object) -> bool:
    return isinstance(result, str) and (
        result in (ModelLookup.NONE, ModelLookup.AMBIGUOUS) or 0 < len(result) <= MAX_MODEL_LEN
    )


content_types = st.one_of(
    st.text(max_size=60),
    st.builds(lambda b: f"multipart/form-data; boundary={b}", st.text(max_size=20)),
    st.builds(lambda b: f'multipart/form-data; boundary="{b}"', st.text(max_size=20)),
    st.sampled_from([JSON, "", f"multipart/form-data; boundary={BOUNDARY}"]),
)
paths = st.one_of(
    st.text(max_size=60),
    st.builds(lambda m: f"/v1beta/models/{m}:generateContent", st.text(max_size=20)),
    st.just(CHAT),
)
bodies = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.sampled_from(["model", "x", "messages"]), children, max_size=4)
        ),
        max_leaves=12,
    ).map(lambda v: json.dumps(v).encode()),
    st.builds(
        lambda body, cut: body[:cut], st.just(transcription()), st.integers(0, len(transcription()))
    ),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=paths, content_type=content_types, body=bodies)
def test_read_model_never_raises(path: str, content_type: str, body: bytes) -> None:
    assert is_model_answer(read_model(path, content_type, body))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_model_from_json_never_raises(text: str) -> None:
    assert is_model_answer(model_from_json(text))


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.text(max_size=8), st.text(max_size=8) | st.integers(), max_size=6),
    st.text(min_size=1, max_size=40),
)
def test_json_top_level_model_matches_json_loads(fields: dict[str, object], model: str) -> None:
    fields["model"] = model
    body = json.dumps(fields)
    # Every key that is "model" in another ASCII case is a model field too (Go's reading).
    values = [v for k, v in fields.items() if k.isascii() and k.lower() == "model"]
    readable = all(isinstance(v, str) and 0 < len(v) <= MAX_MODEL_LEN for v in values)
    expected = model if readable and len(set(values)) == 1 else ModelLookup.AMBIGUOUS
    assert model_from_json(body) == expected


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE", "OPTIONS", "get"])
def test_bodyless_methods_name_no_model(method: str) -> None:
    assert read_model("/v1/models", "", b"", method) == ModelLookup.NOT_APPLICABLE
    # ...except through a Gemini-style path, which names one whatever the method.
    path = "/v1beta/models/gemini-pro:countTokens"
    assert read_model(path, "", b"", method) == "gemini-pro"


def test_post_without_body_needs_a_model() -> None:
    assert read_model("/v1/chat/completions", "", b"", "POST") == ModelLookup.NONE


@pytest.mark.parametrize("cut", ['{"model":"gpt-4o","model":t', '{"model":"gpt-4o","model":fa'])
def test_a_cut_off_boolean_second_model_is_ambiguous(cut: str) -> None:
    # Found by the Check fuzzer: the second value is already not a string.
    assert model_from_json(cut) == ModelLookup.AMBIGUOUS


def test_a_cut_off_string_second_model_is_not_seen_yet() -> None:
    assert model_from_json('{"model":"gpt-4o","model":"gpt-') == "gpt-4o"
