"""The fuzz oracle: from a request's description and the documented rules alone, the
answers keyguard may give. An independent re-implementation: it imports none of
keyguard's policy, model or request code, so a bug there cannot hide in both.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import unquote

from tests.support.fuzz_spec import (
    GARBAGE,
    INVALID,
    KEY_MODELS,
    KEY_NETS,
    MISSING,
    FuzzKey,
    Spec,
)

# The documented path forms that name a model (README, "How a request is decided"):
# Gemini "…/models/<model>:<action>" at the end; Azure OpenAI "…/openai/deployments/
# <deployment>/…"; Bedrock "…/model/<id>/(invoke|invoke-with-response-stream|converse|
# converse-stream)" at the end. Percent-escapes in the name are decoded.
PATH_MODELS = (
    re.compile(r"/models/([^/:?]+):[A-Za-z]+$"),
    re.compile(r"/openai/deployments/([^/?]+)/"),
    re.compile(r"/model/([^/?]+)/(invoke|invoke-with-response-stream|converse|converse-stream)$"),
)
MAX_MODEL_LEN = 256

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


def path_model(path: str) -> str | None:
    for pattern in PATH_MODELS:
        match = pattern.search(path)
        if match:
            name = unquote(match.group(1))
            return "=" + name if 0 < len(name) <= MAX_MODEL_LEN else "ambiguous"
    return None


def model_readings(spec: Spec) -> frozenset[str]:
    from_path = path_model(spec.bare_path)
    if from_path is None:
        if spec.method.upper() in BODYLESS_METHODS and not spec.body.data:
            return frozenset({"n/a"})
        return spec.body.model
    # The path names a model; a body naming another one makes it ambiguous.
    out: set[str] = set()
    for reading in spec.body.model:
        if reading in ("none", from_path):
            out.add(from_path)
        elif reading == "any":
            out |= {from_path, "ambiguous"}
        else:
            out.add("ambiguous")
    return frozenset(out)


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
        elif reading in ("none", "ambiguous"):
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


def model_reading(values: list[Any]) -> str:
    """What the model reader must make of the model values it saw, in order: "none",
    "ambiguous" (two different ones, or one that cannot name a model) or "=NAME"."""
    found: str | None = None
    for value in values:
        if not isinstance(value, str) or not value or len(value) > MAX_MODEL_LEN:
            return "ambiguous"
        if found is not None and found != value:
            return "ambiguous"
        found = value
    return "none" if found is None else "=" + found
