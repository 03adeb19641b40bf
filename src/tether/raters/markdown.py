"""Markdown for guidelines, prompts and responses (markdown-it-py, CommonMark), rendered inert.

Raw HTML is off (`html: False`: every tag in the source comes out escaped, as text), and links, autolinks
and images are switched off, so they stay plain text: no `href` or `src` is ever emitted, hence no
`javascript:` URL to click and no remote image to leak a rater's address. What remains (paragraphs,
emphasis, code spans and blocks, lists, headings, quotes, rules) has no attribute a source can control
except a code block's language class, which markdown-it escapes. The CSP forbids inline script besides.
"""
from __future__ import annotations

from typing import Any

from markdown_it import MarkdownIt
from markupsafe import Markup

_MD = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).disable(
    ["image", "link", "autolink"])


def _shifted(renderer: Any, tokens: list, idx: int, options: Any, env: Any) -> str:
    """Headings one level down ('#' is h2): the page's title is its only h1."""
    token = tokens[idx]
    level = min(6, int(token.tag[1]) + 1)
    return f"<h{level}>" if token.nesting == 1 else f"</h{level}>\n"


_MD.add_render_rule("heading_open", _shifted)
_MD.add_render_rule("heading_close", _shifted)


def render_markdown(source: str) -> Markup:
    """Safe HTML of a Markdown text (see the module doc)."""
    return Markup(_MD.render(source).strip())
