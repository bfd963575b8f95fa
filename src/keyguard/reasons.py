"""The one table of outcomes: reason code → HTTP status, gRPC code, error types, message.

Every deny keyguard can give is a row here; responses, metrics labels and the
README's tables all read from it, so they cannot drift apart.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Reason(enum.StrEnum):
    OK = "ok"
    MISSING_API_KEY = "missing_api_key"
    INVALID_API_KEY = "invalid_api_key"
    KEY_DISABLED = "key_disabled"
    KEY_EXPIRED = "key_expired"
    IP_NOT_ALLOWED = "ip_not_allowed"
    MODEL_NOT_ALLOWED = "model_not_allowed"
    MODEL_REQUIRED = "model_required"
    MODEL_NOT_PRICED = "model_not_priced"
    STREAM_USAGE_REQUIRED = "stream_usage_required"
    KEY_TYPE_NOT_ALLOWED = "key_type_not_allowed"
    ROUTE_CONFIG_INVALID = "route_config_invalid"
    INSUFFICIENT_QUOTA = "insufficient_quota"
    RATE_LIMIT_EXCEEDED = "rate_limit_exceeded"
    STORE_UNAVAILABLE = "store_unavailable"
    CHECK_TOO_LATE = "check_too_late"
    INTERNAL_ERROR = "internal_error"


class GrpcCode(enum.IntEnum):
    """The google.rpc codes keyguard answers with (grpc.StatusCode's numbers), kept
    here so that the decision core imports without grpc."""

    OK = 0
    INVALID_ARGUMENT = 3
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


@dataclass(frozen=True, slots=True)
class Outcome:
    http_status: int
    grpc_code: GrpcCode
    openai_type: str
    anthropic_type: str
    message: str


_AUTH = ("invalid_request_error", "authentication_error")

OUTCOMES: dict[Reason, Outcome] = {
    Reason.MISSING_API_KEY: Outcome(
        401,
        GrpcCode.UNAUTHENTICATED,
        *_AUTH,
        "No API key provided. Send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
    ),
    Reason.INVALID_API_KEY: Outcome(
        401, GrpcCode.UNAUTHENTICATED, *_AUTH, "Incorrect or malformed API key provided."
    ),
    Reason.KEY_DISABLED: Outcome(
        401, GrpcCode.UNAUTHENTICATED, *_AUTH, "This API key has been disabled."
    ),
    Reason.KEY_EXPIRED: Outcome(401, GrpcCode.UNAUTHENTICATED, *_AUTH, "This API key has expired."),
    Reason.IP_NOT_ALLOWED: Outcome(
        403,
        GrpcCode.PERMISSION_DENIED,
        "permission_error",
        "permission_error",
        "This API key may not be used from your IP address.",
    ),
    Reason.MODEL_NOT_ALLOWED: Outcome(
        403,
        GrpcCode.PERMISSION_DENIED,
        "permission_error",
        "permission_error",
        "This API key may not use the requested model.",
    ),
    Reason.MODEL_REQUIRED: Outcome(
        400,
        GrpcCode.INVALID_ARGUMENT,
        "invalid_request_error",
        "invalid_request_error",
        "This API key is limited to certain models, and no single model could be read from"
        " the request. Send a 'model' field.",
    ),
    Reason.MODEL_NOT_PRICED: Outcome(
        403,
        GrpcCode.PERMISSION_DENIED,
        "permission_error",
        "permission_error",
        "The requested model has no price, so this metered API key cannot use it.",
    ),
    Reason.KEY_TYPE_NOT_ALLOWED: Outcome(
        403,
        GrpcCode.PERMISSION_DENIED,
        "permission_error",
        "permission_error",
        "This route does not accept this type of API key.",
    ),
    Reason.STREAM_USAGE_REQUIRED: Outcome(
        400,
        GrpcCode.INVALID_ARGUMENT,
        "invalid_request_error",
        "invalid_request_error",
        "Streaming requests on this API key must ask for usage: set"
        " stream_options.include_usage to true.",
    ),
    Reason.INSUFFICIENT_QUOTA: Outcome(
        402,
        GrpcCode.RESOURCE_EXHAUSTED,
        "insufficient_quota",
        "billing_error",
        "This API key's quota is used up: its balance cannot cover the request.",
    ),
    Reason.RATE_LIMIT_EXCEEDED: Outcome(
        429,
        GrpcCode.RESOURCE_EXHAUSTED,
        "requests",
        "rate_limit_error",
        "Rate limit reached for requests on this API key. Retry after the time in Retry-After.",
    ),
    Reason.STORE_UNAVAILABLE: Outcome(
        503,
        GrpcCode.UNAVAILABLE,
        "server_error",
        "api_error",
        "The API key store is unavailable. Please retry shortly.",
    ),
    # Envoy's deadline for the Check passed before keyguard got to spend: Envoy has
    # already answered the client (its timeout), so nothing is spent or held.
    Reason.CHECK_TOO_LATE: Outcome(
        503,
        GrpcCode.UNAVAILABLE,
        "server_error",
        "api_error",
        "The authorization service is overloaded. Please retry shortly.",
    ),
    Reason.ROUTE_CONFIG_INVALID: Outcome(
        500,
        GrpcCode.INTERNAL,
        "server_error",
        "api_error",
        "This route's authorization settings are invalid; the operator has been told.",
    ),
    Reason.INTERNAL_ERROR: Outcome(
        500,
        GrpcCode.INTERNAL,
        "server_error",
        "api_error",
        "The authorization service failed to process the request.",
    ),
}
