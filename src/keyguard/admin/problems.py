"""Errors as ``application/problem+json`` (RFC 9457), with the CLI's one-line messages.

Every error the admin API answers goes through here: keyguard's own errors (by their
place in ``keyguard.errors``), a request that does not validate (a malformed body, an
unknown field, a bad query parameter: 400 naming the field), an unknown route or
method, a body that is too large (413), and Redis failing (503). An unexpected
exception is a bare 500 with no traceback; the server logs it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from keyguard.errors import InvalidChange, KeyguardError, KeyringError, SettingsError, StoreError

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("keyguard.admin")

# Body fields that people try where another route does the job: refused with a pointer
# to that route rather than a bare "unknown field".
ELSEWHERE = {"rotate": "rotate a key with POST /v1/keys/{id}/rotate"}


class Problem(BaseModel):
    """An error: ``detail`` is the same one-line message the CLI prints."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = Problem(title=HTTPStatus(status).phrase, status=status, detail=detail)
    return JSONResponse(
        body.model_dump(), status_code=status, media_type=PROBLEM_JSON, headers=headers
    )


def status_of(exc: KeyguardError) -> int:
    if isinstance(exc, InvalidChange | SettingsError):
        return 400
    if isinstance(exc, LookupError):  # UnknownKey, UnknownPrice, UnknownToken
        return 404
    if isinstance(exc, KeyringError):  # refused by the state of the store (a collision…)
        return 409
    if isinstance(exc, StoreError):
        return 503
    return 500


def _field(loc: Sequence[Any]) -> str:
    parts = [str(part) for part in loc[1:] if not isinstance(part, int)]
    return ".".join(parts)


def validation_detail(errors: Sequence[Any]) -> str:
    """One line for the first thing wrong with a request, naming the field."""
    if not errors:
        return "bad request"
    err = errors[0]
    kind = err.get("type", "")
    loc = tuple(err.get("loc", ()))
    field = _field(loc)
    if kind == "json_invalid":
        reason = (err.get("ctx") or {}).get("error", "JSON decode error")
        where = f" at position {loc[1]}" if len(loc) > 1 else ""
        return f"malformed JSON: {reason}{where}"
    if kind == "extra_forbidden":
        if field in ELSEWHERE:
            return f"unknown field {field!r}: {ELSEWHERE[field]}"
        return f"unknown field {field!r}"
    if kind == "missing":
        return f"missing field {field!r}" if loc[:1] == ("body",) else f"missing {field!r}"
    # The body itself, not a field that should be an object (meta).
    if loc == ("body",) or (kind in ("model_attributes_type", "dict_type") and not field):
        return "the body must be a JSON object (Content-Type: application/json)"
    message = str(err.get("msg", "is not valid"))
    if message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    return f"{field}: {message}" if field else message


async def _keyguard_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, KeyguardError)
    return problem(status_of(exc), str(exc))


async def _redis_error(request: Request, exc: Exception) -> JSONResponse:
    return problem(503, f"Redis failed ({type(exc).__name__}: {exc})")


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return problem(400, validation_detail(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        detail = f"no such route: {request.url.path}"
    elif exc.status_code == 405:
        detail = f"method {request.method} is not allowed on {request.url.path}"
    else:
        detail = str(exc.detail)
    return problem(exc.status_code, detail, headers=dict(exc.headers or {}))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "internal error; the admin server's log has the details")


def install(app: FastAPI) -> None:
    app.add_exception_handler(KeyguardError, _keyguard_error)
    app.add_exception_handler(redis.exceptions.RedisError, _redis_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


__all__ = ["PROBLEM_JSON", "Problem", "install", "problem", "status_of", "validation_detail"]
