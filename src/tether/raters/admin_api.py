"""The admin's review actions in the JSON API (/api/admin/...), in step with review_pages.py."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from tether.raters import review
from tether.raters.api import Text
from tether.raters.db import MAX_ID
from tether.raters.dependencies import Admin, CheckedAdmin, ctx_of
from tether.raters.review_pages import download
from tether.raters.service import iso

router = APIRouter(prefix="/api/admin", tags=["admin"])


class RatingRowOut(BaseModel):
    rating_id: int
    pair_id: int
    pair_key: str
    prompt: str
    rater: str
    choice: str
    strength: float | None
    rationale: str | None
    criteria: dict[str, str] | None
    skip_reason: str | None
    seconds: float
    submitted_at: str
    is_gold: bool


class RatingsOut(BaseModel):
    total: int
    page: int
    ratings: list[RatingRowOut]


class VoteOut(BaseModel):
    rater: str
    choice: str
    strength: float | None
    rationale: str | None


class DisagreementOut(BaseModel):
    pair_id: int
    pair_key: str
    prompt: str | list[dict[str, str]]
    response_a: str
    response_b: str
    adjudication: str | None
    is_gold: bool
    split: dict[str, int]
    votes: list[VoteOut]


class AdjudicateIn(BaseModel):
    choice: Literal["A", "B", "tie"]
    gold: bool = False
    """Also make the pair a gold pair with this answer."""


class ImportIn(BaseModel):
    jsonl: Annotated[Text, Field(max_length=60_000_000)]
    """The queue file's text: one tether comparison per line."""
    gold: bool = False
    name: Annotated[Text, Field(max_length=100)] = "upload.jsonl"
    """What errors call the file."""


class ImportOut(BaseModel):
    added: int
    skipped: int


@router.get("/ratings", response_model=RatingsOut)
def ratings(request: Request, user: Admin, q: Annotated[str, Query(max_length=200)] = "",
            rater: Annotated[str, Query(max_length=64)] = "", choice: Literal["", *review.CHOICES] = "",  # type: ignore[valid-type]
            page: Annotated[int, Query(ge=1, le=100_000)] = 1) -> RatingsOut:
    """Ratings newest first, searched and filtered like the ratings browser (50 a page)."""
    rows, total = review.browse(ctx_of(request).db, q, rater, choice, page)
    return RatingsOut(total=total, page=page, ratings=[
        RatingRowOut(**{**vars(r), "submitted_at": iso(r.submitted_at)}) for r in rows])


@router.get("/disagreements", response_model=list[DisagreementOut])
def disagreements(request: Request, user: Admin, settled: bool = False) -> Any:
    """Pairs whose raters split, the closest votes first; adjudicated ones only with settled=true."""
    return [DisagreementOut(pair_id=d.pair_id, pair_key=d.pair_key, prompt=d.prompt, response_a=d.response_a,
                            response_b=d.response_b, adjudication=d.adjudication, is_gold=d.is_gold, split=d.split,
                            votes=[VoteOut(rater=v[0], choice=v[1], strength=v[2], rationale=v[3]) for v in d.votes])
            for d in review.disagreements(ctx_of(request).db, include_settled=settled)]


@router.post("/pairs/{pair_id}/adjudicate", status_code=204)
def adjudicate(body: AdjudicateIn, request: Request, user: CheckedAdmin,
               pair_id: Annotated[int, Path(gt=0, lt=MAX_ID + 1)]) -> None:
    review.adjudicate(ctx_of(request).db, pair_id, body.choice, body.gold)


@router.get("/exports/{name}", response_class=FileResponse)
def export_file(request: Request, user: Admin, name: Annotated[str, Path(max_length=200)]) -> FileResponse:
    """An export file, as written by POST /api/admin/export."""
    return download(request, name)


@router.post("/import", response_model=ImportOut, status_code=201)
def import_queue(body: ImportIn, request: Request, user: CheckedAdmin) -> ImportOut:
    """Import a queue (tether JSONL text); errors name the line and field, and nothing is imported then."""
    done = review.import_upload(ctx_of(request).service, body.jsonl.encode("utf-8"), body.name, body.gold)
    return ImportOut(added=done.added, skipped=done.skipped)
