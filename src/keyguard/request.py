"""CheckRequest → RequestFacts: the few things a decision needs, read once."""

from __future__ import annotations

from dataclasses import dataclass, field

from keyguard._proto.envoy.service.auth.v3.attribute_context_pb2 import AttributeContext
from keyguard._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from keyguard.model import read_model
from keyguard.policy import ModelLookup

# Headers the decision reads. header_map is walked once and only these kept.
# (Envoy's x-envoy-auth-partial-body marks a truncated body; the model reader
# treats every body as a possibly truncated prefix, so it needs no flag.)
_WANTED = frozenset(
    {"authorization", "x-api-key", "x-request-id", "x-forwarded-for", "content-type"}
)


class Credential:
    """Why no usable key was found, when one was not."""

    MISSING = "missing"
    MALFORMED = "malformed"  # wrong scheme, duplicated header, or bad format


@dataclass(slots=True)
class RequestFacts:
    credential: str  # the raw key, or a Credential sentinel; never logged
    client_ip: str | None
    path: str
    request_id: str
    content_type: str
    method: str
    _body: bytes
    _model: str | None = field(default=None)

    @property
    def anthropic(self) -> bool:
        return self.path.endswith("/messages")

    def model(self) -> str:
        if self._model is None:
            self._model = read_model(self.path, self.content_type, self._body, self.method)
        return self._model


def _collect_headers(http: AttributeContext.HttpRequest) -> dict[str, list[str]]:
    # Envoy fills header_map when encode_raw_headers is on, the headers map
    # otherwise; never both. header_map keeps duplicates as separate entries.
    found: dict[str, list[str]] = {}
    header_map = http.header_map.headers
    if header_map:
        for entry in header_map:
            name = entry.key
            # Envoy sends lower-case names; lower() only what might be a wanted header.
            if name not in _WANTED:
                name = name.lower()
                if name not in _WANTED:
                    continue
            value = entry.value or entry.raw_value.decode("utf-8", errors="replace")
            found.setdefault(name, []).append(value)
    else:
        for name, value in http.headers.items():
            lname = name.lower()
            if lname in _WANTED:
                found.setdefault(lname, []).append(value)
    return found


def _credential(headers: dict[str, list[str]]) -> str:
    auth = headers.get("authorization")
    api_key = headers.get("x-api-key")
    # Two values of either credential header are ambiguous, whichever would win.
    if len(auth or ()) > 1 or len(api_key or ()) > 1:
        return Credential.MALFORMED
    if auth is not None:
        value = auth[0].strip()
        if not value:
            return Credential.MISSING
        scheme, _, rest = value.partition(" ")
        if scheme.lower() != "bearer":
            return Credential.MALFORMED
        key = rest.strip()
        return key if key else Credential.MISSING
    if api_key is not None:
        key = api_key[0].strip()
        return key if key else Credential.MISSING
    return Credential.MISSING


def _client_ip(request: CheckRequest, xff: list[str] | None, trusted_hops: int) -> str | None:
    if trusted_hops > 0:
        if not xff:
            return None
        hops = [h.strip() for h in ",".join(xff).split(",") if h.strip()]
        if len(hops) < trusted_hops:
            return None
        return hops[-trusted_hops]
    address = request.attributes.source.address
    if address.HasField("socket_address"):
        return address.socket_address.address
    return None


def extract(request: CheckRequest, trusted_hops: int = 0) -> RequestFacts:
    http = request.attributes.request.http
    headers = _collect_headers(http)
    path = http.path.partition("?")[0]
    body = http.raw_body or (http.body.encode("utf-8") if http.body else b"")
    rid = headers.get("x-request-id")
    ctype = headers.get("content-type")
    return RequestFacts(
        credential=_credential(headers),
        client_ip=_client_ip(request, headers.get("x-forwarded-for"), trusted_hops),
        path=path,
        request_id=rid[0] if rid else http.id,
        content_type=ctype[0] if ctype else "",
        method=http.method,
        _body=body,
    )


__all__ = ["Credential", "ModelLookup", "RequestFacts", "extract"]
