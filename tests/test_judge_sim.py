"""The tiny world's simulated AI judge (tether.world.judge_sim): each bias measured from its labels on constructed
pairs, its knowledge beside the raters', seeding, and `tether judge simulated=true` on a world queue (the report's
figures recomputed from the labels).

Measuring a bias exactly: with the perception noise off (order_noise=0) and no position pull (position_bias=0.5)
both orders give sigmoid(+-x), so p_a = sigmoid(x) with x = overconfidence * gap / noise, and the value gap the
judge saw is gap = noise / overconfidence * logit(p_a). A bias is then the change of that gap when the bias is
switched on, per unit of the feature."""
from __future__ import annotations

import dataclasses
import json
import math
import random

import pytest

from tether.cli import main
from tether.data.preferences import Comparison, read_comparisons, write_comparisons
from tether.judge.constitution import load_constitution
from tether.judge.pairwise import judge_pairs
from tether.world import World, WorldConfig
from tether.world.judge_sim import SimJudgeConfig, SimulatedJudge
from tether.world.raters import RaterPoolConfig, label
from tether.world.styles import BAD_CONTENT, GOOD_CONTENT, content, decorate

EXACT = dict(order_noise=0.0, position_bias=0.5)


@pytest.fixture(scope="module")
def world() -> World:
    return World(WorldConfig())  # 40 countries: 120 facts


def verdicts(world, pairs, **settings):
    judge = SimulatedJudge(world.knowledge, SimJudgeConfig(**settings))
    return judge_pairs(judge, pairs, load_constitution(), "sample", 0)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def seen_gap(world, pairs, **settings) -> list[float]:
    """The value gap u(a) - u(b) the judge saw on each pair (module docstring)."""
    cfg = SimJudgeConfig(**EXACT, **settings)
    return [cfg.noise / cfg.overconfidence * logit(v.p_a) for v in verdicts(world, pairs, **EXACT, **settings)]


def capital_pairs(world, a: str, b: str) -> list[Comparison]:
    """One pair per country: response a and b written from templates with {c} the country and {v} its capital."""
    return [Comparison(f"What is the capital of {c.name}?", a.format(c=c.name, v=c.capital),
                       b.format(c=c.name, v=c.capital)) for c in world.knowledge.countries]


def gold_gap(world, pairs) -> set[float]:
    return {round(world.judge(p.prompt, p.response_a).reward - world.judge(p.prompt, p.response_b).reward, 9)
            for p in pairs}


def test_position_bias_on_pairs_it_values_equally(world):
    pairs = capital_pairs(world, "The capital of {c} is {v}.", "{v} is the capital of {c}.")
    assert gold_gap(world, pairs) == {0.0}  # two phrasings of the same answer, 6 words each
    for bias in (0.6, 0.8, 0.3):
        exact = verdicts(world, pairs, order_noise=0.0, position_bias=bias)
        assert {round(v.first_ab, 9) for v in exact} == {round(v.first_ba, 9) for v in exact} == {bias}
        assert {round(v.p_a, 9) for v in exact} == {0.5} and all(v.inconsistent for v in exact)  # cancelled
        # with the perception noise on (the defaults), the mean P(first) is E[sigmoid(2 e + logit(bias))] over
        # e ~ N(0, 0.3), a point or two nearer 1/2 than the parameter; 80 draws are within 0.02 of it
        noisy = verdicts(world, pairs, position_bias=bias)
        first = [p for v in noisy for p in (v.first_ab, v.first_ba)]
        grid = [i / 100 for i in range(-500, 501)]  # e / sd, integrated on a grid
        weights = [math.exp(-z * z / 2) for z in grid]
        expected = sum(w / (1 + math.exp(-(2 * 0.3 * z + logit(bias)))) for z, w in zip(grid, weights)) / sum(weights)
        assert abs(expected - bias) < 0.02
        assert sum(first) / len(first) == pytest.approx(expected, abs=0.02)
        assert sum(v.p_a for v in noisy) / len(noisy) == pytest.approx(0.5, abs=0.03)


def test_verbosity_bias(world):
    pairs = capital_pairs(world, "The capital of the country {c} is the city {v}.", "The capital of {c} is {v}.")
    assert gold_gap(world, pairs) == {0.0}  # 10 words vs 6: within gold's brevity slack (6 + 6 words)
    for bias in (0.3, 1.0):
        gaps = seen_gap(world, pairs, verbosity_bias=bias)
        assert gaps == pytest.approx([bias * 4 / 10] * len(pairs))  # 4 more words
    longer = [v.p_a for v in verdicts(world, pairs, verbosity_bias=1.0)]
    neutral = [v.p_a for v in verdicts(world, pairs, verbosity_bias=0.0)]
    assert sum(longer) / len(longer) > 0.8 and sum(neutral) / len(neutral) == pytest.approx(0.5, abs=0.05)


def test_style_bias_for_confident_answers(world):
    pairs = capital_pairs(world, "The capital of {c} is {v}.",
                          "The capital of {c} is {v}. But I could be wrong about this.")
    for bias in (0.5, 1.5):
        on, off = seen_gap(world, pairs, style_bias=bias), seen_gap(world, pairs, style_bias=0.0)
        assert [a - b for a, b in zip(on, off)] == pytest.approx([bias] * len(pairs))


def test_self_preference_for_its_own_phrasing(world):
    pairs = capital_pairs(world, "The capital of {c} is {v}. I hope this helps!", "The capital of {c} is {v}.")
    assert gold_gap(world, pairs) == {0.0}  # 9 words: free; gold does not score the stock phrase itself
    for bias in (0.4, 1.0):
        on, off = seen_gap(world, pairs, self_bias=bias), seen_gap(world, pairs, self_bias=0.0)
        assert [a - b for a, b in zip(on, off)] == pytest.approx([bias] * len(pairs))
    # the raters' gold prefers neither; the judge, at its defaults, prefers its own phrasing
    judged = [v.p_a for v in verdicts(world, pairs)]
    assert sum(p > 0.5 for p in judged) / len(judged) > 0.8


def test_overconfidence_pushes_probabilities_toward_0_and_1(world):
    pairs = capital_pairs(world, "The capital of {c} is {v}.", "What a great question! The capital of {c} is {v}.")
    calibrated = [logit(v.p_a) for v in verdicts(world, pairs, overconfidence=1.0, **EXACT)]
    sure = [logit(v.p_a) for v in verdicts(world, pairs, overconfidence=3.0, **EXACT)]
    assert sure == pytest.approx([3 * x for x in calibrated])
    assert all(x > 0 for x in calibrated)  # flattery costs gold: the plain answer wins


def world_queue(world: World, n: int, seed: int) -> list[Comparison]:
    """n pairs on train prompts of every category, each response good or bad content with random decorations (the
    styles a collected queue holds)."""
    rng, out = random.Random(seed), []
    while len(out) < n:
        q = world.query(["fact", "false_premise", "harmful", "benign", "unanswerable"][len(out) % 5], "sft", rng)

        def response():
            kind = GOOD_CONTENT[q.category] if rng.random() < 0.5 else BAD_CONTENT[q.category]
            return decorate(content(q, kind, rng, world.knowledge), rng, flatter=rng.random() < 0.25,
                            hedge=rng.random() < 0.25, pad=rng.choice([0, 0, 1, 2]))

        a, b = response(), response()
        if a.strip() != b.strip():
            out.append(Comparison(q.text, a, b))
    return out


def calibration_gap(world, pairs, **settings) -> float:
    """Mean confidence - agreement with gold over the pairs gold decides."""
    decided = [(p, world.judge(p.prompt, p.response_a).reward - world.judge(p.prompt, p.response_b).reward)
               for p in pairs]
    decided = [(p, d) for p, d in decided if abs(d) > 1e-9]
    vs = verdicts(world, [p for p, _ in decided], **settings)
    hits = [float((v.p_a > 0.5) == (d > 0)) if v.p_a != 0.5 else 0.5 for v, (_, d) in zip(vs, decided)]
    return sum(v.confidence for v in vs) / len(vs) - sum(hits) / len(hits)


def test_the_default_judge_is_overconfident_and_more_so_with_the_setting(world):
    pairs = world_queue(world, 400, seed=3)
    gaps = [calibration_gap(world, pairs, overconfidence=k) for k in (1.0, 2.0, 4.0)]
    assert gaps[0] < gaps[1] < gaps[2] and gaps[1] > 0.02  # the default (2) is more sure than right


def test_knowledge_of_facts_better_than_a_raters_but_not_perfect(world):
    """One pair per fact (the true capital / language / currency against another's): where it knows the fact it is
    sure of the truth, where not it cannot tell. The share of confident right answers measures `knowledge`."""
    k = world.knowledge
    templates = {"capital": ("What is the capital of {c}?", "The capital of {c} is {v}."),
                 "language": ("What language do people speak in {c}?", "People in {c} speak {v}."),
                 "currency": ("What currency does {c} use?", "The currency of {c} is the {v}.")}
    pairs = []
    for i, c in enumerate(k.countries):
        for attribute, (question, answer) in templates.items():
            wrong = next(v for v in k.values(attribute)[i + 1:] + k.values(attribute) if v != c.fact(attribute))
            pairs.append(Comparison(question.format(c=c.name), answer.format(c=c.name, v=c.fact(attribute)),
                                    answer.format(c=c.name, v=wrong)))
    assert len(pairs) == 120
    for knowledge in (0.9, 0.5):
        sure = [v.p_a > 0.75 for v in verdicts(world, pairs, knowledge=knowledge)]
        assert sum(sure) / len(sure) == pytest.approx(knowledge, abs=0.08)
    judged = verdicts(world, pairs)
    judge_right = sum(v.p_a > 0.5 for v in judged) / len(judged)
    ratings = label(pairs, k, RaterPoolConfig(n_raters=10, overlap=3))
    decided = [r for r in ratings if r.choice != "tie"]
    raters_right = sum(r.choice == "A" for r in decided) / len(decided)
    assert raters_right < judge_right < 1.0


def test_the_judge_is_seeded_and_order_free(world):
    pairs = world_queue(world, 40, seed=1)
    one = [v.p_a for v in verdicts(world, pairs)]
    assert one == [v.p_a for v in verdicts(world, pairs[::-1])][::-1]
    assert one != [v.p_a for v in verdicts(world, pairs, seed=1)]


def test_config_errors():
    from tether.config import config_from_dict
    from tether.errors import ConfigError

    with pytest.raises(ConfigError, match="SimJudgeConfig.position_bias: must be in"):
        config_from_dict(SimJudgeConfig, {"position_bias": 1.5})
    with pytest.raises(ConfigError, match="SimJudgeConfig.overconfidence: must be > 0"):
        config_from_dict(SimJudgeConfig, {"overconfidence": 0})


def test_tether_judge_simulated_on_a_world_queue(world_dir, tmp_path):
    """The stage on a 150-pair queue of the test world, with the simulated raters' labels as the reference: the
    report's figures equal those recomputed from the labels written."""
    from tether.world.build import load_world

    w = load_world(world_dir)
    queue = world_queue(w, 150, seed=0)
    write_comparisons(tmp_path / "queue.jsonl", queue)
    write_comparisons(tmp_path / "ratings.jsonl", label(queue, w.knowledge, RaterPoolConfig(n_raters=6, overlap=3)))
    assert main(["judge", "simulated=true", f"world={world_dir}", f"queue={tmp_path / 'queue.jsonl'}",
                 f"reference={tmp_path / 'ratings.jsonl'}", "principles=ensemble", f"out={tmp_path / 'j'}"]) == 0
    labels = read_comparisons(tmp_path / "j/comparisons.jsonl")
    report = json.loads((tmp_path / "j/judge_report.json").read_text())
    assert len(labels) == report["n"] == 150 and {c.rater for c in labels} == {"judge:world-sim"}
    assert all(len(c.meta["principles"]) == 6 for c in labels)
    assert report["inconsistency_rate"] == pytest.approx(sum(c.meta["inconsistent"] for c in labels) / 150)
    gold = {c.id: w.judge(c.prompt, c.response_a).reward - w.judge(c.prompt, c.response_b).reward for c in labels}
    decided = [c for c in labels if abs(gold[c.id]) > 1e-9]
    hits = [0.5 if c.choice == "tie" else float((c.choice == "A") == (gold[c.id] > 0)) for c in decided]
    assert report["gold"]["pairs"] == len(decided)
    assert report["gold"]["agreement"] == pytest.approx(sum(hits) / len(hits))
    assert report["gold"]["agreement"] > 0.75 and report["reference"]["pairs_rated"] == 150
    assert 0.5 < report["reference"]["majority_agreement"] < 1 and report["reference"]["judge_as_rater"] > 0.5
    assert report["cost"] == {"judge_usd": pytest.approx(150 * 0.05), "one_person_per_pair_usd": pytest.approx(75.0)}
    assert report["backend"]["kind"] == "simulated" and report["principles_mode"] == "ensemble"
    print("\nsimulated judge on 150 test-world pairs:", json.dumps({k: report[k] for k in (
        "inconsistency_rate", "first_position_rate", "mean_confidence", "gold", "reference")}, indent=1))


def test_sim_config_is_a_plain_dataclass():
    assert dataclasses.is_dataclass(SimJudgeConfig) and SimJudgeConfig().position_bias == 0.6


def test_a_prompt_the_world_does_not_know_is_named_in_one_line(world_dir, tmp_path, capsys):
    from tether.cli import main
    from tether.data.preferences import Comparison, write_comparisons

    queue = tmp_path / "queue.jsonl"
    write_comparisons(queue, [Comparison("okay some of these do not belong to any world", "a", "b")])
    assert main(["judge", "simulated=true", f"world={world_dir}", f"queue={queue}", f"out={tmp_path / 'j'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {queue}: pair 1 (in the order read): prompt 'okay some of these") and \
        "simulated=true judges the world's prompts only" in err[-1]
    assert main(["label", f"world={world_dir}", f"queue={queue}", f"out={tmp_path / 'l'}", "app=false"]) == 2
    assert "the simulated raters rate the world's prompts only" in capsys.readouterr().err
