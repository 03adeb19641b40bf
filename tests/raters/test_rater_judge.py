"""The rater app's dashboard scores an AI judge (the verdicts `tether hybrid` puts on the queue it routes to people)
as one more rater beside the people."""
from __future__ import annotations

import re

import httpx
from raterkit import PASSWORD

from tether.data.preferences import Comparison, write_comparisons
from tether.judge.routing import people_queue_row
from tether.raters.stats import JudgeStats, as_json, dashboard, judge_stats


def judged(prompt: str, p_a: float, a: str, b: str) -> Comparison:
    return Comparison(prompt, a, b, "A" if p_a > 0.5 else "B", rater="judge:sim", guideline_version="1",
                      meta={"p_a": p_a, "confidence": max(p_a, 1 - p_a), "inconsistent": False})


def test_the_dashboard_scores_the_judge_beside_the_raters(live, tmp_path):
    # by hand: pair p1 people A, A, B + judge A (people's majority A: hit); p2 people B, B + judge A (miss);
    # p3 people A, B (split: not scored); p4 not rated by people (not counted)
    labels = {"p1": {"r1": "A", "r2": "A", "r3": "B"}, "p2": {"r1": "B", "r2": "B"}, "p3": {"r1": "A", "r2": "B"}}
    verdicts = {p: {"rater": "judge:sim", "choice": "A"} for p in ("p1", "p2", "p3", "p4")}
    assert judge_stats(labels, verdicts) == [JudgeStats("judge:sim", 3, 0.5)]
    assert judge_stats(labels, {}) == []

    project = live.project
    project.service.configure(2, 0.0)
    rows = [people_queue_row(judged(f"Question {i}?", p, f"x{i}", f"y{i}")) for i, p in enumerate((0.9, 0.8))]
    write_comparisons(tmp_path / "queue.jsonl", rows)
    project.service.import_queue(tmp_path / "queue.jsonl")
    for name, picks in (("ann", "AB"), ("bob", "AA")):
        user = project.rater(name)
        for _ in range(2):
            task = project.service.next_assignment(user)
            pair = next(r for r in rows if r.response_a in (task.left, task.right))
            a_side = "left" if task.left == pair.response_a else "right"
            b_side = "right" if a_side == "left" else "left"
            side = a_side if picks[rows.index(pair)] == "A" else b_side
            project.service.submit_rating(user, task.assignment_id, side,
                                          submission_id=f"{name}-{task.assignment_id:04d}")
    d = dashboard(project.db)
    # pair 0: ann A, bob A, judge A (hit); pair 1: ann B, bob A (split: not scored)
    assert d.judges == [JudgeStats("judge:sim", 2, 1.0)]
    assert as_json(d)["judges"] == [{"name": "judge:sim", "pairs": 2, "majority_agreement": 1.0}]
    # the admin page shows the judge as a row of the raters' table
    project.accounts.accept_invite(project.accounts.invite("boss", "admin"), PASSWORD)
    page = httpx.Client(base_url=live.url, timeout=30)
    pre = re.search(r'name="pre_token" value="([^"]+)"', page.get("/login").text).group(1)
    assert page.post("/login", data={"username": "boss", "password": PASSWORD, "pre_token": pre}).status_code == 303
    html = page.get("/admin").text
    assert '<td>judge:sim <span class="tag">AI judge</span></td><td>2</td>' in html and "<td>100% (n = 2)</td><td></td></tr>" in html
