"""The guidelines' Markdown subset escapes first; templates autoescape and never mark text safe."""
from __future__ import annotations

from pathlib import Path

import tether.raters
from tether.raters.markdown import render_markdown


def test_markdown_subset_and_escaping():
    html = render_markdown("# Rules\n\nBe **kind** and *brief*, use `ls -a`.\n\n- one\n- two\n  continued\n\n1. first\n2. second")
    assert html == ("<h2>Rules</h2>\n<p>Be <strong>kind</strong> and <em>brief</em>, use <code>ls -a</code>.</p>\n"
                    "<ul><li>one</li><li>two continued</li></ul>\n<ol><li>first</li><li>second</li></ol>")


def test_markup_and_links_in_guidelines_stay_text():
    html = render_markdown('<script>alert(1)</script> <img src=x onerror=alert(2)> [x](javascript:alert(3)) **<b>**')
    assert "<script" not in html and "<img" not in html and "href" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "[x](javascript:alert(3))" in html
    assert "<strong>&lt;b&gt;</strong>" in html


def test_templates_never_mark_text_safe():
    folder = Path(tether.raters.__file__).parent / "templates"
    for template in folder.glob("*.html"):
        text = template.read_text().replace(" ", "")
        assert "|safe" not in text and "autoescapefalse" not in text, template.name
