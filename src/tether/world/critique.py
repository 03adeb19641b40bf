"""Critique and revision in the tiny world's own terms: what its corpus shows a model, so that `tether cai` works there.

A demonstration is one conversation (the format of Bai et al. 2022, sec. 3, "Constitutional AI"):

    user       a world prompt (train split: the SFT countries and request pairs, a subset of the world's entities;
               unknown countries from the pretraining pool, see split_of)
    assistant  a response in the world's styles, often flawed: harmful compliance, a refused safe request, a wrong
               or invented answer, agreement with a wrong claim; flattery, a hedge, filler sentences
    user       the critique request of a principle of the world's constitution (constitution.yaml)
    assistant  the critique: each flaw the principle covers, one sentence each (FLAW_TEXT), or NO_FLAW
    user       the principle's revision request
    assistant  the response with exactly those flaws fixed (the right content; the decorations dropped)

Each principle covers named components of the gold reward (PRINCIPLE_FLAWS, FLAW_COMPONENT), so a critique names
what gold would charge and a revision removes it; a flaw outside the principle stays, as a critique under another
principle would leave it. The demonstrations go into the pretraining corpus only (WorldConfig.critique_dialogues,
0 by default: the world, and the demo, as before): SFT trains every assistant turn of a conversation, and the
flawed first response must not be a target. The policy is taught the behaviour through data; nothing here runs
at sampling time.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from tether.judge.constitution import Constitution, load_constitution
from tether.world.knowledge import Knowledge
from tether.world.prompts import CATEGORIES, Query
from tether.world.styles import BAD_CONTENT, FACT_ANSWERS, FLATTERY, GOOD_CONTENT, HEDGES, PADDING, content

CONSTITUTION = Path(__file__).resolve().parent / "constitution.yaml"
"""The world's constitution (package data): `tether cai` and `tether judge` read it with world= and no
constitution of their own."""

FLAW_TEXT = {
    "comply": "It helps someone hurt a person.",
    "over_refuse": "It refuses a safe request.",
    "wrong": "It gives a wrong answer.",
    "invented": "It invents an answer about a country that does not exist.",
    "agree": "It agrees with a wrong claim of the user.",
    "flattery": "It flatters the user.",
    "hedge": "It hedges an answer it knows.",
    "padding": "It adds filler sentences.",
}
"""Each flaw as its critique sentence, in the order a critique lists them."""
NO_FLAW = "It has no such problem."
FLAW_COMPONENT = {"comply": "right_refusal", "over_refuse": "no_over_refusal", "wrong": "correctness",
                  "invented": "correctness", "agree": "non_sycophancy", "flattery": "no_flattery",
                  "hedge": "no_hedging", "padding": "brevity"}
"""The gold component (tether.world.gold) each flaw costs."""
PRINCIPLE_FLAWS = {"hhh": tuple(FLAW_TEXT), "harmless": ("comply",), "helpful": ("over_refuse",),
                   "honest": ("wrong", "invented", "agree"), "concise": ("flattery", "hedge", "padding")}
"""The flaws each principle of constitution.yaml covers."""
CONTENT_FLAW = {"over_refuse": "over_refuse", "agree": "agree", "comply": "comply", "hallucinate": "invented",
                "wrong": "wrong"}
"""A bad content kind (tether.world.styles) -> its flaw."""


def world_constitution() -> Constitution:
    return load_constitution(CONSTITUTION)


@dataclass(frozen=True)
class Draft:
    """A response as its parts, so that a revision can drop exactly the flawed ones."""

    kind: str
    """Content kind: a GOOD_CONTENT or BAD_CONTENT value of tether.world.styles, or "wrong" (a wrong fact)."""
    core: str
    """The content's text."""
    flattery: str = ""
    hedge: str = ""
    hedge_first: bool = False
    """The hedge opens the response (HEDGES[0]) rather than closing it."""
    padding: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        parts = [self.flattery] if self.flattery else []
        parts += [self.hedge, self.core] if self.hedge and self.hedge_first else [self.core, self.hedge]
        return " ".join(p for p in parts + list(self.padding) if p)

    @property
    def flaws(self) -> list[str]:
        """Its flaws, in FLAW_TEXT's order."""
        found = {CONTENT_FLAW.get(self.kind), "flattery" if self.flattery else None,
                 "hedge" if self.hedge else None, "padding" if self.padding else None}
        return [f for f in FLAW_TEXT if f in found]


def draft(q: Query, rng: random.Random, knowledge: Knowledge, bad_content: float = 0.5,
          decoration: float = 0.35) -> Draft:
    """A response to `q` in the world's styles: bad content with probability `bad_content` (a fact question: a
    refusal or a wrong answer, even odds), each decoration with probability `decoration` (no hedge on a question
    it cannot know: gold does not charge one there)."""
    kind = GOOD_CONTENT[q.category]
    if rng.random() < bad_content:
        kind = "wrong" if q.category == "fact" and rng.random() < 0.5 else BAD_CONTENT[q.category]
    if kind == "wrong":
        wrong = rng.choice([v for v in knowledge.values(q.attribute) if v != q.value])
        core = rng.choice(FACT_ANSWERS[q.attribute]).format(c=q.country, v=wrong)
    else:
        core = content(q, kind, rng, knowledge)
    flattery = rng.choice(FLATTERY) if rng.random() < decoration else ""
    hedge, first = "", False
    if q.category != "unanswerable" and rng.random() < decoration:
        first = rng.random() < 0.5
        hedge = HEDGES[0] if first else rng.choice(HEDGES[1:])
    padding = tuple(rng.sample(PADDING, rng.randint(1, 2))) if rng.random() < decoration else ()
    return Draft(kind, core, flattery, hedge, first, padding)


def critique_text(d: Draft, principle: str) -> str:
    """The critique of `d` under `principle`: each flaw it covers, or NO_FLAW."""
    found = [FLAW_TEXT[f] for f in d.flaws if f in PRINCIPLE_FLAWS[principle]]
    return " ".join(found) or NO_FLAW


def revise(d: Draft, principle: str, q: Query, rng: random.Random, knowledge: Knowledge) -> Draft:
    """`d` with the flaws `principle` covers fixed: the right content in place of a bad one, those decorations
    dropped; the rest kept word for word."""
    scope = PRINCIPLE_FLAWS[principle]
    out = d
    if CONTENT_FLAW.get(d.kind) in scope:
        kind = GOOD_CONTENT[q.category]
        out = replace(out, kind=kind, core=content(q, kind, rng, knowledge))
    if "flattery" in scope:
        out = replace(out, flattery="")
    if "hedge" in scope:
        out = replace(out, hedge="", hedge_first=False)
    if "padding" in scope:
        out = replace(out, padding=())
    return out


def critique_dialogue(q: Query, rng: random.Random, knowledge: Knowledge, constitution: Constitution) -> dict:
    """One demonstration (the module docstring) as a corpus row `{"messages": [...]}`."""
    principle = rng.choice(constitution.principles)
    d = draft(q, rng, knowledge)
    revised = revise(d, principle.id, q, rng, knowledge)
    turns = [("user", q.text), ("assistant", d.text), ("user", principle.critique),
             ("assistant", critique_text(d, principle.id)), ("user", principle.revision), ("assistant", revised.text)]
    return {"messages": [{"role": role, "content": text} for role, text in turns]}


def split_of(category: str) -> str:
    """Where a demonstration's prompt is drawn: the train split (SFT countries and request pairs), except that a
    question about a country that does not exist names one of the pretraining pool: half the drafts invent an answer,
    and an invented fact beside a name that SFT, the train prompts or evaluation ask about would teach it."""
    return "pretrain" if category == "unanswerable" else "sft"


def critique_dialogues(query: Callable[[str, str, random.Random], Query], knowledge: Knowledge, n: int,
                       seed: int) -> list[dict]:
    """`n` demonstrations, categories in equal shares; `query(category, split, rng)` draws a prompt (World.query)."""
    constitution = world_constitution()
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        category = rng.choice(CATEGORIES)
        rows.append(critique_dialogue(query(category, split_of(category), rng), rng, knowledge, constitution))
    return rows
