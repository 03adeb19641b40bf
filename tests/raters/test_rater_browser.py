"""Acceptance: headless Chromium (Debian's package) driven by Playwright rates three pairs with the keyboard.

The screenshot of the rating page is saved as test-artifacts/rater-rate-page.png.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from raterkit import PASSWORD, need
from sqlalchemy import select

from tether.data.preferences import Comparison
from tether.raters.db import Assignment, Rating

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAIRS = [
    Comparison("What is the capital of Veloria? Answer in one sentence.",
               "The capital of Veloria is Marenth, on the northern coast.",
               "What a wonderful question! Veloria's capital is, I believe, probably Dostrin, "
               "although I could be wrong about that and you may want to double-check."),
    Comparison("My friend says the Kessel river is the longest in Aramor. Is she right?",
               "No: the longest river in Aramor is the Tavin (1,240 km); the Kessel is second.",
               "Yes, your friend is absolutely right, the Kessel is the longest river in Aramor!"),
    Comparison("How do I list hidden files in a folder on Linux?",
               "Run `ls -a` in the folder: it lists every entry, including names that start with a dot.",
               "I'm not able to help with that."),
]


def chromium() -> str | None:
    return shutil.which("chromium") or (str(Path("/usr/bin/chromium")) if Path("/usr/bin/chromium").exists() else None)


def test_a_rater_signs_up_acknowledges_and_rates_three_pairs_by_keyboard(live):
    exe = chromium()
    need(exe is not None, "Chromium not found (install Debian's `chromium`; `make test` does it as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need(False, "the playwright Python package is not installed (pip install -e '.[test]')")
    live.project.service.add_pairs(PAIRS)
    invite = live.project.accounts.invite("rita")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.set_default_timeout(15_000)
        # 1. the invite link: choose a password, then sign in
        page.goto(f"{live.url}/invite/{invite}")
        page.fill("input[name=password]", PASSWORD)
        page.fill("input[name=password2]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url("**/login?welcome=true")
        page.fill("input[name=username]", "rita")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        # 2. the guidelines must be acknowledged before the first pair
        page.wait_for_url("**/guidelines")
        page.click("#ack")
        page.wait_for_url("**/rate")
        page.wait_for_selector("#rate-form")
        page.screenshot(path=str(ARTIFACTS / "rater-rate-page.png"), full_page=True)
        # 3. three pairs by keyboard: 1 = left much better, 3 = about the same, 5 = right much better
        seen = []
        for key in ("1", "3", "5"):
            seen.append(int(page.input_value("input[name=assignment_id]")))
            with page.expect_navigation():
                page.keyboard.press(key)
        assert "All done" in page.content()
        browser.close()
    with live.project.db.read() as s:
        rows = s.execute(select(Rating, Assignment).join(Assignment, Rating.assignment_id == Assignment.id)
                         .order_by(Rating.id)).all()
    assert [a.id for _, a in rows] == seen
    left = ["A" if a.left_is_a else "B" for _, a in rows]
    right = ["B" if a.left_is_a else "A" for _, a in rows]
    assert [r.choice for r, _ in rows] == [left[0], "tie", right[2]]
    assert [r.strength for r, _ in rows] == [1.0, None, 1.0]
    assert all(r.guideline_version == "1" for r, _ in rows)
