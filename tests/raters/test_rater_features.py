"""Rater features: undo, progress, per-criterion questions, skip reasons (service, JSON API and pages)."""
from __future__ import annotations

from datetime import timedelta

import pytest
from raterkit import PASSWORD, api_login, make_queue
from sqlalchemy import func, select, update
from test_rater_http import browser_login, form_token

from tether.raters.db import Assignment, Pair, Rating
from tether.raters.errors import Conflict, Invalid, NotFound
from tether.raters.ratings import UNDO_WINDOW


def rate(project, uid: int, choice: str = "left", n: int = 0, **extra):
    task = project.service.next_assignment(uid)
    project.service.submit_rating(uid, task.assignment_id, choice, submission_id=f"sub-{uid}-{n:06d}", **extra)
    return task


def test_undo_reopens_the_last_rating_which_comes_back_first(project):
    project.service.add_pairs(make_queue(3))
    uid = project.rater("alice")
    with pytest.raises(NotFound, match="no rating to undo"):
        project.service.undo_last(uid)
    first = rate(project, uid, "left", 1)
    second = project.service.next_assignment(uid)  # shown, not rated yet
    assert project.service.undo_last(uid) == first.assignment_id
    with project.db.read() as s:
        assert s.scalar(select(func.count()).select_from(Rating)) == 0
        assert s.get(Assignment, first.assignment_id).state == "open"
        assert s.get(Pair, 1).held == 1  # the slot stayed with the rater
    again = project.service.next_assignment(uid)
    assert again.assignment_id == first.assignment_id  # the undone pair first, then the one already shown
    project.service.submit_rating(uid, again.assignment_id, "right", submission_id="sub-re-rated")
    assert project.service.next_assignment(uid).assignment_id == second.assignment_id
    with project.db.read() as s:
        right = "B" if s.get(Assignment, first.assignment_id).left_is_a else "A"
        assert s.scalars(select(Rating.choice)).all() == [right]  # the re-rating replaced the undone one


def test_undo_has_a_window_and_a_skip_needs_its_slot_back(project, monkeypatch):
    import tether.raters.ratings as ratings_module

    project.service.add_pairs(make_queue(1))
    project.service.configure(overlap=1)
    alice, bob = project.rater("alice"), project.rater("bob")
    rate(project, alice, "skip", 1, skip_reason="unsafe")
    with project.db.read() as s:
        assert s.scalar(select(Rating.skip_reason)) == "unsafe" and s.get(Pair, 1).held == 0
    project.service.undo_last(alice)  # the slot is free: taken again
    with project.db.read() as s:
        assert s.get(Pair, 1).held == 1 and s.scalar(select(Assignment.slot)) == 0
    rate(project, alice, "skip", 2)
    rate(project, bob, "left", 3)  # bob fills the only slot
    with pytest.raises(Conflict, match="gone to other raters"):
        project.service.undo_last(alice)
    with project.db.write() as s:  # bob's rating grows old
        s.execute(update(Rating).where(Rating.choice != "skip").values(
            submitted_at=ratings_module.utcnow() - UNDO_WINDOW - timedelta(seconds=1)))
    with pytest.raises(Conflict, match="older than 10 minutes"):
        project.service.undo_last(bob)


def test_progress_counts_today_total_target_and_what_is_left(project):
    project.service.add_pairs(make_queue(5))
    project.service.configure(daily_target=40)
    uid = project.rater("alice")
    p = project.service.progress(uid)
    assert (p.today, p.total, p.target, p.remaining, p.can_undo) == (0, 0, 40, 5, False)
    rate(project, uid, "left", 1)
    rate(project, uid, "skip", 2)  # a skip is no rating and the pair is no longer open to her
    project.service.next_assignment(uid)  # one held
    p = project.service.progress(uid)
    assert (p.today, p.total, p.target, p.remaining, p.can_undo) == (1, 1, 40, 3, True)
    project.service.configure(daily_target=0)
    assert project.service.progress(uid).target is None


def test_per_criterion_verdicts_are_stored_as_a_b_and_exported(project):
    project.service.add_pairs(make_queue(1))
    project.service.configure(criteria=["helpful", "honest", "harmless"])
    uid = project.rater("alice")
    task = project.service.next_assignment(uid)
    with pytest.raises(Invalid, match="criteria.kind: not a criterion"):
        project.service.submit_rating(uid, task.assignment_id, "left", criteria={"kind": "left"}, submission_id="c-000001")
    with pytest.raises(Invalid, match="criteria.helpful: expected left, right or tie"):
        project.service.submit_rating(uid, task.assignment_id, "left", criteria={"helpful": "A"}, submission_id="c-000002")
    project.service.submit_rating(uid, task.assignment_id, "left", criteria={"helpful": "left", "harmless": "tie"},
                                  submission_id="c-000003")
    with project.db.read() as s:
        left = "A" if s.get(Assignment, task.assignment_id).left_is_a else "B"
        assert s.scalar(select(Rating.criteria)) == {"helpful": left, "harmless": "tie"}
    [row] = project.service.labelled()
    assert row.meta["criteria"] == {"helpful": left, "harmless": "tie"} and row.choice == left
    with pytest.raises(Invalid, match="criteria: 'Bad name'"):
        project.service.configure(criteria=["Bad name"])


def test_skip_reasons_are_checked(project):
    project.service.add_pairs(make_queue(1))
    uid = project.rater("alice")
    task = project.service.next_assignment(uid)
    for choice, reason in (("left", "broken"), ("skip", "boring")):
        with pytest.raises(Invalid, match="skip_reason"):
            project.service.submit_rating(uid, task.assignment_id, choice, skip_reason=reason, submission_id="s-000001")


def test_the_api_has_undo_progress_and_criteria(live):
    p = live.project
    p.rater("alice", PASSWORD)
    p.service.add_pairs(make_queue(2))
    p.service.configure(criteria=["helpful", "harmless"], daily_target=10)
    alice = api_login(live.url, "alice")
    task = alice.get("/api/next").json()["assignment"]
    assert task["criteria"] == ["helpful", "harmless"]
    body = {"assignment_id": task["assignment_id"], "choice": "right", "submission_id": "api-00001",
            "criteria": {"helpful": "right", "harmless": "tie"}}
    assert alice.post("/api/ratings", json=body).status_code == 201
    assert alice.get("/api/progress").json() == {"today": 1, "total": 1, "target": 10, "remaining": 1, "can_undo": True}
    r = alice.post("/api/ratings/undo")
    assert r.status_code == 200 and r.json() == {"assignment_id": task["assignment_id"]}
    assert alice.get("/api/next").json()["assignment"]["assignment_id"] == task["assignment_id"]
    bad = dict(body, criteria={"helpful": "A"}, submission_id="api-00002")
    assert alice.post("/api/ratings", json=bad).status_code == 422
    skip = {"assignment_id": task["assignment_id"], "choice": "skip", "skip_reason": "expertise", "submission_id": "api-00003"}
    assert alice.post("/api/ratings", json=skip).status_code == 201


def test_the_rating_page_has_progress_undo_criteria_and_skip_reasons(live):
    p = live.project
    p.rater("alice", PASSWORD)
    p.service.add_pairs(make_queue(2))
    p.service.configure(criteria=["helpful", "honest"], daily_target=40)
    page = browser_login(live.url, "alice")
    html = page.get("/rate").text
    assert "<b>0 of 40</b> today" in html and 'id="undo"' not in html
    assert 'name="criterion_helpful" value="left"' in html and 'value="skip:unsafe"' in html
    form = {"csrf_token": form_token(html, "csrf_token"), "assignment_id": form_token(html, "assignment_id"),
            "submission_id": "page-00001", "vote": "left-much", "criterion_helpful": "right", "criterion_honest": ""}
    assert page.post("/rate", data=form).status_code == 303
    with p.db.read() as s:
        rating, a = s.execute(select(Rating, Assignment).join(Assignment)).one()
        assert rating.criteria == {"helpful": "B" if a.left_is_a else "A"} and rating.strength == 1.0
    html = page.get("/rate").text
    assert "<b>1 of 40</b> today" in html and 'id="undo"' in html
    r = page.post("/rate/undo", data={"csrf_token": form_token(html, "csrf_token")})
    assert r.headers["location"] == "/rate?notice=undone"
    html = page.get(r.headers["location"]).text
    assert "taken back" in html and form_token(html, "assignment_id") == form["assignment_id"]
    skip = {**form, "submission_id": "page-00002", "vote": "skip:broken"}
    assert page.post("/rate", data=skip).status_code == 303
    with p.db.read() as s:
        assert s.execute(select(Rating.choice, Rating.skip_reason, Rating.criteria)).one() == ("skip", "broken", None)
