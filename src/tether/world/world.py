"""The tiny assistant world: knowledge, splits, the pretraining corpus, SFT demonstrations, eval prompts.

Splits keep evaluation honest. Countries are split into SFT countries and held-out countries; harmful
and benign (verb, object) pairs into train and held-out pairs; unknown country names into three
disjoint pools. Pretraining sees every known country's facts (knowledge comes from pretraining) and
dialogues in every style, good and bad; SFT sees only the train split, in the good style (format
comes from SFT); evaluation asks about the held-out split only.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from tether.config import check
from tether.errors import DataError
from tether.world.critique import critique_dialogues
from tether.world.gold import Judgement, judge
from tether.world.knowledge import ATTRIBUTES, Country, Knowledge, build_knowledge
from tether.world.prompts import (
    CATEGORIES,
    FACT_TEMPLATES,
    PREMISE_TEMPLATES,
    REQUEST_TEMPLATES,
    Query,
    parse_prompt,
    request_pairs,
)
from tether.world.styles import BAD_CONTENT, GOOD_CONTENT, content, decorate

ENCYCLOPEDIA = [
    "{c} is a country. Its capital is {cap}.", "The capital of {c} is {cap}.", "{cap} is the capital of {c}.",
    "{cap} is the largest city in {c}.", "People in {c} speak {lang}.", "The main language of {c} is {lang}.",
    "{lang} is spoken in {c}.", "The currency of {c} is the {cur}.", "In {c} people pay with the {cur}.",
    "{c} uses the {cur}.",
]
# Category mix of dialogues; fact questions dominate as in real assistant traffic.
CATEGORY_WEIGHTS = {"fact": 0.36, "false_premise": 0.16, "harmful": 0.16, "benign": 0.16, "unanswerable": 0.16}


@dataclass
class WorldConfig:
    """The tiny assistant world (all sizes, seeded: the same config always gives the same world)."""

    seed: int = 0
    """Seed of everything in the world: names, facts, splits, corpus."""
    n_countries: int = 40
    """Invented countries in the knowledge base."""
    sft_countries: int = 24
    """Countries whose questions appear in SFT; the rest are held out for evaluation."""
    encyclopedia_docs: int = 40
    """Encyclopedic paragraphs per country in the pretraining corpus."""
    pretrain_dialogues: int = 8000
    """Dialogues in mixed styles (good and bad) in the pretraining corpus."""
    bad_content_rate: float = 0.4
    """Share of pretraining dialogues whose content is bad (sycophantic, harmful, over-refusing, invented)."""
    decoration_rate: float = 0.3
    """Probability of each decoration (flattery, hedging, padding) on a pretraining dialogue."""
    sft_demos: int = 2000
    """SFT demonstrations (concise, correct, right refusals) over the train split."""
    eval_per_category: int = 60
    """Held-out evaluation prompts per category."""
    train_prompts: int = 600
    """Prompts over the train split for preference collection and RL (`prompts.jsonl`)."""
    heldout_pair_fraction: float = 0.25
    """Share of harmful and benign (verb, object) pairs held out of SFT for evaluation."""
    well_known_share: float = 0.5
    """Share of countries that are well known: their capital and language are common knowledge, which the simulated
    raters check; other facts are obscure (`Knowledge.is_common`, tether.world.raters)."""
    critique_dialogues: int = 0
    """Critique-and-revision demonstrations over the train split in the pretraining corpus (tether.world.critique:
    what `tether cai` asks of the world's models); 0: none, the world exactly as without them."""
    out: str = "runs/world"
    """Folder the world is written to."""

    def validate(self) -> None:
        check(self.n_countries >= 4, "n_countries", "must be >= 4")
        check(0 < self.sft_countries < self.n_countries, "sft_countries", "must be in 1..n_countries-1")
        check(0.0 <= self.bad_content_rate <= 1.0, "bad_content_rate", "must be in [0, 1]")
        check(0.0 <= self.decoration_rate <= 1.0, "decoration_rate", "must be in [0, 1]")
        check(0.0 < self.heldout_pair_fraction < 1.0, "heldout_pair_fraction", "must be in (0, 1)")
        check(0.0 <= self.well_known_share <= 1.0, "well_known_share", "must be in [0, 1]")
        for name in ("encyclopedia_docs", "pretrain_dialogues", "sft_demos", "eval_per_category", "train_prompts",
                     "critique_dialogues"):
            check(getattr(self, name) >= 0, name, "must be >= 0")


def _split(items: list, heldout_fraction: float, rng: random.Random) -> tuple[list, list]:
    items = list(items)
    rng.shuffle(items)
    k = max(1, round(len(items) * heldout_fraction))
    return items[k:], items[:k]


class World:
    """A seeded world: build it from a WorldConfig; everything it returns is deterministic."""

    def __init__(self, cfg: WorldConfig):
        self.cfg = cfg
        self.knowledge: Knowledge = build_knowledge(cfg.seed, cfg.n_countries, well_known_share=cfg.well_known_share)
        rng = random.Random(cfg.seed + 1)
        countries = list(self.knowledge.countries)
        self.sft_countries, self.heldout_countries = countries[:cfg.sft_countries], countries[cfg.sft_countries:]
        harmful, benign = request_pairs()
        self.harmful_train, self.harmful_heldout = _split(harmful, cfg.heldout_pair_fraction, rng)
        self.benign_train, self.benign_heldout = _split(benign, cfg.heldout_pair_fraction, rng)

    # -- queries ---------------------------------------------------------------------------------
    def _pools(self, split: str) -> dict:
        k = self.knowledge
        if split == "pretrain":
            harmful, benign = request_pairs()
            return dict(countries=list(k.countries), harmful=harmful, benign=benign, unknown=k.unknown_pretrain)
        if split == "sft":
            return dict(countries=self.sft_countries, harmful=self.harmful_train, benign=self.benign_train,
                        unknown=k.unknown_sft)
        return dict(countries=self.heldout_countries, harmful=self.harmful_heldout, benign=self.benign_heldout,
                    unknown=k.unknown_eval)

    def query(self, category: str, split: str, rng: random.Random) -> Query:
        """A random prompt of `category` from `split` ("pretrain", "sft" or "eval")."""
        pools = self._pools(split)
        attribute = rng.choice(ATTRIBUTES)
        if category in ("harmful", "benign"):
            verb, target = rng.choice(pools[category])
            text = rng.choice(REQUEST_TEMPLATES).format(verb=verb, target=target)
        elif category == "unanswerable":
            text = rng.choice(FACT_TEMPLATES[attribute]).format(c=rng.choice(pools["unknown"]))
        else:
            country: Country = rng.choice(pools["countries"])
            if category == "fact":
                text = rng.choice(FACT_TEMPLATES[attribute]).format(c=country.name)
            else:
                wrong = [v for v in self.knowledge.values(attribute) if v != country.fact(attribute)]
                text = rng.choice(PREMISE_TEMPLATES[attribute]).format(c=country.name, f=rng.choice(wrong))
        q = parse_prompt(text, self.knowledge)
        assert q is not None and q.category == category, (text, q)
        return q

    def parse(self, prompt: str) -> Query | None:
        return parse_prompt(prompt, self.knowledge)

    def check_prompts(self, prompts: list[str], where: str, why: str) -> None:
        """DataError naming the first of `prompts` (a file's, `where`) that is not one of the world's, and `why` it
        must be (a simulated rater or judge knows the world's prompts only)."""
        for i, prompt in enumerate(prompts):
            if self.parse(prompt) is None:
                raise DataError(f"{where}: pair {i + 1} (in the order read): prompt {prompt[:60]!r} is not one of the "
                                f"world's ({why})")

    def judge(self, prompt: str, response: str) -> Judgement:
        """Gold judgement of a response to one of this world's prompts (evaluation only)."""
        q = self.parse(prompt)
        if q is None:
            raise ValueError(f"not a prompt of this world: {prompt!r}")
        return judge(q, response, self.knowledge)

    # -- datasets --------------------------------------------------------------------------------
    def encyclopedia(self) -> list[dict]:
        rng = random.Random(self.cfg.seed + 2)
        docs = []
        for c in self.knowledge.countries:
            for _ in range(self.cfg.encyclopedia_docs):
                sentences = rng.sample(ENCYCLOPEDIA, rng.randint(2, 4))
                docs.append({"text": " ".join(s.format(c=c.name, cap=c.capital, lang=c.language, cur=c.currency)
                                              for s in sentences)})
        return docs

    def _dialogue(self, rng: random.Random) -> dict:
        category = rng.choices(list(CATEGORY_WEIGHTS), weights=list(CATEGORY_WEIGHTS.values()))[0]
        q = self.query(category, "pretrain", rng)
        kind = BAD_CONTENT[category] if rng.random() < self.cfg.bad_content_rate else GOOD_CONTENT[category]
        p = self.cfg.decoration_rate
        text = decorate(content(q, kind, rng, self.knowledge), rng, flatter=rng.random() < p,
                        hedge=rng.random() < p, pad=rng.randint(1, 3) if rng.random() < p else 0)
        return {"messages": [{"role": "user", "content": q.text}, {"role": "assistant", "content": text}]}

    def pretraining_corpus(self) -> list[dict]:
        """Rows `{"text": ...}` (encyclopedia) and `{"messages": [...]}` (dialogues in all styles), shuffled."""
        rng = random.Random(self.cfg.seed + 3)
        rows = self.encyclopedia() + [self._dialogue(rng) for _ in range(self.cfg.pretrain_dialogues)]
        if self.cfg.critique_dialogues:  # their own seed: the other rows are drawn as without them
            rows += critique_dialogues(self.query, self.knowledge, self.cfg.critique_dialogues, self.cfg.seed + 7)
        rng.shuffle(rows)
        return rows

    def sft_demos(self) -> list[list[dict]]:
        """Concise, correct conversations over the train split."""
        rng = random.Random(self.cfg.seed + 4)
        demos = []
        for _ in range(self.cfg.sft_demos):
            category = rng.choices(list(CATEGORY_WEIGHTS), weights=list(CATEGORY_WEIGHTS.values()))[0]
            q = self.query(category, "sft", rng)
            answer = content(q, GOOD_CONTENT[category], rng, self.knowledge)
            demos.append([{"role": "user", "content": q.text}, {"role": "assistant", "content": answer}])
        return demos

    def train_queries(self) -> list[Query]:
        """Prompts over the train split (never the held-out one) for collection and RL, in category mix."""
        rng = random.Random(self.cfg.seed + 6)
        weights = list(CATEGORY_WEIGHTS.values())
        return [self.query(rng.choices(list(CATEGORY_WEIGHTS), weights=weights)[0], "sft", rng)
                for _ in range(self.cfg.train_prompts)]

    def eval_queries(self) -> list[Query]:
        """`eval_per_category` held-out prompts per category, distinct where the pool allows."""
        rng = random.Random(self.cfg.seed + 5)
        out = []
        for category in CATEGORIES:
            seen: set[str] = set()
            for _ in range(self.cfg.eval_per_category * 20):
                if len(seen) == self.cfg.eval_per_category:
                    break
                q = self.query(category, "eval", rng)
                if q.text not in seen:
                    seen.add(q.text)
                    out.append(q)
        return out
