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
from tether.raters.security import cross_site
from tether.raters.service import EXPORT_FORMATS, VOTES, Task, iso, storable
from tether.raters.stats import as_json, dashboard
from tether.raters.dependencies import (
    SESSION_COOKIE,
    Admin,
    Checked,
    CheckedAdmin,
    User,
    client_address,
    ctx_of,
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


class NextOut(BaseModel):
    assignment: TaskOut | None
    """None when nothing is left for this rater."""


class RatingIn(BaseModel):
    assignment_id: Id
    choice: Literal[VOTES]  # type: ignore[valid-type]
    strength: Annotated[float, Field(gt=0, le=1)] | None = None
    rationale: Annotated[Text, Field(max_length=500)] | None = None
    submission_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")]


class RatingOut(BaseModel):
    rating_id: int
    created: bool


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


class ExportIn(BaseModel):
    name: Annotated[Text, Field(max_length=200)]
    format: Literal[EXPORT_FORMATS] = "tether"  # type: ignore[valid-type]


class ExportOut(BaseModel):
    path: str
    rows: int


def _task_out(task: Task) -> TaskOut:
    return TaskOut(assignment_id=task.assignment_id, prompt=task.prompt, left=task.left, right=task.right,
                   guideline_version=task.guideline_version, state=task.state, shown_at=iso(task.shown_at))


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
    task = ctx_of(request).service.next_assignment(user.user_id)
    return NextOut(assignment=_task_out(task) if task else None)


@router.get("/assignments/{assignment_id}", response_model=TaskOut)
def assignment(request: Request, user: User, assignment_id: Annotated[int, Path(gt=0, lt=MAX_ID + 1)]) -> TaskOut:
    return _task_out(ctx_of(request).service.task(user.user_id, assignment_id))


@router.post("/ratings", response_model=RatingOut, status_code=201,
             responses={200: {"model": RatingOut, "description": "A retry: the rating this submission_id made"}})
def submit(body: RatingIn, request: Request, user: Checked) -> Any:
    done = ctx_of(request).service.submit_rating(user.user_id, body.assignment_id, body.choice, body.strength,
                                                 body.rationale, body.submission_id)
    out = RatingOut(rating_id=done.rating_id, created=done.created)
    return out if done.created else JSONResponse(out.model_dump(), status_code=200)


@router.get("/admin/stats")
def stats(request: Request, user: Admin) -> dict[str, Any]:
    return as_json(dashboard(ctx_of(request).db))


@router.post("/admin/invites", response_model=InviteOut, status_code=201)
def invite(body: InviteIn, request: Request, user: CheckedAdmin) -> InviteOut:
    token = ctx_of(request).accounts.invite(body.username, body.role)
    return InviteOut(username=body.username, invite_url=f"{str(request.base_url).rstrip('/')}/invite/{token}")


@router.post("/admin/guidelines", status_code=204)
def add_guideline(body: GuidelineIn, request: Request, user: CheckedAdmin) -> Response:
    ctx_of(request).service.add_guideline(body.version, body.markdown)
    return Response(status_code=204)


@router.post("/admin/settings", status_code=204)
def settings(body: SettingsIn, request: Request, user: CheckedAdmin) -> Response:
    ctx_of(request).service.configure(body.overlap, body.gold_rate)
    return Response(status_code=204)


@router.post("/admin/export", response_model=ExportOut, status_code=201)
def export(body: ExportIn, request: Request, user: CheckedAdmin) -> ExportOut:
    path, n = ctx_of(request).service.export(body.name, body.format)
    return ExportOut(path=f"exports/{path.name}", rows=n)
