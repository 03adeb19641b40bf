"""What may enter the rater app's database and pages: text checks for imports, API bodies and rendering.

A lone surrogate (a half of a UTF-16 pair, as `json.loads("\\"\\\\ud800\\"")` gives) is a valid Python
string that no UTF-8 page, PostgreSQL column or hash input can hold; a NUL is refused by PostgreSQL. One
such character in a prompt used to pass the import and then make every page that showed the pair fail.
"""
from __future__ import annotations

import json
from typing import Any

from tether.data.jsonl import RowError
from tether.data.preferences import Comparison
from tether.raters.errors import Invalid


def storable(text: str, field: str) -> str:
    """`text` unchanged, or Invalid if it holds a NUL or a lone surrogate (PostgreSQL and UTF-8 refuse them)."""
    problem = text_problem(text)
    if problem:
        raise Invalid(f"{field}: {problem}")
    return text


def text_problem(text: str, nul: bool = True) -> str | None:
    """Why `text` cannot be stored and shown (a lone surrogate; a NUL too, unless `nul` is False), or None."""
    if nul and "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"not valid Unicode (a lone surrogate at character {err.start + 1})"
    return None


def first_bad_text(value: Any, path: str, nul: bool = True) -> tuple[str, str] | None:
    """(field path, problem) of the first string (or object key) in a JSON value that cannot be stored
    (`text_problem`; NULs pass when `nul` is False)."""
    if isinstance(value, str):
        problem = text_problem(value, nul)
        return (path, problem) if problem else None
    if isinstance(value, list):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    elif isinstance(value, dict):
        for key in value:
            if isinstance(key, str) and text_problem(key, nul):
                return f"{path} key", text_problem(key, nul)
        items = ((f"{path}.{k}", v) for k, v in value.items())
    else:
        return None
    return next((bad for sub, v in items if (bad := first_bad_text(v, sub, nul))), None)


def check_row_text(row: dict, lineno: int) -> int:
    """A `read_rows` parser: the line number, or RowError naming the first field that cannot be stored.

    Runs before the row becomes a Comparison, whose id is a hash of the UTF-8 text (a lone surrogate made
    that hash raise, a traceback rather than `file:line: field: problem`).
    """
    for key, value in row.items():
        bad = first_bad_text(value, str(key))
        if bad:
            raise RowError(*bad)
    return lineno


def renderable(prompt: Any, *texts: str) -> bool:
    """Whether a pair's texts can be sent as a UTF-8 page or JSON: pairs stored before imports were checked
    may hold a lone surrogate; such a pair is set aside rather than served."""
    try:
        json.dumps([prompt, *texts], ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, TypeError, ValueError):
        return False
    return True


def queue_problem(c: Comparison, gold: bool, earlier_line: int | None) -> str | None:
    """`field: problem` of a queue row beyond the format's own rules, or None."""
    if earlier_line is not None:
        return f"id: duplicate of line {earlier_line} (the same pair twice)"
    if len(c.id) > 64:
        return "id: longer than 64 characters"
    for name in ("source_a", "source_b"):
        if getattr(c, name) is not None and len(getattr(c, name)) > 500:
            return f"{name}: longer than 500 characters"
    if gold and c.choice is None:
        return 'choice: a gold pair needs its answer ("A", "B" or "tie")'
    if not gold and c.choice is not None:
        return "choice: a queue item must be unlabelled (gold pairs with answers are imported with --gold)"
    return None
