"""Markdown (markdown-it-py) renders inert: no raw HTML, no links or images; templates never mark text safe."""
from __future__ import annotations

from pathlib import Path

import tether.raters
from tether.raters.markdown import render_markdown


def test_markdown_blocks_and_inline():
    html = render_markdown("# Rules\n\nBe **kind** and *brief*, use `ls -a`.\n\n- one\n- two\n  continued\n\n"
                           "1. first\n2. second\n\n```python\nprint(1 < 2)\n```")
    assert html == ("<h2>Rules</h2>\n<p>Be <strong>kind</strong> and <em>brief</em>, use <code>ls -a</code>.</p>\n"
                    "<ul>\n<li>one</li>\n<li>two\ncontinued</li>\n</ul>\n<ol>\n<li>first</li>\n<li>second</li>\n</ol>\n"
                    '<pre><code class="language-python">print(1 &lt; 2)\n</code></pre>')


def test_markup_links_and_images_stay_text():
    html = render_markdown('<script>alert(1)</script> <img src=x onerror=alert(2)> [x](javascript:alert(3)) **<b>**\n\n'
                           '![pixel](http://tracker.example/p.png) <http://example.com>\n\n'
                           '```"><img src=x onerror=alert(4)>\ncode\n```')
    assert "<script" not in html and "<img" not in html and "href" not in html and "<b>" not in html
    assert "src=" not in html.replace("&lt;img src=x", "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "[x](javascript:alert(3))" in html
    assert "<strong>&lt;b&gt;</strong>" in html and "![pixel](http://tracker.example/p.png)" in html


def test_templates_never_mark_text_safe():
    folder = Path(tether.raters.__file__).parent / "templates"
    for template in folder.glob("*.html"):
        text = template.read_text().replace(" ", "")
        assert "|safe" not in text and "autoescapefalse" not in text, template.name
