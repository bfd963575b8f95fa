"""CheckRequest → RequestFacts: the few things a decision needs, read once and lazily.

A Check for a cached key without an IP or model list needs only the credential
(and the request id for its log line), so that is all ``extract`` reads up
front. The client address, path and body are read from the message only when
a decision asks for them: each protobuf field read builds a Python object.
"""

from __future__ import annotations

from keyguard._proto.envoy.service.auth.v3.attribute_context_pb2 import AttributeContext
from keyguard._proto.envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from keyguard.authz.route import RouteSettings, route_settings
from keyguard.meter.estimate import RequestOptions, options_from_fields, request_options
from keyguard.model import ModelLookup, read_model

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


class RequestFacts:
    """What a decision reads from one CheckRequest; fields beyond the key are lazy."""

    __slots__ = (
        "_body",
        "_extras",
        "_hops",
        "_http",
        "_model",
        "_options",
        "_path",
        "_request",
        "_route",
        "_xff",
        "content_type",
        "credential",
        "request_id",
    )

    def __init__(
        self,
        request: CheckRequest,
        http: AttributeContext.HttpRequest,
        headers: dict[str, list[str]],
        trusted_hops: int,
    ) -> None:
        # The raw key, or a Credential sentinel; never logged.
        self.credential = _credential(headers)
        rid = headers.get("x-request-id")
        self.request_id: str = rid[0] if rid else http.id
        ctype = headers.get("content-type")
        self.content_type: str = ctype[0] if ctype else ""
        self._request = request
        self._http = http
        self._xff = headers.get("x-forwarded-for")
        self._hops = trusted_hops
        self._path: str | None = None
        self._body: bytes | None = None
        self._model: str | None = None
        self._options: RequestOptions | None = None
        self._extras: dict[str, object] | None = None
        self._route: RouteSettings | None = None

    @property
    def path(self) -> str:
        if self._path is None:
            self._path = self._http.path.partition("?")[0]
        return self._path

    @property
    def method(self) -> str:
        return self._http.method

    @property
    def route(self) -> RouteSettings:
        """The route's keyguard.* settings from Envoy's context_extensions."""
        if self._route is None:
            self._route = route_settings(self._request.attributes.context_extensions)
        return self._route

    @property
    def anthropic(self) -> bool:
        """Anthropic's error shape: paths ending in /messages, unless the route says."""
        dialect = self.route.anthropic
        return self.path.endswith("/messages") if dialect is None else dialect

    @property
    def client_ip(self) -> str | None:
        return _client_ip(self._request, self._xff, self._hops)

    def body(self) -> bytes:
        """The body Envoy sent: all of it, or a prefix (see ``body_size``); read from the
        message once (each read of a bytes field copies it)."""
        body = self._body
        if body is None:
            http = self._http
            body = self._body = http.raw_body or (http.body.encode("utf-8") if http.body else b"")
        return body

    @property
    def body_size(self) -> int:
        """The whole body's length, also when Envoy sent only a prefix of it."""
        return max(self._http.size, len(self.body()))

    @property
    def streams_chat_without_usage(self) -> bool:
        """A streamed chat completion that did not ask for usage (include_usage)."""
        if not self.path.endswith("/completions"):
            return False
        options = self.options()
        return options.stream and not options.include_usage

    def options(self) -> RequestOptions:
        if self._options is None:
            if self._model is None:
                self.model()
            extras = self._extras
            # The model reader walked the JSON body and kept these fields on the way.
            if extras is not None and self._model != ModelLookup.AMBIGUOUS:
                self._options = options_from_fields(extras)
            else:
                self._options = request_options(self.body())
        return self._options

    def model(self) -> str:
        if self._model is None:
            http = self._http
            extras: dict[str, object] = {}
            self._model = read_model(self.path, self.content_type, self.body(), http.method, extras)
            self._extras = extras
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
            values = found.get(name)
            if values is None:
                found[name] = [value]
            else:
                values.append(value)
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
    return RequestFacts(request, http, _collect_headers(http), trusted_hops)


__all__ = ["Credential", "ModelLookup", "RequestFacts", "extract"]
