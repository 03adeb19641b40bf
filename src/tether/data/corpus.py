"""Reading a pretraining corpus: JSONL rows `{"text": ...}` or `{"messages": [...]}`.

Same strictness as SFT data (`file:line: field: problem`); a chat row needs no assistant turn here,
since pretraining counts every token.
"""
from __future__ import annotations

from pathlib import Path

from tether.data.sft_data import _Bad, _decode_row, _messages, _read_bytes, _text
from tether.errors import DataError


def _corpus_row(row: dict) -> dict:
    if "text" in row:
        _text(row["text"], "text")
        return {"text": row["text"]}
    if "messages" in row:
        return {"messages": _messages(row["messages"], "messages")}
    raise _Bad("text", "missing (expected 'text' or 'messages')")


def read_corpus(path: str | Path) -> list[dict]:
    """All rows of the corpus at `path`; raises DataError at the first bad row."""
    rows = []
    for lineno, line in enumerate(_read_bytes(path).split(b"\n"), start=1):
        try:
            row = _decode_row(line, lineno)
            if row is not None:
                rows.append(_corpus_row(row))
        except _Bad as bad:
            raise DataError(f"{path}:{lineno}: {bad}") from None
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def read_prompts(path: str | Path) -> list:
    """Prompts from JSONL rows `{"prompt": str or messages, ...}` (other keys ignored)."""
    prompts = []
    for lineno, line in enumerate(_read_bytes(path).split(b"\n"), start=1):
        try:
            row = _decode_row(line, lineno)
            if row is None:
                continue
            if "prompt" not in row:
                raise _Bad("prompt", "missing")
            value = row["prompt"]
            if isinstance(value, list):
                value = _messages(value, "prompt")
            else:
                _text(value, "prompt")
            prompts.append(value)
        except _Bad as bad:
            raise DataError(f"{path}:{lineno}: {bad}") from None
    if not prompts:
        raise DataError(f"{path}: no rows")
    return prompts
