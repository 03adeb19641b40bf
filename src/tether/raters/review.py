"""The admin's review tools without HTTP: a ratings browser, the disagreement queue, adjudication and promotion
of a pair to gold. Ratings are shown as stored (A/B, never the rater's left/right)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import String, cast, func, or_, select, update

from tether.raters.db import PROMOTED_AT, Assignment, Database, Pair, Rating, User, utcnow
from tether.raters.errors import Invalid, NotFound
from tether.raters.intake import text_problem

PAGE_SIZE = 50
CHOICES = ("A", "B", "tie", "skip")


@dataclass(frozen=True)
class RatingRow:
    """One rating in the browser."""

    rating_id: int
    pair_id: int
    pair_key: str
    prompt: str
    rater: str
    choice: str
    strength: float | None
    rationale: str | None
    criteria: dict | None
    skip_reason: str | None
    seconds: float
    submitted_at: datetime
    is_gold: bool


@dataclass
class Disagreement:
    """A pair whose raters split: its votes (rater, choice, strength, rationale) and any adjudication."""

    pair_id: int
    pair_key: str
    prompt: Any
    response_a: str
    response_b: str
    adjudication: str | None
    is_gold: bool
    votes: list[tuple[str, str, float | None, str | None]] = field(default_factory=list)

    @property
    def split(self) -> dict[str, int]:
        return dict(Counter(v[1] for v in self.votes))


def prompt_text(prompt: Any) -> str:
    """A prompt as one line of text (the last user turn of a conversation)."""
    if isinstance(prompt, list):
        prompt = next((m.get("content", "") for m in reversed(prompt) if m.get("role") == "user"), "")
    return " ".join(str(prompt).split())


def browse(db: Database, q: str = "", rater: str = "", choice: str = "", page: int = 1) -> tuple[list[RatingRow], int]:
    """Ratings newest first, filtered by a search text (prompt, responses, rationale, pair id), a rater and a
    choice; (rows of the page, total matching)."""
    if choice and choice not in CHOICES:
        raise Invalid(f"choice: expected one of {', '.join(CHOICES)}")
    if not isinstance(page, int) or page < 1 or page > 100_000:
        raise Invalid("page: expected a number from 1")
    for name, text in (("q", q), ("rater", rater)):
        if problem := text_problem(text):  # a NUL is an error on PostgreSQL, a lone surrogate in any driver
            raise Invalid(f"{name}: {problem}")
    where = []
    if q:
        like = f"%{q.replace(chr(92), chr(92) * 2).replace('%', chr(92) + '%').replace('_', chr(92) + '_')}%"
        where.append(or_(*(col.ilike(like, escape="\\") for col in (
            cast(Pair.prompt, String), Pair.response_a, Pair.response_b, Rating.rationale, Pair.key))))
    if rater:
        where.append(User.username == rater)
    if choice:
        where.append(Rating.choice == choice)
    base = (select(Rating, Assignment.shown_at, Pair, User.username).join(Assignment, Rating.assignment_id == Assignment.id)
            .join(Pair, Assignment.pair_id == Pair.id).join(User, Assignment.rater_id == User.id).where(*where))
    with db.read() as s:
        total = s.scalar(select(func.count()).select_from(base.subquery()))
        rows = s.execute(base.order_by(Rating.id.desc()).limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE)).all()
    return [RatingRow(r.id, p.id, p.key, prompt_text(p.prompt)[:300], name, r.choice, r.strength, r.rationale,
                      r.criteria, r.skip_reason, (r.submitted_at - shown).total_seconds(), r.submitted_at, p.is_gold)
            for r, shown, p, name in rows], total


def disagreements(db: Database, include_settled: bool = False, limit: int = 200) -> list[Disagreement]:
    """Regular pairs with two or more votes (skips left out) that are not unanimous, most split first;
    adjudicated pairs only with `include_settled`."""
    q = (select(Pair.id, Pair.key, Pair.prompt, Pair.response_a, Pair.response_b, Pair.adjudication, Pair.is_gold,
                User.username, Rating.choice, Rating.strength, Rating.rationale)
         .join(Assignment, Assignment.pair_id == Pair.id).join(Rating, Rating.assignment_id == Assignment.id)
         .join(User, Assignment.rater_id == User.id).where(Rating.choice != "skip").order_by(Pair.id, Rating.id))
    pairs: dict[int, Disagreement] = {}
    with db.read() as s:
        for row in s.execute(q):
            d = pairs.setdefault(row.id, Disagreement(row.id, row.key, row.prompt, row.response_a, row.response_b,
                                                      row.adjudication, row.is_gold))
            d.votes.append((row.username, row.choice, row.strength, row.rationale))
    split = [d for d in pairs.values() if len(d.votes) >= 2 and len(d.split) > 1
             and (include_settled or (d.adjudication is None and not d.is_gold))]
    split.sort(key=lambda d: (max(d.split.values()) / len(d.votes), d.pair_id))  # the closest votes first
    return split[:limit]


def adjudicate(db: Database, pair_id: int, choice: str, gold: bool = False) -> None:
    """Record an admin's verdict on a pair (A, B or tie); `gold` also makes it a gold pair with that answer,
    so later raters are checked against it. Votes cast before the promotion stay preference labels (exported,
    never scored as gold answers): the promotion time is kept in the pair's meta as PROMOTED_AT."""
    if choice not in ("A", "B", "tie"):
        raise Invalid("choice: expected A, B or tie")
    with db.write() as s:
        pair = s.get(Pair, pair_id) if isinstance(pair_id, int) and 0 < pair_id < 2**31 else None
        if pair is None:
            raise NotFound(f"pair: no pair {pair_id}")
        values: dict[str, Any] = {"adjudication": choice}
        if gold:
            values.update(is_gold=True, gold_choice=choice)
            if not pair.is_gold:
                values["meta"] = {**(pair.meta or {}), PROMOTED_AT: utcnow().isoformat()}
        s.execute(update(Pair).where(Pair.id == pair_id).values(**values))


def import_upload(service: Any, data: bytes, name: str, gold: bool = False) -> Any:
    """Import a queue uploaded through the browser or the API: `data` is its JSONL, `name` what errors call it.

    The bytes go to a private temporary file in the project folder, so the import is the CLI's, with
    the same `file:line: field: problem` errors (naming the upload, not the temporary file).
    """
    import os
    import tempfile

    from tether.errors import DataError

    fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix=".jsonl", dir=service.project_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            return service.import_queue(tmp, gold=gold)
        except DataError as err:
            raise DataError(str(err).replace(tmp, name)) from None
    finally:
        os.unlink(tmp)
