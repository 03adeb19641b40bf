"""The JSON API under /api/: the same actions as the pages, for scripts, the load test and simulated raters.

Sign in with `POST /api/login` (JSON); the session cookie comes back and the body carries the CSRF
token, which every POST must send as `X-CSRF-Token`. Bodies are JSON only: FastAPI does not parse a
body sent as a form or text/plain, so a cross-site form cannot call the API.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import AfterValidator, BaseModel, Field

from tether.raters import errors
from tether.raters.accounts import ROLES
from tether.raters.db import MAX_ID
from tether.raters.errors import Invalid
from tether.raters.intake import storable
from tether.raters.security import cross_site
from tether.raters.ratings import CRITERION_VOTES, MAX_CRITERIA, SKIP_REASONS
from tether.raters.service import EXPORT_FORMATS, VOTES, Task, iso
from tether.raters.stats import as_json, dashboard
from tether.raters.dependencies import (
    SESSION_COOKIE,
    Admin,
    Checked,
    CheckedAdmin,
    User,
    client_address,
    ctx_of,
    invite_url,
    set_session_cookie,
)

router = APIRouter(prefix="/api", tags=["api"])
Id = Annotated[int, Field(gt=0, lt=MAX_ID + 1)]


def _storable(text: str) -> str:
    """Refuse NUL and lone surrogates, which PostgreSQL (and UTF-8) cannot store."""
    try:
        return storable(text, "value")
    except Invalid as bad:
        raise ValueError(str(bad).removeprefix("value: ")) from None


Text = Annotated[str, AfterValidator(_storable)]


class LoginIn(BaseModel):
    username: Annotated[Text, Field(max_length=200)]
    password: Annotated[Text, Field(max_length=1000)]


class LoginOut(BaseModel):
    username: str
    role: str
    csrf_token: str


class GuidelineOut(BaseModel):
    version: str | None
    markdown: str | None
    acknowledged: bool


class AckIn(BaseModel):
    version: Annotated[Text, Field(max_length=64)]


class TaskOut(BaseModel):
    """A pair to rate; `left`/`right` are in the order this rater sees them (A/B is never revealed)."""

    assignment_id: int
    prompt: str | list[dict[str, str]]
    left: str
    right: str
    guideline_version: str
    state: str
    shown_at: str
    criteria: list[str]
    """The project's per-criterion questions, answered in RatingIn.criteria (optional, each left/right/tie)."""


class NextOut(BaseModel):
    assignment: TaskOut | None
    """None when nothing is left for this rater."""


class RatingIn(BaseModel):
    assignment_id: Id
    choice: Literal[VOTES]  # type: ignore[valid-type]
    strength: Annotated[float, Field(gt=0, le=1)] | None = None
    rationale: Annotated[Text, Field(max_length=500)] | None = None
    submission_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")]
    criteria: Annotated[dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")],
                             Literal[CRITERION_VOTES]], Field(max_length=MAX_CRITERIA)] | None = None  # type: ignore[valid-type]
    """Per-criterion verdicts as seen (left, right, tie), for some of TaskOut.criteria; not on a skip."""
    skip_reason: Literal[tuple(SKIP_REASONS)] | None = None  # type: ignore[valid-type]
    """Why a pair is skipped (only with choice skip)."""


class RatingOut(BaseModel):
    rating_id: int
    created: bool


class UndoOut(BaseModel):
    assignment_id: int
    """The assignment open again: GET /api/next gives it back first."""


class ProgressOut(BaseModel):
    today: int
    total: int
    target: int | None
    remaining: int
    can_undo: bool


class InviteIn(BaseModel):
    username: Annotated[Text, Field(max_length=64)]
    role: Literal[ROLES] = "rater"  # type: ignore[valid-type]


class InviteOut(BaseModel):
    username: str
    invite_url: str


class GuidelineIn(BaseModel):
    version: Annotated[Text, Field(max_length=64)]
    markdown: Annotated[Text, Field(max_length=200_000)]


class SettingsIn(BaseModel):
    overlap: Annotated[int, Field(ge=1, le=100)] | None = None
    gold_rate: Annotated[float, Field(ge=0, le=0.5)] | None = None
    criteria: Annotated[list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]],
                        Field(max_length=MAX_CRITERIA)] | None = None
    """Per-criterion questions, e.g. ["helpful", "honest", "harmless"]; [] asks none."""
    daily_target: Annotated[int, Field(ge=0, le=10_000)] | None = None
    """Ratings per rater per day shown as a goal; 0 clears it."""


class ExportIn(BaseModel):
    name: Annotated[Text, Field(max_length=200)]
    format: Literal[EXPORT_FORMATS] = "tether"  # type: ignore[valid-type]
    overwrite: bool = False
    """Replace an existing export of that name (else 409)."""


class ActiveIn(BaseModel):
    username: Annotated[Text, Field(max_length=64)]
    active: bool


class ActiveOut(BaseModel):
    username: str
    active: bool
    released: int
    """Open assignments given back to the queue (on deactivation)."""


class ExportOut(BaseModel):
    path: str
    rows: int


def _task_out(task: Task, criteria: list[str]) -> TaskOut:
    return TaskOut(assignment_id=task.assignment_id, prompt=task.prompt, left=task.left, right=task.right,
                   guideline_version=task.guideline_version, state=task.state, shown_at=iso(task.shown_at),
                   criteria=criteria)


@router.post("/login", response_model=LoginOut)
def login(body: LoginIn, request: Request) -> JSONResponse:
    signed = ctx_of(request).accounts.login(body.username, body.password, client_address(request))
    p = signed.principal
    response = JSONResponse(LoginOut(username=p.username, role=p.role, csrf_token=signed.csrf_token).model_dump())
    set_session_cookie(request, response, signed.token)
    return response


@router.post("/logout", status_code=204)
def logout(request: Request, user: Checked) -> Response:
    ctx_of(request).accounts.logout(request.cookies.get(SESSION_COOKIE))
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/guidelines", response_model=GuidelineOut)
def guidelines(request: Request, user: User) -> GuidelineOut:
    service = ctx_of(request).service
    g = service.current_guideline()
    return GuidelineOut(version=g.version if g else None, markdown=g.markdown if g else None,
                        acknowledged=service.has_acknowledged(user.user_id))


@router.post("/guidelines/ack", status_code=204)
def acknowledge(body: AckIn, request: Request, user: Checked) -> Response:
    ctx_of(request).service.acknowledge(user.user_id, body.version)
    return Response(status_code=204)


@router.get("/next", response_model=NextOut)
def next_pair(request: Request, user: User) -> NextOut:
    """The rater's current pair (409 until the current guidelines are acknowledged)."""
    if cross_site(request):
        raise errors.Forbidden("next: a pair is taken only on a request from this site")
    service = ctx_of(request).service
    task = service.next_assignment(user.user_id)
    return NextOut(assignment=_task_out(task, service.criteria()) if task else None)


@router.get("/assignments/{assignment_id}", response_model=TaskOut)
def assignment(request: Request, user: User, assignment_id: Annotated[int, Path(gt=0, lt=MAX_ID + 1)]) -> TaskOut:
    service = ctx_of(request).service
    return _task_out(service.task(user.user_id, assignment_id), service.criteria())


@router.post("/ratings", response_model=RatingOut, status_code=201,
             responses={200: {"model": RatingOut, "description": "A retry: the rating this submission_id made"}})
def submit(body: RatingIn, request: Request, user: Checked) -> Any:
    done = ctx_of(request).service.submit_rating(user.user_id, body.assignment_id, body.choice, body.strength,
                                                 body.rationale, body.submission_id, body.criteria, body.skip_reason)
    out = RatingOut(rating_id=done.rating_id, created=done.created)
    return out if done.created else JSONResponse(out.model_dump(), status_code=200)


@router.post("/ratings/undo", response_model=UndoOut)
def undo(request: Request, user: Checked) -> UndoOut:
    """Take back your last rating (within 10 minutes); its pair is your next one again (409 when too late)."""
    return UndoOut(assignment_id=ctx_of(request).service.undo_last(user.user_id))


@router.get("/progress", response_model=ProgressOut)
def progress(request: Request, user: User) -> ProgressOut:
    """Your ratings today and in all, the daily target, and the pairs still open to you."""
    return ProgressOut(**vars(ctx_of(request).service.progress(user.user_id)))


@router.get("/admin/stats")
def stats(request: Request, user: Admin) -> dict[str, Any]:
    return as_json(dashboard(ctx_of(request).db))


@router.post("/admin/invites", response_model=InviteOut, status_code=201)
def invite(body: InviteIn, request: Request, user: CheckedAdmin) -> InviteOut:
    token = ctx_of(request).accounts.invite(body.username, body.role)
    return InviteOut(username=body.username, invite_url=invite_url(request, token))


@router.post("/admin/users/active", response_model=ActiveOut)
def set_active(body: ActiveIn, request: Request, user: CheckedAdmin) -> ActiveOut:
    """Deactivate a user (sessions end, invites die, open assignments go back to the queue) or reactivate one."""
    ctx = ctx_of(request)
    released = ctx.accounts.set_active(body.username, body.active, ctx.service.release_rater)
    return ActiveOut(username=body.username, active=body.active, released=released)


@router.post("/admin/guidelines", status_code=204)
def add_guideline(body: GuidelineIn, request: Request, user: CheckedAdmin) -> Response:
    ctx_of(request).service.add_guideline(body.version, body.markdown)
    return Response(status_code=204)


@router.post("/admin/settings", status_code=204)
def settings(body: SettingsIn, request: Request, user: CheckedAdmin) -> Response:
    ctx_of(request).service.configure(body.overlap, body.gold_rate, body.criteria, body.daily_target)
    return Response(status_code=204)


@router.post("/admin/export", response_model=ExportOut, status_code=201)
def export(body: ExportIn, request: Request, user: CheckedAdmin) -> ExportOut:
    path, n = ctx_of(request).service.export(body.name, body.format, body.overwrite)
    return ExportOut(path=f"exports/{path.name}", rows=n)
