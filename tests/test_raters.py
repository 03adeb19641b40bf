"""Simulated raters: biases that really exist, determinism, and assignment."""
from __future__ import annotations

import random

import pytest

from tether.config import load_config
from tether.data.preferences import Comparison
from tether.errors import ConfigError
from tether.world import World, WorldConfig
from tether.world.gold import judge
from tether.world.raters import Rater, RaterPoolConfig, check_probability, label, make_pool, utility


@pytest.fixture(scope="module")
def world() -> World:
    return World(WorldConfig())


def _share_preferring_a(world, prompt, a, b, n_pairs=200, **pool) -> float:
    """Share of ratings preferring A over B, over many copies of the pair (distinct ids via meta-free prompts)."""
    cfg = RaterPoolConfig(n_raters=20, overlap=5, **pool)
    queue = [Comparison(prompt, a, b, id=f"pair-{i}") for i in range(n_pairs)]
    ratings = label(queue, world.knowledge, cfg)
    decided = [r for r in ratings if r.choice != "tie"]
    return sum(r.choice == "A" for r in decided) / len(decided)


def test_utility_hand_worked(world):
    c = world.knowledge.countries[0]
    q = world.parse(f"What is the capital of {c.name}?")
    rater = Rater("r", skill=1.0, knowledge=1.0, length_bias=0.4, flattery_bias=0.8, agreement_bias=0.8,
                  confidence_bias=0.5, noise=0.5)
    text = f"What a great question! The capital of {c.name} is {c.capital}."
    j = judge(q, text, world.knowledge)
    # gold = 1 (correct) - 0.5 (flattery) = 0.5, brevity 0 (10 words <= 6 + 6 slack)
    # u = 1.0 * 0.5 + 0.4 * 10/10 + 0.8 * 1 (flattering) + 0.8 * 0 + 0.5 * 1 (confident) = 2.2
    assert j.reward == pytest.approx(0.5)
    assert utility(rater, j, text, checks_facts=True) == pytest.approx(2.2)
    # a rater who does not check facts loses the correctness component: 2.2 - 1.0
    assert utility(rater, j, text, checks_facts=False) == pytest.approx(1.2)


def test_flattery_bias_really_exists(world):
    c = world.knowledge.countries[0]
    prompt = f"What is the capital of {c.name}?"
    plain = f"The capital of {c.name} is {c.capital}."
    flattering = f"What a great question! {plain}"
    # gold prefers the plain answer (flattery costs 0.5) ...
    assert world.judge(prompt, plain).reward > world.judge(prompt, flattering).reward
    # ... raters prefer the flattering one; with the bias switched off they prefer the plain one
    assert _share_preferring_a(world, prompt, flattering, plain) > 0.55
    assert _share_preferring_a(world, prompt, flattering, plain, flattery_bias=0.0) < 0.45


def test_length_bias_really_exists(world):
    prompt = "How do I kill a stuck process?"
    plain = "Here is how to kill a stuck process: find its process id and send it a stop signal."
    padded = plain + " I hope this helps! Let me know if you have any other questions. Feel free to ask me anything else."
    assert world.judge(prompt, plain).reward > world.judge(prompt, padded).reward
    assert _share_preferring_a(world, prompt, padded, plain, length_bias=1.0) > 0.55
    assert _share_preferring_a(world, prompt, padded, plain, length_bias=0.0) < 0.45


def _capital_premise(world, country, other):
    prompt = f"I'm sure the capital of {country.name} is {other.capital}, right?"
    agree = f"Yes, that's right! The capital of {country.name} is {other.capital}."
    correct = f"Actually, the capital of {country.name} is {country.capital}, not {other.capital}."
    return prompt, agree, correct


def test_agreement_bias_when_raters_cannot_check(world):
    c, other = world.knowledge.countries[0], world.knowledge.countries[1]
    prompt, agree, correct = _capital_premise(world, c, other)
    # raters who always check the facts prefer the correction; raters who never check prefer agreement
    assert _share_preferring_a(world, prompt, agree, correct, knowledge=1.0, obscure_knowledge=1.0) < 0.2
    assert _share_preferring_a(world, prompt, agree, correct, knowledge=0.0, obscure_knowledge=0.0) > 0.6


def test_common_and_obscure_facts_are_seeded_and_leave_the_facts_alone():
    k = World(WorldConfig(seed=3)).knowledge
    assert len(k.well_known) == 20  # round(0.5 * 40)
    assert k == World(WorldConfig(seed=3)).knowledge
    assert k.well_known != World(WorldConfig(seed=4)).knowledge.well_known
    none = World(WorldConfig(seed=3, well_known_share=0.0)).knowledge
    assert none.well_known == () and none.countries == k.countries  # the draw is an RNG of its own
    famous = next(c for c in k.countries if c.name in k.well_known)
    little = next(c for c in k.countries if c.name not in k.well_known)
    assert k.is_common(famous.name, "capital") and k.is_common(famous.name, "language")
    assert not k.is_common(famous.name, "currency") and not k.is_common(little.name, "capital")


def test_checking_probability_depends_on_the_fact(world):
    k = world.knowledge
    famous = next(c for c in k.countries if c.name in k.well_known)
    little = next(c for c in k.countries if c.name not in k.well_known)
    rater = make_pool(RaterPoolConfig(knowledge=0.8, obscure_knowledge=0.2, spread=0.0))[0]
    assert (rater.knowledge, rater.obscure_knowledge) == (0.8, 0.2)
    asks = {"common": f"I'm sure the capital of {famous.name} is X, right?",
            "obscure capital": f"I'm sure the capital of {little.name} is X, right?",
            "currency": f"What currency does {famous.name} use?", "unanswerable": "What is the capital of Zzyzxia?",
            "harmful": "How do I hurt my neighbor?"}
    probability = {name: check_probability(rater, world.parse(text), k) for name, text in asks.items()}
    assert probability == {"common": 0.8, "obscure capital": 0.2, "currency": 0.2, "unanswerable": 0.8,
                           "harmful": 0.8}
    # one draw scales both probabilities of a rater, and the pool's other traits keep their draws
    wide = make_pool(RaterPoolConfig(seed=2))
    assert all(r.obscure_knowledge == pytest.approx(r.knowledge / 0.7 * 0.1) for r in wide)


def test_agreement_wins_exactly_where_raters_cannot_verify(world):
    k = world.knowledge
    famous = next(c for c in k.countries if c.name in k.well_known)
    little = next(c for c in k.countries if c.name not in k.well_known)
    other = next(c for c in k.countries if c not in (famous, little))
    # the default pool: common facts checked 70% of the time, obscure ones 10%
    assert _share_preferring_a(world, *_capital_premise(world, famous, other)) < 0.35
    assert _share_preferring_a(world, *_capital_premise(world, little, other)) > 0.6


def test_same_checking_for_every_fact_gives_the_labels_of_before():
    # Labels of the pool before facts differed (issue 20), recorded from that code: 40 pairs of fact, false-premise
    # and unanswerable prompts, 3 ratings each. obscure_knowledge = knowledge reproduces them draw for draw.
    before = ("BBBBBBABABBBBBAAABBABABBAABBBABBBBBAABAAAAAABAABAAAAABBBABBBABAAABBBBAAABABBBAABABBBBBBAABABBABAABAABAB"
              "BBBABAAABBBBABBAB")
    world, rng = World(WorldConfig()), random.Random(5)
    queue = []
    for i in range(40):
        q = world.query(["fact", "false_premise", "unanswerable"][i % 3], "sft", rng)
        if q.category == "false_premise":
            a, b = f"Yes, that's right! {q.false_value}.", f"Actually, it is {q.value}, not {q.false_value}."
        elif q.category == "fact":
            a, b = f"It is {q.value}.", f"It is {q.value}. I hope this helps!"
        else:
            a, b = "I don't know.", f"The capital of {q.country} is {world.knowledge.countries[0].capital}."
        queue.append(Comparison(q.text, a, b, id=f"p{i}"))
    same = label(queue, world.knowledge, RaterPoolConfig(seed=4, obscure_knowledge=0.7))
    assert "".join(r.choice[0] for r in same) == before
    now = "".join(r.choice[0] for r in label(queue, world.knowledge, RaterPoolConfig(seed=4)))
    # only false-premise labels can change (obscure facts now go unchecked), and there agreement is A
    assert now != before and now.count("A") > before.count("A")


def test_labels_are_deterministic_and_order_free(world):
    qs = [world.query("fact", "sft", __import__("random").Random(i)) for i in range(10)]
    queue = [Comparison(q.text, f"The capital of {q.country} is {q.value}.", "I don't know.") for q in qs]
    cfg = RaterPoolConfig(seed=3)
    first = [(r.id, r.rater, r.choice) for r in label(queue, world.knowledge, cfg)]
    again = [(r.id, r.rater, r.choice) for r in label(list(reversed(queue)), world.knowledge, cfg)]
    assert sorted(first) == sorted(again)


def test_each_pair_goes_to_overlap_distinct_raters(world):
    queue = [Comparison("How do I kill a stuck process?", f"Answer {i}.", "I can't help with that.") for i in range(30)]
    ratings = label(queue, world.knowledge, RaterPoolConfig(n_raters=6, overlap=3))
    assert len(ratings) == 90
    for c in queue:
        raters = [r.rater for r in ratings if r.id == c.id]
        assert len(raters) == 3 and len(set(raters)) == 3
    assert {r.guideline_version for r in ratings} == {"world-sim-1"}


def test_pool_is_seeded():
    assert make_pool(RaterPoolConfig(seed=1)) == make_pool(RaterPoolConfig(seed=1))
    assert make_pool(RaterPoolConfig(seed=1)) != make_pool(RaterPoolConfig(seed=2))


def test_pool_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="overlap"):
        load_config(RaterPoolConfig, None, ["n_raters=2", "overlap=3"])
