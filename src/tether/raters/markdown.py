"""A minimal, safe Markdown subset for the guidelines: headings, paragraphs, lists, bold, italic, code.

Every character of the source is HTML-escaped first; only tags this module writes (without attributes)
are added afterwards, so nothing an admin types can become markup or script. Links stay plain text:
no `href` is ever emitted, so a `javascript:` URL cannot become clickable. A full Markdown library
would need an HTML sanitiser after it; this subset needs none.
"""
from __future__ import annotations

import re

from markupsafe import Markup, escape

_HEADING = re.compile(r"(#{1,4})\s+(.*)")
_ITEM = re.compile(r"\s*(?:[-*+]|\d+[.)])\s+(.*)")
_INLINE = [
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"), r"<em>\1</em>"),
]


def _inline(text: str) -> str:
    html = str(escape(text))
    for pattern, replacement in _INLINE:
        html = pattern.sub(replacement, html)
    return html


def render_markdown(source: str) -> Markup:
    """HTML for the subset; blocks are separated by blank lines, list items by their markers."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", source.replace("\r\n", "\n").strip()):
        lines = block.split("\n")
        heading = _HEADING.fullmatch(lines[0].strip())
        if heading:
            level = len(heading.group(1)) + 1  # '#' is h2: the page title is the h1
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
            lines = lines[1:]
        if lines:
            out.append(_list_or_paragraph(lines))
    return Markup("\n".join(out))


def _list_or_paragraph(lines: list[str]) -> str:
    if not _ITEM.fullmatch(lines[0]):
        return f"<p>{_inline(' '.join(line.strip() for line in lines))}</p>"
    items: list[str] = []
    for line in lines:
        item = _ITEM.fullmatch(line)
        if item:
            items.append(item.group(1))
        else:
            items[-1] += " " + line.strip()  # a continuation line of the previous item
    tag = "ol" if re.match(r"\s*\d", lines[0]) else "ul"
    return f"<{tag}>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + f"</{tag}>"
