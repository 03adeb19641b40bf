"""Hybrid labelling: routing a judge's unsure pairs to people (tether.judge.routing), `tether hybrid`, and the judge
scored beside people on the rater app's dashboard."""
from __future__ import annotations

import json
import math
import random

import pytest

from tether.cli import main
from tether.data.preferences import Comparison, read_comparisons, write_comparisons
from tether.judge.routing import merge, people_queue_row, route, threshold_for_budget, unsure


def judged(prompt: str, p_a: float, inconsistent: bool = False, a: str = "a", b: str = "b") -> Comparison:
    """A label as `tether judge` writes it (confidence = max(p_a, 1 - p_a))."""
    choice = "A" if p_a > 0.55 else "B" if p_a < 0.45 else "tie"
    return Comparison(prompt, a, b, choice, rater="judge:sim", guideline_version="1", source_a="sft", source_b="base",
                      meta={"round": 1, "principles": ["helpful"], "p_a": p_a, "confidence": max(p_a, 1 - p_a),
                            "orders": {"ab": p_a, "ba": 1 - p_a}, "inconsistent": inconsistent})


def test_unsure_at_the_threshold():
    assert unsure(0.79, False, 0.8) and not unsure(0.8, False, 0.8)  # strictly under the threshold
    assert unsure(0.99, True, 0.8)  # the two orders disagree: to people however sure
    assert not unsure(0.5, False, 0.5)  # threshold 0.5 routes only inconsistent pairs
    assert unsure(0.999, False, 1.0)


def test_route_by_hand():
    labels = [judged("q0", 0.55), judged("q1", 0.3), judged("q2", 0.9), judged("q3", 0.95, inconsistent=True),
              judged("q4", 0.6), judged("q5", 0.2)]
    # confidences 0.55 0.7 0.9 0.95 0.6 0.8; under 0.7: q0 (0.55), q4 (0.6); q3 inconsistent
    r = route(labels, 0.7)
    assert [c.prompt for c in r.people] == ["q0", "q3", "q4"]
    assert [c.prompt for c in r.ai] == ["q1", "q2", "q5"]
    assert (r.inconsistent, r.low_confidence, len(r.audit), r.threshold) == (1, 2, 0, 0.7)
    assert [c.prompt for c in route(labels, 0.5).people] == ["q3"]
    assert len(route(labels, 1.0).people) == 6


def test_threshold_for_budget_by_hand():
    # 10 pairs, q9 inconsistent; consistent confidences sorted: 0.55 0.6 0.65 0.7 0.75 0.8 0.85 0.9 0.95
    labels = [judged(f"q{i}", 0.5 + 0.05 * (i + 1)) for i in range(9)] + [judged("q9", 0.99, inconsistent=True)]
    # budget 0.4: floor(4) - 1 inconsistent = 3 low-confidence routes allowed -> threshold = 4th lowest = 0.7
    assert threshold_for_budget(labels, 0.4) == pytest.approx(0.7)
    assert len(route(labels, threshold_for_budget(labels, 0.4)).people) == 4
    # budget 0.05: floor(0.5) = 0 allowed, the inconsistent pair alone exceeds it -> 0.5 (only it routed)
    assert threshold_for_budget(labels, 0.05) == 0.5 and len(route(labels, 0.5).people) == 1
    # budget 1: everything, the threshold just above the highest confidence
    assert len(route(labels, threshold_for_budget(labels, 1.0)).people) == 10
    assert threshold_for_budget(labels, 0.0) == 0.5


def test_threshold_for_budget_is_the_highest_within_budget():
    """Against brute force over every candidate threshold, with ties among the confidences."""
    rng = random.Random(0)
    for trial in range(200):
        n = rng.randint(1, 30)
        labels = [judged(f"q{i}", rng.choice([0.5, 0.6, 0.6, 0.7, 0.8, 0.8, 0.9, 1.0]), rng.random() < 0.15)
                  for i in range(n)]
        budget = rng.random()
        t = threshold_for_budget(labels, budget)
        limit = math.floor(budget * n + 1e-9)
        inconsistent = sum(c.meta["inconsistent"] for c in labels)
        routed = len(route(labels, t).people)
        candidates = [0.5] + [c.meta["confidence"] for c in labels] + [1.0 + 1e-9]
        feasible = [c for c in candidates if len(route(labels, c).people) <= limit]
        if inconsistent > limit:
            assert t == 0.5 and routed == inconsistent, trial
        else:
            assert routed <= limit and len(route(labels, max(feasible)).people) == routed, trial


def test_the_audit_draw_is_per_pair_and_seeded():
    labels = [judged(f"q{i}", 0.9) for i in range(400)]
    audited = {c.id for c in route(labels, 0.8, audit=0.25, seed=3).people}
    shuffled = random.Random(1).sample(labels, len(labels))
    assert {c.id for c in route(shuffled, 0.8, audit=0.25, seed=3).people} == audited
    assert {c.id for c in route(labels, 0.8, audit=0.25, seed=4).people} != audited
    assert 70 <= len(audited) <= 130  # about a quarter of 400 (binomial sd 8.7)
    r = route(labels, 0.8, audit=0.25, seed=3)
    assert r.unsure == [] and r.audit == r.people and len(r.ai) == 400  # audited pairs keep their AI label too
    assert route(labels, 0.8, audit=0.0).people == [] and len(route(labels, 0.8, audit=1.0).people) == 400


def test_a_people_queue_row_is_unlabelled_and_carries_the_verdict():
    row = people_queue_row(judged("q", 0.3, inconsistent=True))
    assert (row.choice, row.rater, row.strength, row.guideline_version) == (None, None, None, None)
    assert row.id == judged("q", 0.3).id and (row.source_a, row.source_b) == ("sft", "base")
    assert row.meta == {"round": 1, "judge": {"rater": "judge:sim", "choice": "B", "p_a": 0.3, "confidence": 0.7,
                                              "inconsistent": True, "guideline_version": "1"}}


def test_merge_keeps_provenance_and_soft_targets():
    ai = [judged("q0", 0.9), judged("q1", 0.2), judged("q2", 0.8)]
    people = [Comparison("q1", "a", "b", "A", rater="ann", meta={"judge": {"choice": "B"}, "left_shown": "A"}),
              Comparison("q1", "b", "a", "tie", rater="bob"),  # the other response order: kept as rated
              Comparison("q3", "a", "b", None, rater="cat"),  # unrated (skipped): left out
              Comparison("q3", "a", "b", "B", rater="cat")]
    rows = merge(ai, people)
    assert [(r.prompt, r.rater, r.choice, r.meta["label_source"]) for r in rows] == [
        ("q1", "ann", "A", "people"), ("q1", "bob", "tie", "people"), ("q3", "cat", "B", "people"),
        ("q0", "judge:sim", "A", "judge"), ("q2", "judge:sim", "A", "judge")]
    assert [r.meta["p_a"] for r in rows] == [1.0, 0.5, 0.0, 0.9, 0.8]
    assert rows[0].meta == {"left_shown": "A", "p_a": 1.0, "label_source": "people"}  # the verdict is not a label
    assert rows[1].response_a == "b"


def test_config_errors_name_the_setting(tmp_path, capsys):
    write_comparisons(tmp_path / "j.jsonl", [judged("q", 0.9)])
    assert main(["hybrid", f"judged={tmp_path / 'j.jsonl'}", "budget=null", f"out={tmp_path}"]) == 2
    assert "HybridConfig.budget: give threshold=CONFIDENCE or budget=SHARE (both are null)" in capsys.readouterr().err
    assert main(["hybrid", f"judged={tmp_path / 'j.jsonl'}", "threshold=0.4", f"out={tmp_path}"]) == 2
    assert "HybridConfig.threshold: must be in [0.5, 1]" in capsys.readouterr().err
    assert main(["hybrid", f"judged={tmp_path / 'j.jsonl'}", "threshold=0.95", f"out={tmp_path}"]) == 0  # wins
    assert json.loads((tmp_path / "hybrid_report.json").read_text())["routing"]["routed"] == 1  # 0.9 < 0.95
    assert main(["hybrid", f"judged={tmp_path / 'j.jsonl'}", "budget=1.5", f"out={tmp_path}"]) == 2
    assert "HybridConfig.budget: must be in [0, 1]" in capsys.readouterr().err
    write_comparisons(tmp_path / "q.jsonl", [Comparison("q", "a", "b", "A")])
    assert main(["hybrid", f"judged={tmp_path / 'q.jsonl'}", f"out={tmp_path}"]) == 2
    assert f"{tmp_path / 'q.jsonl'}:1: meta.p_a: missing" in capsys.readouterr().err


def test_the_stage_routes_then_merges_simulated_people(world_dir, tmp_path):
    """judge -> hybrid (route) -> simulated people on the routed queue only -> hybrid (merge) -> one file."""
    from tether.world.build import load_world
    from tether.world.styles import BAD_CONTENT, GOOD_CONTENT, content

    world, rng = load_world(world_dir), random.Random(0)
    queue = []
    for i in range(30):
        q = world.query(["fact", "harmful", "benign"][i % 3], "sft", rng)
        good, bad = (content(q, GOOD_CONTENT[q.category], rng, world.knowledge),
                     content(q, BAD_CONTENT[q.category], rng, world.knowledge))
        queue.append(Comparison(q.text, *((good, bad) if i % 2 else (bad, good))))
    write_comparisons(tmp_path / "queue.jsonl", queue)
    assert main(["judge", "simulated=true", f"world={world_dir}", f"queue={tmp_path / 'queue.jsonl'}",
                 f"out={tmp_path / 'judge'}"]) == 0
    settings = [f"judged={tmp_path / 'judge/comparisons.jsonl'}", "budget=0.4", "audit=0.3",
                f"out={tmp_path / 'hybrid'}"]
    assert main(["hybrid", *settings]) == 0
    routed, kept = (read_comparisons(tmp_path / f"hybrid/{f}.jsonl") for f in ("people_queue", "ai_labels"))
    audited = {c.id for c in routed} & {c.id for c in kept}  # confident pairs people also rate
    assert 1 <= len(routed) - len(audited) <= 12 and len(routed) - len(audited) + len(kept) == 30 and audited
    assert all(c.choice is None and c.meta["judge"]["rater"] == "judge:world-sim" for c in routed)
    assert main(["label", f"queue={tmp_path / 'hybrid/people_queue.jsonl'}", f"world={world_dir}", "app=false",
                 f"out={tmp_path / 'people'}"]) == 0
    assert main(["hybrid", *settings, f"people={tmp_path / 'people/comparisons.jsonl'}", f"world={world_dir}"]) == 0
    merged = read_comparisons(tmp_path / "hybrid/comparisons.jsonl")
    report = json.loads((tmp_path / "hybrid/hybrid_report.json").read_text())
    people = [c for c in merged if c.meta["label_source"] == "people"]
    assert len(people) == 3 * len(routed) and {c.id for c in people} == {c.id for c in routed}
    assert all(not c.rater.startswith("judge:") for c in people)
    assert [c.id for c in merged if c.meta["label_source"] == "judge"] == [c.id for c in kept if c.id not in audited]
    assert all(c.rater == "judge:world-sim" for c in merged if c.meta["label_source"] == "judge")
    assert report["routing"]["routed"] == len(routed) and report["people"]["human_ratings"] == 3 * len(routed)
    assert report["routing"]["audited"] == len(audited) and report["people"]["routed_unrated"] == 0
    assert report["people"]["judge_vs_people_routed"]["pairs_rated"] == len(routed) - len(audited)
    assert report["people"]["judge_vs_people_audited"]["pairs_rated"] == len(audited)
    gold = report["gold"]
    assert gold["judge"]["pairs"] + gold["people"]["pairs"] == gold["all"]["pairs"]
    assert gold["judge_on_people_pairs"]["pairs"] == gold["people"]["pairs"]  # the same pairs, gold ties skipped



def test_a_budget_the_inconsistent_pairs_alone_exceed_is_said(tmp_path, capsys):
    labels = [judged(f"q{i}", 0.9, inconsistent=i < 3) for i in range(5)]  # 3 of 5 disagree; budget 0.4 allows 2
    write_comparisons(tmp_path / "judged.jsonl", labels)
    assert main(["hybrid", f"judged={tmp_path / 'judged.jsonl'}", "budget=0.4", f"out={tmp_path / 'out'}"]) == 0
    said = capsys.readouterr().err.replace("\n", "")
    assert "hybrid: 3 of 5 pairs to people" in said and "over budget=0.4: the 3 pairs whose orders disagree" in said
    report = json.loads((tmp_path / "out/hybrid_report.json").read_text())
    assert report["routing"]["routed"] == 3 and report["routing"]["over_budget"] is True
