"""The FastAPI app: HTML pages for raters and admins (Jinja2, autoescaped), plus the JSON API of `api.py`.

Security, all enforced here on the server:
- sessions: a random token in an HttpOnly, SameSite=Lax cookie (Secure over https), stored hashed;
- CSRF: every state-changing request carries the session's token (form field `csrf_token` or header
  `X-CSRF-Token`), compared in constant time; the login and invite forms, which have no session yet,
  use a double-submit cookie instead;
- roles: admin routes answer 403 to raters; another rater's assignment answers 404;
- output: templates autoescape everything (no `|safe` on any user or model text); guidelines go
  through `markdown.render_markdown`, which escapes first; CSP allows only this origin's own scripts
  and styles, with no inline script, and no framing.
"""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, PackageLoader

from tether.errors import TetherError
from tether.raters import errors
from tether.raters.accounts import Accounts
from tether.raters.admin_pages import add_admin_pages
from tether.raters.api import router
from tether.raters.db import MAX_ID, Database, database_url, migrate
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
from tether.raters.security import Passwords, cross_site, load_or_create_secret, new_token, same
from tether.raters.service import RaterService, iso

PRE_COOKIE = "tether_pre"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
VOTES = {"left-much": ("left", 1.0), "left": ("left", 0.5), "tie": ("tie", None), "right": ("right", 0.5),
         "right-much": ("right", 1.0), "skip": ("skip", None)}
"""Rating-page buttons: (choice, strength); "much better" is strength 1, "slightly better" 0.5."""


def create_app(project_dir: str | Path, db: str | None = None, passwords: Passwords | None = None,
               upgrade: bool = True) -> FastAPI:
    """The rater app for the project in `project_dir` (its secret key and exports live there).

    `db` is a postgresql:// URL, or None for SQLite in the project folder; `upgrade` runs the
    migrations to head first. `passwords` lets tests use a cheaper argon2 setting.
    """
    project_dir = Path(project_dir)
    database = Database(database_url(project_dir, db))
    if upgrade:
        migrate(database)
    env = Environment(loader=PackageLoader("tether.raters", "templates"), autoescape=True)
    env.filters["markdown"] = render_markdown
    env.filters["iso"] = iso
    ctx = AppContext(database, Accounts(database, load_or_create_secret(project_dir), passwords),
                     RaterService(database, project_dir), Jinja2Templates(env=env))
    app = FastAPI(title="tether raters", version="1", docs_url=None, redoc_url=None)
    app.state.ctx = ctx
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    app.add_middleware(SecurityHeaders)
    app.add_exception_handler(TetherError, _on_error)
    app.include_router(router)
    _add_pages(app)
    return app


HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
           (b"x-frame-options", b"DENY"),
           (b"referrer-policy", b"no-referrer")]  # invite links carry their token in the path


class SecurityHeaders:
    """Pure ASGI middleware adding HEADERS (and no-store outside /static/) to every response.

    Not `@app.middleware("http")`: that wraps each response in a stream, which costs more per request.
    """

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        extra = HEADERS if scope["path"].startswith("/static/") else HEADERS + [(b"cache-control", b"no-store")]

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _on_error(request: Request, err: Exception) -> Response:
    """JSON {"detail": ...} under /api/; pages redirect to sign-in or guidelines, or show the message."""
    status = status_of(err)
    if request.url.path.startswith("/api/"):
        return JSONResponse({"detail": str(err)}, status_code=status)
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
        except (errors.Unauthorized, errors.RateLimited) as err:
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

    _add_rater_pages(app)
    add_admin_pages(app)


def _add_rater_pages(app: FastAPI) -> None:
    hide = {"include_in_schema": False}

    @app.get("/guidelines", **hide)
    def guidelines(request: Request, user: User) -> HTMLResponse:
        service = ctx_of(request).service
        context = {"user": user, "guideline": service.current_guideline(),
                   "acknowledged": service.has_acknowledged(user.user_id)}
        return page(request, "guidelines.html", context)

    @app.post("/guidelines/ack", **hide)
    def acknowledge(request: Request, user: Checked, version: Annotated[str, Form(max_length=64)] = "") -> Response:
        ctx_of(request).service.acknowledge(user.user_id, version)
        return RedirectResponse("/rate", status_code=303)

    @app.get("/rate", **hide)
    def rate_page(request: Request, user: User) -> HTMLResponse:
        if cross_site(request):  # taking a pair is a state change: never on another site's say-so
            return page(request, "continue.html", {"user": user})
        task = ctx_of(request).service.next_assignment(user.user_id)
        context = {"user": user, "task": task, "submission_id": uuid.uuid4().hex}
        return page(request, "rate.html" if task else "done.html", context)

    @app.post("/rate", **hide)
    def rate(request: Request, user: Checked, assignment_id: Annotated[int, Form(gt=0, lt=MAX_ID + 1)],
             vote: Annotated[str, Form(max_length=20)] = "", rationale: Annotated[str, Form(max_length=2000)] = "",
             submission_id: Annotated[str, Form(max_length=64)] = "") -> Response:
        if vote not in VOTES:
            raise errors.Invalid(f"vote: expected one of {', '.join(VOTES)}")
        choice, strength = VOTES[vote]
        try:
            ctx_of(request).service.submit_rating(user.user_id, assignment_id, choice, strength,
                                                  rationale or None, submission_id)
        except errors.Conflict:
            pass  # rated already (a double submit) or expired: either way the next pair is what to show
        return RedirectResponse("/rate", status_code=303)
