"""Read the requested model from a request: Gemini path, multipart form, or JSON body.

The JSON reader walks only the top level of the object and lets the C JSON
decoder skip each value, so a truncated body (Envoy's allow_partial_message)
still yields the model when the prefix holds it, at C speed.
"""

from __future__ import annotations

import json
import re


class ModelLookup:
    """Sentinel answers of a model reader besides a model name."""

    NONE = "\x00none"
    AMBIGUOUS = "\x00ambiguous"
    # A request that cannot name a model (GET /v1/models, GET /v1/files/…):
    # there is nothing to restrict, so a model list does not apply to it.
    NOT_APPLICABLE = "\x00n/a"


# Anchored at the end, so "/models/x:y" earlier in a path cannot pick the model.
_GEMINI_PATH = re.compile(r"/models/([^/:?]+):[A-Za-z]+$")
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

# A model name is short; a longer "model" value is not a model we could allow.
MAX_MODEL_LEN = 256


def model_from_path(path: str) -> str | None:
    match = _GEMINI_PATH.search(path)
    return match.group(1) if match else None


def model_from_json(body: str) -> str:
    """The top-level "model" string of a (possibly truncated) JSON object.

    Returns ModelLookup.NONE when absent (or not yet seen in a truncated
    prefix) and ModelLookup.AMBIGUOUS when two different top-level "model"
    values appear, since parsers differ on which one wins.
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
            if key == "model" and idx < end and body[idx] in _SCALAR_STARTS:
                return ModelLookup.AMBIGUOUS
            break
        if key == "model":
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


def read_model(path: str, content_type: str, body: bytes, method: str = "POST") -> str:
    """The requested model, or ModelLookup.NONE / AMBIGUOUS / NOT_APPLICABLE."""
    from_path = model_from_path(path)
    if from_path is not None:
        return from_path
    if method.upper() in BODYLESS_METHODS and not body:
        return ModelLookup.NOT_APPLICABLE
    if not body:
        return ModelLookup.NONE
    ctype = content_type.lower()
    if ctype.startswith("multipart/form-data"):
        return model_from_multipart(body, content_type)
    return model_from_json(body.decode("utf-8", errors="replace"))
