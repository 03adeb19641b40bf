"""The FastAPI app: HTML pages for raters and admins (Jinja2, autoescaped), plus the JSON API of `api.py`.

Security, all enforced here on the server:
- sessions: a random token in an HttpOnly, SameSite=Lax cookie (Secure over https), stored hashed;
- CSRF: every state-changing request carries the session's token (form field `csrf_token` or header
  `X-CSRF-Token`), compared in constant time; the login and invite forms, which have no session yet,
  use a double-submit cookie instead;
- roles: admin routes answer 403 to raters; another rater's assignment answers 404;
- output: templates autoescape everything (no `|safe` on any user or model text); guidelines, prompts
  and responses go through `markdown.render_markdown` (raw HTML, links and images off); CSP allows only
  this origin's own scripts and styles, with no inline script, and no framing;
- middleware.py, outside the whole app: the security headers on every response (500s included) and
  a 1 MiB body limit (413 before parsing); proxies' X-Forwarded-* only from `--forwarded-allow-ips`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, PackageLoader

from tether.errors import TetherError
from tether.raters import errors
from tether.raters.accounts import Accounts
from tether.raters.admin_api import router as admin_router
from tether.raters.admin_pages import add_admin_pages
from tether.raters.review_pages import add_review_pages
from tether.raters.rater_pages import add_rater_pages
from tether.raters.api import router
from tether.raters.db import Database, database_url, migrate
from tether.raters.dependencies import (
    SESSION_COOKIE,
    AppContext,
    Checked,
    User,
    client_address,
    ctx_of,
    page,
    set_session_cookie,
    status_of,
)
from tether.raters.markdown import render_markdown
from tether.raters.middleware import IMPORT_PATHS, MAX_BODY, MAX_IMPORT_BODY, RaterApp, on_invalid_request
from tether.raters.security import Passwords, load_or_create_secret, new_token, same
from tether.raters.service import RaterService, iso

PRE_COOKIE = "tether_pre"


def create_app(project_dir: str | Path, db: str | None = None, passwords: Passwords | None = None,
               upgrade: bool = True, public_url: str | None = None) -> FastAPI:
    """The rater app for the project in `project_dir` (its secret key and exports live there).

    `db` is a postgresql:// URL, or None for SQLite in the project folder; `upgrade` runs the
    migrations to head first. `passwords` lets tests use a cheaper argon2 setting. `public_url` is where
    raters reach the app, for invite links (never the request's Host header, which any client sets);
    without it, the address the server listens on.
    """
    project_dir = Path(project_dir)
    database = Database(database_url(project_dir, db))
    if upgrade:
        migrate(database)
    env = Environment(loader=PackageLoader("tether.raters", "templates"), autoescape=True)
    env.filters["markdown"] = render_markdown
    env.filters["iso"] = iso
    ctx = AppContext(database, Accounts(database, load_or_create_secret(project_dir), passwords),
                     RaterService(database, project_dir), Jinja2Templates(env=env), public_url=public_url)
    app = RaterApp(title="tether raters", version="1", docs_url=None, redoc_url=None)
    app.state.ctx = ctx
    app.body_limit_for = lambda scope: body_limit(ctx.accounts, scope)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    app.add_exception_handler(TetherError, _on_error)
    app.add_exception_handler(RequestValidationError, on_invalid_request)
    app.include_router(router)
    app.include_router(admin_router)
    _add_pages(app)
    return app


def body_limit(accounts: Accounts, scope: dict) -> int:
    """MAX_IMPORT_BODY for a queue import by a signed-in admin, else MAX_BODY (strangers never get the large one)."""
    if scope.get("method") != "POST" or scope["path"] not in IMPORT_PATHS:
        return MAX_BODY
    cookies = Request(scope).cookies
    user = accounts.principal(cookies.get(SESSION_COOKIE))
    return MAX_IMPORT_BODY if user is not None and user.is_admin else MAX_BODY


async def _on_error(request: Request, err: Exception) -> Response:
    """JSON {"detail": ...} under /api/; pages redirect to sign-in or guidelines, or show the message."""
    status = status_of(err)
    headers = {"retry-after": "2"} if isinstance(err, errors.Busy) else None
    if request.url.path.startswith("/api/"):
        return JSONResponse({"detail": str(err)}, status_code=status, headers=headers)
    if isinstance(err, errors.Unauthorized) and request.method == "GET":
        return RedirectResponse("/login", status_code=303)
    if isinstance(err, errors.NeedsAcknowledgement):
        return RedirectResponse("/guidelines", status_code=303)
    return page(request, "error.html", {"message": str(err)}, status=status)


# -- pages ----------------------------------------------------------------------------------------------------


def _pre_session_form(request: Request, name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    """A login/invite form with a double-submit CSRF token (cookie = hidden field)."""
    pre = request.cookies.get(PRE_COOKIE) or new_token()
    response = page(request, name, {**context, "pre_token": pre}, status)
    response.set_cookie(PRE_COOKIE, pre, httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


def _check_pre(request: Request, pre_token: str) -> None:
    if not same(pre_token, request.cookies.get(PRE_COOKIE)):
        raise errors.Forbidden("form expired; reload the page and try again")


def _add_pages(app: FastAPI) -> None:
    hide = {"include_in_schema": False}

    @app.get("/", **hide)
    def home(user: User) -> RedirectResponse:
        return RedirectResponse("/admin" if user.is_admin else "/rate", status_code=303)

    @app.get("/login", **hide)
    def login_form(request: Request, welcome: bool = False) -> HTMLResponse:
        return _pre_session_form(request, "login.html", {"welcome": welcome})

    @app.post("/login", **hide)
    def login(request: Request, username: Annotated[str, Form(max_length=200)] = "",
              password: Annotated[str, Form(max_length=1000)] = "",
              pre_token: Annotated[str, Form(max_length=200)] = "") -> Response:
        _check_pre(request, pre_token)
        try:
            signed = ctx_of(request).accounts.login(username, password, client_address(request))
        except (errors.Unauthorized, errors.RateLimited, errors.Busy) as err:
            return _pre_session_form(request, "login.html", {"error": str(err), "username": username}, status_of(err))
        response = RedirectResponse("/", status_code=303)
        set_session_cookie(request, response, signed.token)
        return response

    @app.post("/logout", **hide)
    def logout(request: Request, user: Checked) -> RedirectResponse:
        ctx_of(request).accounts.logout(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.get("/invite/{token}", **hide)
    def invite_form(request: Request, token: str) -> HTMLResponse:
        username = ctx_of(request).accounts.invited_username(token)
        return _pre_session_form(request, "invite.html", {"username": username, "token": token})

    @app.post("/invite/{token}", **hide)
    def accept_invite(request: Request, token: str, password: Annotated[str, Form(max_length=1000)] = "",
                      password2: Annotated[str, Form(max_length=1000)] = "",
                      pre_token: Annotated[str, Form(max_length=200)] = "") -> Response:
        _check_pre(request, pre_token)
        accounts = ctx_of(request).accounts
        username = accounts.invited_username(token)
        try:
            if password != password2:
                raise errors.Invalid("password: the two passwords differ")
            accounts.accept_invite(token, password)
        except errors.Invalid as err:
            context = {"username": username, "token": token, "error": str(err)}
            return _pre_session_form(request, "invite.html", context, 422)
        return RedirectResponse("/login?welcome=true", status_code=303)

    add_rater_pages(app)
    add_admin_pages(app)
    add_review_pages(app)
