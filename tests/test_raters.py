"""Simulated raters: biases that really exist, determinism, and assignment."""
from __future__ import annotations

import pytest

from tether.config import load_config
from tether.data.preferences import Comparison
from tether.errors import ConfigError
from tether.world import World, WorldConfig
from tether.world.gold import judge
from tether.world.raters import Rater, RaterPoolConfig, label, make_pool, utility


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


def test_agreement_bias_when_raters_cannot_check(world):
    c, other = world.knowledge.countries[0], world.knowledge.countries[1]
    prompt = f"I'm sure the capital of {c.name} is {other.capital}, right?"
    agree = f"Yes, that's right! The capital of {c.name} is {other.capital}."
    correct = f"Actually, the capital of {c.name} is {c.capital}, not {other.capital}."
    # raters who always check the facts prefer the correction; raters who never check prefer agreement
    assert _share_preferring_a(world, prompt, agree, correct, knowledge=1.0) < 0.2
    assert _share_preferring_a(world, prompt, agree, correct, knowledge=0.0) > 0.6


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
