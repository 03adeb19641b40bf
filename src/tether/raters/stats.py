"""The admin dashboard's figures, computed from the ratings table.

Agreement comes from `tether.math.agreement.agreement_report` (percent agreement, Fleiss' kappa when every
pair has the same number of ratings, Krippendorff's alpha), over regular pairs only, skips left out.
Position bias is the share of non-tie choices that went to the response shown on the left: 0.5 for a
rater who ignores position. Time per rating is submit time minus the time the pair was first shown.
An AI judge whose verdict a pair carries in meta.judge (`tether hybrid` writes it on the queue it routes to
people) is scored as one more rater on the pairs people rated: its label against the people's majority, the
figure each person gets against the others' majority.
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from tether.math.agreement import agreement_report, majority_agreement
from tether.raters.db import Assignment, Database, Pair, Project, Rating, User, promoted_at


LOW_GOLD_ACCURACY = 0.7
"""A rater below this accuracy on gold pairs (after at least GOLD_MIN of them) is flagged."""
GOLD_MIN = 3
FAST_SECONDS = 5.0
"""A rater whose median time per rating is under this (after at least FAST_MIN ratings) is flagged:
too fast to have read two responses."""
FAST_MIN = 5


@dataclass
class RaterStats:
    """One rater's figures; None where nothing was there to measure."""

    username: str
    ratings: int = 0
    skips: int = 0
    median_seconds: float | None = None
    gold_seen: int = 0
    gold_correct: int = 0
    left_share: float | None = None
    left_n: int = 0
    """Non-tie choices behind left_share."""
    shared: int = 0
    """The rater's rated pairs that others rated too: the sample of their majority agreement."""
    active: bool = True

    @property
    def gold_accuracy(self) -> float | None:
        return self.gold_correct / self.gold_seen if self.gold_seen else None

    @property
    def flags(self) -> list[str]:
        """Warnings for the admin: low gold accuracy, very fast ratings."""
        out = []
        if self.gold_seen >= GOLD_MIN and self.gold_accuracy < LOW_GOLD_ACCURACY:
            out.append("low gold accuracy")
        if self.ratings >= FAST_MIN and self.median_seconds is not None and self.median_seconds < FAST_SECONDS:
            out.append("very fast")
        return out


@dataclass
class JudgeStats:
    """An AI judge scored as one more rater on the pairs people rated (its verdicts from the pairs' meta.judge)."""

    name: str
    """The judge's rater name, `judge:<name>`."""
    pairs: int = 0
    """Pairs it labelled that people rated."""
    majority_agreement: float | None = None
    """Share of those pairs (with a single majority among the people) where its label is the people's majority."""


@dataclass
class Dashboard:
    """Everything the admin page shows (also served as JSON by /api/admin/stats)."""

    project: str
    overlap: int
    gold_rate: float
    pairs: int
    gold_pairs: int
    pairs_complete: int
    ratings: int
    skips: int
    median_seconds: float | None
    gold_accuracy: float | None
    left_share: float | None
    agreement: dict[str, Any] | None
    agreement_note: str | None
    raters: list[RaterStats] = field(default_factory=list)
    timed: int = 0
    """Ratings behind median_seconds."""
    gold_seen: int = 0
    """Gold ratings behind gold_accuracy."""
    left_n: int = 0
    """Non-tie choices behind left_share."""
    pairable: int = 0
    """Pairs with 2+ votes: the sample of percent agreement, kappa and alpha."""
    judges: list[JudgeStats] = field(default_factory=list)


def dashboard(db: Database) -> Dashboard:
    """Progress, per-rater counts, time per rating, gold accuracy, agreement and position bias."""
    q = (select(User.username, Pair.key, Pair.is_gold, Pair.gold_choice, Rating.choice, Assignment.left_is_a,
                Assignment.shown_at, Rating.submitted_at)
         .join(Assignment, Rating.assignment_id == Assignment.id).join(Pair, Assignment.pair_id == Pair.id)
         .join(User, Assignment.rater_id == User.id).order_by(Rating.id))
    with db.read() as s:
        project = s.get(Project, 1)
        rows = s.execute(q).all()
        n_pairs = s.scalar(select(func.count()).select_from(Pair).where(Pair.is_gold.is_(False)))
        n_gold = s.scalar(select(func.count()).select_from(Pair).where(Pair.is_gold.is_(True)))
        raters = s.execute(select(User.username, User.active).where(User.role == "rater").order_by(User.username)).all()
        metas = s.execute(select(Pair.key, Pair.meta).where(Pair.is_gold.is_(False))).all()
        promoted = {key: promoted_at(meta) for key, meta in s.execute(select(Pair.key, Pair.meta)
                                                                       .where(Pair.is_gold.is_(True)))}
    per = {name: RaterStats(name, active=active) for name, active in raters}
    seconds: dict[str, list[float]] = defaultdict(list)
    left_picks: dict[str, list[bool]] = defaultdict(list)
    labels: dict[str, dict[str, str]] = defaultdict(dict)
    for username, key, is_gold, gold_choice, choice, left_is_a, shown_at, submitted_at in rows:
        r = per.setdefault(username, RaterStats(username))
        if choice == "skip":
            r.skips += 1
            continue
        r.ratings += 1
        seconds[username].append((submitted_at - shown_at).total_seconds())
        if choice in ("A", "B"):
            left_picks[username].append((choice == "A") == left_is_a)
        if is_gold and promoted.get(key) is not None and submitted_at < promoted[key]:
            is_gold = False  # cast before an admin promoted the pair: a label, not a gold answer
        if is_gold:
            r.gold_seen += 1
            r.gold_correct += choice == gold_choice
        else:
            labels[key][username] = choice
    for name, r in per.items():
        r.median_seconds = statistics.median(seconds[name]) if seconds[name] else None
        r.left_share, r.left_n = _share(left_picks[name]), len(left_picks[name])
        r.shared = sum(name in votes and len(votes) >= 2 for votes in labels.values())
    agreement, note = _agreement(labels)
    everyone = [x for xs in seconds.values() for x in xs]
    gold_seen = sum(r.gold_seen for r in per.values())
    return Dashboard(
        project=project.name if project else "", overlap=project.overlap if project else 0,
        gold_rate=project.gold_rate if project else 0.0, pairs=n_pairs, gold_pairs=n_gold,
        pairs_complete=sum(len(v) >= (project.overlap if project else 1) for v in labels.values()),
        ratings=sum(r.ratings for r in per.values()), skips=sum(r.skips for r in per.values()),
        median_seconds=statistics.median(everyone) if everyone else None,
        gold_accuracy=sum(r.gold_correct for r in per.values()) / gold_seen if gold_seen else None,
        left_share=_share([x for xs in left_picks.values() for x in xs]),
        agreement=agreement, agreement_note=note, raters=sorted(per.values(), key=lambda r: r.username),
        timed=len(everyone), gold_seen=gold_seen, left_n=sum(len(v) for v in left_picks.values()),
        pairable=sum(len(v) >= 2 for v in labels.values()),
        judges=judge_stats(labels, {key: meta["judge"] for key, meta in metas
                                    if isinstance(meta, dict) and isinstance(meta.get("judge"), dict)}))


def judge_stats(labels: dict[str, dict[str, str]], verdicts: dict[str, dict]) -> list[JudgeStats]:
    """Each judge (by verdict["rater"]) added as one more rater to the pairs people rated, and scored by
    `majority_agreement` as the people are: its label against the majority of the others, here all the people."""
    by_judge: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)
    for key, verdict in verdicts.items():
        if key in labels and verdict.get("choice") in ("A", "B", "tie"):
            name = str(verdict.get("rater") or "judge")
            by_judge[name][key] = {**labels[key], name: verdict["choice"]}
    out = []
    for name, table in sorted(by_judge.items()):
        try:
            agree = majority_agreement(table).get(name)
        except ValueError:  # no pair with two labels: nothing to score yet
            agree = None
        out.append(JudgeStats(name, len(table), agree))
    return out


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _agreement(labels: dict[str, dict[str, str]]) -> tuple[dict[str, Any] | None, str | None]:
    """agreement_report over pairs rated at least twice, or (None, why not)."""
    try:
        return agreement_report(labels), None
    except ValueError as why:  # fewer than 2 raters, or no pair rated twice yet
        return None, str(why)


def as_json(d: Dashboard) -> dict[str, Any]:
    """The dashboard as plain JSON (rater rows with their gold accuracy)."""
    out = {k: v for k, v in vars(d).items() if k not in ("raters", "judges")}
    out["raters"] = [{**vars(r), "gold_accuracy": r.gold_accuracy, "flags": r.flags} for r in d.raters]
    out["judges"] = [vars(j) for j in d.judges]
    return out


SORT_KEYS = ("username", "ratings", "skips", "median_seconds", "gold_accuracy", "left_share", "agreement")


def rater_table(d: Dashboard, sort: str = "username", descending: bool = False, q: str = "",
                flagged: bool = False) -> list[RaterStats]:
    """The dashboard's raters filtered (name contains `q`; only flagged ones) and sorted; missing values last."""
    if sort not in SORT_KEYS:
        sort = "username"
    agree = (d.agreement or {}).get("majority_agreement", {})
    rows = [r for r in d.raters if q.lower() in r.username.lower() and (r.flags or not flagged)]

    def key(r: RaterStats) -> Any:
        value = agree.get(r.username) if sort == "agreement" else getattr(r, sort)
        return value

    present = sorted((r for r in rows if key(r) is not None), key=key, reverse=descending)
    return present + [r for r in rows if key(r) is None]
