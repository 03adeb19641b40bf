"""Reading a pretraining corpus: JSONL rows `{"text": ...}` or `{"messages": [...]}`.

Same strictness as SFT data (`file:line: field: problem`); a chat row needs no assistant turn here,
since pretraining counts every token.
"""
from __future__ import annotations

from pathlib import Path

from tether.data.jsonl import RowError, read_rows
from tether.data.sft_data import _messages, _text


def _corpus_row(row: dict) -> dict:
    if "text" in row:
        _text(row["text"], "text")
        return {"text": row["text"]}
    if "messages" in row:
        return {"messages": _messages(row["messages"], "messages")}
    raise RowError("text", "missing (expected 'text' or 'messages')")


def read_corpus(path: str | Path) -> list[dict]:
    """All rows of the corpus at `path`; raises DataError at the first bad row."""
    return read_rows(path, lambda row, lineno: _corpus_row(row))[0]


def read_prompts(path: str | Path) -> list:
    """Prompts from JSONL rows `{"prompt": str or messages, ...}` (other keys ignored)."""
    return read_rows(path, lambda row, lineno: _prompt_row(row))[0]


def _prompt_row(row: dict):
    if "prompt" not in row:
        raise RowError("prompt", "missing")
    if isinstance(row["prompt"], list):
        return _messages(row["prompt"], "prompt")
    _text(row["prompt"], "prompt")
    return row["prompt"]
