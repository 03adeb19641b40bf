"""What the rater app's pages (web.py, admin_pages.py) and its JSON API (api.py) read from a request: the app's
context, the signed-in user with the CSRF and admin checks as FastAPI dependencies, the session cookie, error
statuses and page rendering.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from tether.raters import errors
from tether.raters.accounts import SESSION_TTL, Accounts, Principal
from tether.raters.db import Database
from tether.raters.security import same
from tether.raters.service import RaterService

SESSION_COOKIE = "tether_session"
STATUS: dict[type, int] = {errors.Invalid: 422, errors.NotFound: 404, errors.Unauthorized: 401,
                           errors.Forbidden: 403, errors.Conflict: 409, errors.RateLimited: 429,
                           errors.Busy: 503, errors.TooLarge: 413}


@dataclass
class AppContext:
    db: Database
    accounts: Accounts
    service: RaterService
    templates: Jinja2Templates
    public_url: str | None = None
    """Where raters reach the app (`serve --public-url`), for invite links; None: the listening address."""


def status_of(err: Exception) -> int:
    return next((code for cls, code in STATUS.items() if isinstance(err, cls)), 422)


def ctx_of(request: Request) -> AppContext:
    return request.app.state.ctx


def current_user(request: Request) -> Principal:
    """The signed-in user; Unauthorized (401, or a redirect to /login for pages) otherwise."""
    user = ctx_of(request).accounts.principal(request.cookies.get(SESSION_COOKIE))
    if user is None:
        raise errors.Unauthorized("sign in first")
    return user


async def checked_user(request: Request, user: Principal = Depends(current_user)) -> Principal:
    """`current_user` on a state-changing request whose CSRF token (header or form field) matches."""
    token = request.headers.get("x-csrf-token")
    content_type = request.headers.get("content-type", "")
    if token is None and content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        token = (await request.form()).get("csrf_token")
    if not same(token if isinstance(token, str) else None, user.csrf_token):
        raise errors.Forbidden("CSRF token missing or wrong; reload the page and try again")
    return user


def admin_user(user: Principal = Depends(current_user)) -> Principal:
    if not user.is_admin:
        raise errors.Forbidden("admins only")
    return user


def checked_admin(user: Principal = Depends(checked_user)) -> Principal:
    if not user.is_admin:
        raise errors.Forbidden("admins only")
    return user


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def invite_url(request: Request, token: str) -> str:
    """The invite link: under the configured public URL, else the address the server listens on, never
    the Host header (a client could make an admin hand out a link to their own site)."""
    base = ctx_of(request).public_url
    if base is None:
        host, port = request.scope.get("server") or ("127.0.0.1", 8000)
        base = f"{request.url.scheme}://{f'[{host}]' if ':' in host else host}:{port}"
    return f"{base.rstrip('/')}/invite/{token}"


def set_session_cookie(request: Request, response: Response, token: str) -> None:
    response.set_cookie(SESSION_COOKIE, token, max_age=int(SESSION_TTL.total_seconds()), httponly=True,
                        samesite="lax", secure=request.url.scheme == "https", path="/")


def page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    return ctx_of(request).templates.TemplateResponse(request, name, context, status_code=status)


User = Annotated[Principal, Depends(current_user)]
Checked = Annotated[Principal, Depends(checked_user)]
Admin = Annotated[Principal, Depends(admin_user)]
CheckedAdmin = Annotated[Principal, Depends(checked_admin)]
