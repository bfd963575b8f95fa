"""The admin server: the ASGI application (``create_app``) and its uvicorn runner (``run``).

Every request passes, in this order: ``SecurityHeaders`` (CSP, no framing, no caching:
``dashboard``), ``TokenGate`` (``/v1`` needs a valid admin token or a dashboard session:
401 without one, 403 for a viewer's write or a session's write without its CSRF token),
``BodyLimit`` (413 over ``KEYGUARD_ADMIN_MAX_BODY``, counted as the body arrives), then the
route. Errors are ``application/problem+json`` (``problems``). The management core is
synchronous (a redis-py client); routes call it in worker threads. The dashboard's
pages and assets (``dashboard``) are served by the same app, outside ``/v1``.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

import redis
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keyguard import __version__
from keyguard.admin import api, dashboard, problems
from keyguard.admin.auth import Principal, SessionStore, TokenStore
from keyguard.admin.settings import AdminSettings
from keyguard.errors import StartupError
from keyguard.store.connect import SyncClient, sync_client

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The statuses any /v1 operation may answer with a problem.
PROBLEM_STATUSES = {
    "400": "bad input: malformed JSON, an unknown field, a bad value",
    "401": "no admin token, or an unknown or revoked one",
    "403": "a viewer token asked for a change, or a session's change lacked its CSRF token",
    "404": "no such key, price or route",
    "409": "refused by the state of the store",
    "413": "the request body is too large",
    "503": "Redis failed",
}


def _problem_bytes(status: int, detail: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return problems.problem(status, detail, headers=headers)


class TokenGate:
    """``/v1/…`` needs ``Authorization: Bearer <admin token>`` or a dashboard session
    cookie; writes need the admin role, and a session's writes also its CSRF token in
    ``X-CSRF-Token`` (and no foreign ``Origin``). ``Authorization``, when sent, wins.

    Runs before anything reads the body, so an unauthenticated request learns nothing
    about its body's faults. The caller is put in ``scope["state"]["principal"]``.
    """

    def __init__(self, app: ASGIApp, tokens: TokenStore, sessions: SessionStore) -> None:
        self.app = app
        self.tokens = tokens
        self.sessions = sessions

    async def _principal(self, scope: Scope) -> tuple[Principal | None, str | None]:
        """The caller, and for a session's write the reason it is refused (else None)."""
        headers = Headers(scope=scope)
        authorization = headers.get("authorization")
        if authorization is not None:
            scheme, _, credential = authorization.partition(" ")
            if scheme.lower() != "bearer" or not credential.strip():
                return None, None
            return await run_in_threadpool(self.tokens.verify, credential.strip()), None
        cookie = cookie_parser(headers.get("cookie", "")).get(dashboard.SESSION_COOKIE)
        if not cookie:
            return None, None
        session = await run_in_threadpool(self.sessions.get, cookie)
        if session is None:
            return None, None
        refused = None
        if scope["method"] not in READ_METHODS:
            if not dashboard.same_origin(scope):
                refused = "a dashboard session's changes must come from the dashboard's origin"
            elif not session.csrf_matches(headers.get("x-csrf-token")):
                refused = "a dashboard session's changes need its X-CSRF-Token header"
        return session.principal, refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == "/v1" or path.startswith("/v1/")):
            await self.app(scope, receive, send)
            return
        try:
            principal, refused = await self._principal(scope)
        except redis.exceptions.RedisError as exc:
            response = _problem_bytes(503, f"Redis failed ({type(exc).__name__}: {exc})")
            await response(scope, receive, send)
            return
        if principal is None:
            detail = "a valid admin token is needed: Authorization: Bearer <token>"
            await _problem_bytes(401, detail)(scope, receive, send)
            return
        if refused is not None:
            await _problem_bytes(403, refused)(scope, receive, send)
            return
        if scope["method"] not in READ_METHODS and not principal.can_write:
            detail = f"token {principal.token_id} is a viewer; changes need an admin token"
            await _problem_bytes(403, detail)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


class BodyLimit:
    """A body over ``max_body`` bytes is a 413 and reaches no route: refused at once
    from Content-Length, or as soon as a streamed body goes past the limit."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    def _too_large(self) -> HTTPException:
        return HTTPException(413, f"the request body is larger than {self.max_body} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            status = 413 if length.isdigit() else 400
            detail = str(self._too_large().detail) if status == 413 else "bad Content-Length"
            await problems.problem(status, detail)(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    # FastAPI passes an HTTPException from the body read on unchanged.
                    raise self._too_large()
            return message

        await self.app(scope, limited, send)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with problem+json errors instead of its 422 validation shape."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Problem"] = problems.Problem.model_json_schema()
    ref = {"$ref": "#/components/schemas/Problem"}
    for path, operations in doc.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            if path.startswith("/v1"):
                for status, why in PROBLEM_STATUSES.items():
                    responses[status] = {
                        "description": why,
                        "content": {problems.PROBLEM_JSON: {"schema": ref}},
                    }
    app.openapi_schema = doc
    return doc


def create_app(settings: AdminSettings, client: SyncClient) -> FastAPI:
    """The admin API over ``client`` (a synchronous redis-py client, decode_responses)."""
    app = FastAPI(
        title="keyguard admin API",
        version=__version__,
        description="Keys, prices and the audit trail of a keyguard fleet. Errors are"
        " application/problem+json; `detail` is the CLI's one-line message.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        redirect_slashes=False,
    )
    tokens = TokenStore(client)
    app.state.client = client
    app.state.sessions = SessionStore(client, tokens)
    app.include_router(api.router)
    app.include_router(dashboard.router)
    app.mount("/static", dashboard.static_files(), name="static")

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        await run_in_threadpool(client.ping)
        return {"status": "ok"}

    problems.install(app)
    app.add_middleware(BodyLimit, max_body=settings.max_body)
    app.add_middleware(TokenGate, tokens=tokens, sessions=app.state.sessions)
    app.add_middleware(dashboard.SecurityHeaders)  # outermost: runs first
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _bind(settings: AdminSettings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.host, settings.port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {settings.listen}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def run(settings: AdminSettings) -> None:
    """Serve until SIGINT or SIGTERM (uvicorn's own handlers finish open requests)."""
    import uvicorn

    sock = _bind(settings)
    client = sync_client(settings.store)
    app = create_app(settings, client)
    config = uvicorn.Config(
        app,
        log_level="info",
        server_header=False,
        proxy_headers=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
    )
    print(f"keyguard admin: listening on http://{settings.listen}", file=sys.stderr, flush=True)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        client.close()


__all__ = ["BodyLimit", "TokenGate", "create_app", "run"]
