"""The admin's review pages: the ratings browser, the disagreement queue (adjudicate, promote to gold),
export downloads and queue uploads. The JSON API has the same actions (admin_api.py)."""
from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from tether.errors import TetherError
from tether.raters import review
from tether.raters.admin_pages import admin_page
from tether.raters.db import MAX_ID
from tether.raters.dependencies import Admin, CheckedAdmin, ctx_of, page, status_of
from tether.raters.errors import NotFound


def download(request: Request, name: str) -> FileResponse:
    """An export file as an attachment (the name is checked like any export name)."""
    path = ctx_of(request).service.export_path(name)
    if not path.is_file():
        raise NotFound(f"name: no export {name!r}")
    return FileResponse(path, media_type="application/octet-stream", filename=path.name)


def add_review_pages(app: FastAPI) -> None:
    hide = {"include_in_schema": False}

    @app.get("/admin/ratings", **hide)
    def ratings(request: Request, user: Admin, q: str = "", rater: str = "", choice: str = "",
                page_no: int = 1) -> HTMLResponse:
        rows, total = review.browse(ctx_of(request).db, q[:200], rater[:64], choice, page_no)
        context = {"user": user, "rows": rows, "total": total, "q": q, "rater": rater, "choice": choice,
                   "page_no": page_no, "pages": max(1, -(-total // review.PAGE_SIZE)), "choices": review.CHOICES,
                   "raters": [u.username for u in ctx_of(request).accounts.users()]}
        return page(request, "ratings.html", context)

    @app.get("/admin/disagreements", **hide)
    def disagreements(request: Request, user: Admin, settled: bool = False, notice: str = "") -> HTMLResponse:
        items = review.disagreements(ctx_of(request).db, include_settled=settled)
        return page(request, "disagreements.html", {"user": user, "items": items, "settled": settled,
                                                    "notice": notice if notice in ("adjudicated", "gold") else ""})

    @app.post("/admin/pairs/{pair_id}/adjudicate", **hide)
    def adjudicate(request: Request, user: CheckedAdmin, pair_id: int, choice: Annotated[str, Form(max_length=4)] = "",
                   gold: Annotated[bool, Form()] = False) -> Response:
        if not 0 < pair_id <= MAX_ID:
            raise NotFound(f"pair: no pair {pair_id}")
        review.adjudicate(ctx_of(request).db, pair_id, choice, gold)
        return RedirectResponse(f"/admin/disagreements?notice={'gold' if gold else 'adjudicated'}", status_code=303)

    @app.get("/admin/exports/{name}", **hide)
    def export_file(request: Request, user: Admin, name: str) -> FileResponse:
        return download(request, name)

    @app.post("/admin/import", **hide)
    def upload(request: Request, user: CheckedAdmin, file: Annotated[UploadFile, File()],
               gold: Annotated[bool, Form()] = False) -> HTMLResponse:
        name = (file.filename or "upload.jsonl")[:100]
        try:
            done = review.import_upload(ctx_of(request).service, file.file.read(), name, gold)
        except TetherError as err:
            return admin_page(request, user, status_of(err), error=str(err))
        kind = "gold pairs" if gold else "pairs"
        return admin_page(request, user, notice=f"Imported {done.added} {kind} from {name} ({done.skipped} already there).")
