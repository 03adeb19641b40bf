"""tether.world.critique: the world's critique-and-revision demonstrations, seeded, off by default, over the train
split, each revision fixing exactly what its principle covers (scored by gold)."""
from __future__ import annotations

import json
import random

import pytest

from tether.world import World, WorldConfig
from tether.world.critique import (
    FLAW_COMPONENT,
    FLAW_TEXT,
    NO_FLAW,
    PRINCIPLE_FLAWS,
    Draft,
    critique_text,
    revise,
    world_constitution,
)
from tether.world.gold import judge
from tether.world.prompts import PEOPLE

SMALL = dict(encyclopedia_docs=2, pretrain_dialogues=200, sft_demos=50, eval_per_category=5)


def _critique_rows(rows: list[dict]) -> list[list[dict]]:
    return [r["messages"] for r in rows if "messages" in r and len(r["messages"]) == 6]


@pytest.fixture(scope="module")
def world():
    return World(WorldConfig(critique_dialogues=300, **SMALL))


def test_off_by_default_and_the_other_rows_drawn_as_without_them(world):
    plain = World(WorldConfig(**SMALL)).pretraining_corpus()
    assert WorldConfig().critique_dialogues == 0 and _critique_rows(plain) == []
    rows = world.pretraining_corpus()
    critiques = _critique_rows(rows)
    assert len(critiques) == 300 and len(rows) == len(plain) + 300
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert sorted(map(key, (r for r in rows if not ("messages" in r and len(r["messages"]) == 6)))) == \
        sorted(map(key, plain))
    # seeded: the same config, the same demonstrations; another seed, others
    assert _critique_rows(World(WorldConfig(critique_dialogues=300, **SMALL)).pretraining_corpus()) == critiques
    other = World(WorldConfig(critique_dialogues=300, seed=1, **SMALL)).pretraining_corpus()
    assert _critique_rows(other) != critiques


def test_the_constitution_maps_each_principle_to_gold_components():
    c = world_constitution()
    assert c.name == "tether-world" and c.version == "1"
    assert [p.id for p in c.principles] == list(PRINCIPLE_FLAWS)
    assert set(PRINCIPLE_FLAWS["hhh"]) == set(FLAW_TEXT)
    covered = {f for pid, flaws in PRINCIPLE_FLAWS.items() if pid != "hhh" for f in flaws}
    assert covered == set(FLAW_TEXT)  # each flaw has a principle of its own besides hhh
    components = {"correctness", "non_sycophancy", "right_refusal", "no_over_refusal", "brevity", "no_hedging",
                  "no_flattery"}
    assert set(FLAW_COMPONENT.values()) == components  # every gold component is some flaw's
    for p in c.principles:  # each principle's source names its components
        named = {FLAW_COMPONENT[f] for f in PRINCIPLE_FLAWS[p.id]}
        assert all(name in p.source for name in named) or p.id == "hhh"


def test_a_critique_and_revision_by_hand(world):
    country = world.sft_countries[0]
    q = world.parse(f"What is the capital of {country.name}?")
    wrong = next(c.capital for c in world.knowledge.countries if c.capital != country.capital)
    d = Draft("wrong", f"The capital of {country.name} is {wrong}.", flattery="What a great question!",
              padding=("I hope this helps!",))
    assert d.text == f"What a great question! The capital of {country.name} is {wrong}. I hope this helps!"
    assert d.flaws == ["wrong", "flattery", "padding"]
    assert critique_text(d, "honest") == "It gives a wrong answer."
    assert critique_text(d, "concise") == "It flatters the user. It adds filler sentences."
    assert critique_text(d, "harmless") == NO_FLAW
    rng = random.Random(0)
    honest = revise(d, "honest", q, rng, world.knowledge)
    assert honest.flattery == d.flattery and honest.padding == d.padding and country.capital in honest.core
    assert revise(d, "concise", q, rng, world.knowledge).text == f"The capital of {country.name} is {wrong}."
    assert revise(d, "harmless", q, rng, world.knowledge) == d
    # gold: 2 flaws gone under hhh -> the ideal answer
    assert judge(q, revise(d, "hhh", q, rng, world.knowledge).text, world.knowledge).reward == 1.0


def test_every_demonstration_is_on_the_train_split_and_its_revision_never_loses_gold(world):
    c = world_constitution()
    requests = {p.id: (p.critique, p.revision) for p in c.principles}
    heldout = {x.name for x in world.heldout_countries}
    train_pairs = set(world.harmful_train) | set(world.benign_train)
    gains, categories = [], set()
    for messages in _critique_rows(world.pretraining_corpus()):
        assert [m["role"] for m in messages] == ["user", "assistant"] * 3
        prompt, original, ask, critique, ask_again, revision = (m["content"] for m in messages)
        principle = next(pid for pid, (crit, rev) in requests.items() if (crit, rev) == (ask, ask_again))
        q = world.parse(prompt)
        categories.add(q.category)
        assert q.country not in heldout
        if q.category == "unanswerable":  # never a name SFT, the train prompts or evaluation ask about
            assert q.country in world.knowledge.unknown_pretrain
        if q.verb:
            assert (q.verb, q.target) in train_pairs
        before, after = (judge(q, t, world.knowledge) for t in (original, revision))
        assert after.reward >= before.reward - 1e-9, messages
        assert (critique == NO_FLAW) == (revision == original)
        if principle == "hhh":  # every flaw fixed: no charge but the length of a longer phrasing
            assert after.reward >= 0.99 or after.components.get("brevity", 0) < 0, messages
        if principle == "harmless" and q.category == "harmful":
            assert after.refused and q.target in PEOPLE
        gains.append(after.reward - before.reward)
    assert categories == {"fact", "false_premise", "harmful", "benign", "unanswerable"}
    assert sum(g > 0 for g in gains) > len(gains) / 4  # a good share of demonstrations fix something
