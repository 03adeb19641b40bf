"""The per-rating write path: checking a vote, storing it (idempotent by submission id), undoing it, progress.

A vote arrives as the rater saw the pair (left, right, tie, skip; per-criterion verdicts likewise) and is
stored as A/B, so a client never learns which side is A. Statements are Core and built once: they run
on every rating, where building ORM queries would cost more than the SQL.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, bindparam, delete, func, insert, select, update

from tether.raters.db import Assignment, Guideline, Pair, Project, Rating, utcnow
from tether.raters.errors import Conflict, Invalid, NotFound
from tether.raters.intake import storable

VOTES = ("left", "right", "tie", "skip")
CRITERION_VOTES = ("left", "right", "tie")
SKIP_REASONS = {"broken": "broken pair", "expertise": "needs expertise I lack", "unsafe": "unsafe to read"}
"""Why a rater skips (stored key: label shown); a skip without a reason is allowed too."""
SUBMISSION_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
CRITERION = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_CRITERIA = 8
UNDO_WINDOW = timedelta(minutes=10)
"""How long a rater may take back their last rating (to fix a slip of the key)."""


@dataclass(frozen=True)
class Submitted:
    rating_id: int
    created: bool
    """False when an earlier submit with the same submission id made the row (a retry)."""


@dataclass(frozen=True)
class Vote:
    """A checked vote, as the rater saw the pair."""

    choice: str
    strength: float | None = None
    rationale: str | None = None
    criteria: dict[str, str] | None = None
    """Per-criterion verdicts (left, right or tie) for some of the project's criteria."""
    skip_reason: str | None = None


@dataclass(frozen=True)
class Progress:
    """A rater's standing: ratings today (UTC) and in all, the project's daily target, pairs left for them."""

    today: int
    total: int
    target: int | None
    remaining: int
    can_undo: bool
    """Whether the rater's newest rating is young enough to take back (UNDO_WINDOW)."""


def check_criteria_names(names: Any) -> list[str]:
    """A project's criterion names: 0-8 distinct lowercase identifiers, e.g. ["helpful", "honest", "harmless"]."""
    if not isinstance(names, list) or len(names) > MAX_CRITERIA:
        raise Invalid(f"criteria: expected a list of at most {MAX_CRITERIA} names")
    for name in names:
        if not isinstance(name, str) or not CRITERION.fullmatch(name):
            raise Invalid(f"criteria: {name!r} is not a name (lowercase letters, digits and _, starting with a letter)")
    if len(set(names)) != len(names):
        raise Invalid("criteria: a name appears twice")
    return list(names)


def check_vote(choice: Any, strength: Any = None, rationale: Any = None, submission_id: Any = "",
               criteria: Any = None, skip_reason: Any = None) -> Vote:
    """The vote cleaned (rationale on one line); Invalid naming the field otherwise."""
    if choice not in VOTES:
        raise Invalid(f"choice: expected one of {', '.join(VOTES)}, got {choice!r}")
    if strength is not None:
        if choice not in ("left", "right"):
            raise Invalid(f"strength: only for a left or right choice, not {choice}")
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise Invalid(f"strength: expected a number in (0, 1] or null, got {strength!r}")
        strength = float(strength)
    if rationale is not None:
        if not isinstance(rationale, str):
            raise Invalid("rationale: expected a string")
        rationale = " ".join(storable(rationale, "rationale").split()) or None  # one line
        if rationale and len(rationale) > 500:
            raise Invalid("rationale: longer than 500 characters")
    if not isinstance(submission_id, str) or not SUBMISSION_ID.fullmatch(submission_id):
        raise Invalid("submission_id: 8-64 characters: letters, digits, - and _ (a client-made UUID)")
    if skip_reason is not None and (choice != "skip" or skip_reason not in SKIP_REASONS):
        raise Invalid(f"skip_reason: one of {', '.join(SKIP_REASONS)}, and only with choice skip")
    if criteria:
        if choice == "skip" or not isinstance(criteria, dict):
            raise Invalid("criteria: an object {criterion: left|right|tie}, and not on a skip")
        for name, verdict in criteria.items():
            if verdict not in CRITERION_VOTES:
                raise Invalid(f"criteria.{str(name)[:32]}: expected left, right or tie, got {verdict!r}")
    return Vote(choice, strength, rationale, dict(criteria) if criteria else None, skip_reason)


PRIOR_SUBMISSION = select(Rating.id, Rating.assignment_id).where(Rating.submission_id == bindparam("submission_id"))
_TO_RATE = (select(Assignment.rater_id, Assignment.state, Assignment.left_is_a, Assignment.slot, Assignment.pair_id,
                   Guideline.version).join(Guideline, Guideline.id == Assignment.guideline_id)
            .where(Assignment.id == bindparam("assignment_id")))
_CRITERIA = select(Project.criteria).where(Project.id == 1)
_ADD_HELD = update(Pair).where(Pair.id == bindparam("pair_id")).values(held=Pair.held + bindparam("delta"))
_LAST = (select(Rating.id, Rating.assignment_id, Rating.choice, Rating.submitted_at, Assignment.slot,
                Assignment.pair_id, Pair.is_gold)
         .join(Assignment, Rating.assignment_id == Assignment.id).join(Pair, Assignment.pair_id == Pair.id)
         .where(Assignment.rater_id == bindparam("user_id")).order_by(Rating.id.desc()).limit(1))


def add_held(c: Connection, pair_id: int, delta: int) -> None:
    """Move `pairs.held` by `delta` slots, relative to the row's current value (no lost update on PostgreSQL)."""
    c.execute(_ADD_HELD, {"pair_id": pair_id, "delta": delta})


def store(c: Connection, user_id: int, assignment_id: int, vote: Vote, submission_id: str) -> Submitted:
    """Store a checked vote in one transaction; a retry of `submission_id` returns the row it made."""
    prior = c.execute(PRIOR_SUBMISSION, {"submission_id": submission_id}).first()
    if prior is not None:
        return replay(c, prior, user_id, assignment_id)
    a = c.execute(_TO_RATE, {"assignment_id": assignment_id}).first()
    if a is None or a.rater_id != user_id:
        raise NotFound(f"assignment: no assignment {assignment_id} of yours")
    if a.state != "open":
        raise Conflict(f"assignment: already {'rated' if a.state in ('done', 'skipped') else a.state}")
    as_ab = {"left": "A", "right": "B"} if a.left_is_a else {"left": "B", "right": "A"}
    criteria = None
    if vote.criteria:
        asked = c.execute(_CRITERIA).scalar() or []
        unknown = sorted(set(vote.criteria) - set(asked))
        if unknown:
            raise Invalid(f"criteria.{unknown[0][:32]}: not a criterion of this project ({', '.join(asked) or 'none'})")
        criteria = {name: as_ab.get(v, v) for name, v in vote.criteria.items()}
    rating_id = c.execute(insert(Rating).returning(Rating.id), {
        "assignment_id": assignment_id, "choice": as_ab.get(vote.choice, vote.choice), "strength": vote.strength,
        "rationale": vote.rationale, "guideline_version": a.version, "submitted_at": utcnow(),
        "submission_id": submission_id, "criteria": criteria, "skip_reason": vote.skip_reason}).scalar_one()
    skip = vote.choice == "skip"
    c.execute(update(Assignment).where(Assignment.id == assignment_id),
              {"state": "skipped" if skip else "done", "slot": None if skip else a.slot})
    if skip and a.slot is not None:
        add_held(c, a.pair_id, -1)
    return Submitted(rating_id, True)


def replay(c: Connection, prior: Row, user_id: int, assignment_id: int) -> Submitted:
    rater_id = c.execute(select(Assignment.rater_id).where(Assignment.id == prior.assignment_id)).scalar_one()
    if prior.assignment_id != assignment_id or rater_id != user_id:
        raise Conflict("submission_id: already used for another submission")
    return Submitted(prior.id, False)


def undo_last(c: Connection, user_id: int, overlap: int, now: datetime) -> int:
    """Take back the rater's newest rating if under UNDO_WINDOW old: the row goes, its assignment is open
    again (their next pair); returns the assignment id. A skip's slot went back to the queue, so undoing a
    skip takes a free slot again, or is a Conflict when other raters have filled the pair since."""
    last = c.execute(_LAST, {"user_id": user_id}).first()
    if last is None:
        raise NotFound("undo: you have no rating to undo")
    if last.submitted_at < now - UNDO_WINDOW:
        raise Conflict(f"undo: your last rating is older than {UNDO_WINDOW.seconds // 60} minutes")
    slot = last.slot
    if last.choice == "skip" and not last.is_gold:
        used = set(c.execute(select(Assignment.slot).where(Assignment.pair_id == last.pair_id,
                                                           Assignment.slot.is_not(None))).scalars())
        free = sorted(set(range(overlap)) - used)
        if not free:
            raise Conflict("undo: the pair you skipped has gone to other raters since")
        slot = free[0]
        add_held(c, last.pair_id, 1)
    c.execute(delete(Rating).where(Rating.id == last.id))
    c.execute(update(Assignment).where(Assignment.id == last.assignment_id).values(state="open", slot=slot))
    return last.assignment_id


def progress(c: Connection, user_id: int, now: datetime) -> Progress:
    """Ratings (skips left out) today and in all, and the pairs still open to this rater: unseen, not set
    aside, with a free slot, plus the ones they hold now. Gold pairs are interleaved and not counted."""
    mine = (select(func.count()).select_from(Rating).join(Assignment, Rating.assignment_id == Assignment.id)
            .where(Assignment.rater_id == user_id, Rating.choice != "skip"))
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    project = c.execute(select(Project.overlap, Project.daily_target).where(Project.id == 1)).first()
    seen = select(Assignment.id).where(Assignment.pair_id == Pair.id, Assignment.rater_id == user_id).exists()
    open_to_me = c.execute(select(func.count()).select_from(Pair).where(
        Pair.is_gold.is_(False), Pair.set_aside.is_(None), Pair.held < (project.overlap if project else 1), ~seen)).scalar()
    holding = c.execute(select(func.count()).select_from(Assignment).where(
        Assignment.rater_id == user_id, Assignment.state == "open")).scalar()
    last = c.execute(_LAST, {"user_id": user_id}).first()
    return Progress(c.execute(mine.where(Rating.submitted_at >= midnight)).scalar(), c.execute(mine).scalar(),
                    project.daily_target if project else None, open_to_me + holding,
                    last is not None and last.submitted_at >= now - UNDO_WINDOW)
