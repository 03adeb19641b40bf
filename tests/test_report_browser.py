"""Acceptance: the report of a full synthetic run, opened from disk in headless Chromium (Debian's package, no
network), renders its sections and images; the full-page screenshot is saved as test-artifacts/report.png.

Chromium and its flags come from the rater app's browser test, so both launch the browser the same way; like it,
this skips (saying why) when Chromium or Playwright is missing, and fails instead under TETHER_REQUIRE_SERVICES=1.
"""
from __future__ import annotations

import sys
from pathlib import Path

from reportkit import full_run

from tether.report import write_report

sys.path.insert(0, str(Path(__file__).parent / "raters"))  # the rater tests' helpers (no package __init__)
from raterkit import need  # noqa: E402
from test_rater_browser import ARTIFACTS, CHROMIUM_ARGS, chromium  # noqa: E402


def test_report_renders_in_chromium_and_is_screenshotted(tmp_path):
    exe = chromium()
    need(exe is not None, "Chromium not found (install Debian's `chromium`; `make test` does it as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need(False, "the playwright Python package is not installed (pip install -e '.[test]')")
    report = write_report(full_run(tmp_path / "demo"))
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(report.as_uri())
        page.wait_for_load_state("load")
        # every image decoded (a broken data URI has naturalWidth 0) and nothing fetched but the file itself
        sizes = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
        assert len(sizes) >= 8 and all(w > 0 for w in sizes)
        assert all(u == report.as_uri() or u.startswith("data:") for u in requests)
        # the layout holds: the page is no wider than the window, the verdict is at the top
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280
        assert "Reward hacking detected" in page.inner_text(".verdict")
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "report.png").stat().st_size > 50_000
