"""Acceptance in headless Chromium (Debian's package, via Playwright): the rater's progress, undo, Markdown
(an injected <img onerror> stays inert) and per-criterion questions; the admin's disagreement queue and
export download. Screenshots go to test-artifacts/ (rater-markdown-criteria.png, rater-undo.png,
admin-disagreements.png, admin-dashboard.png)."""
from __future__ import annotations

from raterkit import PASSWORD, need
from sqlalchemy import select
from test_rater_browser import ARTIFACTS, CHROMIUM_ARGS, chromium

from tether.data.preferences import Comparison
from tether.raters.db import Assignment, Pair, Rating

INERT = '<img src=x onerror="document.title=\'pwned\'">'
PAIRS = [
    Comparison("How do I list hidden files on Linux? Show the command.",
               "Use `ls` with `-a`:\n\n```sh\nls -a ~/project\n```\n\n- `-a` shows names starting with a dot\n"
               f"- `-l` adds details\n\nNever run {INERT} from strangers.",
               "I'm not able to help with that. " + INERT),
    Comparison("Name the capital of Veloria.", "**Marenth**, on the northern coast.", "Probably *Dostrin*?"),
]


def browser_or_skip():
    exe = chromium()
    need(exe is not None, "Chromium not found (install Debian's `chromium`; `make test` does it as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need(False, "the playwright Python package is not installed (pip install -e '.[test]')")
    return exe, sync_playwright


def sign_in(page, url: str, username: str) -> None:
    page.goto(f"{url}/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    with page.expect_navigation():
        page.click("button[type=submit]")


def test_progress_undo_markdown_and_criteria_in_chromium(live):
    exe, sync_playwright = browser_or_skip()
    p = live.project
    p.service.add_pairs(PAIRS)
    p.service.configure(criteria=["helpful", "honest", "harmless"], daily_target=5)
    p.rater("rita", PASSWORD)
    ARTIFACTS.mkdir(exist_ok=True)
    dialogs = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(15_000)
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        sign_in(page, live.url, "rita")
        page.goto(f"{live.url}/rate")
        # 1. progress, Markdown rendered (code block, list), the injected image inert and shown as text
        assert " ".join(page.inner_text("#progress").split()) == "0 of 5 today · 0 in all · 2 left for you"
        first = int(page.input_value("input[name=assignment_id]"))
        md = page.locator("#left, #right")
        assert page.locator(".md pre code").count() == 1 and page.locator(".md li").count() == 2
        assert page.locator(".md img").count() == 0 and "onerror" in md.all_inner_texts()[0] + md.all_inner_texts()[1]
        page.screenshot(path=str(ARTIFACTS / "rater-markdown-criteria.png"), full_page=True)
        # 2. per-criterion answers, then the overall vote by keyboard
        page.check("input[name=criterion_helpful][value=left]")
        page.check("input[name=criterion_harmless][value=tie]")  # the radio keeps focus: keys still rate
        with page.expect_navigation():
            page.keyboard.press("1")
        assert " ".join(page.inner_text("#progress").split()).startswith("1 of 5 today · 1 in all")
        # 3. undo by keyboard: the same pair comes back, with the notice
        with page.expect_navigation():
            page.keyboard.press("u")
        assert "taken back" in page.inner_text("#notice")
        assert int(page.input_value("input[name=assignment_id]")) == first
        page.screenshot(path=str(ARTIFACTS / "rater-undo.png"), full_page=True)
        page.check("input[name=criterion_honest][value=right]")
        with page.expect_navigation():
            page.keyboard.press("5")
        assert page.title() != "pwned" and dialogs == []
        browser.close()
    with p.db.read() as s:
        [(rating, a)] = s.execute(select(Rating, Assignment).join(Assignment)).all()
    right = "B" if a.left_is_a else "A"
    assert a.id == first and rating.choice == right and rating.criteria == {"honest": right}


def test_the_disagreement_queue_in_chromium(live):
    exe, sync_playwright = browser_or_skip()
    p = live.project
    p.accounts.accept_invite(p.accounts.invite("boss", "admin"), PASSWORD)
    p.service.add_pairs(PAIRS[1:])
    for name, stored, why in (("alice", "A", "Marenth is right"), ("bob", "B", "hedging is honest"), ("carol", "A", None)):
        uid = p.rater(name)
        task = p.service.next_assignment(uid)
        with p.db.read() as s:
            left_is_a = s.get(Assignment, task.assignment_id).left_is_a
        p.service.submit_rating(uid, task.assignment_id, "left" if (stored == "A") == left_is_a else "right",
                                rationale=why, submission_id=f"split-{name}")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        page.set_default_timeout(15_000)
        sign_in(page, live.url, "boss")
        page.goto(f"{live.url}/admin/disagreements")
        card = page.locator(".disagreement")
        assert card.count() == 1 and "A × 2, B × 1" in card.inner_text()
        assert "hedging is honest" in card.inner_text()
        page.screenshot(path=str(ARTIFACTS / "admin-disagreements.png"), full_page=True)
        page.check(".disagreement input[name=gold]")
        with page.expect_navigation():
            page.click(".disagreement button[value=A]")
        assert "now a gold pair" in page.inner_text("main") and page.locator(".disagreement").count() == 0
        page.goto(f"{live.url}/admin")
        page.screenshot(path=str(ARTIFACTS / "admin-dashboard.png"), full_page=True)
        browser.close()
    with p.db.read() as s:
        assert s.scalar(select(Pair.gold_choice)) == "A"


def test_export_download_in_chromium(live, tmp_path):
    exe, sync_playwright = browser_or_skip()
    p = live.project
    p.accounts.accept_invite(p.accounts.invite("boss", "admin"), PASSWORD)
    p.service.add_pairs(PAIRS[1:])
    uid = p.rater("alice")
    task = p.service.next_assignment(uid)
    p.service.submit_rating(uid, task.assignment_id, "tie", rationale="both fine", submission_id="dl-000001")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        page.set_default_timeout(15_000)
        sign_in(page, live.url, "boss")
        page.fill("input[name=name]", "ratings.jsonl")
        with page.expect_navigation():
            page.click("form[action='/admin/export'] button[type=submit]")
        assert "1 rows written to exports/ratings.jsonl" in page.inner_text("main")
        page.goto(f"{live.url}/admin")
        with page.expect_download() as info:
            page.click("#exports a")
        saved = tmp_path / "downloaded.jsonl"
        info.value.save_as(saved)
        assert info.value.suggested_filename == "ratings.jsonl"
        browser.close()
    assert saved.read_bytes() == (p.dir / "exports" / "ratings.jsonl").read_bytes()
    assert '"rationale": "both fine"' in saved.read_text()
