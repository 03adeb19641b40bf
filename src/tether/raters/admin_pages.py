"""The admin dashboard page and its forms: invites, guidelines, settings, exports.

Form posts render the page again with a message rather than redirecting, so that a new invite link is
shown once and never travels in a URL (where logs and browser history would keep it).
"""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse

from tether.errors import TetherError
from tether.raters.service import EXPORT_FORMATS
from tether.raters.stats import dashboard
from tether.raters.dependencies import Admin, CheckedAdmin, ctx_of, page, status_of


def _admin_page(request: Request, user: Any, status: int = 200, **extra: Any) -> HTMLResponse:
    ctx = ctx_of(request)
    context = {"user": user, "stats": dashboard(ctx.db), "users": ctx.accounts.users(),
               "guideline": ctx.service.current_guideline(), "formats": EXPORT_FORMATS, **extra}
    return page(request, "admin.html", context, status)


def _attempt(request: Request, user: Any, action: Any, done: str) -> HTMLResponse:
    """Run a form's action; show the page with `done` on success or the error (with its status) otherwise."""
    try:
        result = action()
    except TetherError as err:
        return _admin_page(request, user, status_of(err), error=str(err))
    return _admin_page(request, user, notice=done.format(result=result))


def add_admin_pages(app: FastAPI) -> None:
    hide = {"include_in_schema": False}

    @app.get("/admin", **hide)
    def admin(request: Request, user: Admin) -> HTMLResponse:
        return _admin_page(request, user)

    @app.post("/admin/invites", **hide)
    def invite(request: Request, user: CheckedAdmin, username: Annotated[str, Form(max_length=200)] = "",
               role: Annotated[str, Form(max_length=10)] = "rater") -> HTMLResponse:
        try:
            token = ctx_of(request).accounts.invite(username, role)
        except TetherError as err:
            return _admin_page(request, user, status_of(err), error=str(err))
        url = f"{str(request.base_url).rstrip('/')}/invite/{token}"
        return _admin_page(request, user, notice=f"Invite for {username} (valid 7 days, one use):", invite_url=url)

    @app.post("/admin/guidelines", **hide)
    def guidelines(request: Request, user: CheckedAdmin, version: Annotated[str, Form(max_length=64)] = "",
                   markdown: Annotated[str, Form(max_length=200_000)] = "") -> HTMLResponse:
        return _attempt(request, user, lambda: ctx_of(request).service.add_guideline(version, markdown),
                        f"Guidelines version {version} are now current; raters must acknowledge them.")

    @app.post("/admin/settings", **hide)
    def settings(request: Request, user: CheckedAdmin, overlap: Annotated[int, Form(ge=1, le=100)],
                 gold_rate: Annotated[float, Form(ge=0, le=0.5)]) -> HTMLResponse:
        return _attempt(request, user, lambda: ctx_of(request).service.configure(overlap, gold_rate),
                        "Settings saved.")

    @app.post("/admin/export", **hide)
    def export(request: Request, user: CheckedAdmin, name: Annotated[str, Form(max_length=200)] = "",
               format: Annotated[str, Form(max_length=10)] = "tether") -> HTMLResponse:
        def run() -> str:
            path, n = ctx_of(request).service.export(name, format)
            return f"{n} rows written to exports/{path.name}"
        return _attempt(request, user, run, "Export done: {result}.")
