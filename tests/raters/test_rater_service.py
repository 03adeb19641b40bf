"""The rater app's service layer on SQLite (and the concurrency-critical parts on PostgreSQL too)."""
from __future__ import annotations

import json
import threading
from collections import Counter, defaultdict
from datetime import datetime, timedelta

import pytest
from raterkit import GUIDELINES, make_queue, open_project
from sqlalchemy import func, select

from tether.math.agreement import agreement_report
from tether.data.preferences import (
    Comparison,
    read_comparisons,
    read_trl,
    write_comparisons,
)
from tether.errors import DataError
from tether.raters.db import Assignment, Pair, Rating
from tether.raters.errors import Conflict, Invalid, NeedsAcknowledgement, NotFound
import tether.raters.service as service_module
from tether.raters.service import Imported
from tether.raters.stats import dashboard


def rate_all(project, raters: list[int], vote="left") -> int:
    """Round-robin until nobody gets a pair; returns the number of ratings made."""
    n, active = 0, list(raters)
    while active:
        still = []
        for uid in active:
            task = project.service.next_assignment(uid)
            if task is not None:
                project.service.submit_rating(uid, task.assignment_id, vote, submission_id=f"sub-{uid:04d}-{task.assignment_id:04d}")
                n += 1
                still.append(uid)
        active = still
    return n


def assignments(project) -> list[Assignment]:
    with project.db.read() as s:
        return list(s.scalars(select(Assignment)))


def assert_held_in_step(project) -> None:
    """`pairs.held`, the cached slot count the assignment query seeks on, equals the slots actually taken."""
    with project.db.read() as s:
        held = dict(s.execute(select(Pair.id, Pair.held)).all())
        taken = Counter(s.scalars(select(Assignment.pair_id).where(Assignment.slot.is_not(None))))
    assert held == {pair_id: taken[pair_id] for pair_id in held}


def test_each_pair_goes_to_exactly_k_distinct_raters(project):
    project.service.add_pairs(make_queue(10))
    raters = [project.rater(f"r{i}") for i in range(5)]
    assert rate_all(project, raters) == 10 * 3
    by_pair = defaultdict(list)
    for a in assignments(project):
        by_pair[a.pair_id].append(a.rater_id)
    assert len(by_pair) == 10
    assert all(len(r) == 3 and len(set(r)) == 3 for r in by_pair.values())
    assert all(project.service.next_assignment(uid) is None for uid in raters)
    assert_held_in_step(project)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_raters_never_exceed_k(backend, tmp_path, request):
    """8 threads racing for 6 pairs with k = 3: slots are taken exactly once (the UNIQUE constraints hold).

    Even-numbered raters skip their first pair, so slots are given back while others race to take them;
    4 skips leave at least 4 raters for any pair, enough for k = 3."""
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    project = open_project(tmp_path / "p", url)
    project.service.add_pairs(make_queue(6))
    raters = [project.rater(f"r{i}") for i in range(8)]
    errors = []

    def work(uid, skip_first=True):
        try:
            n = 0
            while (task := project.service.next_assignment(uid)) is not None:
                vote = "skip" if skip_first and n == 0 and uid % 2 == 0 else "tie"
                project.service.submit_rating(uid, task.assignment_id, vote, submission_id=f"sub-{uid:04d}-{task.assignment_id:04d}")
                n += 1
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(uid,)) for uid in raters]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert max(Counter(a.pair_id for a in assignments(project) if a.slot is not None).values()) <= 3
    # A skip that lands after the other raters heard "nothing left" frees a slot nobody was waiting for; in the
    # app a rater comes back later. Here each comes back once, in turn, and the queue must then be full.
    for uid in raters:
        work(uid, skip_first=False)
    assert errors == []
    per_pair = Counter(a.pair_id for a in assignments(project) if a.state == "done")
    assert sorted(per_pair.values()) == [3] * 6
    assert_held_in_step(project)
    project.db.close()


def test_a_reload_returns_the_same_open_pair(project):
    project.service.add_pairs(make_queue(3))
    uid = project.rater("r")
    first = project.service.next_assignment(uid)
    assert project.service.next_assignment(uid).assignment_id == first.assignment_id
    assert len(assignments(project)) == 1


def test_skip_gives_the_slot_back_and_the_pair_never_returns(tmp_path):
    project = open_project(tmp_path / "p", overlap=1)
    project.service.add_pairs(make_queue(1))
    a, b = project.rater("a"), project.rater("b")
    task = project.service.next_assignment(a)
    assert project.service.next_assignment(b) is None  # k = 1: the only slot is held
    project.service.submit_rating(a, task.assignment_id, "skip", submission_id="skip-0001")
    assert project.service.next_assignment(a) is None  # never the same pair twice, even after a skip
    assert project.service.next_assignment(b) is not None
    assert_held_in_step(project)


def test_an_abandoned_assignment_expires_and_frees_its_slot(tmp_path):
    project = open_project(tmp_path / "p", overlap=1)
    project.service.add_pairs(make_queue(1))
    a, b = project.rater("a"), project.rater("b")
    task = project.service.next_assignment(a)
    assert project.service.release_stale(ttl=timedelta(0), force=True) == 1
    assert_held_in_step(project)
    assert project.service.next_assignment(b) is not None
    assert_held_in_step(project)
    with pytest.raises(Conflict, match="expired"):
        project.service.submit_rating(a, task.assignment_id, "left", submission_id="late-0001")


def test_gold_pairs_are_served_at_the_set_rate(tmp_path):
    # gold_rate 0.25 -> one gold pair in every block of 4 a rater is served, at a position drawn per block
    project = open_project(tmp_path / "p", overlap=1, gold_rate=0.25)
    project.service.add_pairs(make_queue(40))
    gold = [Comparison(f"Gold {i}: 2 + 2?", "4", "5", choice="A") for i in range(10)]
    project.service.add_pairs(gold, gold=True)
    uid = project.rater("r")
    served = []
    for n in range(20):
        task = project.service.next_assignment(uid)
        served.append(task.prompt.startswith("Gold"))
        project.service.submit_rating(uid, task.assignment_id, "left", submission_id=f"sub-{n:04d}")
    assert [sum(served[i:i + 4]) for i in range(0, 20, 4)] == [1] * 5
    assert len({p for p, g in zip(range(20), served) if g}) == 5
    assert not any(c.prompt.startswith("Gold") for c in project.service.labelled())  # gold is never exported
    stats = dashboard(project.db)
    assert stats.raters[0].gold_seen == 5 and 0 <= stats.gold_accuracy <= 1


def test_overlap_is_fixed_once_rating_starts(project):
    project.service.add_pairs(make_queue(2))
    assert project.service.configure(overlap=2).overlap == 2
    project.service.next_assignment(project.rater("r"))
    with pytest.raises(Conflict, match="overlap: fixed at 2"):
        project.service.configure(overlap=3)
    assert project.service.configure(gold_rate=0.1).gold_rate == 0.1  # the gold rate may still change
    with pytest.raises(Invalid, match="overlap"):
        project.service.configure(overlap=0)


def test_a_retried_submit_never_makes_two_rows(project):
    project.service.add_pairs(make_queue(2))
    uid = project.rater("r")
    task = project.service.next_assignment(uid)
    first = project.service.submit_rating(uid, task.assignment_id, "right", 1.0, "clearer", "same-id-01")
    again = project.service.submit_rating(uid, task.assignment_id, "right", 1.0, "clearer", "same-id-01")
    assert (first.created, again.created, again.rating_id) == (True, False, first.rating_id)
    with pytest.raises(Conflict, match="already rated"):
        project.service.submit_rating(uid, task.assignment_id, "left", submission_id="other-id-01")
    other = project.service.next_assignment(uid)
    with pytest.raises(Conflict, match="submission_id"):
        project.service.submit_rating(uid, other.assignment_id, "left", submission_id="same-id-01")
    with project.db.read() as s:
        assert s.scalar(select(func.count()).select_from(Rating)) == 1


def test_another_raters_assignment_reads_as_not_found(project):
    project.service.add_pairs(make_queue(2))
    a, b = project.rater("a"), project.rater("b")
    task = project.service.next_assignment(a)
    with pytest.raises(NotFound):
        project.service.submit_rating(b, task.assignment_id, "left", submission_id="steal-0001")
    with pytest.raises(NotFound):
        project.service.task(b, task.assignment_id)
    with pytest.raises(NotFound):
        project.service.task(a, 10**30)
    assert project.service.task(a, task.assignment_id).left == task.left


@pytest.mark.parametrize("bad", [dict(choice="A"), dict(choice="left", strength=0), dict(choice="tie", strength=1.0),
                                 dict(choice="left", rationale="x" * 501), dict(choice="left", submission_id="short"),
                                 dict(choice="left", rationale="nul\x00")])
def test_invalid_votes_are_refused_with_the_field(project, bad):
    project.service.add_pairs(make_queue(1))
    uid = project.rater("r")
    task = project.service.next_assignment(uid)
    args = {"strength": None, "rationale": None, "submission_id": "valid-id-01", **bad}
    with pytest.raises(Invalid, match=f"^{next(k for k in bad if k != 'choice') if len(bad) > 1 else 'choice'}:"):
        project.service.submit_rating(uid, task.assignment_id, **args)


def test_guidelines_must_be_acknowledged_and_each_rating_keeps_its_version(project):
    project.service.add_pairs(make_queue(3))
    uid = project.rater("r", ack=False)
    with pytest.raises(NeedsAcknowledgement, match="version 1"):
        project.service.next_assignment(uid)
    project.service.acknowledge(uid, "1")
    task = project.service.next_assignment(uid)
    project.service.submit_rating(uid, task.assignment_id, "left", submission_id="v1-rating")
    project.service.add_guideline("2", GUIDELINES + "\n\nNew rule.")
    with pytest.raises(NeedsAcknowledgement, match="version 2"):
        project.service.next_assignment(uid)
    with pytest.raises(Conflict, match="not the current"):
        project.service.acknowledge(uid, "1")
    project.service.acknowledge(uid, "2")
    task = project.service.next_assignment(uid)
    assert task.guideline_version == "2"
    project.service.submit_rating(uid, task.assignment_id, "right", submission_id="v2-rating")
    assert [c.guideline_version for c in project.service.labelled()] == ["1", "2"]
    with pytest.raises(Conflict, match="never overwritten"):
        project.service.add_guideline("2", "again")


def _count_pairs(project) -> int:
    with project.db.read() as s:
        return s.scalar(select(func.count()).select_from(Pair))


@pytest.mark.parametrize("row, line, message", [
    ('{"prompt": "p", "response_a": "x"}', 3, "response_b: missing"),
    ('{"prompt": "p", "response_a": "x", "response_b": "y", "choice": "A"}', 3, "choice: a queue item must be unlabelled"),
    ('{"prompt": "Question q0: what is the capital of Country0?", "response_a": "Capital 0a.", "response_b": "I think it is 0b."}',
     3, "id: duplicate of line 1"),
    ('{"prompt": "p", "response_a": "x\\u0000", "response_b": "y"}', 3, "response_a: contains a NUL"),
    ('not json', 3, "<json>: not valid JSON"),
])
def test_a_bad_queue_is_refused_at_its_line_and_nothing_is_imported(project, tmp_path, row, line, message):
    path = tmp_path / "queue.jsonl"
    good = [json.dumps(c.to_dict()) for c in make_queue(2)]
    path.write_text("\n".join(good + [row, good[0].replace("Country0", "Country9")]) + "\n")
    with pytest.raises(DataError) as err:
        project.service.import_queue(path)
    assert str(err.value).startswith(f"{path}:{line}: {message}")
    assert _count_pairs(project) == 0


def test_reimport_skips_known_pairs_and_gold_needs_answers(project, tmp_path):
    path = tmp_path / "queue.jsonl"
    write_comparisons(path, make_queue(4))
    assert project.service.import_queue(path) == Imported(4, 0)
    write_comparisons(path, make_queue(6))
    assert project.service.import_queue(path) == Imported(2, 4)
    with pytest.raises(DataError, match=r"queue.jsonl:1: choice: a gold pair needs its answer"):
        project.service.add_gold_pairs(path)
    with pytest.raises(Conflict, match="regular pair"):
        project.service.add_pairs([Comparison(**{**make_queue(1)[0].to_dict(), "choice": "A"})], gold=True)
    assert _count_pairs(project) == 6


def test_export_maps_choices_back_to_a_b_and_round_trips(project):
    queue = make_queue(4)
    project.service.add_pairs(queue)
    uid = project.rater("alice")
    expected = {}
    for n, vote in enumerate(["left", "right", "tie", "left"]):
        task = project.service.next_assignment(uid)
        pair = next(c for c in queue if {c.response_a, c.response_b} == {task.left, task.right})
        shown_a = task.left == pair.response_a
        expected[pair.id] = {"tie": "tie", "left": "A" if shown_a else "B", "right": "B" if shown_a else "A"}[vote]
        project.service.submit_rating(uid, task.assignment_id, vote, 0.5 if vote != "tie" else None, f"why {n}", f"sub-{n:05d}")
    path, n = project.service.export("ratings.jsonl")
    assert (path, n) == (project.dir / "exports" / "ratings.jsonl", 4)
    back = read_comparisons(path)
    assert back == project.service.labelled()
    assert {c.id: c.choice for c in back} == expected
    c = back[0]
    assert (c.rater, c.guideline_version, c.source_a, c.meta["round"]) == ("alice", "1", "policy-a", 1)
    assert c.timestamp.endswith("+00:00") and c.meta["rationale"] == "why 0" and c.meta["left_shown"] in "AB"
    trl_path, rows = project.service.export("ratings.trl.jsonl", "trl")
    assert rows == 3 and len(read_trl(trl_path)) == 3  # the tie has no chosen response


@pytest.mark.parametrize("name", ["../x.jsonl", "/etc/passwd", "a/b.jsonl", ".hidden", "..", "", "x\x00y",
                                  "..\\x", "~/x", "exports/../../x"])
def test_export_names_cannot_leave_the_exports_folder(project, name):
    with pytest.raises(Invalid, match="^name:"):
        project.service.export(name)


def test_export_refuses_a_symlink_out_of_the_folder(project, tmp_path):
    (project.dir / "exports").mkdir()
    (project.dir / "exports" / "link.jsonl").symlink_to(tmp_path / "outside.jsonl")
    with pytest.raises(Invalid, match="outside"):
        project.service.export("link.jsonl")


def test_dashboard_position_bias_agreement_and_times(project, monkeypatch):
    project.service.add_pairs(make_queue(6))
    lefty, righty = project.rater("lefty"), project.rater("righty")
    # A clock that moves only while a rater reads a pair: lefty takes 2 s per pair, righty 4 s.
    clock = {"now": datetime(2025, 1, 1)}
    monkeypatch.setattr(service_module, "utcnow", lambda: clock["now"])
    real_submit = project.service.submit_rating

    def submit_after_reading(uid, *args, **kwargs):
        clock["now"] += timedelta(seconds={lefty: 2, righty: 4}[uid])
        return real_submit(uid, *args, **kwargs)

    monkeypatch.setattr(project.service, "submit_rating", submit_after_reading)
    rate_all(project, [lefty], "left")
    rate_all(project, [righty], "right")
    stats = dashboard(project.db)
    by_name = {r.username: r for r in stats.raters}
    assert (by_name["lefty"].left_share, by_name["righty"].left_share, stats.left_share) == (1.0, 0.0, 0.5)
    assert stats.ratings == 12 and stats.pairs == 6 and stats.pairs_complete == 0  # k = 3, two raters each
    labels = defaultdict(dict)
    for c in project.service.labelled():
        labels[c.id][c.rater] = c.choice
    assert stats.agreement == agreement_report(labels)
    # Six ratings of 2 s and six of 4 s: medians 2, 4 and 3 over everyone.
    assert (by_name["lefty"].median_seconds, by_name["righty"].median_seconds, stats.median_seconds) == (2.0, 4.0, 3.0)
