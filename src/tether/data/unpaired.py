"""Unpaired preference rows for KTO: one prompt, one completion, and whether the completion is desirable.

TRL's unpaired preference format (what its KTOTrainer reads), one JSON object per line:

    {"prompt": str, "completion": str, "label": true | false}                                     plain
    {"prompt": [msgs], "completion": [one assistant msg], "label": true | false}                  conversational

Read strictly (`file:line: field: problem`, through `tether.data.jsonl.read_rows`): prompt and completion
are required, non-blank, and of one kind (plain or conversational) for the whole file; label is a JSON
boolean (not "true", not 1). Other keys are ignored, as TRL ignores extra dataset columns.

`read_kto_rows` also reads tether comparison JSONL and converts it (`comparisons_to_unpaired`): the chosen
response becomes a desirable row and the rejected one an undesirable row of the same prompt; a tie says
neither is good or bad and is dropped (counted); an unlabelled row is an error naming its line.

`mismatched_partners` pairs each row with another row's completion for KTO's KL reference point.
This module imports no torch.
"""
from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.data.jsonl import RowError, json_kind, read_rows
from tether.data.preferences import (
    Comparison,
    Prompt,
    _conversational_response,
    _parse_comparison,
    _plain_response,
)
from tether.data.preferences import _prompt as _parse_prompt
from tether.data.preferences import prompt_key as _prompt_key
from tether.errors import DataError

__all__ = ["Unpaired", "comparisons_to_unpaired", "mismatched_partners", "read_kto_rows", "read_unpaired",
           "write_unpaired"]


@dataclass
class Unpaired:
    """One completion of one prompt, labelled desirable (True, thumbs up) or undesirable (False)."""

    prompt: Prompt
    """A user message, or a conversation ending with a user turn."""
    completion: str
    """The assistant's response (non-blank)."""
    label: bool
    """True: desirable; False: undesirable."""

    @property
    def prompt_key(self) -> str:
        return _prompt_key(self.prompt)


def read_unpaired(path: str | Path) -> list[Unpaired]:
    """All rows of a TRL unpaired-preference JSONL file; DataError `file:line: field: problem` at the first bad row."""
    return read_kto_rows(path, comparisons=False)[0]


def read_kto_rows(path: str | Path, comparisons: bool = True) -> tuple[list[Unpaired], dict]:
    """KTO's rows from unpaired rows, or (comparisons=True) from tether comparisons, told apart by the first
    row (one with response_a is a comparison); a file mixing the two is an error at the first odd row.

    Returns (rows, report): report counts the file's rows, ties dropped and the desirable/undesirable rows.
    """
    first: list[tuple[str, int]] = []  # (kind, line) of the first row
    ties = [0]

    def parse(row: dict, lineno: int) -> list[Unpaired]:
        kind = "comparison" if comparisons and "response_a" in row else _unpaired_kind(row)
        if not first:
            first.append((kind, lineno))
        elif kind != first[0][0]:
            raise RowError("prompt", f"a {kind} row in a file whose first row (line {first[0][1]}) is {first[0][0]}")
        if kind != "comparison":
            return [_parse_unpaired(row)]
        c = _parse_comparison(row)
        if c.choice is None:
            raise RowError("choice", "null (an unrated queue item): KTO trains on labelled rows only")
        ties[0] += c.choice == "tie"
        return comparisons_to_unpaired([c])[0]

    parsed, _ = read_rows(path, parse)
    rows = [r for group in parsed for r in group]
    report = {"format": first[0][0] if first else None, "file_rows": len(parsed), "ties_dropped": ties[0],
              "desirable": sum(r.label for r in rows), "undesirable": sum(not r.label for r in rows)}
    return rows, report


def comparisons_to_unpaired(comparisons: Iterable[Comparison]) -> tuple[list[Unpaired], int]:
    """(rows, ties dropped): chosen -> label True, rejected -> label False, in the comparisons' order.

    A tie is dropped: KTO's loss has no target for "as good as another response". Unlabelled comparisons
    raise DataError (they carry no label to convert).
    """
    rows, ties = [], 0
    for n, c in enumerate(comparisons, start=1):
        if c.choice == "tie":
            ties += 1
        elif c.choice in ("A", "B"):
            rows += [Unpaired(c.prompt, c.chosen, True), Unpaired(c.prompt, c.rejected, False)]
        else:
            raise DataError(f"comparison {n}: choice: null (unlabelled), nothing to convert")
    return rows, ties


def write_unpaired(path: str | Path, rows: Iterable[Unpaired], conversational: bool = False) -> int:
    """Write TRL unpaired rows (checked by the rules `read_unpaired` applies); returns the rows written.

    Conversational wraps a string prompt as one user message and the completion as one assistant message;
    a conversation prompt cannot be written plain. Errors read `path:N: field: problem`.
    """
    lines = []
    for n, r in enumerate(rows, start=1):
        try:
            out = _unpaired_out(r, conversational)
            _parse_unpaired(out)
        except RowError as bad:
            raise DataError(f"{path}:{n}: {bad}") from None
        line = json.dumps(out, ensure_ascii=False)
        lines.append(line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))
    if not lines:
        raise DataError(f"{path}: no rows to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def mismatched_partners(prompt_keys: list[str], seed: int) -> list[int]:
    """For each row i, the row j whose completion is scored after prompt i for KTO's KL reference point.

    Ethayarajh et al. 2024 (§4.1) estimate z_ref = KL(π_θ || π_ref) from mismatched pairs (x_i, y_j): a
    completion that answers another prompt, so the estimate does not see the label of (x_i, y_i). TRL pairs
    each row with the previous row's completion in its preprocessing batch. Here the rows are put in a seeded
    order and each takes the completion of the next row in that order whose prompt differs (wrapping round);
    the pairing is fixed for the run, so the reference's log-probs of the pairs can be cached. A row whose
    prompt is the only one left (every row has the same prompt) takes the next row's completion anyway.
    """
    n = len(prompt_keys)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    partners = [0] * n
    for pos, i in enumerate(order):
        ahead = (order[(pos + k) % n] for k in range(1, n))
        partners[i] = next((j for j in ahead if prompt_keys[j] != prompt_keys[i]), order[(pos + 1) % n])
    return partners


def _unpaired_kind(row: dict) -> str:
    return "conversational" if isinstance(row.get("prompt"), list) else "plain"


def _parse_unpaired(row: dict[str, Any]) -> Unpaired:
    for name in ("prompt", "completion", "label"):
        if name not in row:
            raise RowError(name, "missing")
    prompt = row["prompt"]
    if isinstance(prompt, str):
        read = _plain_response
    elif isinstance(prompt, list):
        read = _conversational_response
    else:
        raise RowError("prompt", f"expected a string (plain) or a list of messages (conversational), "
                                 f"got {json_kind(prompt)}")
    prompt = _parse_prompt(prompt, "prompt")
    completion = read(row["completion"], "completion")
    label = row["label"]
    if not isinstance(label, bool):
        raise RowError("label", f"expected true or false, got {json_kind(label)} ({json.dumps(label)})")
    return Unpaired(prompt, completion, label)


def _unpaired_out(r: Unpaired, conversational: bool) -> dict:
    if conversational:
        prompt = [{"role": "user", "content": r.prompt}] if isinstance(r.prompt, str) else [dict(m) for m in r.prompt]
        return {"prompt": prompt, "completion": [{"role": "assistant", "content": r.completion}], "label": r.label}
    if not isinstance(r.prompt, str):
        raise RowError("prompt", "a conversation cannot be written as a plain row (use conversational=True)")
    return {"prompt": r.prompt, "completion": r.completion, "label": r.label}
