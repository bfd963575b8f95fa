"""Read the requested model from a request: the path (Gemini, Azure OpenAI, Bedrock),
a multipart form, or a JSON body.

The model allowed and priced must be the model the upstream will read, so every
reading that some upstream parser could take differently is ambiguous: two different
top-level "model" values, keys that equal "model" ignoring ASCII case (Go's
encoding/json matches keys that way and keeps the last), or a body naming another
model than the path.

The JSON reader walks only the top level of the object and lets the C JSON
decoder skip each value, so a truncated body (Envoy's allow_partial_message)
still yields the model when the prefix holds it, at C speed.
"""

from __future__ import annotations

import json
import re
from urllib.parse import unquote


class ModelLookup:
    """Sentinel answers of a model reader besides a model name."""

    NONE = "\x00none"
    AMBIGUOUS = "\x00ambiguous"
    # A request that cannot name a model (GET /v1/models, GET /v1/files/…):
    # there is nothing to restrict, so a model list does not apply to it.
    NOT_APPLICABLE = "\x00n/a"


# Anchored at the end, so "/models/x:y" earlier in a path cannot pick the model.
_GEMINI_PATH = re.compile(r"/models/([^/:?]+):[A-Za-z]+$")
# Azure OpenAI: /openai/deployments/{deployment}/chat/completions (and every other op).
_AZURE_PATH = re.compile(r"/openai/deployments/([^/?]+)/")
# Bedrock runtime: /model/{modelId}/invoke (-with-response-stream), /converse(-stream).
# A model id may be an ARN, percent-encoded in the path.
_BEDROCK_PATH = re.compile(
    r"/model/([^/?]+)/(?:invoke|invoke-with-response-stream|converse|converse-stream)$"
)
_PATH_MODELS = (_GEMINI_PATH, _AZURE_PATH, _BEDROCK_PATH)
_WS = re.compile(r"[ \t\n\r]*")
_WS_CHARS = " \t\n\r"
_SCALAR_STARTS = frozenset("-0123456789tf")  # a JSON number or boolean
_DECODER = json.JSONDecoder()
# The C scanner behind raw_decode: (value, end) or StopIteration / JSONDecodeError.
_SCAN_ONCE = _DECODER.scan_once  # type: ignore[attr-defined]
_scanstring = json.decoder.scanstring  # type: ignore[attr-defined]
_BOUNDARY = re.compile(r'boundary="?([^";,]+)"?', re.IGNORECASE)
# `name=` must start a parameter, so `filename="model"` is not the model field.
_NAME_MODEL = re.compile(rb'(?:^|[;\s])name="?model"?(?:;|\r\n|$)', re.IGNORECASE)

# The other top-level request fields metering reads (meter/estimate.py).
EXTRA_FIELDS = frozenset(
    ("max_tokens", "max_completion_tokens", "max_output_tokens", "stream", "stream_options")
)
# A model name is short; a longer "model" value is not a model we could allow.
MAX_MODEL_LEN = 256


def model_from_path(path: str) -> str | None:
    """The model a Gemini, Azure OpenAI or Bedrock path names (query already removed)."""
    if "/model" not in path and "/openai/" not in path:
        return None  # the common OpenAI and Anthropic paths, without a regex
    for pattern in _PATH_MODELS:
        match = pattern.search(path)
        if match:
            model = unquote(match.group(1))
            if not model or len(model) > MAX_MODEL_LEN:
                return ModelLookup.AMBIGUOUS
            return model
    return None


def _is_model_key(key: str) -> bool:
    """ "model", or any spelling of it in another ASCII case ("Model", "MODEL")."""
    return key == "model" or (len(key) == 5 and key.isascii() and key.lower() == "model")


def model_from_json(body: str, extras: dict[str, object] | None = None) -> str:
    """The top-level "model" string of a (possibly truncated) JSON object.

    Every top-level key equal to "model" ignoring ASCII case is a model field.
    Returns ModelLookup.NONE when absent (or not yet seen in a truncated
    prefix) and ModelLookup.AMBIGUOUS when two different model values appear,
    since parsers differ on which one wins.

    With ``extras``, the top-level values of the keys in ``EXTRA_FIELDS`` met on the
    way are put there too (what metering reads), so one walk serves both.
    """
    # Hot path (every Check of a key with a model list): whitespace is tested
    # before the regex runs, and values go straight to the C scanner.
    end = len(body)
    ws, skip, scan_key, scan_value = _WS_CHARS, _WS.match, _scanstring, _SCAN_ONCE
    idx = 0
    if idx < end and body[idx] in ws:
        idx = skip(body, idx).end()  # type: ignore[union-attr]
    if idx >= end or body[idx] != "{":
        return ModelLookup.NONE
    idx += 1
    found: str | None = None
    while True:
        if idx < end and body[idx] in ws:
            idx = skip(body, idx).end()  # type: ignore[union-attr]
        if idx >= end or body[idx] != '"':
            break
        try:
            key, idx = scan_key(body, idx + 1, True)
        except (ValueError, IndexError):
            break
        if idx < end and body[idx] in ws:
            idx = skip(body, idx).end()  # type: ignore[union-attr]
        if idx >= end or body[idx] != ":":
            break
        idx += 1
        if idx < end and body[idx] in ws:
            idx = skip(body, idx).end()  # type: ignore[union-attr]
        try:
            value, idx = scan_value(body, idx)
        except (StopIteration, ValueError, RecursionError):
            # A cut-off number or boolean is already not a string: a "model" that
            # starts as one cannot name a model, whatever came before it.
            if _is_model_key(key) and idx < end and body[idx] in _SCALAR_STARTS:
                return ModelLookup.AMBIGUOUS
            break
        if extras is not None and key in EXTRA_FIELDS:
            extras[key] = value
        if _is_model_key(key):
            if not isinstance(value, str) or not value or len(value) > MAX_MODEL_LEN:
                return ModelLookup.AMBIGUOUS
            if found is not None and found != value:
                return ModelLookup.AMBIGUOUS
            found = value
        if idx < end and body[idx] in ws:
            idx = skip(body, idx).end()  # type: ignore[union-attr]
        if idx >= end or body[idx] != ",":
            break
        idx += 1
    return found if found is not None else ModelLookup.NONE


def model_from_multipart(body: bytes, content_type: str) -> str:
    match = _BOUNDARY.search(content_type)
    if not match:
        return ModelLookup.NONE
    try:
        delimiter = b"--" + match.group(1).encode("latin-1")
    except UnicodeEncodeError:  # not a boundary any part of the body can carry
        return ModelLookup.NONE
    found: str | None = None
    for part in body.split(delimiter)[1:]:
        head, sep, rest = part.partition(b"\r\n\r\n")
        if not sep or not _NAME_MODEL.search(head):
            continue
        # A part's value ends at the CRLF before the next delimiter; in a
        # truncated last part it must still be followed by that CRLF.
        value_bytes, crlf, _ = rest.partition(b"\r\n")
        if not crlf:
            continue
        try:
            value = value_bytes.decode("utf-8").strip()
        except UnicodeDecodeError:
            return ModelLookup.AMBIGUOUS
        if not value or len(value) > MAX_MODEL_LEN or (found is not None and found != value):
            return ModelLookup.AMBIGUOUS
        found = value
    return found if found is not None else ModelLookup.NONE


# Methods that carry no request body, so they cannot ask for a model other
# than through a Gemini-style path.
BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


def read_model(
    path: str,
    content_type: str,
    body: bytes,
    method: str = "POST",
    extras: dict[str, object] | None = None,
) -> str:
    """The requested model, or ModelLookup.NONE / AMBIGUOUS / NOT_APPLICABLE.

    A model named by the path stands unless the body names a different one
    (ambiguous: which one the upstream serves depends on the upstream).
    """
    from_path = model_from_path(path)
    if from_path is None and method.upper() in BODYLESS_METHODS and not body:
        return ModelLookup.NOT_APPLICABLE
    if not body:
        return ModelLookup.NONE if from_path is None else from_path
    if content_type.lower().startswith("multipart/form-data"):
        from_body = model_from_multipart(body, content_type)
    else:
        from_body = model_from_json(body.decode("utf-8", errors="replace"), extras)
    if from_path is None or from_body == ModelLookup.NONE:
        return from_body if from_path is None else from_path
    return from_path if from_body == from_path else ModelLookup.AMBIGUOUS
