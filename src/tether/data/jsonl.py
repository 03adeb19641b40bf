"""Strict JSONL reading shared by every data format: `file:line: field: problem` for each bad row.

Lines are decoded one by one as strict UTF-8, so a bad byte is reported with its line
(`<utf-8>: invalid UTF-8 at byte N`, N counted from 1 within the line); gzip files are read by content.
"""
from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tether.errors import DataError

T = TypeVar("T")
Skipped = list[tuple[int, str]]
"""(line, problem) of rows left out by a non-strict read."""


class RowError(Exception):
    """A problem with one row (`field: problem`), before the file name and line number are known."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")


class SkipRow(RowError):
    """A well-formed row with nothing to learn from (an empty reply, two identical replies), as public datasets
    have a few of: `tether.data.formats` counts and skips it, the strict readers report it like any bad row."""


def _read_bytes(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a JSONL file") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None


def _decode_row(line: bytes, lineno: int) -> dict | None:
    """The JSON object on one line, or None for a blank line."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RowError("<utf-8>", f"invalid UTF-8 at byte {err.start + 1}") from None
    if lineno == 1:
        text = text.removeprefix("\ufeff")  # a byte-order mark, as some Windows editors write
    if not text.strip():
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        raise RowError("<json>", f"not valid JSON ({err.msg}, column {err.colno})") from None
    if not isinstance(row, dict):
        raise RowError("<row>", f"expected a JSON object, got {json_kind(row)}")
    return row


def read_rows(path: str | Path, parse: Callable[[dict, int], T], strict: bool = True) -> tuple[list[T], Skipped]:
    """Parse each non-blank line of a (possibly gzipped) JSONL file; raise or collect `file:line` errors."""
    raw = _read_bytes(path)
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the suffix
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{path}: not a readable gzip file ({err})") from None
    parsed, skipped = [], []
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        try:
            row = _decode_row(line, lineno)
            if row is not None:
                parsed.append(parse(row, lineno))
        except RowError as bad:
            if strict:
                raise DataError(f"{path}:{lineno}: {bad}") from None
            skipped.append((lineno, str(bad)))
    if not parsed and not skipped:
        raise DataError(f"{path}: no rows")
    return parsed, skipped


def json_kind(value: Any) -> str:
    """The JSON name of a parsed value's type."""
    if value is None:
        return "null"
    kinds = {bool: "a boolean", dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number"}
    for tp, name in kinds.items():
        if isinstance(value, tp):
            return name
    return type(value).__name__
