"""What clients are promised, written out independently of keyguard's own tables."""

from __future__ import annotations

# The Anthropic error type each reason code must carry in an Anthropic-shaped body.
ANTHROPIC_TYPES = {
    "missing_api_key": "authentication_error",
    "invalid_api_key": "authentication_error",
    "key_disabled": "authentication_error",
    "key_expired": "authentication_error",
    "ip_not_allowed": "permission_error",
    "model_not_allowed": "permission_error",
    "model_required": "invalid_request_error",
    "insufficient_quota": "billing_error",
    "rate_limit_exceeded": "rate_limit_error",
    "store_unavailable": "api_error",
    "check_too_late": "api_error",
    "internal_error": "api_error",
}
