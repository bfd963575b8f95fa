"""The dashboard: sign-in pages, the session endpoints and the page's own assets.

Everything the browser needs is in this package (``pages/`` are served by the routes
below, ``static/`` as files); nothing is fetched from elsewhere and nothing is built.
The page itself is plain HTML and one vanilla JS file that calls the JSON API (``/v1``)
with the session cookie and, on writes, the ``X-CSRF-Token`` header (``app.TokenGate``
checks both).

Signing in: ``GET /login`` sets a short-lived, HttpOnly, SameSite=Strict cookie holding a
random value that the form repeats in a hidden field (a cross-site form cannot send the
cookie); ``POST /login`` checks that pair and the token (``SessionStore.sign_in``) and
sets the session cookie (HttpOnly, SameSite=Strict, Secure over https). ``GET /session``
tells the page who it is and the CSRF token; ``POST /logout`` ends the session.
"""

from __future__ import annotations

import hmac
import html
import secrets
import string
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keyguard.admin import problems
from keyguard.admin.auth import SESSION_TTL, Session, SessionStore

HERE = Path(__file__).parent
PAGES = HERE / "pages"
STATIC = HERE / "static"
SESSION_COOKIE = "kg_session"
LOGIN_COOKIE = "kg_login"
LOGIN_TTL = 3600  # seconds a sign-in form stays usable
MAX_TOKEN_FIELD = 200

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
}

router = APIRouter(include_in_schema=False)


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC)


class SecurityHeaders:
    """Every answer gets the headers above; none may be cached (a created key is in one)
    except the static assets, which are revalidated."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cache = "no-cache" if scope.get("path", "").startswith("/static/") else "no-store"

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                headers["cache-control"] = cache
            await send(message)

        await self.app(scope, receive, with_headers)


def same_origin(scope: Scope) -> bool:
    """False when the browser says the request comes from another site (``Origin`` or
    ``Sec-Fetch-Site``); requests without those headers (not browsers) pass."""
    headers = Headers(scope=scope)
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = headers.get("origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.scheme == scope.get("scheme", "http") and parts.netloc == headers.get("host")


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _sessions(request: Request) -> SessionStore:
    store: SessionStore = request.app.state.sessions
    return store


async def current_session(request: Request) -> Session | None:
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    store = _sessions(request)
    return await run_in_threadpool(store.get, cookie)


def _page(name: str, **values: str) -> str:
    text = (PAGES / name).read_text(encoding="utf-8")
    return string.Template(text).substitute({k: html.escape(v) for k, v in values.items()})


def _login_page(error: str = "", status: int = 200) -> HTMLResponse:
    nonce = secrets.token_urlsafe(32)
    response = HTMLResponse(_page("login.html", csrf=nonce, error=error), status_code=status)
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=LOGIN_TTL,
        path="/login",
        httponly=True,
        samesite="strict",
    )
    return response


def _secure_cookie(request: Request, response: Response, name: str, value: str) -> None:
    response.set_cookie(
        name,
        value,
        max_age=SESSION_TTL,
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )


async def _form(request: Request) -> dict[str, str]:
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    body = (await request.body()).decode("utf-8", errors="replace")
    fields = parse_qs(body, keep_blank_values=True, max_num_fields=10)
    return {name: values[0] for name, values in fields.items()}


@router.get("/")
async def index(request: Request) -> Response:
    if await current_session(request) is None:
        return RedirectResponse("/login", status_code=303)
    return HTMLResponse(_page("index.html"))


@router.get("/login")
async def login_form(request: Request) -> Response:
    if await current_session(request) is not None:
        return RedirectResponse("/", status_code=303)
    return _login_page()


@router.post("/login")
async def login(request: Request) -> Response:
    try:
        form = await _form(request)
    except ValueError:  # more fields than a sign-in form has
        form = {}
    sent, expected = form.get("csrf", ""), request.cookies.get(LOGIN_COOKIE, "")
    if (
        not same_origin(request.scope)
        or not expected
        or not hmac.compare_digest(sent.encode(), expected.encode())
    ):
        return _login_page("The sign-in form expired or came from elsewhere: try again.", 403)
    token = form.get("token", "").strip()
    if not token or len(token) > MAX_TOKEN_FIELD:
        return _login_page("That is not a valid admin token.", 401)
    store = _sessions(request)
    try:
        created = await run_in_threadpool(store.sign_in, token)
    except redis.exceptions.RedisError as exc:
        return _login_page(f"Redis failed ({type(exc).__name__}); try again later.", 503)
    if created is None:
        return _login_page("That is not a valid admin token.", 401)
    old = request.cookies.get(SESSION_COOKIE)
    if old:
        await run_in_threadpool(store.sign_out, old)
    response = RedirectResponse("/", status_code=303)
    _secure_cookie(request, response, SESSION_COOKIE, created.session_id)
    response.delete_cookie(LOGIN_COOKIE, path="/login", httponly=True, samesite="strict")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    session = await current_session(request)
    if session is not None:
        form = await _form(request)
        sent = request.headers.get("x-csrf-token") or form.get("csrf")
        if not same_origin(request.scope) or not session.csrf_matches(sent):
            return problems.problem(403, "signing out needs the session's CSRF token")
        cookie = request.cookies.get(SESSION_COOKIE, "")
        await run_in_threadpool(_sessions(request).sign_out, cookie)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=_secure(request)
    )
    return response


@router.get("/session")
async def session_info(request: Request) -> Response:
    """Who the page is signed in as, and the CSRF token its writes must send."""
    session = await current_session(request)
    if session is None:
        return problems.problem(401, "not signed in")
    body: dict[str, Any] = {
        "token_id": session.principal.token_id,
        "role": session.principal.role,
        "csrf": session.csrf,
        "expires_at": session.expires_at,
    }
    return JSONResponse(body)


__all__ = [
    "LOGIN_COOKIE",
    "SESSION_COOKIE",
    "SecurityHeaders",
    "router",
    "same_origin",
    "static_files",
]
