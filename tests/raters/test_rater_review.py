"""Admin review tools: rater table (sort, filter, flags), ratings browser, disagreement queue, export download,
queue upload, sample sizes beside the figures (pages and JSON API)."""
from __future__ import annotations

import json
from datetime import timedelta

from raterkit import PASSWORD, api_login, make_queue
from sqlalchemy import select, update
from test_rater_http import browser_login, form_token

from tether.raters.db import Assignment, Pair, Rating
from tether.raters.stats import dashboard, rater_table


def setup(live, raters=("alice", "bob", "carol")):
    p = live.project
    p.accounts.accept_invite(p.accounts.invite("boss", "admin"), PASSWORD)
    ids = {name: p.rater(name, PASSWORD) for name in raters}
    return p, ids


def vote(p, uid: int, seen: str, tag: str, rationale: str | None = None, stored: str | None = None) -> int:
    """Rate the rater's next pair: `seen` as shown, or the side that is stored as `stored` (A or B)."""
    task = p.service.next_assignment(uid)
    if stored is not None:
        with p.db.read() as s:
            left_is_a = s.get(Assignment, task.assignment_id).left_is_a
        seen = "left" if (stored == "A") == left_is_a else "right"
    p.service.submit_rating(uid, task.assignment_id, seen, rationale=rationale, submission_id=f"{tag}-{uid:04d}-x")
    return task.assignment_id


def test_rater_flags_sorting_and_filters(project):
    project.service.add_pairs(make_queue(6))
    fast, slow = project.rater("fast"), project.rater("slow")
    for n in range(5):
        vote(project, fast, "left", f"f{n}")
        vote(project, slow, "left", f"s{n}")
    with project.db.write() as s:  # slow took a minute per pair, fast one second
        for a in s.scalars(select(Assignment)):
            r = s.scalar(select(Rating).where(Rating.assignment_id == a.id))
            r.submitted_at = a.shown_at + timedelta(seconds=1 if a.rater_id == fast else 60)
    d = dashboard(project.db)
    flags = {r.username: r.flags for r in d.raters}
    assert flags == {"fast": ["very fast"], "slow": []}
    assert [r.username for r in rater_table(d, "median_seconds", descending=True)] == ["slow", "fast"]
    assert [r.username for r in rater_table(d, flagged=True)] == ["fast"]
    assert [r.username for r in rater_table(d, q="SLO")] == ["slow"]
    assert d.timed == 10 and d.pairable == 5 and [r.shared for r in d.raters] == [5, 5]


def test_low_gold_accuracy_is_flagged(project):
    from tether.data.preferences import Comparison

    project.service.configure(gold_rate=0.5)
    gold = [Comparison(f"Gold {i}?", f"right {i}", f"wrong {i}", choice="A") for i in range(4)]
    project.service.add_pairs(gold, gold=True)
    project.service.add_pairs(make_queue(4))
    uid = project.rater("sloppy")
    for n in range(8):
        task = project.service.next_assignment(uid)
        with project.db.read() as s:
            pair = s.get(Pair, s.get(Assignment, task.assignment_id).pair_id)
            wrong_side = "right" if s.get(Assignment, task.assignment_id).left_is_a else "left"
        project.service.submit_rating(uid, task.assignment_id, wrong_side if pair.is_gold else "tie",
                                      submission_id=f"gold-{n:05d}")
    [r] = dashboard(project.db).raters
    assert (r.gold_seen, r.gold_correct, r.flags[0]) == (4, 0, "low gold accuracy")  # (and "very fast": a test)


def test_the_dashboard_table_sorts_filters_and_shows_sample_sizes(live):
    p, ids = setup(live)
    p.service.add_pairs(make_queue(2))
    for name in ("alice", "bob"):
        vote(p, ids[name], "left", "d")
    page = browser_login(live.url, "boss")
    html = page.get("/admin?sort=ratings&desc=1").text
    assert "n = 2 ratings" not in html and "median time per rating (n = 2)" in html
    assert "(n = 1)" in html  # beside each rater's figures
    rows = html[html.index('id="raters"'):]
    assert rows.index("alice") < rows.index("carol") and "Ratings ▼" in rows
    only = page.get("/admin?q=car").text
    only = only[only.index('id="raters"'):only.index("</table>", only.index('id="raters"'))]
    assert "carol" in only and "alice" not in only


def test_ratings_browser_searches_and_filters(live):
    p, ids = setup(live)
    p.service.add_pairs(make_queue(3))
    vote(p, ids["alice"], "left", "b1", rationale="the capital is wrong on the right")
    vote(p, ids["bob"], "tie", "b2")
    page = browser_login(live.url, "boss")
    html = page.get("/admin/ratings", params={"q": "capital is wrong"}).text
    assert "1 matching" in html and "the capital is wrong on the right" in html
    assert "2 matching" in page.get("/admin/ratings").text
    boss = api_login(live.url, "boss")
    r = boss.get("/api/admin/ratings", params={"rater": "bob"}).json()
    assert r["total"] == 1 and r["ratings"][0]["choice"] == "tie" and r["ratings"][0]["rater"] == "bob"
    assert boss.get("/api/admin/ratings", params={"q": "100%_"}).json()["total"] == 0  # LIKE wildcards are text
    assert boss.get("/api/admin/ratings", params={"choice": "X"}).status_code == 422
    for bad in ({"q": "a\x00b"}, {"rater": "bo\x00b"}):  # a NUL was a 500 on PostgreSQL (schemathesis found it)
        r = boss.get("/api/admin/ratings", params=bad)
        assert r.status_code == 422 and next(iter(bad)) in r.text, r.text
    assert api_login(live.url, "alice").get("/api/admin/ratings").status_code == 403


def test_the_disagreement_queue_adjudicates_and_promotes_to_gold(live):
    p, ids = setup(live)
    p.service.add_pairs(make_queue(2))
    vote(p, ids["alice"], "", "q1", rationale="left is right", stored="A")
    vote(p, ids["bob"], "", "q2", rationale="right is right", stored="B")
    vote(p, ids["carol"], "", "q3", stored="A")
    choices = ["A", "A", "B"]  # a split pair
    boss = api_login(live.url, "boss")
    [d] = boss.get("/api/admin/disagreements").json()
    assert sorted(v["choice"] for v in d["votes"]) == choices and sum(d["split"].values()) == 3
    assert {v["rationale"] for v in d["votes"]} == {"left is right", "right is right", None}
    page = browser_login(live.url, "boss")
    html = page.get("/admin/disagreements").text
    assert "left is right" in html and f'id="pair-{d["pair_id"]}"' in html
    r = page.post(f"/admin/pairs/{d['pair_id']}/adjudicate", data={"csrf_token": form_token(html, "csrf_token"),
                                                                   "choice": "A", "gold": "true"})
    assert r.status_code == 303 and "now a gold pair" in page.get(r.headers["location"]).text
    with p.db.read() as s:
        pair = s.get(Pair, d["pair_id"])
        assert (pair.adjudication, pair.is_gold, pair.gold_choice) == ("A", True, "A")
    # The votes cast before the promotion stay preference labels: exported, never scored as gold answers (bob's
    # "B" would otherwise count as a wrong gold answer after the fact).
    assert sorted(c.choice for c in p.service.labelled() if c.meta.get("adjudication") == "A") == choices
    assert dashboard(p.db).gold_seen == 0
    with p.db.write() as s:  # a vote after the promotion is a gold check: scored, not exported
        last = max(s.scalars(select(Rating.id)))  # carol's "A"
        s.execute(update(Rating).where(Rating.id == last).values(submitted_at=pair_time(s, d["pair_id"])))
    stats = {r.username: r for r in dashboard(p.db).raters}
    assert (stats["carol"].gold_seen, stats["carol"].gold_correct) == (1, 1) and dashboard(p.db).gold_seen == 1
    assert sorted(c.choice for c in p.service.labelled() if c.meta.get("adjudication") == "A") == ["A", "B"]
    assert boss.get("/api/admin/disagreements").json() == []
    assert len(boss.get("/api/admin/disagreements", params={"settled": "true"}).json()) == 1
    assert boss.post("/api/admin/pairs/999/adjudicate", json={"choice": "B"}).status_code == 404
    assert boss.post(f"/api/admin/pairs/{d['pair_id']}/adjudicate", json={"choice": "tie"}).status_code == 204
    with p.db.write() as s:  # back to a regular pair: its export carries the verdict
        s.execute(update(Pair).values(is_gold=False))
    assert {c.meta.get("adjudication") for c in p.service.labelled()} == {"tie"}


def pair_time(s, pair_id: int):
    """Just after the pair's promotion to gold."""
    from tether.raters.db import promoted_at

    return promoted_at(s.get(Pair, pair_id).meta) + timedelta(seconds=1)


def test_exports_download_and_queues_upload_from_the_browser(live, tmp_path):
    p, ids = setup(live, ("alice",))
    p.service.add_pairs(make_queue(1))
    vote(p, ids["alice"], "left", "e1")
    page = browser_login(live.url, "boss")
    csrf = form_token(page.get("/admin").text, "csrf_token")
    page.post("/admin/export", data={"csrf_token": csrf, "name": "round1.jsonl", "format": "tether"})
    html = page.get("/admin").text
    assert 'href="/admin/exports/round1.jsonl"' in html
    got = page.get("/admin/exports/round1.jsonl")
    assert got.status_code == 200 and "attachment" in got.headers["content-disposition"]
    assert json.loads(got.text.splitlines()[0])["rater"] == "alice"
    assert page.get("/admin/exports/..%2Fsecret.key").status_code in (404, 422)
    assert page.get("/admin/exports/nope.jsonl").status_code == 404
    alice = browser_login(live.url, "alice")
    assert alice.get("/admin/exports/round1.jsonl").status_code == 403
    boss = api_login(live.url, "boss")
    assert boss.get("/api/admin/exports/round1.jsonl").content == got.content
    # upload a queue: a good file, then one with a bad line (named by the upload's name)
    rows = [json.dumps({"prompt": f"New {i}?", "response_a": "a", "response_b": "b"}) for i in range(3)]
    r = page.post("/admin/import", data={"csrf_token": csrf}, files={"file": ("round2.jsonl", "\n".join(rows).encode())})
    assert r.status_code == 200 and "Imported 3 pairs from round2.jsonl" in r.text
    bad = rows + ['{"prompt": "x", "response_a": "same", "response_b": "same"}']
    r = page.post("/admin/import", data={"csrf_token": csrf}, files={"file": ("round3.jsonl", "\n".join(bad).encode())})
    assert r.status_code == 422 and "round3.jsonl:4: response_b: identical to response_a" in r.text
    r = boss.post("/api/admin/import", json={"jsonl": "\n".join(bad), "name": "api.jsonl"})
    assert r.status_code == 422 and r.json()["detail"].startswith("api.jsonl:4: response_b")
    r = boss.post("/api/admin/import", json={"jsonl": rows[0] + "\n" + json.dumps({"prompt": "p9", "response_a": "x",
                                                                                   "response_b": "y"})})
    assert r.status_code == 201 and r.json() == {"added": 1, "skipped": 1}
    assert not list(p.dir.glob(".upload-*"))  # the temporary files are gone
