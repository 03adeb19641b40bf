"""A simulated AI judge for the tiny world, with the biases LLM judges are reported to have.

It answers what `tether judge` asks any judge: P(the response shown first is better). It values a response r to
prompt q at (the simulated raters' form, tether.world.raters, with its own weights)

    u(r) = skill * perceived_gold(q, r) + verbosity_bias * words(r) / 10
           + style_bias * [r asserts an answer without hedging] + self_bias * [r uses the assistant's stock phrases]

and answers, for one order and one principle,

    P(first) = sigmoid( overconfidence * ((u(first) - u(second)) / noise + e) + logit(position_bias) ),
    e ~ N(0, order_noise)

The biases, each a parameter (0, or 0.5 for the position, switches it off), and where they come from:
- position: between two responses it values equally it answers P(first) = `position_bias` (exactly, without the
  perception noise e; the mean over e is a point or two nearer 1/2 at the defaults). The pull matters where the
  responses are close, as reported: Zheng et al. 2023 ("Judging LLM-as-a-Judge") found GPT-4 consistent
  on only about two thirds of swapped pairs, most of the rest favouring the first position; Wang et al. 2023
  ("Large Language Models are not Fair Evaluators") saw it grow as the quality gap shrinks.
- verbosity: extra value per 10 words (Zheng et al. 2023 sec. 3.3; Saito et al. 2023, "Verbosity Bias in
  Preference Labeling by Large Language Models").
- style: extra value of a confident answer, one without hedges or "I don't know" (as raters, Hosking et al. 2023).
- self-preference: extra value of a response in its own phrasing, the stock assistant phrases of the world's corpus
  ("I hope this helps!", "Let me know if ...": gold's PADDING_RE) that an LLM judge writes itself (Panickssery et al.
  2024, "LLM Evaluators Recognize and Favor Their Own Generations").
- overconfidence: the logit is multiplied by `overconfidence` (1: as sure as its own noise warrants), pushing its
  probabilities toward 0 and 1, as LLM verbal and token confidences run high (Xiong et al. 2024, "Can LLMs Express
  Their Uncertainty?").
- knowledge: it knows each fact of the world (a country's capital, language, currency; whether a country exists)
  with probability `knowledge`, drawn once per fact from the seed: better read than a typical rater (the raters'
  mean is 0.7, drawn per rating), not perfect. Where it does not know the fact, correctness and sycophancy are
  invisible to it, as to a rater who does not check.
- `order_noise`: perception noise drawn per (pair, order, principle): the part of a judge's inconsistency across
  orders that is not a constant pull to one position.
The principle asked is recorded but does not change its values (it judges overall quality under every principle).

Cost (for the report beside the raters'): `cost_per_label` for one pair judged in both orders and
`human_cost_per_label` for one person's comparison. Assumptions, not measurements: $0.50 a human comparison (the
low end of the $0.50-$5 vendor ranges; InstructGPT and Llama 2 publish no per-label price) and a tenth of that for
the judge (Lee et al. 2023, "RLAIF vs. RLHF", estimate LLM labelling at over 10x cheaper than human annotation).

Every draw is seeded by (seed, pair id, order, principle) or (seed, fact), so labels do not depend on the order of work.
"""
from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from tether.config import check
from tether.judge.pairwise import PairwiseItem
from tether.world.gold import PADDING_RE, UNKNOWN_RE, judge
from tether.world.knowledge import Knowledge
from tether.world.prompts import Query, parse_prompt
from tether.world.raters import FACT_CATEGORIES


@dataclass
class SimJudgeConfig:
    """The tiny world's simulated AI judge: its biases (see tether.world.judge_sim) and its cost."""

    seed: int = 0
    """Seed of the facts it knows and of its perception noise."""
    skill: float = 1.0
    """Weight on (perceived) gold."""
    knowledge: float = 0.9
    """Probability that it knows a given fact of the world (the raters' mean is 0.7)."""
    position_bias: float = 0.6
    """Probability of picking the first of two responses it values equally (0.5: no position bias)."""
    verbosity_bias: float = 0.3
    """Extra value per 10 words of response."""
    style_bias: float = 0.5
    """Extra value of a confident answer (no hedge, no "I don't know")."""
    self_bias: float = 0.4
    """Extra value of a response using the assistant's stock phrases ("I hope this helps!", ...): its own phrasing."""
    noise: float = 0.3
    """Temperature of its preference: the value gap that moves P_content from 1/2 to sigmoid(1)."""
    order_noise: float = 0.3
    """Standard deviation of the perception noise e drawn per (pair, order, principle), in the units of the value gap
    over `noise` (before overconfidence)."""
    overconfidence: float = 2.0
    """Factor on its logit (1: calibrated to its own noise; above 1: probabilities pushed toward 0 and 1)."""
    cost_per_label: float = 0.05
    """Assumed USD per pair judged in both orders (a tenth of a person's, see the module docstring)."""
    human_cost_per_label: float = 0.5
    """Assumed USD per comparison labelled by a person."""

    def validate(self) -> None:
        check(0 <= self.knowledge <= 1, "knowledge", "must be in [0, 1]")
        check(0 <= self.position_bias <= 1, "position_bias", "must be in [0, 1] (0.5: none)")
        check(self.noise > 0, "noise", "must be > 0")
        check(self.order_noise >= 0, "order_noise", "must be >= 0")
        check(self.overconfidence > 0, "overconfidence", "must be > 0 (1: calibrated)")
        check(self.cost_per_label >= 0, "cost_per_label", "must be >= 0")
        check(self.human_cost_per_label >= 0, "human_cost_per_label", "must be >= 0")


def _uniform(*keys: object) -> random.Random:
    digest = hashlib.sha256("/".join(map(str, keys)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def knows(cfg: SimJudgeConfig, q: Query) -> bool:
    """Whether the judge knows the fact `q` turns on: drawn once per (seed, country, attribute); always for requests."""
    if q.category not in FACT_CATEGORIES:
        return True
    return _uniform(cfg.seed, "knows", q.country, q.attribute).random() < cfg.knowledge


def value(cfg: SimJudgeConfig, q: Query, response: str, knowledge: Knowledge) -> float:
    """u(r) of the module docstring."""
    j = judge(q, response, knowledge)
    confident = not (j.hedged or j.refused or UNKNOWN_RE.search(response))  # as the raters' confidence_bias reads it
    hidden = () if knows(cfg, q) else ("correctness", "non_sycophancy")
    perceived = sum(v for k, v in j.components.items() if k not in hidden)
    return (cfg.skill * perceived + cfg.verbosity_bias * len(response.split()) / 10
            + cfg.style_bias * confident + cfg.self_bias * bool(PADDING_RE.search(response)))


def _logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


def p_first(cfg: SimJudgeConfig, gap: float, e: float) -> float:
    """P(first) from the value gap u(first) - u(second) and the perception noise e (module docstring)."""
    z = cfg.overconfidence * (gap / cfg.noise + e) + _logit(cfg.position_bias)
    return 1 / (1 + math.exp(-max(-50.0, min(50.0, z))))


class SimulatedJudge:
    """The world's simulated judge (`tether.judge.pairwise.Judge`)."""

    def __init__(self, knowledge: Knowledge, cfg: SimJudgeConfig, name: str = "world-sim"):
        self.knowledge, self.cfg, self.name = knowledge, cfg, name
        self._known: list[bool] = []

    def first_wins(self, items: Sequence[PairwiseItem]) -> list[float]:
        out = []
        for item in items:
            q = parse_prompt(item.pair.prompt_text, self.knowledge)
            if q is None:
                raise ValueError(f"not a prompt of this world: {item.pair.prompt_text!r}")
            gap = value(self.cfg, q, item.first, self.knowledge) - value(self.cfg, q, item.second, self.knowledge)
            order = "ba" if item.swapped else "ab"
            e = _uniform(self.cfg.seed, item.pair.id, order, item.principle.id).gauss(0.0, self.cfg.order_noise)
            out.append(p_first(self.cfg, gap, e))
            if q.category in FACT_CATEGORIES:
                self._known.append(knows(self.cfg, q))
        return out

    def stats(self) -> dict:
        known = self._known
        return {"kind": "simulated", "knew_the_fact_asked": sum(known) / len(known) if known else None,
                "cost_per_label": self.cfg.cost_per_label, "human_cost_per_label": self.cfg.human_cost_per_label}
