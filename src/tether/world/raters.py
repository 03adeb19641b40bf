"""Simulated raters: a seeded pool of people comparing two responses, with the biases real raters have.

Rater i values a response r to prompt q at

    u_i(r) = skill_i * perceived_gold_i(q, r)
             + length_i * words(r) / 10 + flattery_i * [r flatters] + agreement_i * [r agrees with the user]
             + confidence_i * [r asserts an answer without hedging]

and prefers A over B with probability sigmoid((u_i(A) - u_i(B)) / noise_i) (a Bradley-Terry draw),
or calls a tie with probability `tie_rate` when the two are within `tie_margin`. Raters cannot know
every fact of the world, and what they can check depends on the fact: on a fact or false-premise prompt
about a common fact (`Knowledge.is_common`: the capital or language of a well-known country) rater i
checks with probability `knowledge_i`, on an obscure one (a currency, anything about a little-known
country) with probability `obscure_knowledge_i`; on an unanswerable prompt (a country that does not
exist) with `knowledge_i`. A rater who does not check sees neither the correctness nor the sycophancy
component, only the surface (length, flattery, agreement, confidence): so the agreement bias wins
exactly where people cannot verify, as Sharma et al. 2023 found for real preference data. These are
the failure modes reported for real raters (Singhal et al. 2023 on length; Sharma et al. 2023 on
sycophancy; Hosking et al. 2023 on assertiveness): a reward model trained on such labels inherits
them, and RL exploits them. `obscure_knowledge = knowledge` gives every fact the same checking
probability (the pool before issue 20: the same labels, draw for draw).

Each draw is seeded by (pool seed, pair id, rater), so labels do not depend on the order of work.
"""
from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from datetime import datetime, timezone

from tether.config import check
from tether.data.preferences import Comparison
from tether.world.gold import UNKNOWN_RE, Judgement, judge
from tether.world.knowledge import Knowledge
from tether.world.prompts import Query, parse_prompt

FACT_CATEGORIES = ("fact", "false_premise", "unanswerable")
GUIDELINE_VERSION = "world-sim-1"


@dataclass
class RaterPoolConfig:
    """A pool of simulated raters: each rater's traits are drawn around these means."""

    n_raters: int = 10
    """Raters in the pool."""
    overlap: int = 3
    """Distinct raters who label each pair."""
    seed: int = 0
    """Seed of the raters' traits and of every label."""
    skill: float = 1.0
    """Mean weight on (perceived) true helpfulness."""
    knowledge: float = 0.7
    """Mean probability that a rater checks a common fact (`Knowledge.is_common`), or notices that a country does
    not exist."""
    obscure_knowledge: float = 0.1
    """Mean probability that a rater checks an obscure fact (a currency, anything about a little-known country)."""
    length_bias: float = 0.4
    """Mean extra utility per 10 words of response."""
    flattery_bias: float = 0.8
    """Mean extra utility of a flattering response."""
    agreement_bias: float = 0.8
    """Mean extra utility of a response that agrees with the user's claim."""
    confidence_bias: float = 0.5
    """Mean extra utility of a response that asserts an answer without hedging or 'I don't know'."""
    noise: float = 0.3
    """Mean Bradley-Terry temperature: larger means noisier choices (0.3 gives ~72% pairwise agreement on
    the demo's queue, InstructGPT's 72.6% among training labelers)."""
    spread: float = 0.3
    """Relative spread of each trait across raters (uniform in mean * [1 - spread, 1 + spread])."""
    tie_rate: float = 0.3
    """Probability of calling a tie when two responses are within tie_margin of each other."""
    tie_margin: float = 0.1
    """Utility difference under which a rater may call a tie."""

    def validate(self) -> None:
        check(self.n_raters >= 1, "n_raters", "must be >= 1")
        check(1 <= self.overlap <= self.n_raters, "overlap", f"must be in 1..n_raters ({self.n_raters})")
        check(0 <= self.knowledge <= 1, "knowledge", "must be in [0, 1]")
        check(0 <= self.obscure_knowledge <= 1, "obscure_knowledge", "must be in [0, 1]")
        check(self.noise > 0, "noise", "must be > 0")
        check(0 <= self.spread < 1, "spread", "must be in [0, 1)")
        check(0 <= self.tie_rate <= 1, "tie_rate", "must be in [0, 1]")


@dataclass(frozen=True)
class Rater:
    """One simulated rater's traits."""

    id: str
    skill: float
    knowledge: float
    length_bias: float
    flattery_bias: float
    agreement_bias: float
    confidence_bias: float
    noise: float
    obscure_knowledge: float | None = None
    """Probability of checking an obscure fact; None: as often as a common one (`knowledge`)."""


def make_pool(cfg: RaterPoolConfig) -> list[Rater]:
    rng = random.Random(cfg.seed)

    def factor() -> float:
        return rng.uniform(1 - cfg.spread, 1 + cfg.spread)

    def rater(i: int) -> Rater:
        skill, knows = cfg.skill * factor(), factor()  # one draw for both checking probabilities: a rater who
        # checks more common facts checks more obscure ones, and the pool's other traits keep their draws
        return Rater(f"sim-{i:02d}", skill, min(1.0, cfg.knowledge * knows), cfg.length_bias * factor(),
                     cfg.flattery_bias * factor(), cfg.agreement_bias * factor(), cfg.confidence_bias * factor(),
                     cfg.noise * factor(), min(1.0, cfg.obscure_knowledge * knows))

    return [rater(i) for i in range(cfg.n_raters)]


def check_probability(rater: Rater, q: Query, knowledge: Knowledge) -> float:
    """How likely `rater` is to check the facts of a response to `q` (module docstring): `obscure_knowledge` for an
    obscure fact of a fact or false-premise prompt, `knowledge` otherwise."""
    if q.category in ("fact", "false_premise") and not knowledge.is_common(q.country, q.attribute):
        return rater.knowledge if rater.obscure_knowledge is None else rater.obscure_knowledge
    return rater.knowledge


def _confident(j: Judgement, response: str) -> bool:
    return not (j.hedged or j.refused or UNKNOWN_RE.search(response))


def utility(rater: Rater, j: Judgement, response: str, checks_facts: bool) -> float:
    """What `rater` thinks a response is worth (see the module docstring)."""
    hidden = () if checks_facts or j.category not in FACT_CATEGORIES else ("correctness", "non_sycophancy")
    perceived = sum(v for k, v in j.components.items() if k not in hidden)
    return (rater.skill * perceived + rater.length_bias * len(response.split()) / 10
            + rater.flattery_bias * j.flattering + rater.agreement_bias * j.sycophantic
            + rater.confidence_bias * _confident(j, response))


def _rng(seed: int, pair: str, rater: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}/{pair}/{rater}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def rate(rater: Rater, c: Comparison, knowledge: Knowledge, cfg: RaterPoolConfig) -> Comparison:
    """`c` labelled by `rater`: choice, strength, rater id, guideline version, timestamp."""
    q = parse_prompt(c.prompt_text, knowledge)
    if q is None:
        raise ValueError(f"not a prompt of this world: {c.prompt_text!r}")
    rng = _rng(cfg.seed, c.id, rater.id)
    checks = rng.random() < check_probability(rater, q, knowledge)
    ja, jb = judge(q, c.response_a, knowledge), judge(q, c.response_b, knowledge)
    diff = utility(rater, ja, c.response_a, checks) - utility(rater, jb, c.response_b, checks)
    if abs(diff) < cfg.tie_margin and rng.random() < cfg.tie_rate:
        choice = "tie"
    else:
        p_a = 1 / (1 + math.exp(-max(-50.0, min(50.0, diff / rater.noise))))
        choice = "A" if rng.random() < p_a else "B"
    # "much better" only when the rater picked the side it values more; a noise-flipped choice is a slight one
    strength = 1.0 if abs(diff) > 1.0 and (diff > 0) == (choice == "A") else 0.5
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return Comparison(c.prompt, c.response_a, c.response_b, choice, strength, rater.id, GUIDELINE_VERSION,
                      c.source_a, c.source_b, stamp, c.id, dict(c.meta))


def label(queue: list[Comparison], knowledge: Knowledge, cfg: RaterPoolConfig) -> list[Comparison]:
    """Each pair labelled by `overlap` distinct raters, chosen per pair by a seeded draw: one row per rating."""
    pool = make_pool(cfg)
    out = []
    for c in queue:
        chosen = _rng(cfg.seed, c.id, "assign").sample(pool, cfg.overlap)
        out += [rate(r, c, knowledge, cfg) for r in chosen]
    return out


def population_preference(c: Comparison, knowledge: Knowledge, cfg: RaterPoolConfig) -> float:
    """P(a rater drawn from the pool prefers A), ties ignored: the best any reward model could predict.

    Used only to report the Bayes ceiling of RM accuracy against individual rater labels.
    """
    q = parse_prompt(c.prompt_text, knowledge)
    ja, jb = judge(q, c.response_a, knowledge), judge(q, c.response_b, knowledge)
    pool = make_pool(cfg)
    total = 0.0
    for r in pool:
        p = check_probability(r, q, knowledge)
        for checks, weight in ((True, p), (False, 1 - p)):
            diff = utility(r, ja, c.response_a, checks) - utility(r, jb, c.response_b, checks)
            total += weight / (1 + math.exp(-max(-50.0, min(50.0, diff / r.noise))))
    return total / len(pool)
