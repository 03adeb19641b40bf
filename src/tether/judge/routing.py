"""Hybrid labelling: which judged pairs go to people, and how their ratings join the judge's labels.

A pair goes to people when the judge is unsure of it: its two orders disagree (`meta.inconsistent`), or its
confidence max(p_a, 1 - p_a) is under `threshold`; every other pair keeps the judge's label. `threshold_for_budget`
finds the threshold that sends at most a given share of the pairs to people (the inconsistent ones first, then the
least confident). An `audit` share of the confident pairs can go to people as well, drawn per pair from the seed:
on those the judge is scored against people without the bias of scoring it only where it was unsure.

People see a routed pair as an unlabelled queue row (`tether raters import` takes it) whose meta.judge holds the
judge's verdict, so the rater app's dashboard can score the judge as one more rater. `merge` joins the judge's
labels and people's ratings into one comparisons file for `tether rm`: people's rows where people rated the pair,
the judge's row elsewhere; every row keeps its rater (`judge:<name>` or the person's id) and meta.label_source
("judge" or "people"), and carries meta.p_a (people's rows: 1, 0 or 1/2 from their choice) so that
`tether rm soft_labels=true` reads the file. Pure Python: no torch.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from tether.data.preferences import Comparison

__all__ = ["JUDGE_META", "PEOPLE_TARGET", "Routing", "merge", "people_queue_row", "route", "threshold_for_budget",
           "unsure"]

JUDGE_META = "judge"
"""The key of a people-queue row's meta holding the judge's verdict on the pair."""
PEOPLE_TARGET = {"A": 1.0, "B": 0.0, "tie": 0.5}
"""meta.p_a of a person's rating (the hard target `tether rm` reads from the choice)."""


def unsure(confidence: float, inconsistent: bool, threshold: float) -> bool:
    """Whether a judged pair goes to people: its orders disagree, or its confidence is under `threshold`."""
    return inconsistent or confidence < threshold


def _verdict(label: Comparison) -> tuple[float, bool]:
    """(confidence, inconsistent) of a `tether judge` label; confidence from p_a when meta has no confidence."""
    p_a = float(label.meta["p_a"])
    return float(label.meta.get("confidence", max(p_a, 1 - p_a))), bool(label.meta.get("inconsistent", False))


def threshold_for_budget(labels: Sequence[Comparison], budget: float) -> float:
    """The highest confidence threshold that routes at most floor(budget * n) of the n pairs (0.5 when the
    inconsistent pairs alone exceed it: only they are routed, none for low confidence).

    Routing sends the inconsistent pairs, then the consistent ones with confidence strictly below the threshold, so
    the threshold is the confidence of the first consistent pair (in increasing confidence) that must stay; pairs
    sharing that confidence all stay, which can leave the routed count under the budget.
    """
    verdicts = [_verdict(c) for c in labels]
    allowed = math.floor(budget * len(verdicts) + 1e-9) - sum(inc for _, inc in verdicts)
    consistent = sorted(conf for conf, inc in verdicts if not inc)
    if allowed <= 0 or not consistent:
        return 0.5
    if allowed >= len(consistent):
        return math.nextafter(consistent[-1], math.inf)  # routes every consistent pair
    return consistent[allowed]


def _audited(pair_id: str, audit: float, seed: int) -> bool:
    """A seeded draw per (seed, pair id): the same pair is audited whatever the order of the file."""
    digest = hashlib.sha256(f"{seed}/audit/{pair_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < audit


@dataclass(frozen=True)
class Routing:
    """Where each judged pair goes."""

    ai: list[Comparison]
    """The judge's labels it keeps (confident and consistent), audited ones included."""
    unsure: list[Comparison]
    """The judge's labels of the pairs it is unsure of (`unsure`), which go to people instead."""
    audit: list[Comparison]
    """Confident pairs (also in `ai`) that go to people as well, to score the judge."""
    inconsistent: int
    """Of `unsure`, those whose two orders disagree (the rest: confidence under the threshold)."""
    threshold: float

    @property
    def people(self) -> list[Comparison]:
        """Every pair people rate: the unsure ones, then the audited ones."""
        return self.unsure + self.audit

    @property
    def low_confidence(self) -> int:
        return len(self.unsure) - self.inconsistent


def route(labels: Sequence[Comparison], threshold: float, audit: float = 0.0, seed: int = 0) -> Routing:
    """Split a judge's labels (one per pair, as `tether judge` writes them) by `unsure` (module docstring)."""
    ai, people, audits = [], [], []
    inconsistent = 0
    for label in labels:
        confidence, inc = _verdict(label)
        if unsure(confidence, inc, threshold):
            people.append(label)
            inconsistent += inc
            continue
        ai.append(label)
        if audit > 0 and _audited(label.id, audit, seed):
            audits.append(label)
    return Routing(ai, people, audits, inconsistent, threshold)


def people_queue_row(label: Comparison) -> Comparison:
    """The pair of a judge's label as an unlabelled queue row for the rater app, the verdict kept in meta.judge."""
    keep = {k: v for k, v in label.meta.items() if k not in ("principles", "p_a", "confidence", "orders",
                                                                "inconsistent")}
    verdict = {"rater": label.rater, "choice": label.choice, "p_a": label.meta.get("p_a"),
               "confidence": label.meta.get("confidence"), "inconsistent": label.meta.get("inconsistent"),
               "guideline_version": label.guideline_version}
    return Comparison(label.prompt, label.response_a, label.response_b, None, None, None, None, label.source_a,
                      label.source_b, None, label.id, {**keep, JUDGE_META: verdict})


def merge(ai: Sequence[Comparison], people: Sequence[Comparison]) -> list[Comparison]:
    """One comparisons file: every rated row of `people` (one per rating, in their order), then the judge's row of
    each pair in `ai` that people did not rate. Module docstring: provenance and meta.p_a."""
    rated = [r for r in people if r.choice is not None]
    rated_ids = {r.id for r in rated}
    out = []
    for r in rated:  # p_a from the row's own choice, so a row in either response order keeps its target
        meta = {k: v for k, v in r.meta.items() if k != JUDGE_META}
        out.append(replace(r, meta={**meta, "p_a": PEOPLE_TARGET[r.choice], "label_source": "people"}))
    out += [replace(c, meta={**c.meta, "label_source": "judge"}) for c in ai if c.id not in rated_ids]
    return out
