"""The rater app's logic, without HTTP: the queue, assignment, guidelines, ratings and exports.

Assignment (`next_assignment`), in order:
1. The rater must have acknowledged the current guideline version (else NeedsAcknowledgement).
2. A rater's own open assignment comes back first, so a reload never takes a second pair.
3. Gold pairs (known answers, attention checks) come at the project's rate: in every block of
   m = round(1 / gold_rate) pairs a rater is served, one position, drawn per rater and block, is a
   gold pair they have not seen. The rate is exact per block, yet a rater cannot predict the position.
4. Otherwise the first unseen pair with a free slot (0..k-1), pairs already started first so that
   completed pairs (k ratings, for agreement) accumulate early. Each pair carries its slots taken
   (`pairs.held`, moved in the same transaction as the slot), so the pick is an index seek per call
   rather than a count over the whole queue (O(pairs^2) per queue). On PostgreSQL the pair row is locked
   with SKIP LOCKED, so concurrent raters take different pairs rather than race for one slot. The
   UNIQUE(pair, slot) and UNIQUE(pair, rater) constraints settle any race that still happens (SQLite
   serialises writers instead): the loser retries with fresh counts.

Choices arrive as the rater saw them (left, right, tie, skip) and are stored as A/B: a client never
learns which side is A, and position bias (share of non-tie choices for the left side) is measurable.
"""
from __future__ import annotations

import hashlib
import random
import re
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Row, and_, bindparam, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from tether.data.jsonl import read_rows
from tether.data.preferences import Comparison, read_comparisons
from tether.errors import DataError
from tether.raters.db import (
    MAX_ID,
    Acknowledgement,
    Assignment,
    Database,
    Guideline,
    Pair,
    Project,
    Rating,
    User,
    utcnow,
)
from tether.raters import exports
from tether.raters.errors import Conflict, Invalid, NeedsAcknowledgement, NotFound
from tether.raters.intake import check_row_text, first_bad_text, queue_problem, renderable, storable
from tether.raters.ratings import (
    PRIOR_SUBMISSION,
    VOTES,
    Progress,
    Submitted,
    add_held,
    check_criteria_names,
    check_vote,
    progress,
    replay,
    store,
    undo_last,
)

EXPORT_FORMATS = exports.EXPORT_FORMATS
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ASSIGNMENT_TTL = timedelta(hours=1)
"""An open assignment older than this gives its slot back (the rater left); checked once a minute."""
MAX_TRIES = 20
UNRENDERABLE = "its text cannot be shown (invalid Unicode)"


@dataclass(frozen=True)
class Task:
    """A pair as its rater sees it: no A/B labels, no gold flag."""

    assignment_id: int
    prompt: str | list
    left: str
    right: str
    guideline_version: str
    state: str
    shown_at: datetime


@dataclass(frozen=True)
class Imported:
    added: int
    skipped: int
    """Pairs already in the database (same id), left as they were."""


def iso(t: datetime) -> str:
    return t.isoformat(timespec="seconds") + "+00:00"


class RaterService:
    """Queue, assignment, guidelines, ratings and exports of one project (database + folder)."""

    def __init__(self, db: Database, project_dir: str | Path, rng: random.Random | None = None):
        """`rng` draws the display orders; a seeded one makes a single-threaded run (the demo's
        simulated raters) reproducible."""
        self.db = db
        self.project_dir = Path(project_dir)
        self.rng = rng or random.SystemRandom()
        self._last_release = 0.0

    # -- project settings ---------------------------------------------------------------------------------

    def create_project(self, name: str, overlap: int, gold_rate: float) -> None:
        _check_settings(overlap, gold_rate)
        with self.db.write() as s:
            if s.get(Project, 1) is not None:
                raise Conflict(f"project: this database already holds project {s.get(Project, 1).name!r}")
            s.add(Project(id=1, name=name, overlap=overlap, gold_rate=gold_rate))

    def has_project(self) -> bool:
        with self.db.read() as s:
            return s.get(Project, 1) is not None

    def project(self) -> Project:
        with self.db.read() as s:
            return _project(s)

    def configure(self, overlap: int | None = None, gold_rate: float | None = None, criteria: list[str] | None = None,
                  daily_target: int | None = None) -> Project:
        """Change k, the gold rate, the per-criterion questions or the daily target (0 clears it); None keeps
        a setting. k is fixed once any regular pair has been served."""
        if criteria is not None:
            criteria = check_criteria_names(criteria)
        if daily_target is not None and (isinstance(daily_target, bool) or not isinstance(daily_target, int)
                                         or not 0 <= daily_target <= 10_000):
            raise Invalid(f"daily_target: expected an integer in 0..10000, got {daily_target!r}")
        with self.db.write() as s:
            project = _project(s)
            _check_settings(project.overlap if overlap is None else overlap, project.gold_rate if gold_rate is None else gold_rate)
            if overlap is not None and overlap != project.overlap:
                served = s.scalar(select(func.count()).select_from(Assignment).where(Assignment.slot.is_not(None)))
                if served or s.scalar(select(func.count()).select_from(Rating)):
                    raise Conflict(f"overlap: fixed at {project.overlap} once rating has started")
                project.overlap = overlap
            if gold_rate is not None:
                project.gold_rate = gold_rate
            if criteria is not None:
                project.criteria = criteria or None
            if daily_target is not None:
                project.daily_target = daily_target or None
            return project

    def criteria(self) -> list[str]:
        """The names of the per-criterion questions asked beside the overall vote (none by default)."""
        with self.db.read() as s:
            return list(s.scalar(select(Project.criteria).where(Project.id == 1)) or [])

    # -- guidelines -----------------------------------------------------------------------------------------

    def add_guideline(self, version: str, markdown: str) -> None:
        """A new current guideline version; every rater must acknowledge it before rating again."""
        if not isinstance(version, str) or not VERSION.fullmatch(version):
            raise Invalid("version: 1-64 characters: letters, digits and . _ - (e.g. 2 or 2024-06-v3)")
        if not isinstance(markdown, str) or not storable(markdown, "markdown").strip():
            raise Invalid("markdown: the guidelines are empty")
        if len(markdown) > 200_000:
            raise Invalid("markdown: longer than 200,000 characters")
        with self.db.write() as s:
            if s.scalar(select(Guideline).where(Guideline.version == version)):
                raise Conflict(f"version: {version!r} exists; versions are never overwritten")
            s.add(Guideline(version=version, markdown=markdown))

    def current_guideline(self) -> Guideline | None:
        with self.db.read() as s:
            return _current_guideline(s)

    def has_acknowledged(self, user_id: int) -> bool:
        with self.db.read() as s:
            g = _current_guideline(s)
            return g is not None and _acked(s, user_id, g)

    def acknowledge(self, user_id: int, version: str) -> None:
        """Record that the user accepted `version`, which must be the current one (not a stale page)."""
        with self.db.write() as s:
            g = _current_guideline(s)
            if g is None:
                raise Conflict("guidelines: none uploaded yet")
            if version != g.version:
                raise Conflict(f"version: {version!r} is not the current guideline version ({g.version})")
            if not _acked(s, user_id, g):
                s.add(Acknowledgement(user_id=user_id, guideline_id=g.id))

    # -- the queue ------------------------------------------------------------------------------------------

    def import_queue(self, path: str | Path, gold: bool = False) -> Imported:
        """Import a comparison queue (tether JSONL) in one transaction; all rows are checked first.

        A queue row must be unlabelled; a gold row (`gold=True`) must carry its answer in `choice`.
        Errors read `file:line: field: problem` and leave the database unchanged. Pairs already
        imported (same id) are skipped and counted.
        """
        lines, _ = read_rows(path, check_row_text)  # every text field storable, before ids are hashed
        comparisons = read_comparisons(path)
        first_line: dict[str, int] = {}
        for c, line in zip(comparisons, lines):
            problem = queue_problem(c, gold, first_line.get(c.id))
            if problem:
                raise DataError(f"{path}:{line}: {problem}")
            first_line[c.id] = line
        return self.add_pairs(comparisons, gold)

    def add_pairs(self, comparisons: Iterable[Comparison], gold: bool = False) -> Imported:
        """Add validated comparisons as pairs (gold pairs keep `choice` as their answer), one transaction."""
        comparisons = list(comparisons)
        for c in comparisons:  # a lone surrogate cannot be shown; a NUL only PostgreSQL refuses (SQLite keeps it)
            for name in ("prompt", "response_a", "response_b", "source_a", "source_b", "meta"):
                bad = first_bad_text(getattr(c, name), name, nul=not self.db.is_sqlite)
                if bad:
                    raise Invalid(f"{c.id}: {bad[0]}: {bad[1]}")
        added = 0
        with self.db.write() as s:
            known = dict(s.execute(select(Pair.key, Pair.is_gold).where(Pair.key.in_([c.id for c in comparisons]))).all())
            for c in comparisons:
                if c.id in known:
                    if known[c.id] != gold:
                        kind = "a gold" if known[c.id] else "a regular"
                        raise Conflict(f"id: {c.id} was imported as {kind} pair")
                    continue
                s.add(Pair(key=c.id, prompt=c.prompt, response_a=c.response_a, response_b=c.response_b,
                           source_a=c.source_a, source_b=c.source_b, meta=dict(c.meta), is_gold=gold,
                           gold_choice=c.choice if gold else None))
                known[c.id] = gold
                added += 1
        return Imported(added, len(comparisons) - added)

    def add_gold_pairs(self, path: str | Path) -> Imported:
        return self.import_queue(path, gold=True)

    # -- rating ---------------------------------------------------------------------------------------------

    def next_assignment(self, user_id: int) -> Task | None:
        """The pair this rater should rate now, or None when nothing is left for them (see module doc)."""
        self.release_stale()
        for attempt in range(MAX_TRIES):
            try:
                with self.db.write() as s:
                    return self._assign(s.connection(), user_id)
            except (IntegrityError, _SlotTaken):
                # another rater took that slot first, or holds the only open pairs locked for a moment
                # (PostgreSQL): count again once their transaction has had time to end
                time.sleep(0.002 * attempt)
        raise Conflict("busy: too many raters took pairs at once; try again")

    def _assign(self, c: Connection, user_id: int) -> Task | None:
        """`next_assignment` in one transaction. Core statements built once (module level), not ORM objects:
        this runs per rating, and building queries and flushing units of work cost more than the SQL.
        A pair that cannot be rendered is set aside (never served again) and the next one taken instead."""
        guideline_id, version = _require_ack(c, user_id)
        for _ in range(MAX_TRIES):
            mine = c.execute(_MY_OPEN, {"user_id": user_id}).first()
            if mine is not None:
                pair = c.execute(_PAIR_TEXT, {"pair_id": mine.pair_id}).one()
                if not renderable(pair.prompt, pair.response_a, pair.response_b):
                    _set_aside(c, pair.id, UNRENDERABLE)
                    continue
                if mine.guideline_id != guideline_id:  # rated under what the rater has now accepted
                    c.execute(update(Assignment).where(Assignment.id == mine.id).values(guideline_id=guideline_id))
                return _task(mine, pair, version)
            pair, slot = self._pick(c, user_id, _project_row(c))
            if pair is None:
                return None
            if not renderable(pair.prompt, pair.response_a, pair.response_b):
                _set_aside(c, pair.id, UNRENDERABLE)
                continue
            shown_at, left_is_a = utcnow(), self.rng.random() < 0.5
            assignment_id = c.execute(insert(Assignment).returning(Assignment.id), {
                "pair_id": pair.id, "rater_id": user_id, "slot": slot, "state": "open", "left_is_a": left_is_a,
                "guideline_id": guideline_id, "shown_at": shown_at}).scalar_one()
            if slot is not None:
                add_held(c, pair.id, 1)
            return Task(assignment_id, pair.prompt, *_sides(pair, left_is_a), version, "open", shown_at)
        raise Conflict("queue: too many pairs set aside at once; try again")

    def task(self, user_id: int, assignment_id: int) -> Task:
        """One of the rater's own assignments; another rater's id reads as NotFound (no IDOR oracle)."""
        with self.db.read() as s:
            a = s.get(Assignment, assignment_id) if _is_id(assignment_id) else None
            if a is None or a.rater_id != user_id:
                raise NotFound(f"assignment: no assignment {assignment_id} of yours")
            pair = s.get(Pair, a.pair_id)
            if pair.set_aside or not renderable(pair.prompt, pair.response_a, pair.response_b):
                raise Conflict(f"assignment: its pair was set aside ({pair.set_aside or UNRENDERABLE})")
            return _task(a, pair, s.get(Guideline, a.guideline_id).version)

    def submit_rating(self, user_id: int, assignment_id: int, choice: str, strength: float | None = None,
                      rationale: str | None = None, submission_id: str = "", criteria: dict | None = None,
                      skip_reason: str | None = None) -> Submitted:
        """Store a rating; idempotent by `submission_id` (a retry returns the row the first try made).

        `choice` is what the rater saw: left, right, tie or skip; `criteria` maps some of the project's
        criteria to left, right or tie; a skip may carry a `skip_reason` (ratings.SKIP_REASONS). A skip
        gives the pair's slot back to the queue. The rating records its assignment's guideline version.
        """
        vote = check_vote(choice, strength, rationale, submission_id, criteria, skip_reason)
        if not _is_id(assignment_id):
            raise NotFound(f"assignment: no assignment {assignment_id} of yours")
        try:
            with self.db.write() as s:
                return store(s.connection(), user_id, assignment_id, vote, submission_id)
        except IntegrityError:  # the same submission raced itself; the winner's row is the answer
            with self.db.read() as s:
                prior = s.connection().execute(PRIOR_SUBMISSION, {"submission_id": submission_id}).first()
                if prior is None:
                    raise
                return replay(s.connection(), prior, user_id, assignment_id)

    def undo_last(self, user_id: int) -> int:
        """Take back the rater's last rating (within ratings.UNDO_WINDOW); its pair is their next one again."""
        try:
            with self.db.write() as s:
                c = s.connection()
                return undo_last(c, user_id, _project_row(c).overlap, utcnow())
        except IntegrityError:  # another rater took the freed slot of an undone skip at the same moment
            raise Conflict("undo: the pair you skipped has gone to other raters since") from None

    def progress(self, user_id: int) -> Progress:
        with self.db.read() as s:
            return progress(s.connection(), user_id, utcnow())

    def release_stale(self, ttl: timedelta = ASSIGNMENT_TTL, force: bool = False) -> int:
        """Expire open assignments older than `ttl`, giving their slots back; at most once a minute."""
        if not force and time.monotonic() - self._last_release < 60:
            return 0
        self._last_release = time.monotonic()
        try:
            with self.db.write() as s:
                return _expire(s.connection(), Assignment.shown_at < utcnow() - ttl)
        except DBAPIError:  # e.g. a deadlock with a concurrent release: the next call tries again
            return 0

    def release_rater(self, user_id: int) -> int:
        """Expire a (deactivated) rater's open assignments, giving their slots to other raters; how many."""
        with self.db.write() as s:
            return _expire(s.connection(), Assignment.rater_id == user_id)

    def _pick(self, c: Connection, user_id: int, project: Row) -> tuple[Row | None, int | None]:
        """(pair, slot) for a new assignment: a gold pair (slot None) on the rater's gold turn, else a free slot."""
        if project.gold_rate > 0:
            served = c.execute(_SERVED, {"user_id": user_id}).scalar_one()
            if _gold_turn(project, user_id, served):
                gold = c.execute(_UNSEEN_GOLD, {"user_id": user_id}).first()
                if gold is not None:
                    return gold, None
        # the fullest pairs first, one `held` level at a time: each level is a seek on ix_pairs_pick in id
        # order, where one ORDER BY held DESC, id would sort every open pair on each call
        for held in range(project.overlap - 1, -1, -1):
            pair = c.execute(_UNSEEN_OPEN, {"user_id": user_id, "held": held}).first()
            if pair is not None:
                break
        else:
            # SKIP LOCKED passed over pairs other raters are assigning right now: "nothing left" would be a lie
            if c.execute(_ANY_UNSEEN_OPEN, {"user_id": user_id, "overlap": project.overlap}).first() is not None:
                raise _SlotTaken
            return None, None
        used = set(c.execute(_USED_SLOTS, {"pair_id": pair.id}).scalars())
        free = set(range(project.overlap)) - used
        if not free:  # filled since the pick (PostgreSQL reads committed rows per statement)
            raise _SlotTaken
        return pair, min(free)

    # -- exports --------------------------------------------------------------------------------------------

    def labelled(self) -> list[Comparison]:
        return exports.labelled(self.db)

    def export_path(self, name: str) -> Path:
        return exports.export_path(self.project_dir, name)

    def export(self, name: str, fmt: str = "tether", overwrite: bool = False) -> tuple[Path, int]:
        return exports.export(self.db, self.project_dir, name, fmt, overwrite)


# The statements run per rating, built once. `unseen` is an anti-join probing UNIQUE(pair_id, rater_id) per
# candidate pair, not NOT IN over every pair the rater has seen.
_unseen = ~select(Assignment.id).where(Assignment.pair_id == Pair.id, Assignment.rater_id == bindparam("user_id")).exists()
_pair_cols = (Pair.id, Pair.prompt, Pair.response_a, Pair.response_b)
_UNSEEN_GOLD = select(*_pair_cols).where(Pair.is_gold.is_(True), Pair.set_aside.is_(None), _unseen).order_by(Pair.id).limit(1)
# SKIP LOCKED (PostgreSQL; SQLite ignores it and serialises writers anyway): concurrent raters each lock a
# different pair instead of all racing for the same slot and retrying
_UNSEEN_OPEN = (select(*_pair_cols).where(Pair.is_gold.is_(False), Pair.held == bindparam("held"),
                                          Pair.set_aside.is_(None), _unseen)
                .order_by(Pair.id).limit(1).with_for_update(of=Pair, skip_locked=True))
_ANY_UNSEEN_OPEN = select(Pair.id).where(Pair.is_gold.is_(False), Pair.held < bindparam("overlap"),
                                         Pair.set_aside.is_(None), _unseen).limit(1)
_PAIR_TEXT = select(*_pair_cols).where(Pair.id == bindparam("pair_id"))
_USED_SLOTS = select(Assignment.slot).where(Assignment.pair_id == bindparam("pair_id"), Assignment.slot.is_not(None))
_SERVED = select(func.count()).select_from(Assignment).where(Assignment.rater_id == bindparam("user_id"))
_MY_OPEN = (select(Assignment.id, Assignment.pair_id, Assignment.guideline_id, Assignment.left_is_a, Assignment.state,
                   Assignment.shown_at)
            .where(Assignment.rater_id == bindparam("user_id"), Assignment.state == "open").order_by(Assignment.id).limit(1))
_GUIDELINE_ACK = (select(Guideline.id, Guideline.version, Acknowledgement.id.label("ack"))
                  .outerjoin(Acknowledgement, and_(Acknowledgement.guideline_id == Guideline.id,
                                                   Acknowledgement.user_id == bindparam("user_id")))
                  .order_by(Guideline.id.desc()).limit(1))
_PROJECT = select(Project.overlap, Project.gold_rate, Project.created_at, Project.criteria).where(Project.id == 1)


class _SlotTaken(Exception):
    """A concurrent rater filled the chosen pair between two reads; pick again."""


# -- helpers ---------------------------------------------------------------------------------------------


def _project(s: Session) -> Project:
    project = s.get(Project, 1)
    if project is None:
        raise Conflict("project: the database has no project; run `tether raters init` first")
    return project


def _check_settings(overlap: Any, gold_rate: Any) -> None:
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 1 <= overlap <= 100:
        raise Invalid(f"overlap: expected an integer in 1..100, got {overlap!r}")
    if isinstance(gold_rate, bool) or not isinstance(gold_rate, (int, float)) or not 0 <= gold_rate <= 0.5:
        raise Invalid(f"gold_rate: expected a number in [0, 0.5], got {gold_rate!r}")


def _current_guideline(s: Session) -> Guideline | None:
    return s.scalar(select(Guideline).order_by(Guideline.id.desc()).limit(1))


def _acked(s: Session, user_id: int, g: Guideline) -> bool:
    return s.scalar(select(Acknowledgement.id).where(Acknowledgement.user_id == user_id,
                                                     Acknowledgement.guideline_id == g.id)) is not None


def _require_ack(c: Connection, user_id: int) -> tuple[int, str]:
    """(id, version) of the current guideline, which the user must have acknowledged; one query."""
    g = c.execute(_GUIDELINE_ACK, {"user_id": user_id}).first()
    if g is None:
        raise Conflict("guidelines: none uploaded yet; an admin must add them before rating starts")
    if g.ack is None:
        raise NeedsAcknowledgement(g.version)
    return g.id, g.version


def _project_row(c: Connection) -> Row:
    project = c.execute(_PROJECT).first()
    if project is None:
        raise Conflict("project: the database has no project; run `tether raters init` first")
    return project


def _gold_turn(project: Project | Row, user_id: int, served: int) -> bool:
    """Whether the rater's next pair (their `served`-th, from 0) is their gold pair of this block."""
    if project.gold_rate <= 0:
        return False
    block = max(1, round(1 / project.gold_rate))
    digest = hashlib.sha256(f"{project.created_at.isoformat()}/{user_id}/{served // block}".encode()).digest()
    return served % block == int.from_bytes(digest[:8], "big") % block


def _expire(c: Connection, *where: Any) -> int:
    """Expire the open assignments matching `where`, giving back their slots; how many."""
    stale = (Assignment.state == "open", *where)
    freed = c.execute(update(Assignment).where(*stale, Assignment.slot.is_not(None))
                      .values(state="expired", slot=None).returning(Assignment.pair_id)).scalars().all()
    gold = c.execute(update(Assignment).where(*stale).values(state="expired")).rowcount
    for pair_id, n in sorted(Counter(freed).items()):  # in id order: concurrent releases lock alike
        add_held(c, pair_id, -n)
    return len(freed) + gold


def _set_aside(c: Connection, pair_id: int, reason: str) -> None:
    """Take a pair out of the queue for good: it is never picked again, and its open assignments expire."""
    c.execute(update(Pair).where(Pair.id == pair_id).values(set_aside=reason))
    _expire(c, Assignment.pair_id == pair_id)


def _sides(pair: Pair | Row, left_is_a: bool) -> tuple[str, str]:
    return (pair.response_a, pair.response_b) if left_is_a else (pair.response_b, pair.response_a)


def _task(a: Assignment | Row, pair: Pair | Row, version: str) -> Task:
    return Task(a.id, pair.prompt, *_sides(pair, a.left_is_a), version, a.state, a.shown_at)


def _is_id(value: Any) -> bool:
    """A plausible row id; anything else (a string, a huge number) cannot name a row."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ID
