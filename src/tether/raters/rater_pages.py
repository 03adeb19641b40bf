"""The rater's pages: guidelines, the rating page (progress, undo, Markdown, per-criterion questions, skip reasons).

The rating page works without JavaScript: every action is a form post answered by a redirect to /rate;
rate.js only adds the keyboard shortcuts.
"""
from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import FastAPI, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from tether.raters import errors
from tether.raters.db import MAX_ID
from tether.raters.dependencies import Checked, User, ctx_of, page
from tether.raters.ratings import SKIP_REASONS, UNDO_WINDOW
from tether.raters.security import cross_site

VOTES = {"left-much": ("left", 1.0), "left": ("left", 0.5), "tie": ("tie", None), "right": ("right", 0.5),
         "right-much": ("right", 1.0), "skip": ("skip", None)}
"""Rating-page buttons: (choice, strength); "much better" is strength 1, "slightly better" 0.5. A skip button
may name its reason: `skip:<reason>` (ratings.SKIP_REASONS)."""
NOTICES = {
    "expired": "Your last rating was not saved: that pair had been open over an hour, so it went back to "
               "the queue. Here is your next pair.",
    "undone": "Your last rating was taken back: rate this pair again.",
    "undo-failed": f"That rating can no longer be undone (it is older than {UNDO_WINDOW.seconds // 60} minutes, "
                   "or its pair has gone to other raters).",
}
"""Messages the rating page shows after a redirect (`/rate?notice=<key>`); a key, never text from the URL."""
LONG_PROMPT = 1200
"""A prompt longer than this (characters) starts collapsed, so the responses and buttons stay in view."""


def _vote(vote: str) -> tuple[str, float | None, str | None]:
    """(choice, strength, skip reason) of a button's value."""
    if vote.startswith("skip:") and vote[5:] in SKIP_REASONS:
        return "skip", None, vote[5:]
    if vote not in VOTES:
        raise errors.Invalid(f"vote: expected one of {', '.join(VOTES)} or skip:<reason>")
    return (*VOTES[vote], None)


def _prompt_length(prompt: str | list) -> int:
    return len(prompt) if isinstance(prompt, str) else sum(len(str(m.get("content", ""))) for m in prompt)


def add_rater_pages(app: FastAPI) -> None:
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
    def rate_page(request: Request, user: User, notice: str = "") -> HTMLResponse:
        if cross_site(request):  # taking a pair is a state change: never on another origin's say-so
            return page(request, "continue.html", {"user": user})
        service = ctx_of(request).service
        task = service.next_assignment(user.user_id)
        context = {"user": user, "task": task, "submission_id": uuid.uuid4().hex, "notice": NOTICES.get(notice),
                   "progress": service.progress(user.user_id), "criteria": service.criteria(),
                   "skip_reasons": SKIP_REASONS,
                   "long_prompt": task is not None and _prompt_length(task.prompt) > LONG_PROMPT}
        return page(request, "rate.html" if task else "done.html", context)

    @app.post("/rate", **hide)
    async def rate(request: Request, user: Checked, assignment_id: Annotated[int, Form(gt=0, lt=MAX_ID + 1)],
                   vote: Annotated[str, Form(max_length=40)] = "", rationale: Annotated[str, Form(max_length=2000)] = "",
                   submission_id: Annotated[str, Form(max_length=64)] = "") -> Response:
        choice, strength, reason = _vote(vote)
        form = await request.form()  # parsed once already (CSRF check); criterion_<name> = left | right | tie
        criteria = {k.removeprefix("criterion_"): v for k, v in form.items()
                    if k.startswith("criterion_") and isinstance(v, str) and v} if choice != "skip" else None
        try:
            await run_in_threadpool(ctx_of(request).service.submit_rating, user.user_id, assignment_id, choice,
                                    strength, rationale or None, submission_id, criteria or None, reason)
        except errors.Conflict as err:
            if "expired" in str(err):  # the rating was not stored: the rater must know, and rate again if asked
                return RedirectResponse("/rate?notice=expired", status_code=303)
            # rated already (a double submit): the next pair is what to show
        return RedirectResponse("/rate", status_code=303)

    @app.post("/rate/undo", **hide)
    def undo(request: Request, user: Checked) -> Response:
        try:
            ctx_of(request).service.undo_last(user.user_id)
        except (errors.Conflict, errors.NotFound):
            return RedirectResponse("/rate?notice=undo-failed", status_code=303)
        return RedirectResponse("/rate?notice=undone", status_code=303)
