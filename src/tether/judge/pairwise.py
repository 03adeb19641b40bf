"""Pairwise AI judging in both orders: what a judge is asked, and how its answers become one label per pair.

Every pair is shown to the judge twice, response_a first ("ab") and response_b first ("ba"), under each principle
used (one sampled per pair, seeded, or all of them: `PRINCIPLE_MODES`). A judge answers each with P(the response
shown first, "A", is better). LLM judges prefer a position (Zheng et al. 2023, "Judging LLM-as-a-Judge", sec. 3.3;
Wang et al. 2023, "Large Language Models are not Fair Evaluators"), so the two orders are averaged:

    P(a better) = ( P_ab(first) + 1 - P_ba(first) ) / 2

which cancels a constant pull toward either position. The two orders are *inconsistent* when their verdicts name
different responses (or one of them is an exact 0.5 and the other is not); the share of such pairs is reported.
With several principles, each order's probability is the mean over the principles (an ensemble), then combined.
Pure Python: no torch, no model. The judges themselves live in tether.judge.local (a model folder),
tether.judge.remote (an endpoint) and tether.world.judge_sim (the tiny world's simulated judge).
"""
from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from tether.data.preferences import Comparison
from tether.judge.constitution import Constitution, Principle

__all__ = ["PRINCIPLE_MODES", "Judge", "PairwiseItem", "Verdict", "choice_of", "combine_orders", "inconsistent",
           "judge_pairs", "parse_vote", "pick_principles", "vote_probability"]

PRINCIPLE_MODES = ("sample", "ensemble")


@dataclass(frozen=True)
class PairwiseItem:
    """One question to a judge: a pair shown in one order under one principle."""

    pair: Comparison
    swapped: bool
    """False: response_a is shown first (as "A"); True: response_b is."""
    principle: Principle
    text: str
    """The judge's prompt (Constitution.pairwise_prompt)."""

    @property
    def first(self) -> str:
        return self.pair.response_b if self.swapped else self.pair.response_a

    @property
    def second(self) -> str:
        return self.pair.response_a if self.swapped else self.pair.response_b


class Judge(Protocol):
    """What `judge_pairs` needs of a judge."""

    name: str
    """Recorded as the labels' rater `judge:<name>`."""

    def first_wins(self, items: Sequence[PairwiseItem]) -> list[float]:
        """P(the response shown first is better) for each item, in order, each in [0, 1]."""
        ...

    def stats(self) -> dict:
        """Figures of the run for the report (answer mass, unparsed votes, ...)."""
        ...


@dataclass(frozen=True)
class Verdict:
    """A judge's verdict on one pair, both orders combined."""

    p_a: float
    """P(response_a is better): `combine_orders` of the two orders."""
    first_ab: float
    """P(first wins) with response_a shown first (mean over the principles)."""
    first_ba: float
    """P(first wins) with response_b shown first (mean over the principles)."""
    principles: tuple[str, ...]
    inconsistent: bool
    """The two orders' verdicts name different responses (`inconsistent`)."""

    @property
    def confidence(self) -> float:
        """max(p_a, 1 - p_a): how sure the judge is of its choice, in [0.5, 1]."""
        return max(self.p_a, 1 - self.p_a)


def combine_orders(first_ab: float, first_ba: float) -> float:
    """P(a better) from the two orders: the mean of P_ab(first) and 1 - P_ba(first) (see the module docstring)."""
    return (first_ab + 1 - first_ba) / 2


def _side(p_first: float, first: str, second: str) -> str:
    return first if p_first > 0.5 else second if p_first < 0.5 else "tie"


def inconsistent(first_ab: float, first_ba: float) -> bool:
    """Whether the two orders' verdicts differ: ab picks a when P_ab(first) > 0.5, ba picks a when P_ba(first) < 0.5;
    an exact 0.5 is a tie, which differs from a pick."""
    return _side(first_ab, "a", "b") != _side(first_ba, "b", "a")


def choice_of(p_a: float, tie_margin: float) -> str:
    """ "A" when p_a > 0.5 + margin, "B" when p_a < 0.5 - margin, else "tie" (so p_a = 0.5 is always a tie)."""
    if p_a > 0.5 + tie_margin:
        return "A"
    if p_a < 0.5 - tie_margin:
        return "B"
    return "tie"


def _rng(seed: int, *keys: str) -> random.Random:
    digest = hashlib.sha256("/".join([str(seed), *keys]).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def pick_principles(constitution: Constitution, pair_id: str, mode: str, seed: int) -> tuple[Principle, ...]:
    """All principles (ensemble), or one drawn per pair from (seed, pair id): the same pair always gets the same one,
    whatever the order of the queue."""
    if mode == "ensemble":
        return constitution.principles
    if mode != "sample":
        raise ValueError(f"principles mode {mode!r}: expected one of {PRINCIPLE_MODES}")
    return (_rng(seed, pair_id, "principle").choice(constitution.principles),)


def judge_pairs(judge: Judge, pairs: Sequence[Comparison], constitution: Constitution, mode: str = "sample",
                seed: int = 0) -> list[Verdict]:
    """Every pair judged in both orders under its principles (one call of `judge.first_wins`, so a judge batches
    as it likes); one Verdict per pair, in order."""
    plan = [(pair, pick_principles(constitution, pair.id, mode, seed)) for pair in pairs]
    items = []
    for pair, principles in plan:
        for principle in principles:
            for swapped in (False, True):
                first, second = (pair.response_b, pair.response_a) if swapped else (pair.response_a, pair.response_b)
                text = constitution.pairwise_prompt(principle, pair.prompt, first, second)
                items.append(PairwiseItem(pair, swapped, principle, text))
    probs = iter(judge.first_wins(items))
    verdicts = []
    for pair, principles in plan:
        ab, ba = [], []
        for _ in principles:
            ab.append(next(probs))
            ba.append(next(probs))
        first_ab, first_ba = sum(ab) / len(ab), sum(ba) / len(ba)
        verdicts.append(Verdict(combine_orders(first_ab, first_ba), first_ab, first_ba,
                                tuple(p.id for p in principles), inconsistent(first_ab, first_ba)))
    return verdicts


# ---------------------------------------------------------------------------------------------- votes

_LEAD = re.compile(r"^[(\[]?\s*([AB])\s*[)\].:,;!]*\s*($|[)\].:,;!-]|\s+(is|was|wins)\b)", re.MULTILINE)
_NAMED = re.compile(r"\b(?:response|answer|assistant|option|output|choice)\s*[:(\[]?\s*([AB])\b(?![\w'])",
                    re.IGNORECASE)
_STATED = re.compile(r"\b(?:answer is|answer:|choose|chose|pick|prefer|better one is|best is)\s*[:(\[]?\s*"
                     r"(?:response\s+)?\(?([AB])\b(?![\w'])", re.IGNORECASE)
_BETTER = re.compile(r"\b([AB]) is (?:better|preferable|the better|more|less harmful)\b")
_LETTER = re.compile(r"(?<![\w'])([AB])(?![\w'])")


def parse_vote(text: str) -> str | None:
    """ "A", "B" or None (no clear answer) from a judge's free-text reply.

    In order: a leading letter ("A", "(B)", "A.", "B is better"; a capital only, since "A better answer ..."
    opens with an article); a stated choice ("The answer is B", "I choose (A)", "Answer: B", "Response B is
    better than Response A"); else the one letter the reply names ("Response A", "I think B.") when it names only
    one. Markdown emphasis is ignored. A reply that names both or neither, or says "Neither"/"Both", gives None.
    """
    t = re.sub(r"[*_`#]", "", text).strip()
    if not t or re.match(r"(neither|both|none|tie)\b", t, re.IGNORECASE):
        return None
    lead = _LEAD.match(t)
    if lead:
        return lead.group(1)
    stated = _STATED.search(t) or _BETTER.search(t)
    if stated:
        return stated.group(1).upper()
    named = {m.upper() for m in _NAMED.findall(t)} | set(_LETTER.findall(t))
    return named.pop() if len(named) == 1 else None


def vote_probability(votes: Sequence[str | None]) -> float | None:
    """P(first wins) from k sampled answers: the share of "A" among the parsed ones (None when none parsed)."""
    parsed = [v for v in votes if v is not None]
    return sum(v == "A" for v in parsed) / len(parsed) if parsed else None
